"""Paired comparison of two segmenters on one test set: did the candidate beat the baseline?

Inputs are the per-image records that seg_eval writes (`<set>_per_image.json`: "id", "dice", "iou",
"empty_mask"), one per seed for each side; seed s of the candidate is compared with seed s of the
baseline, image by image, matched by id. Images whose ground-truth mask is empty are left out (and
counted): there a model that predicts nothing scores 1 under the mDice convention, and such a
"success" must not decide a comparison.

Returned statistics:
  * per-seed difference: mean over images of candidate - baseline, one per seed;
  * mean ± std (sample std, ddof=1; 0 with one seed) of those per-seed differences;
  * a percentile bootstrap interval over test images: each image's difference is averaged over
    seeds first, images are resampled with replacement, and the interval holds the middle `level`
    of the resampled means. Only image sampling is in it: seed-to-seed spread is the std above;
  * the verdict: "gain" when the interval lies above 0, "loss" below, otherwise "no significant
    difference" (an interval touching 0 counts as crossing it).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

GAIN, LOSS, NO_DIFFERENCE = "gain", "loss", "no significant difference"
NUM_RESAMPLES = 2000
RNG_SEED = 0
# Resampled means computed together: bounds memory at about this many int64 indices.
_CHUNK_ELEMENTS = 1 << 22


class PairingError(ValueError):
    """The runs cannot be compared image by image (different seeds or test images)."""


def _table(record: Mapping, metric: str, where: str) -> dict[str, tuple[float, bool]]:
    ids = [str(i) for i in record["id"]]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise PairingError(f"{where}: image ids repeat ({', '.join(dup[:3])}); ids must name one image each")
    scores, empty = record[metric], record["empty_mask"]
    if not len(scores) == len(empty) == len(ids):
        raise PairingError(f"{where}: {len(ids)} ids, {len(scores)} {metric} scores, {len(empty)} empty_mask flags")
    return {i: (float(s), bool(e)) for i, s, e in zip(ids, scores, empty)}


def _same_images(reference: dict, other: dict, where: str, ref_where: str) -> None:
    if reference.keys() != other.keys():
        only_ref, only_other = sorted(reference.keys() - other.keys()), sorted(other.keys() - reference.keys())
        raise PairingError(
            f"{where} and {ref_where} scored different test images: {len(only_other)} id(s) only in the first "
            f"({', '.join(only_other[:3]) or '-'}), {len(only_ref)} only in the second "
            f"({', '.join(only_ref[:3]) or '-'})")
    changed = sorted(i for i in reference if reference[i][1] != other[i][1])
    if changed:
        raise PairingError(f"{where} and {ref_where}: the ground truth of {', '.join(changed[:3])} differs "
                           f"(empty in one, not in the other)")


def bootstrap_interval(values, *, level: float = 0.95, num_resamples: int = NUM_RESAMPLES,
                       seed: int = RNG_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampled with replacement)."""
    values = np.asarray(values, np.float64)
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(num_resamples)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, num_resamples, chunk):
        stop = min(start + chunk, num_resamples)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return float(lo), float(hi)


def verdict(lo: float, hi: float) -> str:
    if lo > 0:
        return GAIN
    if hi < 0:
        return LOSS
    return NO_DIFFERENCE


def paired_difference(candidate: Mapping, baseline: Mapping, *, metric: str = "dice", level: float = 0.95,
                      num_resamples: int = NUM_RESAMPLES, seed: int = RNG_SEED) -> dict:
    """Candidate minus baseline on one test set.

    Args:
      candidate, baseline: {seed: per-image record}; both must hold the same seeds, and every record
        the same image ids (a PairingError says which differ).
      metric: the per-image score compared ("dice" or "iou").

    Returns: {"seeds", "per_seed", "mean", "std", "ci": (lo, hi), "verdict", "num_images" (compared),
    "num_empty_excluded", "level", "num_resamples"}. With no image left to compare, the figures are NaN
    and the verdict says so.
    """
    seeds = sorted(candidate)
    if not seeds or sorted(baseline) != seeds:
        raise PairingError(f"seeds differ: candidate {sorted(candidate)}, baseline {sorted(baseline)}; "
                           "each candidate seed needs the baseline run of that seed")
    tables = {(side, s): _table(runs[s], metric, f"{side} seed {s}")
              for side, runs in (("candidate", candidate), ("baseline", baseline)) for s in seeds}
    first_key = ("candidate", seeds[0])
    reference = tables[first_key]
    for key, table in tables.items():
        _same_images(reference, table, f"{key[0]} seed {key[1]}", f"{first_key[0]} seed {first_key[1]}")
    ids = sorted(i for i, (_, empty) in reference.items() if not empty)
    diffs = np.array([[tables["candidate", s][i][0] - tables["baseline", s][i][0] for i in ids] for s in seeds],
                     np.float64).reshape(len(seeds), len(ids))  # [seeds, images]
    out = {"seeds": seeds, "num_images": len(ids), "num_empty_excluded": len(reference) - len(ids),
           "level": level, "num_resamples": num_resamples}
    if not ids:
        nan = float("nan")
        return {**out, "per_seed": [nan] * len(seeds), "mean": nan, "std": nan, "ci": (nan, nan),
                "verdict": "no image with a polyp to compare"}
    per_seed = diffs.mean(axis=1)
    lo, hi = bootstrap_interval(diffs.mean(axis=0), level=level, num_resamples=num_resamples, seed=seed)
    return {**out, "per_seed": [float(v) for v in per_seed], "mean": float(per_seed.mean()),
            "std": float(per_seed.std(ddof=1)) if len(seeds) > 1 else 0.0, "ci": (lo, hi),
            "verdict": verdict(lo, hi)}


def format_difference(result: dict, digits: int = 3) -> str:
    """'+0.012 ± 0.008 [-0.004, +0.027] no significant difference'."""
    if not result["num_images"]:
        return result["verdict"]
    lo, hi = result["ci"]
    return (f"{result['mean']:+.{digits}f} ± {result['std']:.{digits}f} "
            f"[{lo:+.{digits}f}, {hi:+.{digits}f}] {result['verdict']}")
