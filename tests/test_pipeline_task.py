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
# In the order they run. At N = 6 (the low-data sweep, paper protocol) the full-data generator makes
# its own r x N sets, painting into frames of the N only.
STAGES = ["generators/joint", "generated/joint", "generated/joint-inpaint", JUDGE, "evaluation/joint",
          "evaluation/joint-inpaint", "segmentation/joint/unet/mixed/all/0",
          "segmentation/joint-inpaint/unet/mixed/all/0", "generated/joint-N6-paper",
          "generated/joint-inpaint-N6-paper", "segmentation/none/unet/real/6/0",
          "segmentation/joint-N6-paper/unet/mixed/6/0", "segmentation/joint-inpaint-N6-paper/unet/mixed/6/0"]
KILLED = STAGES[-1]
# The stages an inpaint-only setting reaches: those synthetic sets, their metrics and their segmenters.
READS_INPAINT = ("generated/joint-inpaint", "evaluation/joint-inpaint",
                 "segmentation/joint-inpaint/unet/mixed/all/0", "generated/joint-inpaint-N6-paper", KILLED)

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
    # The inpainted set is also scored on its painted regions; the sampled one has none ("–").
    assert gen["segmenter_features"]["regions"] is None
    painted = json.loads((workdir / "evaluation/joint-inpaint/generation_metrics.json").read_text())
    region = painted["generated"][0]["segmenter_features"]["regions"]
    bounds = painted["segmenter_feature_baselines"]["regions"]
    gen_rows = {line.split("|")[1].strip(): line for line in md.splitlines()  # by their painted-area cell
                if "(rest real) |" in line or "| whole frame |" in line}
    assert gen_rows["joint-inpaint"].endswith(
        f"| {region['fd']:.3f} ({bounds['real_vs_real']['fd']:.3f} / {bounds['noise']['fd']:.3f}) | "
        f"{max(region['colour']['mean_abs_error']):.1f} |")
    assert gen_rows["joint"].endswith("| – | – |")
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
    row = next(r for r in rows if (r["generator"], r["N"], r["test_set"]) == ("joint-inpaint-N6-paper", "6",
                                                                              "phantom-b@test"))
    cand = per_image["segmentation/joint-inpaint-N6-paper/unet/mixed/6/0", "phantom-b@test"]
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
        assert diffs.mean() == pytest.approx(mdice["joint-inpaint-N6-paper", "mixed", "6"] - mdice["none", "real", "6"],
                                             abs=1e-6)

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


def test_low_data_runs_see_only_their_n_real_pairs_and_full_real_exposure(finished):
    """At N the segmenter trains on exactly the N subset pairs (not a hash split of them), every
    frame painted into comes from the N, both synthetic sets hold r x N pairs, and a mixed run sees
    as many real images as its real-only reference (its step count grows instead)."""
    from polypjax.data.sources import FolderSource
    workdir, _ = finished
    subset = FolderSource(workdir / "data/subsets/N6")
    subset_ids = {subset[i]["id"] for i in range(len(subset))}
    assert len(subset_ids) == 6
    real = json.loads((workdir / "segmentation/none/unet/real/6/0/results.json").read_text())
    assert real["exposure"]["real_pairs"] == 6 and real["train"].endswith("@all")
    for name in ("joint-N6-paper", "joint-inpaint-N6-paper"):
        folder = workdir / "generated" / name
        records = [json.loads(line) for m in sorted(folder.glob("manifest*.jsonl")) for line in m.read_text().splitlines()]
        assert len(records) == 6, name  # r = 1: one synthetic pair per real pair
        if "inpaint" in name:
            assert {r["source_id"] for r in records} <= subset_ids  # no frame from outside the N
        mixed = json.loads((workdir / f"segmentation/{name}/unet/mixed/6/0/results.json").read_text())
        assert mixed["exposure"]["real_pairs"] == 6 and mixed["exposure"]["synthetic_pairs"] == 6
        assert mixed["exposure"]["real_images_seen"] == real["exposure"]["real_images_seen"]
        assert mixed["num_steps"] == 2 * real["num_steps"]
    full_real = json.loads((workdir / JUDGE / "results.json").read_text())["exposure"]
    full_mixed = json.loads((workdir / "segmentation/joint/unet/mixed/all/0/results.json").read_text())["exposure"]
    assert full_mixed["real_images_seen"] == full_real["real_images_seen"] and full_real["real_pairs"] == 12


def test_compute_counts_unet_calls_and_report_reads_label_mdice_against_held_out_real(finished):
    import numpy as np
    from polypjax.diffusion import samplers
    workdir, _ = finished
    inpaint = json.loads((workdir / "generated/joint-inpaint/generation.json").read_text())
    p = _stage(workdir, "generated/joint-inpaint")["config"]["generate"]["inpaint"]  # an earlier test changes it
    calls = int((np.diff(samplers.repaint_times(p["steps"], p["jump_length"], p["jump_n_sample"])) < 0).sum())
    assert inpaint["unet_calls_per_pair"] == calls
    assert _stage(workdir, "generated/joint-inpaint")["compute"]["steps"] == 12 * calls
    sample = json.loads((workdir / "generated/joint/generation.json").read_text())
    assert _stage(workdir, "generated/joint")["compute"]["steps"] == 12 * sample["unet_calls_per_pair"]
    md = (workdir / "report" / "report.md").read_text()
    judged = json.loads((workdir / JUDGE / "results.json").read_text())["test"]["phantom-a@test"]["mDice"]
    assert f"| {judged:.3f} (phantom-a@test) |" in md
    assert "| whole frame |" in md and "(rest real) |" in md


def test_validation_pairs_set_step_counts_and_stay_out_of_training(tmp_path):
    """segmentation.validation: a fixed share of the real pairs is set aside; one real-only run per
    N on it sets that N's step count (plateau), the mixed run trains for the exposure-matched count,
    and no segmenter, subset or generation stage reads the validation pairs."""
    from polypjax.data.sources import FolderSource
    from polypjax.experiments import pipeline
    workdir = tmp_path / "run"
    _run(workdir, "--config.generate.modes=('sample',)", "--config.segmentation.validation.fraction=0.25",
         "--config.segmentation.validation.max_steps=6", "--config.segmentation.validation.eval_every=2")
    ids = {name: {p["id"] for p in (lambda f: [f[i] for i in range(len(f))])(FolderSource(workdir / "data" / name))}
           for name in ("validation", "pool", "subsets/N6")}
    assert len(ids["validation"]) == 3 and len(ids["pool"]) == 9 and not ids["validation"] & ids["pool"]
    assert ids["subsets/N6"] <= ids["pool"]
    for n in ("all", "6"):
        plateau = _stage(workdir, f"segmentation/plateau/unet/{n}")
        assert plateau["config"]["data"]["test"] == f"{workdir / 'data' / 'validation'}@all"
        curve = pipeline.validation_curve(workdir / f"segmentation/plateau/unet/{n}", "validation@all")
        assert [s for s, _ in curve] == [2, 4, 6]
        chosen = pipeline.plateau_step(curve, 0.01)
        real = json.loads((workdir / f"segmentation/none/unet/real/{n}/0/results.json").read_text())
        assert real["num_steps"] == chosen and real["train"].endswith("@all")
        generator = "joint" if n == "all" else "joint-N6-paper"
        mixed = json.loads((workdir / f"segmentation/{generator}/unet/mixed/{n}/0/results.json").read_text())
        assert mixed["num_steps"] == pipeline.exposure_steps(chosen, 0.5, "matched")
        assert mixed["exposure"]["real_images_seen"] == real["exposure"]["real_images_seen"]
    for stage in (workdir / "segmentation").glob("*/unet/*/*/*/stage.json"):
        train = json.loads(stage.read_text())["config"]["data"]["train"]
        assert "data/validation" not in train and train.endswith("@all"), stage
    assert len(FolderSource(workdir / "generated/joint")) == 9  # multiple x the pool
    md = (workdir / "report" / "report.md").read_text()
    assert "## Step counts from the real-only validation curve" in md
    assert (workdir / "report" / "figures" / "plateau.png").exists()


def test_plateau_step_is_the_first_within_tolerance():
    from polypjax.experiments import pipeline
    curve = [(50, 0.40), (100, 0.61), (150, 0.655), (200, 0.66), (250, 0.64)]
    assert pipeline.plateau_step(curve, 0.01) == 150
    assert pipeline.plateau_step(curve, 0.0) == 200
    assert pipeline.plateau_step(curve, 0.3) == 50


def test_a_folder_made_elsewhere_is_judged_like_a_generator(tmp_path):
    """generators.<name>.folder: no training or generation stage; the set is checked, measured and
    compared under the same rules (at N, a seeded r x N share of it)."""
    from polypjax.data import export, phantom
    from polypjax.data.sources import FolderSource
    made = tmp_path / "made_elsewhere"
    export.write_source(phantom.PhantomSource("phantom-c", num_examples=20, size=32, seed=3), made, progress=False)
    workdir = tmp_path / "run"
    script = f"""
from polypjax import configlib, main
c = configlib.load_config("pipeline", "mini")
c.generators = {{"elsewhere": {{"folder": {str(made)!r}}}}}
c.segmentation.augmented_copies = True
c.segmentation.regimes = ("real", "copy_paste+aug", "mixed", "mixed+aug")
main.run(c, {str(workdir)!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (workdir / "generators").exists() and not (workdir / "generated").exists()
    assert _stage(workdir, "evaluation/elsewhere")["status"] == "done"
    full = json.loads((workdir / "segmentation/elsewhere/unet/mixed/all/0/results.json").read_text())
    assert full["synthetic"] == str(made) and full["exposure"]["synthetic_pairs"] == 20
    low = json.loads((workdir / "segmentation/elsewhere-N6-paper/unet/mixed/6/0/results.json").read_text())
    share = FolderSource(workdir / "data/folder_shares/elsewhere-6")
    assert low["exposure"]["synthetic_pairs"] == len(share) == 6
    source_ids = {FolderSource(made)[i]["id"] for i in range(20)}
    assert {share[i]["id"] for i in range(6)} <= source_ids
    md = (workdir / "report" / "report.md").read_text()
    assert "| elsewhere |" in md
    # The augmented-copies baseline at the sets' count: 1 x the 12 real pairs, and r x N at N = 6.
    full_copies = json.loads((workdir / "segmentation/augmented_copies/unet/mixed/all/0/results.json").read_text())
    low_copies = json.loads((workdir / "segmentation/augmented_copies-N6/unet/mixed/6/0/results.json").read_text())
    assert full_copies["exposure"]["synthetic_pairs"] == 12 and low_copies["exposure"]["synthetic_pairs"] == 6
    assert low_copies["num_steps"] == low["num_steps"]  # the same exposure as the set it is compared with
    subset_ids = {p["id"] for p in (lambda f: [f[i] for i in range(len(f))])(FolderSource(workdir / "data/subsets/N6"))}
    copies = FolderSource(workdir / "data/augmented_copies/N6")
    assert {copies[i]["id"].rsplit("_copy", 1)[0] for i in range(len(copies))} == subset_ids
    paired = list(csv.DictReader(open(workdir / "report" / "paired.csv")))
    assert {r["baseline"] for r in paired} >= {"real", "augmented_copies"}
    assert not any(r["generator"].startswith("augmented_copies") for r in paired)  # a baseline, not a candidate
    # "+aug": the same regime with classic augmentation on, at the exposure-matched step count.
    cp = _stage(workdir, "segmentation/none/unet/copy_paste+aug/all/0")["config"]
    assert cp["regime"]["kind"] == "copy_paste" and cp["regime"]["augment"] is True
    mixed_aug = _stage(workdir, "segmentation/elsewhere/unet/mixed+aug/all/0")["config"]
    assert mixed_aug["regime"]["kind"] == "mixed" and mixed_aug["regime"]["augment"] is True
    assert cp["train"]["num_steps"] == mixed_aug["train"]["num_steps"] == full["num_steps"]
    assert {r["baseline"] for r in paired} >= {"copy_paste+aug"} and "mixed+aug" in {r["regime"] for r in paired}


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
        # The settings the workdir was last run with (an earlier test of this file changes one), so
        # that every stage is skipped and only the report meets the full disk.
        steps = _stage(workdir, "generated/joint-inpaint")["config"]["generate"]["inpaint"]["steps"]
        same = (f"--config.generate.mode_overrides.inpaint.generate.inpaint.steps={steps}",)
        proc = subprocess.run(_command(workdir, *same), cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env=ENV)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: no space left on the disk writing {workdir / 'report'}"), last
        for rel in STAGES:
            assert f"stage {rel}: done, skipped" in proc.stdout + proc.stderr, rel
        filler.unlink()
        log = _run(workdir, *same)
        assert "stage report" in log and (workdir / "report" / "report.html").exists()
    finally:
        subprocess.run(["umount", "-l", str(workdir)], capture_output=True)
