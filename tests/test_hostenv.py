"""The entry points re-execute once with glibc's malloc tunables set, and then keep freed memory."""
import os
import subprocess
import sys

import pytest

CODE = ("import os; from polypjax import hostenv; hostenv.reexec_with_hugepage_malloc(); "
        "print(os.environ.get('GLIBC_TUNABLES'))")


def _run(code=CODE, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "POLYPJAX_HUGEPAGES")}
    out = subprocess.run([sys.executable, "-c", code], env=dict(base, **env), capture_output=True,
                         text=True, check=True, timeout=120)
    return out.stdout.strip().splitlines()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc tunable")
def test_reexec_sets_tunable_once_and_respects_opt_out():
    from polypjax import hostenv
    assert _run() == [hostenv.TUNABLE]  # one line: the process ran its code once
    assert _run(POLYPJAX_HUGEPAGES="0") == ["None"]
    assert _run(GLIBC_TUNABLES="glibc.malloc.arena_max=2") == ["glibc.malloc.arena_max=2"]


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables")
def test_freed_blocks_are_reused_without_page_faults():
    def faults(**env):
        return int(_run(REUSE, **env)[-1])

    # glibc's default: munmap'd and faulted in again (32 huge pages where numpy asks for them)
    assert faults(POLYPJAX_HUGEPAGES="0") >= 16
    assert faults() <= 4
