"""What evaluate_generation measures on one set, in one ordered pass each: Inception features and
mask statistics (`scan_set`), MS-SSIM diversity (`diversity`), label consistency with a segmenter
(`label_consistency`), and segmenter-feature FD/KID with colour statistics and their two baselines
(`segmenter_feature_report`), on whole frames and, for inpainted sets, on square crops around the
painted regions and the real polyps (`region_crop`). The maths is in metrics/; this module feeds it
sets of pairs.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from polypjax import parallel
from polypjax.data import export, pipeline, sources
from polypjax.metrics import fid
from polypjax.metrics import masks as mask_metrics
from polypjax.metrics import msssim


class SameSizeSource:
    """A set read at its native size: batches need one shape, so every pair must match the first."""

    def __init__(self, source, name: str):
        self.source = source
        self.name = name
        self.shape = source[0]["image"].shape[:2]

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        pair = self.source[index]
        if pair["image"].shape[:2] != self.shape:
            (h, w), (h0, w0) = pair["image"].shape[:2], self.shape
            raise sources.DataError(f"{self.name}: {pair.get('id', index)} is {w}x{h} px but the first image is "
                                    f"{w0}x{h0}; with images of several sizes set a common size, e.g. "
                                    "--config.evaluate.image_size=256")
        return pair


def _progress(iterable, **kwargs):
    from tqdm import tqdm
    # disable=None: a bar on a terminal, none in logs; one bar for the job, from process 0.
    return tqdm(iterable, disable=None if jax.process_index() == 0 else True, **kwargs)


def scan_set(source, *, name: str, mesh, image_size: int | None, batch_size: int, extract=None,
             keep_features: bool = True):
    """One ordered pass over a set: Inception feature moments (when `extract`) and mask statistics.

    Returns (FeatureMoments or None, {statistic: [N] array}). Padding rows of the last batch are
    dropped with the pipeline's `valid` field.
    """
    if image_size is None:
        source = SameSizeSource(source, name)
    moments = fid.FeatureMoments(keep_features=keep_features) if extract is not None else None
    stats = []
    ds = pipeline.eval_dataset(source, image_size=image_size, global_batch_size=batch_size)
    for local in _progress(ds, total=pipeline.num_eval_batches(source, batch_size), desc=name, unit="batch"):
        batch = parallel.global_batch({k: local[k] for k in ("image", "mask", "valid")}, mesh)
        features = extract(batch["image"]) if extract is not None else None  # async: overlaps the host work below
        valid = parallel.to_host(batch["valid"]).astype(bool)
        stats.append(mask_metrics.mask_statistics(parallel.to_host(batch["mask"])[valid]))
        if features is not None:
            moments.update(features, batch["valid"])
    joined = {k: np.concatenate([s[k] for s in stats]) for k in mask_metrics.STATISTICS}
    return moments, joined


class ResizedImages:
    """The images of a set, each read and resized to `size` when indexed (for MS-SSIM's pairs)."""

    def __init__(self, source, size: int):
        self.source = source
        self.size = size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> np.ndarray:
        return pipeline.resize_pair(self.source[index], self.size)["image"]


def diversity(source, *, num_pairs: int, size: int, seed: int, batch_size: int, name: str = "") -> dict:
    """The paper's diversity protocol (metrics/msssim.py) on a set resized to `size`: the mean
    MS-SSIM over random distinct pairs, with its spread; only the images in a pair are read."""
    mean, values = msssim.msssim_diversity(
        ResizedImages(source, size), num_pairs=num_pairs, seed=seed, batch_size=batch_size,
        progress=lambda needed: _progress(needed, desc=f"{name} MS-SSIM images", unit="image"))
    return {"mean": mean, "std": float(values.std()), "num_pairs": int(len(values)), "size": int(size)}


def label_consistency(source, predict, image_size: int, batch_size: int, mesh=None, name: str = "") -> dict:
    """Segmentation metrics of `predict` (images uint8 -> logits [N,H,W,1]) against a set's own masks.

    Images and masks are resized to the segmenter's `image_size`. With a mesh, batches are global
    arrays sharded over it (batch_size a multiple of the devices); without one, host arrays.
    The `chance_` figures score the same predictions against the mask of the next pair in the
    batch: what mask size and position priors alone give, the floor real consistency must beat.
    A pair whose mask is empty scores 0 even when the segmenter also sees nothing: a generated pair
    without a polyp teaches a segmenter nothing about polyps, and scoring it 1 let a generator that
    paints empty masks look consistent.
    """
    from polypjax.metrics.segmentation import accumulate
    total = chance = None
    ds = pipeline.eval_dataset(source, image_size=image_size, global_batch_size=batch_size)
    for local in _progress(ds, total=pipeline.num_eval_batches(source, batch_size), desc=f"{name} segmenter",
                           unit="batch"):
        batch = {k: local[k] for k in ("image", "mask", "valid")}
        if mesh is not None:
            batch = parallel.global_batch(batch, mesh)
        logits = predict(batch["image"])
        total = accumulate(total, logits, batch["mask"], batch["valid"], empty="zero")
        chance = accumulate(chance, logits, *_next_pairs(batch["mask"], batch["valid"]), empty="zero")
    out = {}
    for prefix, metrics in (("", total), ("chance_", chance)):
        for k, v in metrics.compute().items():
            v = np.asarray(v)
            out[prefix + k] = int(v) if k == "num_images" else float(v)
    return out


@jax.jit
def _next_pairs(masks, valid):
    """Each prediction's mask partner for the chance floor: the next pair's mask in the batch."""
    valid = jnp.asarray(valid, bool)
    return jnp.roll(masks, 1, 0), valid & jnp.roll(valid, 1, 0)


def segmenter_scan(source, predict, image_size: int, batch_size: int, name: str = "", mesh=None):
    """One pass at the segmenter's size: its pooled encoder features [N, C] and the per-channel
    colour mean/std of the images (0-255 levels). With a mesh, batches are global arrays sharded
    over it and every process gets every row (in several processes each reads its own columns)."""
    feats, total, total_sq, pixels = [], np.zeros(3), np.zeros(3), 0
    ds = pipeline.eval_dataset(source, image_size=image_size, global_batch_size=batch_size)
    for local in _progress(ds, total=pipeline.num_eval_batches(source, batch_size), desc=f"{name} features",
                           unit="batch"):
        batch = {k: local[k] for k in ("image", "valid")}
        if mesh is not None:
            batch = parallel.global_batch(batch, mesh)
        features = predict.features(batch["image"])  # async: overlaps the transfers below
        valid = parallel.to_host(batch["valid"]).astype(bool)
        x = parallel.to_host(batch["image"]).astype(np.float64)[valid].reshape(-1, 3)
        feats.append(parallel.to_host(features)[valid])
        total, total_sq, pixels = total + x.sum(0), total_sq + (x * x).sum(0), pixels + len(x)
    mean = total / pixels
    colour = {"mean": mean.tolist(), "std": np.sqrt(np.maximum(total_sq / pixels - mean**2, 0)).tolist()}
    return np.concatenate(feats), colour


def feature_distances(reference: np.ndarray, features: np.ndarray, *, kid_subsets: int, kid_subset_size: int,
                      seed: int) -> dict:
    """Fréchet distance and KID of `features` to `reference` (metrics/fid.py's maths)."""
    mu, sigma = reference.mean(0), np.cov(reference, rowvar=False)
    mean, std = fid.kid(reference, features, num_subsets=kid_subsets,
                        subset_size=min(kid_subset_size, len(reference), len(features)), seed=seed)
    return {"fd": fid.frechet_distance(mu, np.atleast_2d(sigma), features.mean(0),
                                       np.atleast_2d(np.cov(features, rowvar=False))),
            "kid": {"mean": mean, "std": std}}


def matched_noise_source(colour: dict, n: int, size: int, seed: int) -> list:
    """`n` frames of Gaussian noise with the real per-channel colour mean/std (the far baseline)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(colour["mean"], colour["std"], (n, size, size, 3))
    images = np.clip(np.round(images), 0, 255).astype(np.uint8)
    return [{"image": im, "mask": np.zeros((size, size), np.uint8)} for im in images]


# The paper's inpainting region is the real mask dilated by a 20x20 px ellipse at 256 px (radius 10
# there; generate.dilation_radius's default): a real polyp's box grown by that much is the box that
# region would have, so real crops frame a polyp as the painted crops frame a painting.
PAINT_MARGIN = 10 / 256
# A region a few pixels wide would be blown up to the whole crop: a blur that describes neither the
# painting nor the frame. Crops are at least this share of the frame's side.
MIN_CROP = 1 / 8


def square_box(bbox, side: int) -> tuple[int, int, int, int]:
    """The square crop (y0, x0, y1, x1) of a `side` x `side` frame around `bbox` (pixels, ends
    exclusive): as wide as the box's longer side (at least MIN_CROP of the frame), centred on it, and
    shifted to lie inside the frame rather than cut at its border, so that every crop keeps its
    square shape and the resize to a fixed size does not stretch it."""
    y0, x0, y1, x1 = bbox
    n = int(min(side, max(np.ceil(max(y1 - y0, x1 - x0)), np.ceil(MIN_CROP * side), 1)))
    top = int(np.clip(round((y0 + y1 - n) / 2), 0, side - n))
    left = int(np.clip(round((x0 + x1 - n) / 2), 0, side - n))
    return top, left, top + n, left + n


def region_crop(pair: dict, bbox, size: int) -> dict:
    """The one crop rule for painted and real regions: the frame squared at its longer side (the
    square shape the generator and the whole-frame metrics give it), the square_box around `bbox`
    (fractions of the frame's height and width: (y0, x0, y1, x1)), resized to `size`."""
    side = max(pair["image"].shape[:2])
    square = pipeline.resize_pair(pair, side)
    y0, x0, y1, x1 = square_box(np.asarray(bbox, np.float64) * side, side)
    crop = {"image": np.ascontiguousarray(square["image"][y0:y1, x0:x1]),
            "mask": np.ascontiguousarray(square["mask"][y0:y1, x0:x1])}
    return {**pipeline.resize_pair(crop, size), "id": pair.get("id")}


def painted_regions(source) -> list[tuple[int, tuple]] | None:
    """(index, region box as fractions of the frame) of each pair of a generated folder whose
    manifest record has an inpainting region; None for a set without any (sampled from noise, or
    a folder made elsewhere), whose frames are generated whole."""
    root = getattr(source, "root", None)
    if root is None or not hasattr(source, "pair_paths"):
        return None
    records = {r["id"]: r for r in export.read_manifest_records(root) if isinstance(r.get("region"), dict)}
    out = []
    for i in range(len(source)):
        r = records.get(source.pair_paths(i)[0].stem)
        if r is not None:
            y0, x0, y1, x1 = r["region"]["bbox"]
            h, w = r["height"], r["width"]
            out.append((i, (y0 / h, x0 / w, y1 / h, x1 / w)))
    return out or None


def polyp_boxes(source) -> list[tuple[int, tuple]]:
    """(index, box) of each real pair with a polyp: its mask's box grown by PAINT_MARGIN, as
    fractions of the frame. Frames without a polyp have nothing a painting could be compared with."""
    out = []
    for i in range(len(source)):
        mask = np.asarray(source[i]["mask"]) > 0
        if not mask.any():
            continue
        (h, w), (ys, xs) = mask.shape, np.nonzero(mask)
        out.append((i, (max(ys.min() / h - PAINT_MARGIN, 0.0), max(xs.min() / w - PAINT_MARGIN, 0.0),
                        min((ys.max() + 1) / h + PAINT_MARGIN, 1.0), min((xs.max() + 1) / w + PAINT_MARGIN, 1.0))))
    return out


class RegionCrops:
    """The region_crop of the listed pairs of a source, each read and cropped when indexed."""

    def __init__(self, source, boxes: list[tuple[int, tuple]], size: int):
        self.source, self.boxes, self.size = source, boxes, size

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: int) -> dict:
        i, bbox = self.boxes[index]
        return region_crop(self.source[i], bbox, self.size)


def _against_real(real_source, generated: list, scan, *, size: int, seed: int, kid_subsets: int,
                  kid_subset_size: int, what: str) -> tuple[dict, list]:
    """FD/KID and colour of each set (None: skipped) against a seeded half of `real_source`, with
    the real-vs-real and colour-matched-noise bounds, all from the same kind of images."""
    real_feats, real_colour = scan(real_source, name=f"real {what}")
    order = np.random.default_rng(seed).permutation(len(real_feats))
    half_a, half_b = real_feats[order[: len(order) // 2]], real_feats[order[len(order) // 2:]]
    dist = functools.partial(feature_distances, half_b, kid_subsets=kid_subsets,
                             kid_subset_size=kid_subset_size, seed=seed)
    noise_feats, _ = scan(matched_noise_source(real_colour, len(half_a), size, seed),
                          name=f"colour-matched noise {what}")
    bounds = {"real_vs_real": {**dist(half_a), "num_images": len(half_a)},
              "noise": {**dist(noise_feats), "num_images": len(noise_feats)},
              "real_colour": real_colour, "num_reference": len(half_b), "feature_dim": int(real_feats.shape[1])}
    results = []
    for k, item in enumerate(generated):
        if item is None:
            results.append(None)
            continue
        name, source = item
        feats, colour = scan(source, name=f"{name} {what}")
        colour["mean_abs_error"] = np.abs(np.subtract(colour["mean"], real_colour["mean"])).tolist()
        # FD shrinks with the number of images: a set is scored with as many as the real-vs-real
        # bound (half A), so that it is compared with that bound on equal terms.
        if len(feats) > len(half_a):
            feats = feats[np.random.default_rng([seed, 31, k]).permutation(len(feats))[: len(half_a)]]
        results.append({**dist(feats), "num_images": len(feats), "colour": colour})
    return bounds, results


def segmenter_feature_report(real_source, generated: list, predict, *, batch_size: int, kid_subsets: int,
                             kid_subset_size: int, seed: int, mesh=None, regions: list | None = None
                             ) -> tuple[dict, list[dict]]:
    """Segmenter-feature FD/KID and colour statistics with their two baselines.

    The real set is split in two seeded halves: half B is the reference every set is compared
    with; half A against B is the real-vs-real value (what a perfect generator scores, sampling
    noise included), and Gaussian noise with the real per-channel colour statistics (as many
    frames as half A) against B the value of a generator that only learnt the colours.
    A generated set larger than half A is scored on a seeded subset of that size (FD is biased by
    the sample size, so unequal sizes would favour the larger set).

    `regions`, one per generated set: its painted_regions, or None. An inpainted frame is real
    outside its region, so its whole-frame values sit near real whatever was painted; such a set is
    also scored on region_crops of its painted regions against region_crops of the real frames
    around their polyps (polyp_boxes), with both bounds recomputed on crops ("regions" in the
    baselines and in the set's result; None for a set without regions).
    Returns (baselines with the real colour statistics, one {fd, kid, num_images, colour, regions}
    per set).
    """
    size = int(predict.image_size)
    scan = functools.partial(segmenter_scan, predict=predict, image_size=size, batch_size=batch_size, mesh=mesh)
    if len(real_source) < 4:
        raise sources.DataError(f"the real set has {len(real_source)} pairs; segmenter features need at least 4")
    compare = functools.partial(_against_real, scan=scan, size=size, seed=seed, kid_subsets=kid_subsets,
                                kid_subset_size=kid_subset_size)
    bounds, results = compare(real_source, generated, what="frames")
    baselines = {
        "features": f"average-pooled deepest encoder features ({bounds['feature_dim']}-d) of the real-trained "
                    f"segmenter at {size} px; reference: a seeded half of the real set ({bounds['num_reference']} "
                    "images)",
        **{k: bounds[k] for k in ("real_vs_real", "noise", "real_colour")},
        "regions": None,
    }
    for r in results:
        r["regions"] = None
    regions = list(regions or [None] * len(generated))
    if any(regions):
        boxes = polyp_boxes(real_source)
        if len(boxes) < 4:
            baselines["regions"] = {"unavailable": f"{len(boxes)} real frame(s) with a polyp; crops need at least 4"}
            return baselines, results
        crops = [None if r is None else (name, RegionCrops(source, r, size))
                 for (name, source), r in zip(generated, regions)]
        rb, region_results = compare(RegionCrops(real_source, boxes, size), crops, what="regions")
        baselines["regions"] = {
            "crops": f"square crops around each painted region and each real polyp's box grown by "
                     f"{PAINT_MARGIN * 256:g}/256 of the frame (the paper's dilation), resized to {size} px; "
                     f"reference: a seeded half of the {len(boxes)} real frames with a polyp "
                     f"({rb['num_reference']} crops)",
            **{k: rb[k] for k in ("real_vs_real", "noise", "real_colour")}}
        for r, rr in zip(results, region_results):
            r["regions"] = rr
    return baselines, results
