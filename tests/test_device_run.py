"""tools/device_run.sh --reduced on the CPU: the accelerator run's script end to end at toy sizes
(the paper-scale ADM step with its MFU, and configs/kvasir_gpu.py's grid on phantom data), every
file it promises in its output folder, the pipeline's report in the tarball. The GPU run itself:
tools/README.md, "Measurements"."""
import json
import os
import pathlib
import subprocess
import tarfile

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_reduced_device_run(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "POLYPJAX_HUGEPAGES": "0", "PYTHON": os.environ.get("PYTHON", "python"),
           "POLYPJAX_WORKDIR": str(tmp_path / "work" / "kvasir_gpu"),
           "XLA_FLAGS": "--xla_backend_optimization_level=0"}  # one CPU device, the tests' -O0
    env.pop("OUT", None)
    import sys
    env["PYTHON"] = sys.executable
    proc = subprocess.run(["bash", str(ROOT / "tools" / "device_run.sh"), "--reduced", "--out", str(out),
                           "--cases", "adm_train_paper,kvasir_gpu"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert {"device_check.json", "kvasir_gpu.json", "device_run.log", "env.txt", "kvasir_gpu.tar.gz"} <= \
        {p.name for p in out.iterdir()}
    check = json.loads((out / "device_check.json").read_text())
    assert set(check["cases"]) == {"adm_train_paper"} and 0 < check["cases"]["adm_train_paper"]["mfu"] < 1
    assert not check["imports"]["tensorflow"]
    grid = json.loads((out / "kvasir_gpu.json").read_text())["cases"]["kvasir_gpu"]
    assert grid["status"] == "done" and grid["result_rows"] > 0
    stages = grid["stage_wall_s"]
    # The smallest grid of configs/kvasir_gpu.py: at N the three augmented regimes, and the
    # plateau runs that set their step counts.
    for regime in ("real_augment", "copy_paste+aug"):
        assert any(f"/unet/{regime}/" in s for s in stages), (regime, sorted(stages))
    assert any("/mixed+aug/" in s for s in stages) and any(s.startswith("segmentation/plateau/") for s in stages)
    assert all(w is not None and w > 0 for w in stages.values())
    with tarfile.open(out / "kvasir_gpu.tar.gz") as tar:
        names = tar.getnames()
    assert "kvasir_gpu/report/report.md" in names and "kvasir_gpu/report/results.json" in names
    assert not any("/checkpoints/" in n or "/images/" in n for n in names)
