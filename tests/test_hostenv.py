"""The entry points re-execute once with glibc's huge-page malloc tunable set."""
import os
import subprocess
import sys

import pytest

CODE = ("import os; from polypjax import hostenv; hostenv.reexec_with_hugepage_malloc(); "
        "print(os.environ.get('GLIBC_TUNABLES'))")


def _run(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "POLYPJAX_HUGEPAGES")}
    out = subprocess.run([sys.executable, "-c", CODE], env=dict(base, **env), capture_output=True,
                         text=True, check=True, timeout=120)
    return out.stdout.strip().splitlines()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a glibc tunable")
def test_reexec_sets_tunable_once_and_respects_opt_out():
    assert _run() == ["glibc.malloc.hugetlb=1"]  # one line: the process ran its code once
    assert _run(POLYPJAX_HUGEPAGES="0") == ["None"]
    assert _run(GLIBC_TUNABLES="glibc.malloc.arena_max=2") == ["glibc.malloc.arena_max=2"]
