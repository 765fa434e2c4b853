"""Process-level settings that must be in place before the C runtime starts.

XLA:CPU allocates its buffers with the C library's malloc; large ones come from fresh mmap'd
pages, so every step walks through many 4 KiB pages. Transparent huge pages for malloc (glibc >= 2.35:
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``) made a resunet34 training step 8-15 % faster on our
2-core CPU (session note on issue 3). glibc reads the tunable only at process start, so the entry
points re-execute themselves once with it set. ``POLYPJAX_HUGEPAGES=0`` (or any GLIBC_TUNABLES of
your own) leaves the process alone.
"""
from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"


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
