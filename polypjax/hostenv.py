"""Process-level settings that must be in place before the C runtime starts.

XLA:CPU allocates its buffers with the C library's malloc. Two glibc tunables matter for training:

- ``glibc.malloc.hugetlb=1`` (glibc >= 2.35): transparent huge pages for malloc'd memory. Made a
  resunet34 training step 8-15 % faster on our 2-core CPU (session note on issue 3).
- Keeping freed memory in the process: by default every step's large buffers (XLA's 1.2 GB
  temporary block for the ADM training step, one mmap per execution from a worker thread's arena)
  go back to the kernel and are faulted in and zeroed again on the next step. On our VMs that cost
  0.15 s of system time per step, and on about 4 steps in 10 a further 1.5 s (2.2 s of system
  time, most likely the hypervisor taking back the freed huge pages). ``arena_max=1`` puts every
  thread in the main arena, ``mmap_max=0`` serves even the large blocks from its heap,
  ``trim_threshold`` keeps the heap from shrinking: after the first steps no page faults at all.
  The ADM benchmark step (batch 8, 64 px) went from a mean of 2.42 and 2.53 s over 12 steps
  (about 2.0 s on the steps without a stall) to 2.13 and 2.01 s (session note on issue 5). The
  cost: the process keeps its peak heap until it exits.

glibc reads tunables only at process start, so the entry points re-execute themselves once with
them set. ``POLYPJAX_HUGEPAGES=0`` (or any GLIBC_TUNABLES of your own) leaves the process alone.
"""
from __future__ import annotations

import os
import sys

TUNABLE = ":".join([
    "glibc.malloc.hugetlb=1",
    "glibc.malloc.arena_max=1",
    "glibc.malloc.mmap_max=0",
    "glibc.malloc.trim_threshold=17179869184",  # 16 GiB: above any heap top we free
])


def reexec_with_hugepage_malloc() -> None:
    """Replaces the process with the same command and the tunable set (Linux only, at most once)."""
    if (not sys.platform.startswith("linux") or "GLIBC_TUNABLES" in os.environ
            or os.environ.get("POLYPJAX_HUGEPAGES", "1") == "0"):
        return
    env = dict(os.environ, GLIBC_TUNABLES=TUNABLE)
    argv = list(getattr(sys, "orig_argv", [])) or [sys.executable] + sys.argv
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
