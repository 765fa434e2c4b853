"""Task `train_segmentation`: train a segmenter in one data regime and score it on every test set.

Writes checkpoints, metrics (TensorBoard / metrics.jsonl), `eval/<test set>.json` with per-image
mDice/mIoU and dataset-level Dice/IoU, `eval/<test set>_per_image.json` with each image's id, counts
and scores (seg_eval.py), overlay PNGs, and `results.json` with the final figures of this run's test
sets (`data.test`).
"""
from __future__ import annotations

import json
import pathlib

import jax

from polypjax.data.catalog import split_specs
from polypjax.data import export
from polypjax.train import loop
from polypjax.train import segmentation


def validate(config) -> None:
    segmentation.validate(config)


def data_sources(config) -> list[tuple[str, str, str]]:
    """(config field, spec, default split) of every source the run reads (checked before it starts)."""
    d = config.data
    out = [] if config.regime.kind == "synthetic" else [("data.train", d.train, "train")]
    if d.synthetic:
        out.append(("data.synthetic", d.synthetic, "all"))
    return out + [("data.test", spec, "test") for spec in split_specs(d.test)]


def exposure(config, task) -> dict:
    """What the run's training stream held and how many real images it showed: the numbers a
    low-data or exposure-matched comparison rests on (the stream mixes in exact proportions)."""
    kind, sources_, weights = config.regime.kind, task.train_sources, task.weights
    real = None if kind == "synthetic" else sources_[0]
    synthetic = task.replace_source if kind == "replace" else sources_[-1] if kind in ("synthetic", "mixed") else None
    share = {"synthetic": 0.0, "replace": 1.0 - float(config.regime.alpha)}.get(kind, 1.0)
    if kind == "mixed":
        share = float(weights[0]) / float(sum(weights))
    seen = int(config.train.num_steps) * int(config.data.batch_size)
    return {"real_pairs": None if real is None else len(real),
            "synthetic_pairs": None if synthetic is None else len(synthetic),
            "images_seen": seen, "real_images_seen": int(round(seen * share))}


def run(config, workdir: pathlib.Path) -> dict:
    task = segmentation.SegmentationTask(config, workdir)
    loop.train(task, config, workdir)
    # The final evaluation of this run, never eval/*.json files an earlier run left for other test sets.
    results = task.last_results
    if jax.process_index() == 0:
        summary = {"model": config.model.name, "regime": config.regime.kind, "train": config.data.train,
                   "synthetic": config.data.synthetic, "num_steps": config.train.num_steps,
                   "exposure": exposure(config, task),
                   "test": {name: {k: v for k, v in r.items() if k != "per_image"} for name, r in results.items()}}
        export.atomic_write_text(pathlib.Path(workdir) / "results.json", json.dumps(summary, indent=2) + "\n")
        for name, r in results.items():
            print(f"{name}: mDice {r['mDice']:.4f}  mIoU {r['mIoU']:.4f}  dice {r['dice']:.4f}  "
                  f"iou {r['iou']:.4f}  ({r['num_images']} images)")
    return results
