"""The entry points re-execute once with glibc's malloc tunables on CPU runs only, keep freed memory
then, and hand the user's environment to their children."""
import os
import subprocess
import sys

import pytest

from polypjax import hostenv

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables")

CODE = ("import os; from polypjax import hostenv; hostenv.reexec_with_hugepage_malloc(); "
        "hostenv.reexec_with_hugepage_malloc(); "
        "print(repr(hostenv.applied()), os.environ.get('GLIBC_TUNABLES'), os.environ.get(hostenv._MARK))")
_CLEARED = ("GLIBC_TUNABLES", "POLYPJAX_HUGEPAGES", "JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES", hostenv._MARK)


def _run(code=CODE, *args, **env):
    base = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    out = subprocess.run([sys.executable, *(["-c", code] if code else []), *args], env=dict(base, **env),
                         capture_output=True, text=True, check=True, timeout=120)
    return out.stdout.strip().splitlines()


@linux_only
def test_reexec_once_on_cpu_runs_then_the_environment_is_the_users_again():
    # One line: the process ran its code once, with the tunables in effect and out of os.environ.
    assert _run(JAX_PLATFORMS="cpu") == [f"{hostenv.TUNABLE!r} None None"]
    assert _run(JAX_PLATFORMS="cpu", POLYPJAX_HUGEPAGES="0") == ["'' None None"]
    assert _run(JAX_PLATFORMS="cpu", GLIBC_TUNABLES="glibc.malloc.arena_max=2") == [
        "'' glibc.malloc.arena_max=2 None"]


@linux_only
@pytest.mark.parametrize("platforms", ["cuda", "gpu", "tpu", "tpu,cpu", "rocm"])
def test_no_reexec_on_accelerator_runs_unless_forced(platforms):
    assert _run(JAX_PLATFORMS=platforms) == ["'' None None"]
    assert _run(JAX_PLATFORMS=platforms, POLYPJAX_HUGEPAGES="1") == [f"{hostenv.TUNABLE!r} None None"]


@pytest.mark.parametrize("nodes,env,cpu", [
    ((), {}, True),
    (("nvidia0", "nvidiactl"), {}, False),
    (("nvidiactl",), {}, True),  # the driver without a GPU
    (("nvidia0",), {"CUDA_VISIBLE_DEVICES": ""}, True),
    (("nvidia0",), {"CUDA_VISIBLE_DEVICES": "-1"}, True),
    (("nvidia0",), {"CUDA_VISIBLE_DEVICES": "0"}, False),
    (("nvidia0",), {"JAX_PLATFORMS": "cpu"}, True),
    ((), {"JAX_PLATFORMS": "cuda,cpu"}, False),
    (("kfd",), {}, False),
    (("accel0",), {}, False),
    (("vfio/0",), {}, False),
    (("vfio/vfio",), {}, True),  # the VFIO control node alone: no device bound
])
def test_cpu_run_is_decided_from_the_environment_and_device_nodes(tmp_path, nodes, env, cpu):
    for node in nodes:
        (tmp_path / node).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / node).touch()
    assert hostenv.cpu_run(env, str(tmp_path)) is cpu


CHILD = """
import multiprocessing, os, sys
sys.path.insert(0, {root!r})
from polypjax import hostenv
hostenv.reexec_with_hugepage_malloc()  # at the top, as the tools do: it runs again in spawned children

def report(_):
    return os.environ.get("GLIBC_TUNABLES"), hostenv.applied()

if __name__ == "__main__":
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        tunables, applied = pool.map(report, [0])[0]
    print(repr(hostenv.applied()), tunables, repr(applied))
"""


@linux_only
def test_spawned_workers_start_with_the_users_environment(tmp_path):
    """grain's data workers are spawned processes: no tunables in their environment, and they do
    not re-execute (a re-executed worker would report the tunables as applied)."""
    script = tmp_path / "entry.py"
    script.write_text(CHILD.format(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert _run(None, str(script), JAX_PLATFORMS="cpu") == [f"{hostenv.TUNABLE!r} None ''"]


# A worker thread allocates, frees and reallocates a 64 MiB block (XLA's temporaries are such
# blocks, allocated per execution on a worker thread) and counts the page faults of the second use.
REUSE = """
import resource, threading
import numpy as np
from polypjax import hostenv
hostenv.reexec_with_hugepage_malloc()
def use():
    a = np.empty(64 << 20, np.uint8)
    a[::4096] = 1
def second_use(out):
    use()
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    use()
    out.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
out = []
t = threading.Thread(target=second_use, args=(out,))
t.start(); t.join()
print(out[0])
"""


@linux_only
def test_freed_blocks_are_reused_without_page_faults():
    def faults(**env):
        return int(_run(REUSE, JAX_PLATFORMS="cpu", **env)[-1])

    # glibc's default: munmap'd and faulted in again (32 huge pages where numpy asks for them)
    assert faults(POLYPJAX_HUGEPAGES="0") >= 16
    assert faults() <= 4  # the tunables stay in effect after the variable left the environment
