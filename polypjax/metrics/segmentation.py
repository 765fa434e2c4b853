"""Binary segmentation metrics: Dice and IoU, per image and dataset-level, as a clu metric.

A pixel is predicted foreground when its probability is > ``threshold`` (0.5 by default, i.e.
logit > 0) and is ground-truth foreground when its mask value is > 0.5 (masks are {0, 1}).

Empty-mask convention (``empty="one"``, used by ``SegmentationMetrics``): an image whose prediction
and ground truth are both empty scores Dice = IoU = 1.0, since the prediction is exactly right. This
matches smp's ``zero_division=1.0`` default and the ``(2|A∩B| + 1) / (|A| + |B| + 1)`` smoothing of
the PraNet evaluation scripts in that case. A non-empty prediction on an empty ground truth (or the
reverse) scores 0.0, which follows from the formula. ``empty="zero"`` scores both-empty as 0.0.
A comparison between runs (metrics/paired.py) leaves images with an empty ground truth out, so such
a "success" never decides which run is better.

Two summaries, both reported by ``SegmentationMetrics.compute()``:
  * ``mDice`` / ``mIoU``: mean over images of the per-image scores (the polyp literature's numbers).
  * ``dice`` / ``iou``: from tp / pred / true / union summed over the whole dataset.
Batches are merged by summing, never by averaging batch averages, so the result depends neither on
batch size nor on padding nor on how the batch is sharded over devices.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics

COUNT_KEYS = ("tp", "pred_sum", "true_sum", "union")

# Dataset-level counts are kept exact as two int32 limbs, value = hi * 2**16 + lo with 0 <= lo < 2**16,
# because JAX has no int64 without x64 and a plain int32 sum overflows at ~2**31 pixels (about a
# thousand full-resolution Kvasir images). Per-batch limb sums stay in int32 up to 32768 images a batch.
_LIMB_BITS = 16
_LIMB_MASK = (1 << _LIMB_BITS) - 1


def _flatten_per_image(x: jax.Array, n: int) -> jax.Array:
    return jnp.reshape(x, (n, -1))


def confusion_counts(
    logits_or_probs: jax.Array,
    masks: jax.Array,
    valid: jax.Array | None = None,
    *,
    from_logits: bool = True,
    threshold: float = 0.5,
) -> dict[str, jax.Array]:
    """Per-image pixel counts for binary segmentation.

    Args:
      logits_or_probs: [N, H, W] or [N, H, W, 1] logits (``from_logits=True``) or probabilities.
      masks: ground truth with the same number of pixels per image, values in {0, 1}.
      valid: optional [N] bool; False marks padding examples, whose counts are all zero.
      threshold: probability threshold; with logits it is applied as ``logit > log(t / (1 - t))``.

    Returns:
      {"tp", "pred_sum", "true_sum", "union"}: int32 [N]; plus "valid": bool [N].
    """
    n = logits_or_probs.shape[0]
    if masks.shape[0] != n or masks.size != logits_or_probs.size:
        raise ValueError(
            f"predictions {logits_or_probs.shape} and masks {masks.shape} must hold the same images"
        )
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    scores = _flatten_per_image(logits_or_probs, n)
    cut = math.log(threshold / (1.0 - threshold)) if from_logits else threshold
    pred = scores > cut
    true = _flatten_per_image(masks, n) > 0.5
    if valid is None:
        valid = jnp.ones((n,), bool)
    valid = jnp.asarray(valid, bool).reshape(n)
    keep = valid[:, None]
    pred, true = pred & keep, true & keep
    tp = jnp.sum(pred & true, axis=1, dtype=jnp.int32)
    pred_sum = jnp.sum(pred, axis=1, dtype=jnp.int32)
    true_sum = jnp.sum(true, axis=1, dtype=jnp.int32)
    return {"tp": tp, "pred_sum": pred_sum, "true_sum": true_sum, "union": pred_sum + true_sum - tp,
            "valid": valid}


def _ratio(num, den, empty_value):
    # jnp.where evaluates both branches, so the division is guarded against 0/0 before selecting.
    safe = jnp.where(den > 0, den, 1)
    return jnp.where(den > 0, num / safe, empty_value)


def per_image_scores(counts: dict[str, jax.Array], empty: str = "one") -> tuple[jax.Array, jax.Array]:
    """(dice [N], iou [N]) in float32 from ``confusion_counts``; see the module doc for ``empty``.

    Padding examples (valid False) have zero counts and so score like both-empty images; callers
    averaging these must exclude them, as ``SegmentationMetrics`` does.
    """
    if empty not in ("one", "zero"):
        raise ValueError(f'empty must be "one" or "zero", got {empty!r}')
    empty_value = 1.0 if empty == "one" else 0.0
    tp = counts["tp"].astype(jnp.float32)
    dice = _ratio(2.0 * tp, (counts["pred_sum"] + counts["true_sum"]).astype(jnp.float32), empty_value)
    iou = _ratio(tp, counts["union"].astype(jnp.float32), empty_value)
    return dice, iou


def _split(total: jax.Array) -> tuple[jax.Array, jax.Array]:
    return total >> _LIMB_BITS, total & _LIMB_MASK


@flax.struct.dataclass
class SegmentationMetrics(metrics.Metric):
    """Dice / IoU accumulator (clu ``Metric``): jit-safe, exact counts, mergeable across batches/devices.

    Fields: per-image score sums in float32 (so mDice/mIoU carry float32 summation error, ~1e-7
    relative, and differ in the last bits between shardings); the number of valid images and the
    dataset-level counts (order of ``COUNT_KEYS``) as exact int32 limbs.

    ``from_model_output`` and ``merge`` run under jit; ``compute`` runs on the host (it converts to
    int64 numpy) after the eval loop, and returns plain Python numbers.
    """

    dice_sum: jax.Array
    iou_sum: jax.Array
    num_images: jax.Array
    counts_hi: jax.Array  # int32 [4]
    counts_lo: jax.Array  # int32 [4], in [0, 2**16)

    @classmethod
    def empty(cls) -> "SegmentationMetrics":
        zeros = jnp.zeros((len(COUNT_KEYS),), jnp.int32)
        return cls(jnp.float32(0), jnp.float32(0), jnp.int32(0), zeros, zeros)

    @classmethod
    def from_model_output(
        cls, logits: jax.Array, masks: jax.Array, valid: jax.Array | None = None, *,
        from_logits: bool = True, threshold: float = 0.5, empty: str = "one", **_,
    ) -> "SegmentationMetrics":
        return cls.from_counts(confusion_counts(logits, masks, valid, from_logits=from_logits, threshold=threshold),
                               empty=empty)

    @classmethod
    def from_counts(cls, counts: dict[str, jax.Array], empty: str = "one") -> "SegmentationMetrics":
        """The metric of one batch from its ``confusion_counts``."""
        dice, iou = per_image_scores(counts, empty=empty)
        valid = counts["valid"]
        per_image = jnp.stack([counts[k] for k in COUNT_KEYS])  # [4, N]
        # Split per image before summing so no int32 sum can overflow (see _LIMB_BITS).
        hi, lo = _split(per_image)
        return cls._normalised(
            dice_sum=jnp.sum(jnp.where(valid, dice, 0.0)),
            iou_sum=jnp.sum(jnp.where(valid, iou, 0.0)),
            num_images=jnp.sum(valid, dtype=jnp.int32),
            counts_hi=jnp.sum(hi, axis=1, dtype=jnp.int32),
            counts_lo=jnp.sum(lo, axis=1, dtype=jnp.int32),
        )

    @classmethod
    def _normalised(cls, counts_hi, counts_lo, **kw) -> "SegmentationMetrics":
        carry, lo = _split(counts_lo)
        return cls(counts_hi=counts_hi + carry, counts_lo=lo, **kw)

    def merge(self, other: "SegmentationMetrics") -> "SegmentationMetrics":
        return type(self)._normalised(
            dice_sum=self.dice_sum + other.dice_sum,
            iou_sum=self.iou_sum + other.iou_sum,
            num_images=self.num_images + other.num_images,
            counts_hi=self.counts_hi + other.counts_hi,
            counts_lo=self.counts_lo + other.counts_lo,
        )

    def totals(self) -> dict[str, int]:
        """Exact dataset-level counts as Python ints (host side)."""
        hi = np.asarray(self.counts_hi, np.int64)
        lo = np.asarray(self.counts_lo, np.int64)
        return {k: int(v) for k, v in zip(COUNT_KEYS, (hi << _LIMB_BITS) + lo)}

    def compute(self) -> dict[str, Any]:
        """{"mDice", "mIoU", "dice", "iou", "num_images"}; NaN means when no valid image was seen."""
        n = int(self.num_images)
        t = self.totals()
        den_dice = t["pred_sum"] + t["true_sum"]
        return {
            "mDice": float(self.dice_sum) / n if n else float("nan"),
            "mIoU": float(self.iou_sum) / n if n else float("nan"),
            "dice": 2.0 * t["tp"] / den_dice if den_dice else 1.0,
            "iou": t["tp"] / t["union"] if t["union"] else 1.0,
            "num_images": n,
        }


def accumulate(
    metric: SegmentationMetrics | None, logits, masks, valid=None, *, from_logits: bool = True,
    threshold: float = 0.5, empty: str = "one",
) -> SegmentationMetrics:
    """Eval-loop step: ``metric`` (None to start) merged with one batch's metric, as one compiled
    program (run op by op, the two dozen small array ops each compile on first use: seconds per run).
    ``empty``: how an image whose prediction and mask are both empty scores (module doc)."""
    return accumulate_per_image(metric, logits, masks, valid, from_logits=from_logits, threshold=threshold,
                                empty=empty)[0]


PER_IMAGE_KEYS = ("tp", "pred_sum", "true_sum", "dice", "iou")


def accumulate_per_image(
    metric: SegmentationMetrics | None, logits, masks, valid=None, *, from_logits: bool = True,
    threshold: float = 0.5, empty: str = "one",
) -> tuple[SegmentationMetrics, dict[str, jax.Array]]:
    """``accumulate``, and the batch's per-image counts and scores ({``PER_IMAGE_KEYS``: [N]}, padding
    rows included: the caller drops them), from the same compiled program. The scores are the ones
    mDice / mIoU average (``empty="one"`` unless told)."""
    if valid is None:
        valid = np.ones((np.shape(logits)[0],), bool)
    return _accumulate(SegmentationMetrics.empty() if metric is None else metric, logits, masks, valid,
                       from_logits=from_logits, threshold=threshold, empty=empty)


@functools.partial(jax.jit, static_argnames=("from_logits", "threshold", "empty"))
def _accumulate(metric, logits, masks, valid, *, from_logits, threshold, empty):
    counts = confusion_counts(logits, masks, valid, from_logits=from_logits, threshold=threshold)
    dice, iou = per_image_scores(counts, empty=empty)  # XLA computes these once with from_counts's
    per_image = {"tp": counts["tp"], "pred_sum": counts["pred_sum"], "true_sum": counts["true_sum"],
                 "dice": dice, "iou": iou}
    return metric.merge(SegmentationMetrics.from_counts(counts, empty=empty)), per_image
