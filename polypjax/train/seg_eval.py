"""Dice/IoU of a segmenter on every test set: exact counts, one JSON and one overlay PNG per set."""
from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from polypjax import parallel
from polypjax.data import export, pipeline, visualize
from polypjax.metrics.segmentation import accumulate


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
        for local in pipeline.eval_dataset(source, image_size=config.data.image_size,
                                           global_batch_size=config.data.eval_batch_size):
            batch = parallel.global_batch({k: local[k] for k in ("image", "mask", "valid")}, mesh)
            logits = predict(params, model_state, batch)
            total = accumulate(total, logits, batch["mask"], batch["valid"])
            if len(overlays) < num_overlays and jax.process_index() == 0:
                pred = parallel.local_rows(logits)[..., 0] > 0  # process 0's rows: local's
                for i in range(len(local["valid"])):
                    if local["valid"][i] and len(overlays) < num_overlays:
                        overlays.append(_overlay_row(local["image"][i], local["mask"][i], pred[i]))
        result = {k: float(v) for k, v in total.compute().items()}
        result["num_images"] = int(result["num_images"])
        result.update(step=int(step), test_set=name, num_examples=len(source))
        results[name] = result
        if jax.process_index() == 0:
            safe = name.replace("@", "-").replace("/", "_")
            export.atomic_write_text(out_dir / f"{safe}.json", json.dumps(result, indent=2) + "\n")
            export.atomic_write_bytes(out_dir / f"{safe}_overlays.png",
                                      export.encode_png(np.concatenate(overlays, axis=0)))
    return results


def _overlay_row(image, mask, pred):
    """image | ground truth (green) | prediction (red)."""
    gt = visualize.overlay(image, mask, colour=(0, 255, 0))
    pr = visualize.overlay(image, pred.astype(np.uint8), colour=(255, 0, 0))
    pad = lambda t: np.pad(t, ((1, 1), (1, 1), (0, 0)), constant_values=255)
    return np.concatenate([pad(image), pad(gt), pad(pr)], axis=1)
