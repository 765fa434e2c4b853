"""The pipeline end to end in 2 processes x 1 CPU device (launch/local_multiprocess.sh), with the
diffusion and the GAN generator side by side (configs/pipeline.py:mini_gan, sample mode, two
regimes): every stage runs across both processes, process 0 alone writes the pipeline's records and
report, generation splits its pairs between the processes, and the compute columns are filled."""
import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT_S = 600  # a hung collective must fail the test, not the CI job
GENERATORS = ("joint", "joint_gan")
STAGES = [f"generators/{g}" for g in GENERATORS] + [f"generated/{g}" for g in GENERATORS] + [
    "segmentation/none/unet/real/all/0"] + [f"evaluation/{g}" for g in GENERATORS] + [
    f"segmentation/{g}/unet/mixed/all/0" for g in GENERATORS]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    wd = tmp_path_factory.mktemp("mp_pipeline")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable, "LOG_DIR": str(wd / "logs"),
           "EXTRA_XLA_FLAGS": "--xla_backend_optimization_level=0"}
    env.pop("XLA_FLAGS", None)
    args = ["--config=configs/pipeline.py:mini_gan", f"--workdir={wd / 'run'}",
            "--config.generate.modes=('sample',)", "--config.segmentation.low_data.sizes=()"]
    proc = subprocess.Popen(["bash", str(ROOT / "launch" / "local_multiprocess.sh"), "2", "1", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"2-process pipeline did not finish in {TIMEOUT_S} s:\n{out[-3000:]}")
    logs = {p: (wd / "logs" / f"process_{p}.log").read_text() for p in (0, 1)}
    assert proc.returncode == 0, logs[0][-3000:] + "\n---\n" + logs[1][-3000:]
    return wd / "run", logs


def test_every_stage_ran_on_both_processes(job):
    run, logs = job
    for rel in STAGES:
        record = json.loads((run / rel / "stage.json").read_text())
        assert record["status"] == "done", rel
        assert record["compute"]["devices"] == 2 and record["compute"]["wall_s"] > 0, rel
        assert record["config"]["distributed"]["num_processes"] == 2, rel
    # One writer: the stage lines and the report come from process 0 only.
    assert logs[0].count("[pipeline] stage ") == len(STAGES) + 1  # + the report
    assert "[pipeline] stage" not in logs[1]


def test_generation_splits_pairs_between_processes(job):
    run, _ = job
    for g in GENERATORS:
        folder = run / "generated" / g
        manifests = sorted(p.name for p in folder.glob("manifest*.jsonl"))
        assert len(manifests) == 2, manifests  # one per process
        ids = [json.loads(line)["id"] for m in manifests for line in (folder / m).read_text().splitlines()]
        assert len(ids) == len(set(ids)) == 12  # mini: 1 x 12 real pairs, disjoint shares
        assert len(list((folder / "images").glob("*.png"))) == 12


def test_report_has_both_generators_with_compute(job):
    run, _ = job
    md = (run / "report" / "report.md").read_text()
    for g in GENERATORS:
        assert f"| {g} | 12 |" in md  # generation-metric row
        row = next(line for line in md.splitlines() if line.startswith(f"| generators/{g} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) > 0 and float(cells[6]) > 0, row  # wall s, train GFLOP
        assert cells[5] == "2"  # devices
    with open(run / "report" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["generator"] for r in rows} == {"none", *GENERATORS}
    assert all(0.0 <= float(r["mDice"]) <= 1.0 for r in rows)


def test_a_failed_process_stops_the_job_at_once(tmp_path):
    """Process 1 fails as its task starts while process 0 waits in a collective for it: the failed
    process leaves without waiting at jax's exit barrier, the launcher stops process 0, and the
    job ends with the error instead of hanging until a timeout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable, "LOG_DIR": str(tmp_path / "logs"),
           "ENTRY": str(ROOT / "tests" / "mp_fail_worker.py")}
    env.pop("XLA_FLAGS", None)
    args = ["--config=configs/segmentation.py", f"--workdir={tmp_path / 'run'}", "--config.data.image_size=16",
            "--config.data.phantom_train_examples=8", "--config.data.phantom_test_examples=4",
            "--config.data.batch_size=4", "--config.train.num_steps=2"]
    start = time.monotonic()
    proc = subprocess.run(["bash", str(ROOT / "launch" / "local_multiprocess.sh"), "2", "1", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=TIMEOUT_S, start_new_session=True)
    elapsed = time.monotonic() - start
    assert proc.returncode == 1
    assert "error: process 1 failed (exit status 1); see" in proc.stderr
    assert "error: process 1 failed (RuntimeError: injected failure on process 1)" in (
        tmp_path / "logs" / "process_1.log").read_text()
    assert elapsed < 120, f"the job took {elapsed:.0f} s to stop"  # jax's barrier would hold it for minutes


def test_pairs_equal_a_one_process_run(job, tmp_path):
    """Pair i depends only on the seed, i and the settings: the 2-process job's pairs, bitwise equal
    to one process generating with the same generator and settings."""
    import ml_collections

    from polypjax import main
    run, _ = job
    for g in GENERATORS:
        stage = run / "generated" / g
        c = ml_collections.ConfigDict(json.loads((stage / "config.json").read_text()))
        c.distributed = {"coordinator_address": "", "num_processes": 1, "process_id": 0}
        c.mesh.data = 1
        main.run(c, str(tmp_path / g))
        for d in ("images", "masks"):
            two = {p.name: p.read_bytes() for p in (stage / d).iterdir()}
            one = {p.name: p.read_bytes() for p in (tmp_path / g / d).iterdir()}
            assert two == one, (g, d, sorted(set(two) ^ set(one)))
