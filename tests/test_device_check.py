"""tools/device_check.py in its reduced CPU mode on one device: the ADM step with its MFU, DDIM,
RePaint and the segmenter report positive rates, the JSON is written, and nothing imported
tensorflow. Left out for CI time: the FID Inception case (its network compiles for tens of seconds
on a CPU; tests/test_inception.py runs it) and the miniature pipeline (tests/test_pipeline_task.py)."""
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CASES = "adm_train_paper,ddim50,repaint,seg_train,seg_infer"


def test_reduced_device_check(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "POLYPJAX_HUGEPAGES": "0",
           "XLA_FLAGS": "--xla_backend_optimization_level=0"}  # one CPU device, the tests' -O0
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "device_check.py"), "--reduced", "--out", str(out),
                           "--cases", CASES], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["reduced"] and not report["tensorflow_imported"]
    assert set(report["cases"]) == set(CASES.split(","))
    train = report["cases"]["adm_train_paper"]
    assert train["gflop_per_iter"] > 0 and 0 < train["mfu"] < 1 and train["params"] > 0
    for name in ("ddim50", "repaint"):
        assert report["cases"][name]["pairs_per_s"] > 0
    for name in ("seg_train", "seg_infer"):
        assert report["cases"][name]["items_per_s"] > 0
    assert report["bf16_matmul_peak"]["gflops_per_s"] > 0
    assert json.loads(proc.stdout.strip().splitlines()[-1]).keys() == report["cases"].keys()
