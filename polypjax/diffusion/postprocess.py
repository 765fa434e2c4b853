"""Host-side post-processing of generated pairs (numpy + scikit-image), as in Saragih et al. 2024.

A generated mask channel is continuous; it becomes a label by thresholding (0 for [-1, 1] outputs,
0.5 for [0, 1]), a morphological opening with a disk (removes thin spurs and speckle along the
border of the polyp) and removal of connected components smaller than ``min_size`` pixels (isolated
blobs the model sometimes produces). Optionally the image's colours are matched to a reference
image's histogram.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import exposure, measure, morphology


def threshold_mask(mask: np.ndarray, value_range: str = "[-1,1]", threshold: float | None = None) -> np.ndarray:
    """Binary mask from a continuous one; the default threshold is the middle of ``value_range``."""
    if threshold is None:
        if value_range == "[-1,1]":
            threshold = 0.0
        elif value_range == "[0,1]":
            threshold = 0.5
        else:
            raise ValueError(f"value_range must be '[-1,1]' or '[0,1]', got {value_range!r}")
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW or HxWx1, got shape {mask.shape}")
    return mask > threshold


def open_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary opening with a disk of ``radius``; the image is extended by edge replication so that a
    polyp touching the border is not eaten away there."""
    mask = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return mask
    padded = np.pad(mask, radius, mode="edge")
    opened = ndimage.binary_opening(padded, structure=morphology.disk(radius))
    return opened[radius:-radius, radius:-radius]


def remove_small_components(mask: np.ndarray, min_size: int, connectivity: int = 2) -> np.ndarray:
    """Drop connected components with fewer than ``min_size`` pixels (8-connected by default)."""
    mask = np.asarray(mask, dtype=bool)
    if min_size <= 1:
        return mask
    labels = measure.label(mask, connectivity=connectivity)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def postprocess_mask(
    mask: np.ndarray,
    *,
    value_range: str = "[-1,1]",
    threshold: float | None = None,
    radius: int = 2,
    min_size: int = 64,
) -> np.ndarray:
    """Threshold, open with a disk of ``radius``, remove components below ``min_size`` pixels.

    Returns uint8 {0, 1} HxW.
    """
    m = threshold_mask(mask, value_range, threshold)
    m = open_mask(m, radius)
    m = remove_small_components(m, min_size)
    return m.astype(np.uint8)


def postprocess_masks(masks: np.ndarray, **kwargs) -> np.ndarray:
    """:func:`postprocess_mask` over a batch [N, H, W] or [N, H, W, 1]."""
    return np.stack([postprocess_mask(m, **kwargs) for m in np.asarray(masks)])


def match_colors(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Match each channel's histogram of ``image`` [H, W, C] to ``reference`` (any H, W; same C).

    The result keeps ``image``'s dtype (uint8 rounded and clipped).
    """
    image = np.asarray(image)
    reference = np.asarray(reference)
    if image.ndim != 3 or reference.ndim != 3 or image.shape[-1] != reference.shape[-1]:
        raise ValueError(f"need HxWxC images with equal C, got {image.shape} and {reference.shape}")
    out = exposure.match_histograms(image, reference, channel_axis=-1)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        out = np.clip(np.round(out), info.min, info.max)
    return out.astype(image.dtype)
