"""Task `evaluate_generation`: how good are generated labelled pairs, measured against real data.

For the real set (`evaluate.real`) and every generated folder (`evaluate.generated`):
- FID and KID from pool3 features of the FID Inception (JAX port of pytorch-fid). Only with the
  real weights file (`evaluate.inception_weights`); without it the metrics are reported as
  unavailable with the reason, never computed on random weights. The real set's statistics can
  be cached in a pytorch-fid compatible `.npz` (`evaluate.real_stats`).
- MS-SSIM diversity: mean MS-SSIM over random distinct pairs of images of one set (lower = more
  diverse); the real set's value is the reference a generated set should come close to.
- Mask statistics (area, components, shape, placement) per set, and their Wasserstein-1 distance
  to the real masks.
- Label consistency (with `evaluate.segmenter_workdir`): a segmenter trained on real data is run
  on the generated images and scored against the generated masks; a low Dice means the masks do
  not describe the images they come with.

Writes `<workdir>/generation_metrics.json` and `<workdir>/generation_metrics.md`.
"""
from __future__ import annotations

import functools
import io
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from polypjax import parallel
from polypjax.configlib import ConfigError, check_source_spec
from polypjax.data import catalog, export, pipeline, sources
from polypjax.data.catalog import split_specs
from polypjax.metrics import fid
from polypjax.metrics import masks as mask_metrics
from polypjax.metrics import msssim

# MS-SSIM's five scales with an 11-px window: the smaller side must be >= (11 - 1) * 2^4 + 1.
MSSSIM_MIN_SIDE = 161
INCEPTION_DTYPES = ("float32", "bfloat16")
REAL_ROW = "real (reference)"


# --------------------------------------------------------------------------- validation

def _check_layout(spec: str, field: str, default_split: str) -> None:
    # A folder that exists but holds no known layout would otherwise fail after minutes of work.
    s = catalog.parse_spec(spec, default_split)
    if s.kind == "folder":
        try:
            sources.detect_layout(s.name)
        except sources.DataError as e:
            raise ConfigError(f"config.{field}: {e}") from None


def _int_at_least(e, name: str, low: int, why: str = "") -> None:
    value = e[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"config.evaluate.{name} must be an integer >= {low}{why}, got {value!r}")


def validate(config) -> None:
    if "evaluate" not in config:
        raise ConfigError("config.evaluate is missing (use configs/evaluate_generation.py)")
    e = config.evaluate
    real = split_specs(e.real)
    if len(real) != 1:
        raise ConfigError(f"config.evaluate.real must name one data source, got {e.real!r}")
    check_source_spec(real[0], "evaluate.real")
    _check_layout(real[0], "evaluate.real", "train")
    generated = split_specs(e.generated)
    if not generated:
        raise ConfigError("config.evaluate.generated is empty: name the generated folder(s) to evaluate, "
                          "e.g. --config.evaluate.generated=/path/to/generated "
                          "(comma-separated for several)")
    for spec in generated:
        check_source_spec(spec, "evaluate.generated")
        _check_layout(spec, "evaluate.generated", "all")
    if e.image_size is not None:
        _int_at_least(e, "image_size", 0, " (0: native size)")
    _int_at_least(e, "batch_size", 1)
    _int_at_least(e, "msssim_pairs", 1)
    _int_at_least(e, "msssim_size", MSSSIM_MIN_SIDE, " (MS-SSIM's 5 scales need a side > 160)")
    _int_at_least(e, "kid_subsets", 1)
    _int_at_least(e, "kid_subset_size", 2)
    if e.inception_dtype not in INCEPTION_DTYPES:
        raise ConfigError(f"config.evaluate.inception_dtype must be one of {INCEPTION_DTYPES}, "
                          f"got {e.inception_dtype!r}")
    if e.inception_weights and not pathlib.Path(e.inception_weights).expanduser().is_file():
        raise ConfigError(f"config.evaluate.inception_weights: {fid.fid_unavailable_reason(e.inception_weights)}")
    if e.real_stats and pathlib.Path(e.real_stats).expanduser().exists():
        _check_cached_stats(pathlib.Path(e.real_stats).expanduser(), real[0], _image_size(e),
                            e.inception_dtype)
    if e.segmenter_workdir:
        wd = pathlib.Path(e.segmenter_workdir).expanduser()
        if not (wd / "config.json").is_file():
            raise ConfigError(f"config.evaluate.segmenter_workdir: {e.segmenter_workdir!r} is not a "
                              "train_segmentation workdir (no config.json there)")


def _image_size(e) -> int | None:
    return int(e.image_size) if e.image_size else None


def data_sources(config) -> list[tuple[str, str, str]]:
    e = config.evaluate
    return ([("evaluate.real", spec, "train") for spec in split_specs(e.real)]
            + [("evaluate.generated", spec, "all") for spec in split_specs(e.generated)])


# --------------------------------------------------------------------------- real statistics cache

def _check_cached_stats(path: pathlib.Path, real_spec: str, image_size, dtype: str) -> None:
    """Refuses a cache made for other data or settings (a pytorch-fid file has no such record)."""
    try:
        meta = fid.load_stats(path, arrays=False)
    except ValueError as e:
        raise ConfigError(f"config.evaluate.real_stats: {e}") from None
    want = {"real_spec": real_spec, "image_size": image_size or 0, "inception_dtype": dtype}
    diff = {k: (meta[k], want[k]) for k in want if k in meta and meta[k] != want[k]}
    if diff:
        what = ", ".join(f"{k} {old!r} (now {new!r})" for k, (old, new) in diff.items())
        raise ConfigError(f"config.evaluate.real_stats: {path} was computed with {what}; "
                          "delete it or give another path")


# --------------------------------------------------------------------------- building blocks

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
        total = accumulate(total, logits, batch["mask"], batch["valid"])
        chance = accumulate(chance, logits, *_next_pairs(batch["mask"], batch["valid"]))
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


def segmenter_scan(source, predict, image_size: int, batch_size: int, name: str = ""):
    """One pass at the segmenter's size: its pooled encoder features [N, C] and the per-channel
    colour mean/std of the images (0-255 levels)."""
    feats, total, total_sq, pixels = [], np.zeros(3), np.zeros(3), 0
    ds = pipeline.eval_dataset(source, image_size=image_size, global_batch_size=batch_size)
    for local in _progress(ds, total=pipeline.num_eval_batches(source, batch_size), desc=f"{name} features",
                           unit="batch"):
        valid = np.asarray(local["valid"]).astype(bool)
        feats.append(np.asarray(predict.features(local["image"]))[valid])
        x = np.asarray(local["image"], np.float64)[valid].reshape(-1, 3)
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


def segmenter_feature_report(real_source, generated: list, predict, *, batch_size: int, kid_subsets: int,
                             kid_subset_size: int, seed: int) -> tuple[dict, list[dict]]:
    """Segmenter-feature FD/KID and colour statistics with their two baselines.

    The real set is split in two seeded halves: half B is the reference every set is compared
    with; half A against B is the real-vs-real value (what a perfect generator scores, sampling
    noise included), and Gaussian noise with the real per-channel colour statistics (as many
    frames as half A) against B the value of a generator that only learnt the colours.
    Returns (baselines with the real colour statistics, one {fd, kid, colour} per generated set).
    """
    size = int(predict.image_size)
    real_feats, real_colour = segmenter_scan(real_source, predict, size, batch_size, name="real")
    if len(real_feats) < 4:
        raise sources.DataError(f"the real set has {len(real_feats)} pairs; segmenter features need at least 4")
    order = np.random.default_rng(seed).permutation(len(real_feats))
    half_a, half_b = real_feats[order[: len(order) // 2]], real_feats[order[len(order) // 2:]]
    dist = functools.partial(feature_distances, half_b, kid_subsets=kid_subsets,
                             kid_subset_size=kid_subset_size, seed=seed)
    noise_feats, _ = segmenter_scan(matched_noise_source(real_colour, len(half_a), size, seed), predict, size,
                                    batch_size, name="colour-matched noise")
    baselines = {
        "features": f"average-pooled deepest encoder features ({real_feats.shape[1]}-d) of the real-trained "
                    f"segmenter at {size} px; reference: a seeded half of the real set ({len(half_b)} images)",
        "real_vs_real": {**dist(half_a), "num_images": len(half_a)},
        "noise": {**dist(noise_feats), "num_images": len(noise_feats)},
        "real_colour": real_colour,
    }
    results = []
    for name, source in generated:
        feats, colour = segmenter_scan(source, predict, size, batch_size, name=name)
        colour["mean_abs_error"] = np.abs(np.subtract(colour["mean"], real_colour["mean"])).tolist()
        results.append({**dist(feats), "colour": colour})
    return baselines, results


def load_segmenter(workdir):
    """The real-trained segmenter of a train_segmentation workdir (imported only when asked for)."""
    from polypjax.train.segmentation import load_segmenter as load
    return load(workdir)


# --------------------------------------------------------------------------- the task

def _generated_sets(config) -> list[tuple[str, str, object]]:
    out, seen = [], set()
    for spec in split_specs(config.evaluate.generated):
        name = catalog.display_name(spec, "all")
        if name in seen:  # two folders with the same base name: tell them apart by path
            name = spec
        seen.add(name)
        out.append((name, spec, catalog.make_source(spec, config.data, default_split="all", seed=config.seed)))
    return out


def _clean(obj):
    """JSON-safe: NaN/inf (statistics of empty masks) become null, numpy scalars plain numbers."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def run(config, workdir: pathlib.Path) -> dict:
    e = config.evaluate
    workdir = pathlib.Path(workdir)
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    if e.batch_size % jax.device_count():
        raise ConfigError(f"config.evaluate.batch_size={e.batch_size} must be a multiple of the "
                          f"{jax.device_count()} devices")
    image_size = _image_size(e)
    real_spec = split_specs(e.real)[0]
    real_name = catalog.display_name(real_spec, "train")
    real_source = catalog.make_source(real_spec, config.data, default_split="train", seed=config.seed)
    generated = _generated_sets(config)
    for name, source in [(real_name, real_source)] + [(n, s) for n, _, s in generated]:
        if len(source) < 2:  # covariances and pairs need two images
            raise sources.DataError(f"{name}: {len(source)} pair(s); the generation metrics need at least 2")

    reason = fid.fid_unavailable_reason(str(pathlib.Path(e.inception_weights).expanduser())
                                        if e.inception_weights else "")
    extract = None
    if reason is None:  # pool3 features of uint8 batches sharded over the mesh, weights replicated
        from polypjax.models import inception
        extract = inception.load_fid_inception(e.inception_weights, e.inception_dtype,
                                               sharding=parallel.replicated(mesh))
    stats_path = pathlib.Path(e.real_stats).expanduser() if e.real_stats else None
    cached = fid.load_stats(stats_path) if stats_path is not None and stats_path.exists() else None
    if cached is not None and cached.get("num_images") not in (None, len(real_source)):
        raise ConfigError(f"config.evaluate.real_stats: {stats_path} holds {cached['num_images']} real images, "
                          f"{real_name} now has {len(real_source)}; delete it or give another path")

    scan = functools.partial(scan_set, mesh=mesh, image_size=image_size, batch_size=e.batch_size)
    diversity_of = functools.partial(diversity, num_pairs=e.msssim_pairs, size=e.msssim_size,
                                  seed=config.seed, batch_size=e.batch_size)

    real_moments, real_masks = scan(real_source, name=real_name, extract=None if cached else extract)
    real = {"name": real_name, "spec": real_spec, "num_images": len(real_source)}
    real_mu = real_sigma = real_features = None
    kid_reason = reason
    if cached is not None:
        real_mu, real_sigma, real_features = cached["mu"], cached["sigma"], cached["features"]
        real["fid_statistics"] = f"loaded from {stats_path}"
        if real_features is None:
            kid_reason = f"{stats_path} holds mu/sigma only (no features), which KID needs"
    elif extract is not None:
        real_mu, real_sigma = real_moments.mean_cov()
        real_features = real_moments.features()
        real["fid_statistics"] = "computed"
        if stats_path is not None and jax.process_index() == 0:
            buf = io.BytesIO()  # pytorch-fid's mu/sigma, the features KID needs, what they were made from
            fid.save_stats(buf, real_mu, real_sigma, real_features, real_spec=real_spec,
                           image_size=image_size or 0, num_images=len(real_source),
                           inception_dtype=e.inception_dtype)
            export.atomic_write_bytes(stats_path, buf.getvalue())
            real["fid_statistics"] = f"computed, saved to {stats_path}"
    real["msssim_diversity"] = diversity_of(real_source, name=real_name)
    real["mask_statistics"] = mask_metrics.summarize(real_masks)

    predict = load_segmenter(pathlib.Path(e.segmenter_workdir).expanduser()) if e.segmenter_workdir else None
    results = []
    for name, spec, source in generated:
        moments, gen_masks = scan(source, name=name, extract=extract if real_mu is not None else None)
        r = {"name": name, "spec": spec, "num_images": len(source), "fid": None, "kid": None}
        if moments is not None:
            r["fid"] = fid.frechet_distance_to_features(real_mu, real_sigma, moments.features())
            if real_features is not None:
                mean, std = fid.kid(real_features, moments.features(), num_subsets=e.kid_subsets,
                                    subset_size=e.kid_subset_size, seed=config.seed)
                r["kid"] = {"mean": mean, "std": std}
        r["msssim_diversity"] = diversity_of(source, name=name)
        r["mask_statistics"] = mask_metrics.summarize(gen_masks)
        r["mask_distances"] = mask_metrics.statistic_distances(real_masks, gen_masks)
        r["label_consistency"] = (label_consistency(source, predict, int(predict.image_size), e.batch_size,
                                                    mesh, name=name) if predict is not None else None)
        results.append(r)
    seg_baselines = None
    if predict is not None:
        seg_baselines, seg = segmenter_feature_report(
            real_source, [(n, s) for n, _, s in generated], predict, batch_size=e.batch_size,
            kid_subsets=e.kid_subsets, kid_subset_size=e.kid_subset_size, seed=config.seed)
        for r, f in zip(results, seg):
            r["segmenter_features"] = f

    report = _clean({
        "real": real,
        "generated": results,
        "segmenter_feature_baselines": seg_baselines,
        "fid_unavailable_reason": reason,
        "kid_unavailable_reason": kid_reason,
        "label_consistency_unavailable_reason": None if predict is not None else
        "no segmenter given; set --config.evaluate.segmenter_workdir to a train_segmentation workdir",
        "settings": {"image_size": image_size or 0, "inception_weights": e.inception_weights or None,
                     "inception_dtype": e.inception_dtype, "kid_subsets": e.kid_subsets,
                     "kid_subset_size": e.kid_subset_size, "msssim_pairs": e.msssim_pairs,
                     "msssim_size": e.msssim_size, "seed": config.seed,
                     "segmenter_workdir": e.segmenter_workdir or None,
                     "segmenter_image_size": int(predict.image_size) if predict is not None else None},
    })
    if jax.process_index() == 0:
        export.atomic_write_text(workdir / "generation_metrics.json", json.dumps(report, indent=2) + "\n")
        md = markdown_report(report)
        export.atomic_write_text(workdir / "generation_metrics.md", md)
        print(md)
    return report


# --------------------------------------------------------------------------- report

def _num(v, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _rgb(v, digits: int = 1) -> str:
    return "/".join(f"{x:.{digits}f}" for x in v)


def _segmenter_feature_lines(report: dict) -> list[str]:
    b = report.get("segmenter_feature_baselines")
    if not b:
        return []
    lines = ["", "## Segmenter features and colour", "",
             f"Features: {b['features']}. Fréchet distance (FD) and KID to that reference, beside two "
             "baselines that give them a scale: the other half of the real set (real vs real) and Gaussian "
             "noise with the real per-channel colour mean/std. A good generator is near the first, far "
             "from the second. Colour: per-channel RGB mean and std in 0-255 levels over all pixels.", "",
             "| set | images | segmenter FD | segmenter KID (mean ± std) | RGB mean | RGB std | mean error |",
             "|---|---|---|---|---|---|---|"]
    rc = b["real_colour"]
    for name, r in (("real vs real (baseline)", b["real_vs_real"]), ("colour-matched noise (baseline)", b["noise"])):
        lines.append(f"| {name} | {r['num_images']} | {_num(r['fd'], 3)} | {r['kid']['mean']:.4f} ± "
                     f"{r['kid']['std']:.4f} | – | – | – |")
    lines.append(f"| {REAL_ROW} | {report['real']['num_images']} | – | – | {_rgb(rc['mean'])} | {_rgb(rc['std'])} | – |")
    for r in report["generated"]:
        f = r.get("segmenter_features")
        if f:
            c = f["colour"]
            lines.append(f"| {r['name']} | {r['num_images']} | {_num(f['fd'], 3)} | {f['kid']['mean']:.4f} ± "
                         f"{f['kid']['std']:.4f} | {_rgb(c['mean'])} | {_rgb(c['std'])} | {_rgb(c['mean_abs_error'])} |")
    return lines


def markdown_report(report: dict) -> str:
    real, s = report["real"], report["settings"]
    size = f"{s['image_size']} px" if s["image_size"] else "native size"
    lines = ["# Generation metrics", "",
             f"Real reference: `{real['name']}` ({real['num_images']} images). Inception input: {size} "
             f"(resized to 299 inside the model). MS-SSIM: {s['msssim_size']} px, up to {s['msssim_pairs']} "
             f"random distinct pairs per set (seed {s['seed']}); lower = more diverse, compare with the "
             "real value.", "",
             "| set | images | FID | KID (mean ± std) | MS-SSIM diversity | label mDice | label mIoU "
             "| label mDice, chance |",
             "|---|---|---|---|---|---|---|---|"]

    def row(name, r, fid_cell, kid_cell):
        lc = r.get("label_consistency") or {}
        return (f"| {name} | {r['num_images']} | {fid_cell} | {kid_cell} | "
                f"{_num(r['msssim_diversity']['mean'], 4)} | {_num(lc.get('mDice'), 4)} | "
                f"{_num(lc.get('mIoU'), 4)} | {_num(lc.get('chance_mDice'), 4)} |")

    lines.append(row(REAL_ROW, real, "–", "–"))
    for r in report["generated"]:
        fid_cell = _num(r["fid"], 2) if r["fid"] is not None else "n/a"
        kid_cell = f"{r['kid']['mean']:.4f} ± {r['kid']['std']:.4f}" if r["kid"] else "n/a"
        lines.append(row(r["name"], r, fid_cell, kid_cell))
    lines += ["", "Label consistency: a segmenter trained on real data, scored against each set's own masks; "
              "chance: the same predictions against the mask of another pair of the set.", ""]
    for key, what in (("fid_unavailable_reason", "FID/KID unavailable"),
                      ("label_consistency_unavailable_reason", "Label consistency not measured")):
        if report.get(key):
            lines.append(f"{what}: {report[key]}.")
    if report.get("kid_unavailable_reason") and not report.get("fid_unavailable_reason"):
        lines.append(f"KID unavailable: {report['kid_unavailable_reason']}.")
    lines += _segmenter_feature_lines(report)
    columns = {"real mean": real["mask_statistics"]}
    for r in report["generated"]:
        columns[f"{r['name']} mean"] = r["mask_statistics"]
        columns[f"{r['name']} W1"] = r["mask_distances"]
    lines += ["", "## Mask statistics", "",
              "Mean per set, and the Wasserstein-1 distance of each generated set's distribution to the "
              "real one (in the statistic's units; 0 = same distribution).", "",
              mask_metrics.markdown_table(columns)]
    return "\n".join(lines)
