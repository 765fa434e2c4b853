"""Copy-paste of real polyps between training frames: the label-exact, generator-free baseline a
synthetic set is compared with (issue 30).

Host numpy at the model resolution, like `augment.py`: a polyp (one connected component of a donor
mask) is cut with a margin of its surrounding mucosa, scaled (log-uniform), rotated and flipped,
and pasted onto a target frame where its mask keeps `min_distance` pixels from the target's polyp
and from the black surround of the endoscope, wholly inside the frame. The label is the union of
both masks. Every labelled pixel of the paste is the donor's polyp (alpha 1); the feather lies
outside the label: the donor's mucosa fades into the target's over a few `feather_sigma`, so the
edge is no hard cut and the label stays exact. Deterministic given the rng.

`cfg` has the fields of `config.regime.copy_paste` (configlib.copy_paste_config).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage, signal

# Pixels whose brightest channel is below this are the black surround of an endoscope frame (or
# its black overlay boxes): a polyp pasted there would float outside the patient.
DARK = 12
# Components smaller than this share of the donor's largest are resize debris, not polyps.
MIN_COMPONENT_SHARE = 0.1


def forbidden_region(image: np.ndarray, mask: np.ndarray, min_distance: float) -> np.ndarray:
    """bool [H,W]: where a pasted mask may not lie (the target's polyp grown by `min_distance`, and
    the dark surround)."""
    near = np.zeros(mask.shape, bool)
    if mask.any():
        near = ndimage.distance_transform_edt(mask == 0) <= min_distance
    return near | (image.max(axis=-1) < DARK)


def complete_components(image: np.ndarray, mask: np.ndarray):
    """(labels, the labels of the donor's usable polyps): 8-connected components that touch
    neither the frame's edge nor its dark surround (a polyp cut off there has a straight edge that
    would give the paste away), of at least MIN_COMPONENT_SHARE of the largest such one."""
    labels, n = ndimage.label(mask > 0, structure=np.ones((3, 3), bool))
    if n == 0:
        return labels, np.zeros(0, np.int64)
    outside = np.pad(image.max(axis=-1) < DARK, 1, constant_values=True)
    near = ndimage.binary_dilation(outside, structure=np.ones((3, 3), bool))[1:-1, 1:-1]
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    areas[np.unique(labels[near])] = 0
    areas[0] = 0
    if areas.max() == 0:
        return labels, np.zeros(0, np.int64)
    return labels, np.flatnonzero(areas >= max(1, MIN_COMPONENT_SHARE * areas.max()))


def _warp(donor_image, component, box, scale, angle, flip_rows, flip_cols, margin):
    """The donor crop around `box` (plus `margin` output pixels of mucosa) under scale, rotation
    and flips, on a canvas that holds all of it: (image float [h,w,3], polyp float, coverage: the
    share of each pixel that comes from the donor's lit frame, not from outside the crop nor from
    its dark surround)."""
    h, w = component.shape
    m = int(math.ceil(margin / scale)) + 1
    r0, r1 = max(0, box[0].start - m), min(h, box[0].stop + m)
    c0, c1 = max(0, box[1].start - m), min(w, box[1].stop + m)
    image = donor_image[r0:r1, c0:c1].astype(np.float32)
    polyp = component[r0:r1, c0:c1].astype(np.float32)
    lit = (image.max(axis=-1) >= DARK).astype(np.float32)
    ch, cw = polyp.shape
    c, s = math.cos(angle), math.sin(angle)
    forward = scale * np.array([[c, -s], [s, c]]) @ np.diag([-1.0 if flip_rows else 1.0, -1.0 if flip_cols else 1.0])
    half = np.array([(ch - 1) / 2, (cw - 1) / 2])
    corners = np.array([[a * half[0], b * half[1]] for a in (-1, 1) for b in (-1, 1)]) @ forward.T
    out_shape = tuple(int(math.ceil(2 * e)) + 3 for e in np.abs(corners).max(axis=0))
    inverse = np.linalg.inv(forward)
    offset = half - inverse @ np.array([(out_shape[0] - 1) / 2, (out_shape[1] - 1) / 2])

    def warp(x):
        return ndimage.affine_transform(x, inverse, offset, output_shape=out_shape, order=1,
                                        mode="constant", cval=0.0)
    coverage = warp(lit)
    # Premultiplied by coverage: divided out, so the edges of what comes keep their colour.
    warped = np.stack([warp(image[..., k] * lit) for k in range(3)], -1) / np.maximum(coverage, 1e-6)[..., None]
    return warped, warp(polyp), coverage


def _alpha(footprint: np.ndarray, coverage: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return footprint.astype(np.float32)
    # Grown by 2 sigma before the blur, so the label's own edge is (nearly) opaque and the fade
    # runs through the donor's mucosa around it.
    grown = ndimage.distance_transform_edt(~footprint) <= 2 * sigma
    alpha = ndimage.gaussian_filter(grown.astype(np.float32), sigma, mode="constant", truncate=4.0)
    # Where the donor's lit frame ends inside the feather, the fade follows that edge, blurred too.
    reach = ndimage.gaussian_filter(np.clip(coverage, 0.0, 1.0), sigma, mode="constant", truncate=4.0)
    alpha = np.where(footprint, 1.0, alpha * reach)
    return alpha.astype(np.float32)


def paste_one(image: np.ndarray, mask: np.ndarray, donor_image: np.ndarray, donor_mask: np.ndarray,
              rng: np.random.Generator, cfg) -> tuple[np.ndarray, np.ndarray, bool]:
    """One polyp of the donor (a random one of `complete_components`) pasted onto the target:
    (image uint8 [H,W,3], mask uint8 [H,W] {0,1}, placed). When the donor has no such polyp or none
    of `cfg.tries` drawn transforms has a free place, the target comes back unchanged (copies) with
    placed=False."""
    image, mask, donor_image = np.asarray(image), np.asarray(mask), np.asarray(donor_image)
    labels, usable = complete_components(donor_image, np.asarray(donor_mask))
    if usable.size == 0:
        return image.copy(), mask.copy(), False
    k = int(usable[rng.integers(usable.size)])
    component, box = labels == k, ndimage.find_objects(labels)[k - 1]
    H, W = mask.shape
    forbidden = forbidden_region(image, mask, cfg.min_distance).astype(np.float32)
    sigma = float(cfg.feather_sigma)
    margin = 6 * sigma + 2  # the grown-and-blurred alpha reaches 0 within 2 + 4 sigma
    lo, hi = math.log(cfg.scale_min), math.log(cfg.scale_max)
    for _ in range(int(cfg.tries)):
        scale = math.exp(rng.uniform(lo, hi))
        angle = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
        flips = rng.random(2) < 0.5 if cfg.flip else (False, False)
        patch, polyp, coverage = _warp(donor_image, component, box, scale, angle, *flips, margin)
        footprint = polyp >= 0.5
        if not footprint.any():
            continue  # scaled below one pixel
        (fr0, fr1), (fc0, fc1) = [(int(a.min()), int(a.max()) + 1) for a in np.nonzero(footprint)]
        if fr1 - fr0 > H or fc1 - fc0 > W:
            continue
        # Overlap of the footprint with the forbidden region at every position that keeps it
        # inside the frame, all at once: counts are integers, so < 0.5 means none.
        kernel = footprint[fr0:fr1, fc0:fc1][::-1, ::-1].astype(np.float32)
        free = np.flatnonzero(signal.fftconvolve(forbidden, kernel, mode="valid") < 0.5)
        if free.size == 0:
            continue
        py, px = divmod(int(free[rng.integers(free.size)]), W - (fc1 - fc0) + 1)
        alpha = _alpha(footprint, coverage, sigma)
        return (*_blend(image, mask, patch, footprint, alpha, py - fr0, px - fc0, cfg), True)
    return image.copy(), mask.copy(), False


def _blend(image, mask, patch, footprint, alpha, oy, ox, cfg):
    """The canvas with top-left corner at (oy, ox) of the frame (it may stick out; the footprint
    does not) blended in by alpha."""
    H, W = mask.shape
    y0, y1, x0, x1 = max(0, oy), min(H, oy + alpha.shape[0]), max(0, ox), min(W, ox + alpha.shape[1])
    canvas = np.s_[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    a, patch, footprint = alpha[canvas][..., None], patch[canvas], footprint[canvas]
    region = image[y0:y1, x0:x1].astype(np.float32)
    if cfg.match_colour:
        patch = _match_colour(patch, footprint, a[..., 0], region, mask[y0:y1, x0:x1])
    blended = np.clip(region * (1.0 - a) + patch * a + 0.5, 0, 255).astype(np.uint8)
    out_image, out_mask = image.copy(), mask.copy()
    out_image[y0:y1, x0:x1] = np.where(a > 0, blended, image[y0:y1, x0:x1])
    out_mask[y0:y1, x0:x1] |= footprint.astype(mask.dtype)
    return out_image, (out_mask > 0).astype(np.uint8)


def _match_colour(patch, footprint, alpha, region, target_mask):
    """Shifts the patch by the mean-colour difference between the donor's mucosa around its polyp
    and the target's mucosa under the paste: the polyp keeps its contrast to its surroundings."""
    ring = (alpha > 0) & ~footprint
    under = (alpha > 0) & (target_mask == 0) & (region.max(axis=-1) >= DARK)
    if not ring.any() or not under.any():
        return patch
    return patch + (region[under].mean(axis=0) - patch[ring].mean(axis=0))


def paste_random(pair: dict, donors: Sequence[dict], rng: np.random.Generator, cfg) -> tuple[dict, list[dict]]:
    """The regime's draw: with probability `cfg.probability`, 1 to `cfg.max_pastes` polyps pasted
    from random donors (pairs at the target's resolution, another frame than the target's own when
    both carry an "id"). Returns (pair, one record per paste: donor index, its id, placed)."""
    out = dict(pair)
    if len(donors) == 0 or rng.random() >= cfg.probability:
        return out, []
    records = []
    for _ in range(1 + int(rng.integers(cfg.max_pastes))):
        for _ in range(int(cfg.tries)):
            j = int(rng.integers(len(donors)))
            donor = donors[j]
            same = pair.get("id") is not None and donor.get("id") == pair.get("id") and len(donors) > 1
            if not same and complete_components(donor["image"], donor["mask"])[1].size:
                break
        else:
            records.append({"donor": None, "donor_id": None, "placed": False})
            continue
        out["image"], out["mask"], placed = paste_one(out["image"], out["mask"], donor["image"], donor["mask"], rng, cfg)
        records.append({"donor": j, "donor_id": donor.get("id"), "placed": placed})
    return out, records
