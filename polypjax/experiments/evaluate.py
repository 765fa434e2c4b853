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
  not describe the images they come with. With it also segmenter-feature FD/KID and colour
  statistics, beside real-vs-real and colour-matched-noise bounds; for an inpainted set (regions in
  its manifest) these also on crops of the painted regions against crops of real polyps, as its
  whole frames are real outside the region.

Writes `<workdir>/generation_metrics.json` and `<workdir>/generation_metrics.md`. This module is
the task (config checks, data sources, the run); the per-set passes are in
experiments/generation_metrics.py, the Markdown in experiments/report.py, the maths and the
statistics file format in metrics/.
"""
from __future__ import annotations

import functools
import io
import json
import math
import pathlib

import jax
import numpy as np

from polypjax import parallel
from polypjax.configlib import ConfigError, check_source_spec
from polypjax.data import catalog, export, sources
from polypjax.data.catalog import split_specs
from polypjax.experiments import generation_metrics as gm
from polypjax.experiments.report import generation_markdown
from polypjax.metrics import fid
from polypjax.metrics import masks as mask_metrics

# MS-SSIM's five scales with an 11-px window: the smaller side must be >= (11 - 1) * 2^4 + 1.
MSSSIM_MIN_SIDE = 161
INCEPTION_DTYPES = ("float32", "bfloat16")


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
    check_source_spec(e.real, "evaluate.real")
    real = split_specs(e.real)
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


# --------------------------------------------------------------------------- the task

def load_segmenter(workdir):
    """The real-trained segmenter of a train_segmentation workdir (imported only when asked for)."""
    from polypjax.experiments.segmenter_inference import load_segmenter as load
    return load(workdir)


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

    scan = functools.partial(gm.scan_set, mesh=mesh, image_size=image_size, batch_size=e.batch_size)
    diversity_of = functools.partial(gm.diversity, num_pairs=e.msssim_pairs, size=e.msssim_size,
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
        r["label_consistency"] = (gm.label_consistency(source, predict, int(predict.image_size), e.batch_size,
                                                    mesh, name=name) if predict is not None else None)
        results.append(r)
    seg_baselines = None
    if predict is not None:
        seg_baselines, seg = gm.segmenter_feature_report(
            real_source, [(n, s) for n, _, s in generated], predict, batch_size=e.batch_size,
            kid_subsets=e.kid_subsets, kid_subset_size=e.kid_subset_size, seed=config.seed, mesh=mesh,
            regions=[gm.painted_regions(s) for _, _, s in generated])
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
        md = generation_markdown(report)
        export.atomic_write_text(workdir / "generation_metrics.md", md)
        print(md)
    return report
