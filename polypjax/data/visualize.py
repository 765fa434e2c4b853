"""PNG-ready grids of pairs: image, mask and overlay side by side."""
from __future__ import annotations

import numpy as np

from polypjax.data.pipeline import resize_pair


def overlay(image: np.ndarray, mask: np.ndarray, colour=(0, 255, 0), alpha: float = 0.4) -> np.ndarray:
    out = image.astype(np.float32)
    m = mask.astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(colour, np.float32)
    return out.astype(np.uint8)


def pair_grid(pairs: list[dict], size: int = 128, pad: int = 2) -> np.ndarray:
    """One row per pair: image | mask | overlay, each resized to `size`."""
    rows = []
    for pair in pairs:
        p = resize_pair(pair, size)
        mask_rgb = np.repeat(p["mask"][..., None] * 255, 3, axis=-1).astype(np.uint8)
        tiles = [p["image"], mask_rgb, overlay(p["image"], p["mask"])]
        rows.append(np.concatenate([np.pad(t, ((pad, pad), (pad, pad), (0, 0)), constant_values=255)
                                    for t in tiles], axis=1))
    return np.concatenate(rows, axis=0)
