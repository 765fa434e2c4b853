"""Process-level settings that must be in place before the C runtime starts.

XLA:CPU allocates its buffers with the C library's malloc. Two glibc tunables matter for training
on the CPU:

- ``glibc.malloc.hugetlb=1`` (glibc >= 2.35): transparent huge pages for malloc'd memory, fewer
  TLB misses in the large convolution and matmul buffers.
- Keeping freed memory in the process: by default every step's large buffers (XLA's temporary
  block of a training step, one mmap per execution from a worker thread's arena) go back to the
  kernel and are faulted in and zeroed again on the next step, and on VMs the hypervisor may take
  the freed huge pages back in between, which stalls a step now and then. ``arena_max=1`` puts every
  thread in the main arena, ``mmap_max=0`` serves even the large blocks from its heap,
  ``trim_threshold`` keeps the heap from shrinking: after the first steps no page faults at all.
  The cost: the process keeps its peak heap until it exits.

(What they bought on our machines: ``tools/README.md``, "Measurements".)

glibc reads tunables only at process start, so the entry points re-execute themselves once with
them set, and only where the run is a CPU run:

- ``JAX_PLATFORMS`` set: its first platform is ``cpu``;
- else no accelerator device node: ``/dev/nvidia<N>`` (unless ``CUDA_VISIBLE_DEVICES`` is empty or
  ``-1``), ``/dev/kfd`` (ROCm), ``/dev/accel<N>`` or ``/dev/vfio/<N>`` (TPU). On GPU and TPU hosts
  the buffers live in device memory and XLA:CPU's step buffers are not what the run waits for.

Never in a process that ``multiprocessing`` started (grain's data workers, spawned: their many
small decode buffers want glibc's defaults, and a worker must not replace itself), and never over a
``GLIBC_TUNABLES`` of your own. Right after the re-exec the variable is removed from the
environment again (glibc has read it by then), so every child process (data workers,
subprocesses) starts with the environment the user gave. ``POLYPJAX_HUGEPAGES=0`` leaves the
process alone; ``POLYPJAX_HUGEPAGES=1`` re-executes whatever the platform.
"""
from __future__ import annotations

import glob
import os
import sys

TUNABLE = ":".join([
    "glibc.malloc.hugetlb=1",
    "glibc.malloc.arena_max=1",
    "glibc.malloc.mmap_max=0",
    "glibc.malloc.trim_threshold=17179869184",  # 16 GiB: above any heap top we free
])
_MARK = "POLYPJAX_HOSTENV_REEXEC"  # set for the re-executed process only, which removes it again
_ACCELERATOR_NODES = ("kfd", "accel[0-9]*", "vfio/[0-9]*")
_state = {"checked": False, "applied": ""}


def accelerator_nodes(environ=os.environ, dev: str = "/dev") -> list[str]:
    """Device nodes of GPUs or TPUs that JAX would use by default here."""
    found = []
    cuda = environ.get("CUDA_VISIBLE_DEVICES")
    if cuda is None or cuda.strip() not in ("", "-1"):
        found += glob.glob(os.path.join(dev, "nvidia[0-9]*"))
    for pattern in _ACCELERATOR_NODES:
        found += glob.glob(os.path.join(dev, pattern))
    return sorted(found)


def cpu_run(environ=os.environ, dev: str = "/dev") -> bool:
    """Whether JAX will run on the CPU, decided without importing it (see the module docstring)."""
    platforms = [p.strip().lower() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return platforms[0] == "cpu"
    return not accelerator_nodes(environ, dev)


def wanted(environ=os.environ, dev: str = "/dev") -> bool:
    """Whether this process should re-execute with the tunables (the module docstring's rules)."""
    import multiprocessing
    choice = environ.get("POLYPJAX_HUGEPAGES", "")
    if not sys.platform.startswith("linux") or choice == "0" or "GLIBC_TUNABLES" in environ:
        return False
    # A spawned child is named before its parent's main module is imported again.
    if multiprocessing.parent_process() is not None or multiprocessing.current_process().name != "MainProcess":
        return False
    return choice == "1" or cpu_run(environ, dev)


def applied() -> str:
    """The tunables this process started with ('' if none of ours)."""
    return _state["applied"]


def reexec_with_hugepage_malloc() -> None:
    """Replaces the process with the same command and the tunables set, where `wanted` (at most
    once); in the re-executed process, takes them out of the environment again."""
    if _state["checked"]:
        return
    _state["checked"] = True
    if os.environ.get(_MARK) == "1":
        _state["applied"] = os.environ.pop("GLIBC_TUNABLES", "")
        del os.environ[_MARK]
        return
    if not wanted():
        return
    env = dict(os.environ, GLIBC_TUNABLES=TUNABLE, **{_MARK: "1"})
    argv = list(getattr(sys, "orig_argv", [])) or [sys.executable] + sys.argv
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
