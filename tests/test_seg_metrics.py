"""Tests for polypjax.metrics.segmentation against a numpy reference, with padding and sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from polypjax.metrics.segmentation import (
    COUNT_KEYS, SegmentationMetrics, accumulate, confusion_counts, per_image_scores,
)


def _data(n=12, size=16, seed=0):
    """Random logits/masks with the three empty cases in images 0-2."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, size, size, 1)).astype(np.float32) + rng.normal(size=(n, 1, 1, 1))
    masks = (rng.random((n, size, size)) < rng.uniform(0.05, 0.6, size=(n, 1, 1))).astype(np.uint8)
    logits[0], masks[0] = -5.0, 0  # both empty
    logits[1] = -5.0  # prediction empty, ground truth not
    masks[2] = 0  # ground truth empty, prediction not
    assert masks[1].any() and (logits[2] > 0).any()
    return logits, masks


def _reference(logits, masks):
    """numpy reference: per-image (dice, iou) and dataset-level (dice, iou), both-empty = 1."""
    pred = logits.reshape(len(logits), -1) > 0
    true = masks.reshape(len(masks), -1) > 0.5
    tp = (pred & true).sum(1)
    ps, ts = pred.sum(1), true.sum(1)
    un = (pred | true).sum(1)
    dice = np.where(ps + ts > 0, 2 * tp / np.maximum(ps + ts, 1), 1.0)
    iou = np.where(un > 0, tp / np.maximum(un, 1), 1.0)
    counts = dict(tp=tp.sum(), pred_sum=ps.sum(), true_sum=ts.sum(), union=un.sum())
    return dice, iou, 2 * tp.sum() / (ps.sum() + ts.sum()), tp.sum() / un.sum(), counts


def _assert_same(result, expected, counts=None, metric=None):
    for k in ("mDice", "mIoU", "dice", "iou"):
        np.testing.assert_allclose(result[k], expected[k], rtol=1e-6, err_msg=k)
    assert result["num_images"] == expected["num_images"]
    if counts is not None:
        assert metric.totals() == {k: int(v) for k, v in counts.items()}


def test_counts_and_scores_match_numpy_with_empty_masks():
    logits, masks = _data()
    dice_ref, iou_ref, dice_ds, iou_ds, counts_ref = _reference(logits, masks)
    counts = confusion_counts(jnp.asarray(logits), jnp.asarray(masks))
    assert all(counts[k].dtype == jnp.int32 and counts[k].shape == (12,) for k in COUNT_KEYS)
    dice, iou = per_image_scores(counts)
    np.testing.assert_allclose(dice, dice_ref, rtol=1e-6)
    np.testing.assert_allclose(iou, iou_ref, rtol=1e-6)
    # The documented conventions: both empty -> 1, exactly one of them empty -> 0.
    assert dice[0] == iou[0] == 1.0
    assert dice[1] == iou[1] == dice[2] == iou[2] == 0.0
    dice0, iou0 = per_image_scores(counts, empty="zero")
    assert dice0[0] == iou0[0] == 0.0
    np.testing.assert_allclose(dice0[1:], dice_ref[1:], rtol=1e-6)

    metric = SegmentationMetrics.from_model_output(jnp.asarray(logits), jnp.asarray(masks))
    expected = dict(mDice=dice_ref.mean(), mIoU=iou_ref.mean(), dice=dice_ds, iou=iou_ds, num_images=12)
    _assert_same(metric.compute(), expected, counts_ref, metric)


def test_probabilities_and_thresholds():
    logits, masks = _data(seed=1)
    from_logits = confusion_counts(jnp.asarray(logits), masks)
    from_probs = confusion_counts(jax.nn.sigmoid(jnp.asarray(logits)), masks, from_logits=False)
    for k in COUNT_KEYS:
        np.testing.assert_array_equal(from_logits[k], from_probs[k])
    high = confusion_counts(jnp.asarray(logits), masks, threshold=0.8)
    np.testing.assert_array_equal(high["pred_sum"], (logits > np.log(4.0)).reshape(12, -1).sum(1))
    with pytest.raises(ValueError, match="same images"):
        confusion_counts(jnp.zeros((2, 8, 8, 1)), jnp.zeros((2, 8, 4)))


def test_padded_uneven_batches_merge_to_whole_set():
    logits, masks = _data(n=10, seed=2)
    whole = SegmentationMetrics.from_model_output(jnp.asarray(logits), jnp.asarray(masks))
    metric, batch_means = None, []
    for start in range(0, 10, 4):
        lg, mk = logits[start:start + 4], masks[start:start + 4]
        valid = np.arange(4) < len(lg)
        pad = 4 - len(lg)
        # Padding that would count as confident foreground if it leaked into the result.
        lg = np.concatenate([lg, np.full((pad, *lg.shape[1:]), 9.0, np.float32)])
        mk = np.concatenate([mk, np.ones((pad, *mk.shape[1:]), np.uint8)])
        metric = accumulate(metric, lg, mk, valid)
        batch_means.append(accumulate(None, lg, mk, valid).compute()["mDice"])
    assert metric.totals() == whole.totals()
    _assert_same(metric.compute(), whole.compute())
    assert metric.compute()["num_images"] == 10
    # Batches of 4, 4, 2 valid images: averaging batch averages would weight the last two images double.
    assert not np.isclose(np.mean(batch_means), whole.compute()["mDice"], rtol=1e-4)


def test_all_padding_batch_is_a_no_op():
    logits, masks = _data(n=4, seed=3)
    m = accumulate(None, logits, masks)
    padded = accumulate(m, logits, masks, np.zeros(4, bool))
    assert padded.totals() == m.totals() and padded.compute() == m.compute()
    assert SegmentationMetrics.empty().merge(m).compute() == m.compute()


def test_sharded_over_8_devices_equals_single_device():
    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py should simulate 8 CPU devices"
    logits, masks = _data(n=16, seed=4)
    valid = np.arange(16) < 13
    fn = jax.jit(SegmentationMetrics.from_model_output)
    single = fn(*jax.device_put((logits, masks, valid), devices[0]))
    sharding = NamedSharding(Mesh(np.array(devices), ("data",)), P("data"))
    sharded_inputs = jax.device_put((logits, masks, valid), sharding)
    assert len(sharded_inputs[0].sharding.device_set) == 8
    sharded = fn(*sharded_inputs)
    assert sharded.totals() == single.totals()
    assert int(sharded.num_images) == 13
    _assert_same(sharded.compute(), single.compute())


def test_reduce_over_stacked_device_metrics_equals_merge():
    # Metrics gathered per device (leading axis) are combined by clu's reduce() through merge().
    logits, masks = _data(n=8, seed=5)
    parts = [SegmentationMetrics.from_model_output(jnp.asarray(logits[i::2]), jnp.asarray(masks[i::2]))
             for i in range(2)]
    stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *parts)
    reduced = stacked.reduce()
    whole = SegmentationMetrics.from_model_output(jnp.asarray(logits), jnp.asarray(masks))
    assert reduced.totals() == whole.totals()
    _assert_same(reduced.compute(), whole.compute())


def test_dataset_counts_stay_exact_past_int32():
    # One 128x128 all-foreground image and its prediction, merged with itself 2**18 times by doubling:
    # 2**32 pixels per count, past what an int32 sum could hold.
    ones = jnp.ones((1, 128, 128, 1))
    m = SegmentationMetrics.from_model_output(ones, ones)
    for _ in range(18):
        m = m.merge(m)
    total = 128 * 128 * 2**18
    assert m.totals() == dict(tp=total, pred_sum=total, true_sum=total, union=total)
    assert m.compute()["dice"] == 1.0 and m.compute()["num_images"] == 2**18


def test_no_images_and_all_empty():
    assert np.isnan(SegmentationMetrics.empty().compute()["mDice"])
    zeros = jnp.zeros((3, 8, 8))
    result = SegmentationMetrics.from_model_output(zeros - 1.0, zeros).compute()
    assert result == dict(mDice=1.0, mIoU=1.0, dice=1.0, iou=1.0, num_images=3)


def test_usable_in_clu_collection():
    from clu import metrics

    coll = metrics.Collection.create(seg=SegmentationMetrics, loss=metrics.Average.from_output("loss"))
    ones = jnp.ones((2, 8, 8, 1))
    c = coll.single_from_model_output(logits=ones, masks=ones, loss=jnp.float32(0.3))
    c = c.merge(coll.single_from_model_output(logits=-ones, masks=ones, loss=jnp.float32(0.5)))
    seg = c.compute()["seg"]
    # Two perfect images and two empty predictions: mean of per-image 0.5, dataset Dice 2*128/(128+256).
    assert seg["mDice"] == 0.5 and seg["num_images"] == 4
    np.testing.assert_allclose(seg["dice"], 2 / 3)
