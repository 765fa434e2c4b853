"""The pipeline task end to end in miniature (configs/pipeline.py:mini): every stage runs, the
report's tables and CSV agree with the stages' own results, a pipeline killed inside a stage resumes
there and skips the finished ones, and a changed generation config reruns that stage and the ones
that read its pairs, nothing else."""
import contextlib
import csv
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
JUDGE = "segmentation/none/unet/real/all/0"
STAGES = ["generators/joint", "generated/joint", "generated/joint-inpaint", JUDGE, "evaluation/joint",
          "evaluation/joint-inpaint", "segmentation/joint/unet/mixed/all/0",
          "segmentation/joint-inpaint/unet/mixed/all/0", "segmentation/none/unet/real/6/0",
          "segmentation/joint/unet/mixed/6/0", "segmentation/joint-inpaint/unet/mixed/6/0"]
KILLED = STAGES[-1]
# The stages an inpaint-only setting reaches: that synthetic set, its metrics and its segmenters.
READS_INPAINT = ("generated/joint-inpaint", "evaluation/joint-inpaint",
                 "segmentation/joint-inpaint/unet/mixed/all/0", KILLED)

# One CPU device, as `python -m polypjax.main` runs it (the test session simulates eight).
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_backend_optimization_level=0"}  # one device; as conftest


def _command(workdir, *overrides):
    return [sys.executable, "-m", "polypjax.main", "--config=configs/pipeline.py:mini",
            f"--workdir={workdir}", *overrides]


def _run(workdir, *overrides, timeout=600):
    proc = subprocess.run(_command(workdir, *overrides), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _stage(workdir, rel):
    return json.loads((workdir / rel / "stage.json").read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A pipeline SIGKILLed inside its last segmenter's training (after its first checkpoint),
    then run again to the end: (workdir, the second run's log)."""
    workdir = tmp_path_factory.mktemp("pipeline") / "run"
    proc = subprocess.Popen(_command(workdir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ENV)
    checkpoint = workdir / KILLED / "checkpoints" / "2"
    deadline = time.monotonic() + 900
    try:
        while not checkpoint.is_dir():
            assert proc.poll() is None, "the pipeline ended before its last segmenter checkpointed"
            assert time.monotonic() < deadline, "no checkpoint of the last segmenter in time"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _stage(workdir, KILLED)["status"] == "running"
    assert not (workdir / "report").exists()
    return workdir, _run(workdir)


def test_rerun_skips_finished_stages_and_resumes_inside_the_stopped_one(finished):
    workdir, log = finished
    for rel in STAGES[:-1]:
        assert f"stage {rel}: done, skipped" in log, rel
        assert _stage(workdir, rel)["runs"] == 1
    assert f"stage {KILLED}: resuming an interrupted run" in log
    assert "at step 2" in log  # the segmenter continued from its checkpoint, not from step 0
    killed = _stage(workdir, KILLED)
    assert killed["status"] == "done" and killed["runs"] == 2
    for rel in STAGES:
        assert _stage(workdir, rel)["status"] == "done", rel
    # The report's compute table says which stage was resumed (its time is the last run's).
    row = next(line for line in (workdir / "report" / "report.md").read_text().splitlines()
               if line.startswith(f"| {KILLED} |"))
    assert row.strip("|").split("|")[-1].strip() == "2", row


def test_report_tables_match_the_stage_results(finished):
    workdir, _ = finished
    report = workdir / "report"
    with open(report / "results.csv") as f:
        rows = list(csv.DictReader(f))
    seg_stages = [s for s in STAGES if s.startswith("segmentation/")]
    assert len(rows) == len(seg_stages) * 2  # every segmenter on both test sets
    for row in rows:
        gen = row["generator"]
        n = "all" if row["N"] == "12" else row["N"]
        results = json.loads((workdir / f"segmentation/{gen}/{row['model']}/{row['regime']}/{n}/{row['seed']}"
                              / "results.json").read_text())["test"][row["test_set"]]
        for m in ("mDice", "mIoU", "dice", "iou"):
            assert float(row[m]) == pytest.approx(results[m], abs=1e-12), (row, m)
    assert {r["test_set"] for r in rows} == {"phantom-a@test", "phantom-b@test"}

    md = (report / "report.md").read_text()
    # One seed: "mean ± 0.000" per regime and test set, equal to the stage's own figure.
    for row in rows:
        if row["N"] != "12":
            continue
        cells = f"| {row['model']} | {row['regime']} | {row['generator']} | {row['test_set']} | 1 | " \
                f"{float(row['mDice']):.3f} ± 0.000 | {float(row['mIoU']):.3f} ± 0.000 |"
        assert cells in md, cells
    real = {r["test_set"]: float(r["mDice"]) for r in rows if r["regime"] == "real" and r["N"] == "12"}
    for r in rows:
        if r["regime"] == "mixed" and r["N"] == "12":
            assert f"{float(r['mDice']) - real[r['test_set']]:+.3f}" in md  # the gain column
    low_real = {r["test_set"]: float(r["mDice"]) for r in rows if r["regime"] == "real" and r["N"] == "6"}
    for r in rows:
        if r["regime"] == "mixed" and r["N"] == "6":  # the low-data table's gain column
            assert f"| {float(r['mDice']) - low_real[r['test_set']]:+.3f} |" in md
    gen = json.loads((workdir / "evaluation/joint/generation_metrics.json").read_text())["generated"][0]
    assert f"{gen['label_consistency']['mDice']:.3f} ({gen['label_consistency']['chance_mDice']:.3f})" in md
    assert f"| {gen['segmenter_features']['fd']:.3f} (" in md  # segFD beside its two bounds
    assert "## Low-data sweep" in md and "## Compute per stage" in md

    html = (report / "report.html").read_text()
    for fig in ("samples_joint.png", "dice_bars.png", "low_data.png", "training_loss.png"):
        assert (report / "figures" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig
        assert f"alt='{fig}' src='data:image/png;base64," in html, fig
    summary = json.loads((report / "results.json").read_text())
    assert [{k: str(v) for k, v in r.items()} for r in summary["rows"]] == rows


def test_changed_inpaint_config_reruns_that_set_and_its_readers_only(finished):
    workdir, _ = finished
    before = {rel: _stage(workdir, rel) for rel in STAGES}
    log = _run(workdir, "--config.generate.mode_overrides.inpaint.generate.inpaint.steps=3")
    for rel in STAGES:
        after = _stage(workdir, rel)
        if rel in READS_INPAINT:
            assert f"stage {rel}: its config changed, rerunning it from scratch" in log, rel
            assert after["fingerprint"] != before[rel]["fingerprint"] and after["status"] == "done"
        else:
            assert f"stage {rel}: done, skipped" in log, rel
            assert after == before[rel]
    assert _stage(workdir, "generated/joint-inpaint")["config"]["generate"]["inpaint"]["steps"] == 3


def test_inpaint_set_paints_into_the_real_training_frames(finished):
    """The inpaint stage reads the pipeline's own training set: outside its region each pair is
    that real frame, pixel for pixel, with background mask."""
    import ml_collections
    import numpy as np
    from polypjax.data import catalog
    from polypjax.data.sources import FolderSource
    workdir, _ = finished
    stage = _stage(workdir, "generated/joint-inpaint")["config"]
    assert stage["generate"]["mode"] == "inpaint" and stage["generate"]["source"] == stage["data"]["train"]
    data = ml_collections.ConfigDict(stage["data"])
    real = catalog.make_source(data.train, data, default_split="train", seed=stage["seed"])
    folder = workdir / "generated/joint-inpaint"
    records = [json.loads(line) for m in sorted(folder.glob("manifest*.jsonl")) for line in m.read_text().splitlines()]
    pairs = FolderSource(folder)
    by_id = {pairs[i]["id"]: pairs[i] for i in range(len(pairs))}
    assert len(records) == len(pairs) == 12
    for rec in records:
        pair, frame = by_id[rec["id"]], real[rec["source_frame"]]
        y0, x0, y1, x1 = rec["region"]["bbox"]
        outside = np.ones(pair["mask"].shape, bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(pair["image"][outside], frame["image"][outside]), rec["id"]
        assert not pair["mask"][outside].any(), rec["id"]


def test_disk_full_while_writing_the_report_is_one_line_and_the_rerun_writes_it(finished, tmp_path):
    """The finished pipeline's workdir on a small tmpfs mounted over its own path (stage records hold
    their paths): every stage is skipped, the report meets the full disk, and once there is room the
    same command writes it. Needs root, as CI has."""
    workdir, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy, symlinks=True, ignore=shutil.ignore_patterns("report"))
    used = sum(p.stat().st_size for p in copy.rglob("*") if p.is_file())
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={used + (4 << 20)}", "tmpfs", str(workdir)],
                         capture_output=True, text=True)
    if out.returncode:
        pytest.skip(f"cannot mount a small tmpfs here (needs root, as CI has): {out.stderr.strip()}")
    try:  # the tmpfs hides the workdir's own files, which the umount shows again unchanged
        shutil.copytree(copy, workdir, symlinks=True, dirs_exist_ok=True)
        filler = workdir / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        os.truncate(filler, filler.stat().st_size - (256 << 10))
        proc = subprocess.run(_command(workdir), cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: no space left on the disk writing {workdir / 'report'}"), last
        for rel in STAGES:
            assert f"stage {rel}: done, skipped" in proc.stdout + proc.stderr, rel
        filler.unlink()
        log = _run(workdir)
        assert "stage report" in log and (workdir / "report" / "report.html").exists()
    finally:
        subprocess.run(["umount", "-l", str(workdir)], capture_output=True)
