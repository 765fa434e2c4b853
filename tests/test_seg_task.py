"""Segmentation task: regimes, evaluation from exact counts (1 vs 8 devices), loading a trained model."""
import json
import pathlib

import jax
import numpy as np
import pytest

from polypjax import configlib, parallel, tasks
from polypjax.data import export, phantom
from polypjax.experiments import segmenter_inference
from polypjax.train import seg_eval, segmentation

ROOT = pathlib.Path(__file__).resolve().parent.parent


def seg_config(**data):
    c = configlib.load_config("segmentation", "cpu")
    c.data.image_size = 32
    c.data.batch_size = 8
    c.data.phantom_train_examples = 24
    c.data.phantom_test_examples = 10
    c.data.test = "phantom-a,phantom-b"
    c.model.kwargs = {"features": (8, 16)}
    c.train.num_steps = 6
    c.train.checkpoint_every = 3
    c.train.log_every = 3
    c.optim.warmup_steps = 1
    c.data.update(data)
    return c


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    src = phantom.PhantomSource("phantom-c", num_examples=12, size=32, seed=5)
    export.write_source(src, out, progress=False)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from polypjax import main
    workdir = tmp_path_factory.mktemp("seg_run")
    main.run(seg_config(), str(workdir))
    return workdir


def test_task_writes_results_per_test_set(trained):
    results = json.loads((trained / "results.json").read_text())
    assert set(results["test"]) == {"phantom-a@test", "phantom-b@test"}
    for name, r in results["test"].items():
        assert r["num_images"] == 10 and 0.0 <= r["mDice"] <= 1.0 and 0.0 <= r["iou"] <= r["dice"] <= 1.0
        assert (trained / "eval" / f"{name.replace('@', '-')}_overlays.png").exists()
        assert "per_image" not in r and len(json.loads(seg_eval.per_image_path(trained / "eval", name)
                                                        .read_text())["dice"]) == 10
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/phantom-b@test/mDice" in r for r in records)


def test_load_segmenter_predicts_like_the_task(trained):
    predict = segmenter_inference.load_segmenter(trained)
    assert predict.image_size == 32
    src = phantom.PhantomSource("phantom-a", num_examples=10, size=32, split="test")
    images = np.stack([src[i]["image"] for i in range(4)])
    logits = np.asarray(predict(images))
    assert logits.shape == (4, 32, 32, 1) and np.isfinite(logits).all()
    # The same logits as the task's own evaluation function on the same checkpoint.
    import orbax.checkpoint as ocp
    task = segmentation.SegmentationTask(tasks.resolve(seg_config()), trained)
    mngr = ocp.CheckpointManager((trained / "checkpoints").absolute(), item_names=("state", "data"))
    state = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
    batch = {"image": images, "mask": np.zeros(images.shape[:3], np.uint8)}
    host = jax.device_get({"params": state["params"], "model_state": state["model_state"]})
    want = task.predict_fn(parallel.make_mesh(1, 1))(host["params"], host["model_state"], batch)
    np.testing.assert_allclose(logits, np.asarray(want), rtol=1e-5, atol=1e-5)
    with pytest.raises(configlib.ConfigError, match="no config.json"):
        segmenter_inference.load_segmenter(trained / "eval")


def test_a_run_from_before_model_conv_loads_and_resumes(trained, tmp_path):
    """A config.json written before `model.conv` existed: load_segmenter builds the model with the
    default (auto), and the run resumes under today's config (the field may change on resume)."""
    import shutil

    from polypjax import main
    old = tmp_path / "old_run"
    shutil.copytree(trained, old, ignore=shutil.ignore_patterns(".run.lock"))
    stored = json.loads((old / "config.json").read_text())
    del stored["model"]["conv"]
    (old / "config.json").write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
    images = np.stack([phantom.PhantomSource("phantom-a", num_examples=4, size=32, split="test")[i]["image"]
                       for i in range(4)])
    np.testing.assert_allclose(segmenter_inference.load_segmenter(old)(images),
                               segmenter_inference.load_segmenter(trained)(images), rtol=1e-5, atol=1e-5)
    c = seg_config()
    c.model.conv = "xla"
    main.run(c, str(old))  # all 6 steps are done: resumes at the end and evaluates again
    assert json.loads((old / "config.json").read_text())["model"]["conv"] == "xla"


def test_metrics_identical_on_one_and_eight_devices(trained):
    config = tasks.resolve(seg_config())
    task = segmentation.SegmentationTask(config, trained)
    import orbax.checkpoint as ocp
    mngr = ocp.CheckpointManager((trained / "checkpoints").absolute(), item_names=("state", "data"))
    state = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
    out = {}
    for data in (1, -1):
        c = seg_config()
        c.mesh.data = data
        c.data.eval_batch_size = 8  # 10 examples: an uneven, padded last batch
        c = tasks.resolve(c)
        out[data] = seg_eval.evaluate_sets(task.predict_fn, state["params"], state["model_state"],
                                               task.test_sources, c, trained / f"eval_{data}", 6)
    assert jax.device_count() == 8
    for name, source in task.test_sources.items():
        a, b = out[1][name], out[-1][name]
        assert a["num_images"] == b["num_images"] == 10
        for k in ("dice", "iou", "mDice", "mIoU"):
            assert a[k] == pytest.approx(b[k], abs=1e-6), (name, k)
        # Per image: source order, padding dropped, the same on both meshes, averaging to mDice/mIoU.
        rows = json.loads(seg_eval.per_image_path(trained / "eval_-1", name).read_text())
        assert {k: rows[k] for k in a["per_image"]} == b["per_image"]
        assert rows["id"] == [source[i]["id"] for i in range(10)]
        for k in ("tp", "pred_sum", "true_sum", "id", "empty_mask"):
            assert a["per_image"][k] == b["per_image"][k], (name, k)
        np.testing.assert_allclose(a["per_image"]["dice"], b["per_image"]["dice"], rtol=0, atol=1e-7)
        assert np.mean(b["per_image"]["dice"]) == pytest.approx(b["mDice"], abs=1e-6)
        assert np.mean(b["per_image"]["iou"]) == pytest.approx(b["mIoU"], abs=1e-6)
        tp, pred, true = (np.array(b["per_image"][k]) for k in ("tp", "pred_sum", "true_sum"))
        assert b["dice"] == pytest.approx(2 * tp.sum() / (pred.sum() + true.sum()), abs=1e-12)


@pytest.mark.parametrize("kind,expected", [("mixed", 0.25), ("replace", 0.4)])
def test_regimes_draw_the_configured_proportions(synthetic_dir, kind, expected):
    c = seg_config(synthetic=str(synthetic_dir))
    c.regime.kind = kind
    c.regime.synthetic_fraction = 0.25
    c.regime.alpha = 0.4
    c.data.batch_size = 20
    c = tasks.resolve(c)
    task = segmentation.SegmentationTask(c, "/tmp/unused")
    it = iter(task.train_iterator())
    # phantom-c frames (the "synthetic" set) are cooler/bluer than phantom-a: classify by colour.
    fractions = []
    for _ in range(10):
        b = next(it)["image"].astype(float)
        fractions.extend(b[..., 2].mean(axis=(1, 2)) / (b[..., 0].mean(axis=(1, 2)) + 1) > 0.6)
    assert abs(np.mean(fractions) - expected) < 0.1


def test_subset_and_regime_errors(synthetic_dir):
    c = seg_config()
    c.regime.real_subset = 5
    task = segmentation.SegmentationTask(tasks.resolve(c), "/tmp/unused")
    assert len(task.train_sources[0]) == 5
    c = seg_config()
    c.regime.kind = "synthetic"
    with pytest.raises(configlib.ConfigError, match="needs config.data.synthetic"):
        tasks.resolve(c)
    c = seg_config()
    c.model.name = "segformer"
    with pytest.raises(configlib.ConfigError, match="model.name='segformer' is unknown"):
        tasks.resolve(c)
    c = seg_config(synthetic=str(synthetic_dir))
    c.regime.kind = "replace"
    c.regime.alpha = 1.5
    with pytest.raises(configlib.ConfigError, match="alpha must be a probability"):
        tasks.resolve(c)


def test_bce_dice_loss_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 8, 8, 1)).astype(np.float32)
    masks = (rng.random((3, 8, 8, 1)) > 0.6).astype(np.float32)
    loss, parts = segmentation.bce_dice_loss(logits, masks)
    p = 1 / (1 + np.exp(-logits))
    bce = np.mean(-(masks * np.log(p) + (1 - masks) * np.log(1 - p)))
    dice = (2 * (p * masks).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + masks.sum((1, 2, 3)) + 1)
    assert float(parts["bce"]) == pytest.approx(bce, rel=1e-5)
    assert float(loss) == pytest.approx(bce + np.mean(1 - dice), rel=1e-5)
