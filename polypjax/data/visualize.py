"""PNG-ready grids of pairs: image, mask and overlay side by side."""
from __future__ import annotations

import numpy as np

from polypjax.data.pipeline import resize_pair


def overlay(image: np.ndarray, mask: np.ndarray, colour=(0, 255, 0), alpha: float = 0.4) -> np.ndarray:
    out = image.astype(np.float32)
    m = mask.astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * np.asarray(colour, np.float32)
    return out.astype(np.uint8)


def mask_rgb(mask: np.ndarray) -> np.ndarray:
    return np.repeat(mask[..., None] * 255, 3, axis=-1).astype(np.uint8)


def tile_grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """uint8 RGB tiles of one size, one list per row, on a white grid."""
    return np.concatenate([np.concatenate([np.pad(t, ((pad, pad), (pad, pad), (0, 0)), constant_values=255)
                                           for t in tiles], axis=1) for tiles in rows], axis=0)


def pair_grid(pairs: list[dict], size: int = 128, pad: int = 2) -> np.ndarray:
    """One row per pair: image | mask | overlay, each resized to `size`."""
    rows = []
    for pair in pairs:
        p = resize_pair(pair, size)
        rows.append([p["image"], mask_rgb(p["mask"]), overlay(p["image"], p["mask"])])
    return tile_grid(rows, pad)
