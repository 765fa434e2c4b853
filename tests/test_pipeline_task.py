"""The pipeline task end to end in miniature (configs/pipeline.py:mini): every stage runs, the
report's tables and CSV agree with the stages' own results, a pipeline killed inside a stage resumes
there and skips the finished ones, and a changed generation config reruns that stage and the ones
that read its pairs, nothing else."""
import csv
import json
import os
import pathlib
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


def test_paired_table_comes_first_and_matches_the_per_image_files(finished):
    """Every segmenter's per-image file averages to its mDice; the report's first table (and
    paired.csv) recomputed for one low-data candidate, which pairs with the real run at its own N."""
    import numpy as np
    from scipy import stats
    workdir, _ = finished
    per_image = {}
    for rel in (s for s in STAGES if s.startswith("segmentation/")):
        results = json.loads((workdir / rel / "results.json").read_text())["test"]
        for test_set, r in results.items():
            rec = json.loads((workdir / rel / "eval" / f"{test_set.replace('@', '-')}_per_image.json").read_text())
            assert rec["test_set"] == test_set and len(rec["id"]) == r["num_images"]
            assert np.mean(rec["dice"]) == pytest.approx(r["mDice"], abs=1e-6), (rel, test_set)
            per_image[rel, test_set] = rec
    report = workdir / "report"
    with open(report / "paired.csv") as f:
        rows = list(csv.DictReader(f))
    # 4 synthetic candidates (2 sets x full and N=6) x 2 test sets, against the one baseline run: real.
    assert len(rows) == 8 and {r["baseline"] for r in rows} == {"real"}
    row = next(r for r in rows if (r["generator"], r["N"], r["test_set"]) == ("joint-inpaint", "6", "phantom-b@test"))
    cand = per_image["segmentation/joint-inpaint/unet/mixed/6/0", "phantom-b@test"]
    base = per_image["segmentation/none/unet/real/6/0", "phantom-b@test"]
    assert cand["id"] == base["id"]
    keep = ~np.array(base["empty_mask"])
    c, b = np.array(cand["dice"])[keep], np.array(base["dice"])[keep]
    diffs = c - b
    assert int(row["num_images"]) == keep.sum() and int(row["num_empty_excluded"]) == (~keep).sum()
    assert float(row["mean"]) == pytest.approx(diffs.mean(), abs=1e-12)
    assert float(row["std"]) == 0.0 and row["seeds"] == "1" and json.loads(row["per_seed"]) == {"0": pytest.approx(diffs.mean())}
    lo, hi = float(row["ci_low"]), float(row["ci_high"])
    ref = stats.bootstrap((c, b), lambda x, y, axis: np.mean(x - y, axis=axis), paired=True, vectorized=True,
                          method="percentile", n_resamples=2000, rng=np.random.default_rng(3)).confidence_interval
    se = diffs.std(ddof=1) / np.sqrt(len(diffs))
    assert lo == pytest.approx(ref.low, abs=0.5 * se) and hi == pytest.approx(ref.high, abs=0.5 * se)
    assert row["verdict"] == ("gain" if lo > 0 else "loss" if hi < 0 else "no significant difference")
    if keep.all():  # no image left out: the paired mean is the mDice difference of results.csv
        with open(report / "results.csv") as f:
            mdice = {(r["generator"], r["regime"], r["N"]): float(r["mDice"]) for r in csv.DictReader(f)
                     if r["test_set"] == "phantom-b@test"}
        assert diffs.mean() == pytest.approx(mdice["joint-inpaint", "mixed", "6"] - mdice["none", "real", "6"], abs=1e-6)

    md = (report / "report.md").read_text()
    first_section = next(line for line in md.splitlines() if line.startswith("## "))
    assert first_section.startswith("## Did the synthetic pairs help?")
    first_table = next(line for line in md.splitlines() if line.startswith("| "))
    assert first_table.startswith("| synthetic set | regime | protocol | N real |")
    cell = f"{diffs.mean():+.3f} ± 0.000 [{lo:+.3f}, {hi:+.3f}] {row['verdict']}"
    assert f"| joint-inpaint | mixed | paper | 6 | unet | phantom-b@test | 1 | {keep.sum()} ({(~keep).sum()}) | {cell} |" in md
    html = (report / "report.html").read_text()
    assert html.index("Did the synthetic pairs help?") < html.index("Generation metrics") and cell in html


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
