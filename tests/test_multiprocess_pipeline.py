"""The pipeline end to end in 2 processes x 1 CPU device (launch/local_multiprocess.sh), with the
diffusion and the GAN generator side by side (configs/pipeline.py:mini_gan, sample mode, two
regimes): every stage runs across both processes, process 0 alone writes the pipeline's records and
report, generation splits its pairs between the processes, and the compute columns are filled. A job
whose process dies (fails, or is killed in any kind of stage) ends at once, and rerunning the same
command gives the uninterrupted job's results, bit for bit."""
import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT_S = 600  # a hung collective must fail the test, not the CI job
GENERATORS = ("joint", "joint_gan")
STAGES = [f"generators/{g}" for g in GENERATORS] + [f"generated/{g}" for g in GENERATORS] + [
    "segmentation/none/unet/real/all/0"] + [f"evaluation/{g}" for g in GENERATORS] + [
    f"segmentation/{g}/unet/mixed/all/0" for g in GENERATORS]


ARGS = ["--config=configs/pipeline.py:mini_gan", "--config.generate.modes=('sample',)",
        "--config.segmentation.low_data.sizes=()"]


def _launch(workdir: pathlib.Path, log_dir: pathlib.Path) -> subprocess.Popen:
    """The 2-process pipeline job (the launcher's own process group, so a test can end all of it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable, "LOG_DIR": str(log_dir),
           "EXTRA_XLA_FLAGS": "--xla_backend_optimization_level=0"}
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen(["bash", str(ROOT / "launch" / "local_multiprocess.sh"), "2", "1", *ARGS,
                             f"--workdir={workdir}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, log_dir: pathlib.Path, timeout: float = TIMEOUT_S) -> dict:
    """Waits for a job that should succeed; the processes' logs."""
    try:
        proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"2-process pipeline did not finish in {timeout:.0f} s:\n{_log_tails(log_dir)}")
    assert proc.returncode == 0, _log_tails(log_dir)
    return {p: (log_dir / f"process_{p}.log").read_text() for p in (0, 1)}


def _log_tails(log_dir: pathlib.Path) -> str:
    return "\n---\n".join((log_dir / f"process_{p}.log").read_text()[-3000:] for p in (0, 1)
                           if (log_dir / f"process_{p}.log").exists())


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    wd = tmp_path_factory.mktemp("mp_pipeline")
    logs = _finish(_launch(wd / "run", wd / "logs"), wd / "logs")
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


def _pixels(path):
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im)


def test_pairs_equal_a_one_process_run(job, tmp_path):
    """Pair i depends only on the seed, i and the settings: the 2-process job's pairs equal one
    process generating with the same generator and settings (masks exactly, frames up to one level
    of float rounding in a few pixels: another batch shape per device may sum in another order)."""
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
            two = {p.name: _pixels(p) for p in (stage / d).iterdir()}
            one = {p.name: _pixels(p) for p in (tmp_path / g / d).iterdir()}
            assert two.keys() == one.keys(), (g, d, sorted(set(two) ^ set(one)))
            for name in two:
                if d == "masks":
                    assert np.array_equal(two[name], one[name]), (g, name)
                    continue
                # Two processes run each batch at half the local size, and XLA's CPU kernels (and
                # oneDNN's) may sum a convolution in another order at another batch shape: the same
                # pair can round one level apart in a few pixels (seen for the GAN under load).
                diff = np.abs(two[name].astype(int) - one[name].astype(int))
                assert diff.max() <= 1 and (diff > 0).mean() <= 0.005, (g, name, diff.max(), (diff > 0).mean())


# --------------------------------------------------------------------------- one process killed

# One kill in each kind of stage, in the order the pipeline reaches them: (stage, the file whose
# appearance says the stage's work is under way, the process killed). The other process is never
# touched: the launcher must end it. The GAN trains through the same loop as the diffusion model
# (its resume is tested in one process by tests/test_gan.py): one generator is killed, for time.
KILLS = [("generators/joint", "checkpoints/2", 0),  # generator training after its first checkpoint
         ("generated/joint", "generation.json", 1),  # generation, once pairs are on disk (below)
         ("segmentation/none/unet/real/all/0", "checkpoints/2", 0),  # segmenter training
         ("evaluation/joint", "config.json", 1)]  # evaluate_generation, inside its task
STOP_S = 20  # from the kill to the launcher's exit, every process gone (it takes about 1 s)


def _job_processes(workdir: pathlib.Path) -> dict[int, list[int]]:
    """pid(s) of the processes whose command line names `workdir` (the launcher's included), by the
    process id they were given (-1: none given)."""
    out = {}
    flag = f"--workdir={workdir}".encode()
    for entry in pathlib.Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not a process
            continue
        if flag not in argv:
            continue
        ids = [int(a.rsplit(b"=", 1)[1]) for a in argv if a.startswith(b"--config.distributed.process_id=")]
        out.setdefault(ids[0] if ids else -1, []).append(int(entry.name))
    return out


def _python_pid(workdir: pathlib.Path, process: int) -> int:
    """The pid of job process `process`, once it runs python."""
    for pid in _job_processes(workdir).get(process, []):
        if pathlib.Path(f"/proc/{pid}/exe").resolve().name.startswith("python"):
            return pid
    raise AssertionError(f"no python process {process} of {workdir}")


def _manifest_ids(folder: pathlib.Path) -> dict[str, list[str]]:
    """Each manifest's ids (a line still being written is not one)."""
    return {m.name: sorted(json.loads(line)["id"] for line in m.read_text().rpartition("\n")[0].splitlines())
            for m in sorted(folder.glob("manifest*.jsonl"))}


def _wait_for(path: pathlib.Path, proc: subprocess.Popen, what: str, test=pathlib.Path.exists) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not test(path):
        assert proc.poll() is None, f"the job ended before {what}"
        assert time.monotonic() < deadline, f"no {what} in {TIMEOUT_S} s"
        time.sleep(0.01)


def _written(folder: pathlib.Path) -> dict[str, int]:
    """The pairs a generated folder's manifests list: id -> inode of its image."""
    ids = [i for m in _manifest_ids(folder).values() for i in m]
    return {i: (folder / "images" / f"{i}.png").stat().st_ino for i in ids}


def _run_in_slices(pids: list[int], written, proc: subprocess.Popen, slice_s: float = 0.003) -> dict:
    """Lets `pids` run `slice_s` at a time (SIGCONT, SIGSTOP) until `written()` lists a pair; they are
    left stopped. What `written()` saw then."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        for p in pids:
            os.kill(p, signal.SIGSTOP)
        seen = written()
        if seen:
            return seen
        assert proc.poll() is None and time.monotonic() < deadline, "no pair written"
        for p in pids:
            os.kill(p, signal.SIGCONT)
        time.sleep(slice_s)


def _kill_in(workdir: pathlib.Path, log_dir: pathlib.Path, stage: str, trigger: str, victim: int) -> dict:
    """Starts the job, SIGKILLs process `victim` once `stage/trigger` appears and checks that the
    launcher ends the job at once: non-zero, naming the killed process, no process of the job left.
    The pairs a generated folder held when the process died."""
    proc = _launch(workdir, log_dir)
    try:
        _wait_for(workdir / stage / trigger, proc, f"{stage}/{trigger}")
        pid = _python_pid(workdir, victim)
        held = {}
        if stage.startswith("generated/"):
            # Mid-folder: a folder's pairs land within a tenth of a second (SIGSTOPping one process
            # stalls both: sampling is one program across them), so the job runs in slices of a
            # few milliseconds until a pair is on disk, and the victim dies with the rest unwritten.
            both = [pid, _python_pid(workdir, 1 - victim)]
            held = _run_in_slices(both, lambda: _written(workdir / stage), proc)
            os.kill(pid, signal.SIGKILL)
            os.kill(both[1], signal.SIGCONT)
        else:
            os.kill(pid, signal.SIGKILL)
        try:
            _, err = proc.communicate(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"killed in {stage}: the job still ran {STOP_S} s after process {victim} died")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode != 0 and f"error: process {victim} failed (killed by SIGKILL)" in err, (stage, err[-2000:])
    assert "did not stop" not in err, (stage, err[-2000:])  # the survivor ends on the launcher's SIGTERM
    left = _job_processes(workdir)
    assert not left, f"killed in {stage}, processes of the job still run after the launcher ended: {left}"
    record = json.loads((workdir / stage / "stage.json").read_text())
    assert record["status"] == "running", f"{stage} recorded as {record['status']} though its process was killed"
    return held


def _state_digest(stage_dir: pathlib.Path, task: str) -> str:
    """sha256 of every array of the final checkpoint (parameters, EMA, optimizer state, RNG, step)."""
    import hashlib

    import jax
    import numpy as np

    from polypjax.train import loop
    _, state = loop.restore_run(stage_dir, task)
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        a = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)} {a.dtype} {a.shape}".encode() + a.tobytes())
    return digest.hexdigest()


def _results(run: pathlib.Path) -> dict:
    """What a run computed, with the run's own path and the stages' timings left out."""
    out = {}
    for path in sorted(run.rglob("*")):
        rel = str(path.relative_to(run))
        if path.suffix == ".png" or rel == "report/results.csv":
            out[rel] = path.read_bytes()
        elif path.suffix == ".json" and path.name not in ("stage.json", "compute.json", "config.json") \
                and "/checkpoints/" not in rel:  # config.json: the input, with this launch's port
            out[rel] = path.read_text().replace(str(run), "<run>")
    for g in GENERATORS:
        out[f"generated/{g} manifests"] = _manifest_ids(run / "generated" / g)
        out[f"generators/{g} state"] = _state_digest(run / "generators" / g, "train_diffusion")
    for rel in STAGES:
        if rel.startswith("segmentation/"):
            out[f"{rel} state"] = _state_digest(run / rel, "train_segmentation")
    return out


def test_a_process_killed_in_each_kind_of_stage_reruns_to_the_same_results(job, tmp_path):
    """One chaos run: process 0 or 1 SIGKILLed in generator training, generation (mid-folder),
    segmenter training and evaluation in turn, the same command rerun after each kill
    and once more to the end; then every result equals the uninterrupted job's, bit for bit."""
    run = tmp_path / "run"
    held = {}
    for n, (stage, trigger, victim) in enumerate(KILLS):
        held[stage] = _kill_in(run, tmp_path / f"logs{n}", stage, trigger, victim)
    log_dir = tmp_path / f"logs{len(KILLS)}"
    logs = _finish(_launch(run, log_dir), log_dir)
    for stage, _, _ in KILLS:
        record = json.loads((run / stage / "stage.json").read_text())
        assert record["status"] == "done" and record["runs"] == 2, (stage, record["status"], record["runs"])
    # Generation resumed from the pairs on disk: those written before the kill are the same files.
    assert 0 < len(held["generated/joint"]) < 12, held
    assert _written(run / "generated/joint").items() >= held["generated/joint"].items()
    reference, chaos = _results(job[0]), _results(run)
    assert reference.keys() == chaos.keys(), set(reference) ^ set(chaos)
    differ = [k for k in reference if reference[k] != chaos[k]]
    assert not differ, f"differ from the uninterrupted run: {differ}\n{_log_tails(log_dir)}"
    assert "[pipeline] stage report" in logs[0]
