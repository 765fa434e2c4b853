"""Joint image/mask augmentation on host numpy arrays (runs inside grain workers).

Geometric transforms move image and mask together (image bilinear, mask nearest); photometric
transforms touch the image only. Every transform is off unless the config turns it on.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

# YIQ rotation gives a hue shift as one 3x3 matrix, much cheaper than an HSV round-trip.
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def augment_pair(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, cfg) -> tuple[np.ndarray, np.ndarray]:
    """image uint8 [H,W,3], mask uint8 [H,W]; cfg has the fields of `config.data.augment`."""
    if rng.random() < cfg.hflip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < cfg.vflip:
        image, mask = image[::-1], mask[::-1]
    if cfg.rot90:
        k = int(rng.integers(4))
        image, mask = np.rot90(image, k), np.rot90(mask, k)
    if cfg.rotate_deg or cfg.scale or cfg.shift:
        image, mask = _affine(image, mask, rng, cfg)
    if cfg.brightness or cfg.contrast or cfg.hue:
        image = _photometric(image, rng, cfg)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def _affine(image, mask, rng, cfg):
    h, w = mask.shape
    angle = np.deg2rad(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
    scale = np.exp(rng.uniform(-np.log1p(cfg.scale), np.log1p(cfg.scale)))
    shift = rng.uniform(-cfg.shift, cfg.shift, size=2) * np.array([h, w])
    c, s = np.cos(angle), np.sin(angle)
    # affine_transform maps output coordinates to input ones, hence the inverse transform.
    inverse = np.array([[c, s], [-s, c]]) / scale
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - inverse @ (centre + shift)
    out = np.stack([ndimage.affine_transform(image[..., ch].astype(np.float32), inverse, offset,
                                             order=1, mode="constant", cval=0.0) for ch in range(3)], -1)
    new_mask = ndimage.affine_transform(mask, inverse, offset, order=0, mode="constant", cval=0)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), new_mask


def _photometric(image, rng, cfg):
    x = image.astype(np.float32)
    if cfg.brightness:
        x = x + rng.uniform(-cfg.brightness, cfg.brightness) * 255.0
    if cfg.contrast:
        mean = x.mean()
        x = (x - mean) * (1.0 + rng.uniform(-cfg.contrast, cfg.contrast)) + mean
    if cfg.hue:
        theta = rng.uniform(-cfg.hue, cfg.hue) * 2 * np.pi
        c, s = np.cos(theta), np.sin(theta)
        rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
        x = x @ (_YIQ2RGB @ rot @ _RGB2YIQ).T.astype(np.float32)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


class AugmentedCopies:
    """`count` augmented copies of a source's pairs, each resized to `size` and augmented by `cfg`
    with its own seeded rng: the "more data, not better data" baseline a synthetic set of the same
    count must beat. Copy i is of pair i mod len(source), so every pair is copied about equally."""

    def __init__(self, source, count: int, seed: int, cfg, size: int):
        self.source, self.count, self.seed, self.cfg, self.size = source, int(count), int(seed), cfg, int(size)
        self.name = f"{getattr(source, 'name', 'source')}[{count} augmented copies]"

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        from polypjax.data.pipeline import resize_pair
        pair = self.source[int(index) % len(self.source)]
        pair = {**pair, **resize_pair(pair, self.size)}
        image, mask = augment_pair(pair["image"], pair["mask"], np.random.default_rng([self.seed, 6133, int(index)]),
                                   self.cfg)
        return {"image": np.ascontiguousarray(image), "mask": np.ascontiguousarray(mask),
                "id": f"{pair['id']}_copy{int(index)}"}
