"""Dice/IoU of a segmenter on every test set: exact counts; per set one JSON, the per-image scores
(`<set>_per_image.json`) and one overlay PNG.

Per-image scores follow the metric's convention (metrics/segmentation.py): an image whose ground
truth and prediction are both empty scores 1, so the mean of a file's "dice" is the set's mDice.
Each row also says whether its ground-truth mask is empty ("empty_mask"): comparisons between runs
(metrics/paired.py) leave those images out, so a both-empty "success" never decides one.
"""
from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from polypjax import parallel
from polypjax.data import export, pipeline, visualize
from polypjax.metrics.segmentation import PER_IMAGE_KEYS, accumulate_per_image


def evaluate_sets(predict_fn_factory, params, model_state, test_sources: dict, config, out_dir: pathlib.Path,
                  step: int, num_overlays: int = 8) -> dict:
    """Dice/IoU on every test set from exact counts; JSON and overlay PNG per set."""
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    predict = predict_fn_factory(mesh)
    params, model_state = jax.device_put((params, model_state), parallel.param_shardings(mesh, (params, model_state)))
    results = {}
    for name, source in test_sources.items():
        total = None
        overlays = []
        per_image, slots = [], {"index": [], "id": []}
        for local in pipeline.eval_dataset(source, image_size=config.data.image_size,
                                           global_batch_size=config.data.eval_batch_size):
            batch = parallel.global_batch({**{k: local[k] for k in ("image", "mask", "valid")},
                                           "index": np.asarray(local["index"], np.int32)}, mesh)
            logits = predict(params, model_state, batch)
            total, scores = accumulate_per_image(total, logits, batch["mask"], batch["valid"])
            per_image.append((batch["index"], scores))  # fetched after the loop: no wait per batch
            slots["index"] += [int(i) for i in local["index"]]
            slots["id"] += [str(i) for i in local["id"]]
            if len(overlays) < num_overlays and jax.process_index() == 0:
                pred = parallel.local_rows(logits)[..., 0] > 0  # process 0's rows: local's
                for i in range(len(local["valid"])):
                    if local["valid"][i] and len(overlays) < num_overlays:
                        overlays.append(_overlay_row(local["image"][i], local["mask"][i], pred[i]))
        result = {k: float(v) for k, v in total.compute().items()}
        result["num_images"] = int(result["num_images"])
        result.update(step=int(step), test_set=name, num_examples=len(source))
        rows = _per_image_rows(per_image, slots, len(source))
        results[name] = {**result, "per_image": rows}
        if jax.process_index() == 0:
            export.atomic_write_text(out_dir / f"{file_stem(name)}.json", json.dumps(result, indent=2) + "\n")
            export.atomic_write_text(per_image_path(out_dir, name), json.dumps(
                {"test_set": name, "step": int(step), "empty_mask_rule": EMPTY_MASK_RULE, **rows}) + "\n")
            export.atomic_write_bytes(out_dir / f"{file_stem(name)}_overlays.png",
                                      export.encode_png(np.concatenate(overlays, axis=0)))
    return results


EMPTY_MASK_RULE = ("dice/iou: 1 when ground truth and prediction are both empty (the mDice convention); "
                   "paired comparisons leave images with an empty ground-truth mask out")


def file_stem(test_set: str) -> str:
    return test_set.replace("@", "-").replace("/", "_")


def per_image_path(eval_dir: pathlib.Path, test_set: str) -> pathlib.Path:
    return pathlib.Path(eval_dir) / f"{file_stem(test_set)}_per_image.json"


def _per_image_rows(per_image: list, slots: dict, num_examples: int) -> dict:
    """{"id", "empty_mask", *PER_IMAGE_KEYS: [num_examples]} in source order, padding dropped.

    Every process gets every row: the scores are global arrays (gathered), the ids each process read
    for its own slots are exchanged once per set."""
    index = np.concatenate([parallel.to_host(i) for i, _ in per_image])
    keep = index >= 0
    order = np.argsort(index[keep], kind="stable")
    if not np.array_equal(index[keep][order], np.arange(num_examples)):
        raise RuntimeError(f"the eval pass saw source indices {index[keep][order].tolist()}, "
                           f"not each of 0..{num_examples - 1} once")
    ids = dict(zip(parallel.allgather_host(np.asarray(slots["index"], np.int64)).tolist(),
                   parallel.allgather_strings(slots["id"])))
    rows = {"id": [ids[i] for i in range(num_examples)]}
    for k in PER_IMAGE_KEYS:
        values = np.concatenate([parallel.to_host(s[k]) for _, s in per_image])[keep][order]
        rows[k] = [int(v) for v in values] if k in ("tp", "pred_sum", "true_sum") else [float(v) for v in values]
    rows["empty_mask"] = [t == 0 for t in rows["true_sum"]]
    return rows


def _overlay_row(image, mask, pred):
    """image | ground truth (green) | prediction (red)."""
    gt = visualize.overlay(image, mask, colour=(0, 255, 0))
    pr = visualize.overlay(image, pred.astype(np.uint8), colour=(255, 0, 0))
    pad = lambda t: np.pad(t, ((1, 1), (1, 1), (0, 0)), constant_values=255)
    return np.concatenate([pad(image), pad(gt), pad(pr)], axis=1)
