"""Task `generate`: labelled pairs from a trained generator into a Kvasir-style folder (the workdir).

    python -m polypjax.main --config=configs/generate.py --workdir=runs/synthetic \
        --config.generate.generator_workdir=runs/diffusion --config.generate.num_samples=1000

Modes (`generate.mode`): `sample` (image + mask from noise), `inpaint` (the paper: RePaint paints a
new polyp and its mask into a real frame of `generate.source`, inside the frame's mask dilated by an
ellipse), `paint` (label-exact: a real polyp mask of another frame is placed in the frame and a
mask-conditioned model paints the frame around it: an `inpainter` generator in the sampler's steps,
a two_stage one with RePaint; the label is the placed mask, bit for bit, and the frame outside the
dilated region is the real one), `sdedit` (real pairs noised to `sdedit.strength` and denoised) and
`from_masks` (a two_stage image model on the user's masks in `generate.masks`).

The folder holds images/*.png, masks/*.png and manifest*.jsonl (export.PairWriter), so it is itself
a data source. Pair i depends only on (settings, seed, i): its noise is folded from i and its real
frame, region or mask are chosen by i; so the files do not depend on the batch size, the number of
devices or processes, or on a kill and resume. `generation.json` is written before the first pair
with status "incomplete" and the settings that decide the pairs; a rerun with other settings is
refused, a larger `num_samples` extends the folder, and the status becomes "complete" only once
every pair is on disk.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import pathlib
import threading

import jax
import jax.numpy as jnp
import numpy as np

from polypjax import configlib, faults, parallel
from polypjax.configlib import ConfigError
from polypjax.data import catalog, export, visualize
from polypjax.data import pipeline as data_pipeline
from polypjax.diffusion import generators, postprocess, samplers
from polypjax.diffusion import schedule as schedule_lib
from polypjax.train import diffusion, loop

# The generator families each mode can run (the generate task and the pipeline check this one table).
# "gan_spade" is the mask-conditioned GAN (gan.joint false): it draws images for given masks only.
MODE_FAMILIES = {"sample": ("joint", "two_stage", "gan"), "inpaint": ("joint",), "paint": ("two_stage", "inpainter"),
                 "sdedit": ("joint",), "from_masks": ("two_stage", "gan_spade")}
MODES = tuple(MODE_FAMILIES)
_MODE_NEEDS = {"sample": "a mask-conditioned GAN draws images for given masks: use mode 'from_masks'",
               "inpaint": "the paper's RePaint paints image and mask together",
               "paint": "it paints a frame for a given mask with a mask-conditioned image model",
               "sdedit": "it edits image and mask together",
               "from_masks": "one that draws images for given masks"}
INPAINT_SAMPLERS = ("repaint", "repaint_ddim")
REGIONS = ("dilated_mask", "ellipse")
PLACEMENTS = ("away", "replace")
_SOURCE_MODES = ("inpaint", "paint", "sdedit")  # modes that read real frames from generate.source
# Fields that may change between runs on one folder: they do not change any pair.
FREE_FIELDS = ("num_samples",)


def family(kind: str, joint: bool = True) -> str:
    """A generator's family for MODE_FAMILIES: its kind, or gan_spade for a GAN that is not joint."""
    return "gan_spade" if kind == "gan" and not joint else kind


def validate(config) -> None:
    g = config.generate
    if not g.generator_workdir:
        raise ConfigError("config.generate.generator_workdir must name a train_diffusion workdir")
    path = pathlib.Path(g.generator_workdir).expanduser()
    if not (path / "config.json").exists():
        raise ConfigError(f"config.generate.generator_workdir={str(path)!r}: no config.json there; "
                          "not a train_diffusion workdir")
    for name in ("num_samples", "batch_size", "writer_threads"):
        configlib.check_number(config, f"generate.{name}", 1, integer=True)
    configlib.check_number(config, "generate.seed", 0, integer=True)
    diffusion.validate_sampler(g.sampler, "generate.sampler")
    if g.color_reference:
        configlib.check_source_spec(g.color_reference, "generate.color_reference")
    if g.mode not in MODES:
        raise ConfigError(f"config.generate.mode={g.mode!r} is unknown; choose one of {MODES}")
    if g.mode in _SOURCE_MODES:
        if not g.source:
            raise ConfigError(f"config.generate.mode={g.mode!r} needs config.generate.source (real frames, "
                              "e.g. phantom-a or /data/Kvasir-SEG@train)")
        configlib.check_source_spec(g.source, "generate.source")
    p = g.inpaint
    if p.sampler not in INPAINT_SAMPLERS:
        raise ConfigError(f"config.generate.inpaint.sampler={p.sampler!r} is unknown; choose one of {INPAINT_SAMPLERS}")
    if p.region not in REGIONS:
        raise ConfigError(f"config.generate.inpaint.region={p.region!r} is unknown; choose one of {REGIONS}")
    for name in ("steps", "jump_length", "jump_n_sample"):
        if not isinstance(p[name], int) or p[name] < 1:
            raise ConfigError(f"config.generate.inpaint.{name} must be a positive integer, got {p[name]!r}")
    if g.paint.placement not in PLACEMENTS:
        raise ConfigError(f"config.generate.paint.placement={g.paint.placement!r} is unknown; choose one of {PLACEMENTS}")
    if not 0.0 < float(g.sdedit.strength) <= 1.0:
        raise ConfigError(f"config.generate.sdedit.strength must be in (0, 1], got {g.sdedit.strength!r}")
    if g.mode == "from_masks":
        if not g.masks or not pathlib.Path(g.masks).expanduser().is_dir():
            raise ConfigError(f"config.generate.masks={g.masks!r}: mode 'from_masks' needs a folder of mask images")
        if not isinstance(g.images_per_mask, int) or g.images_per_mask < 1:
            raise ConfigError(f"config.generate.images_per_mask must be a positive integer, got {g.images_per_mask!r}")
    f = g.filter
    if not 0.0 <= float(f.min_mask_fraction) < 1.0:
        raise ConfigError(f"config.generate.filter.min_mask_fraction must be in [0, 1), got {f.min_mask_fraction!r}")
    if f.enabled and f.min_dice > 0 and not f.segmenter_workdir:
        raise ConfigError("config.generate.filter.min_dice > 0 needs config.generate.filter.segmenter_workdir")


def data_sources(config) -> list[tuple[str, str, str]]:
    g = config.generate
    out = [("generate.color_reference", g.color_reference, "train")] if g.color_reference else []
    if g.get("mode") in _SOURCE_MODES and g.source:
        out.append(("generate.source", g.source, "train"))
    return out


def reference_index(seed: int, index: int, n: int) -> int:
    """The colour reference frame of pair `index`: fixed by (seed, index), like the pair itself."""
    return int(np.random.default_rng([seed, index]).integers(n))


def source_frame(seed: int, index: int, n: int) -> int:
    """Real frame of pair `index`: cycle c = index // n uses a permutation seeded by (seed, c), so every
    frame serves once per n pairs and the choice depends only on (seed, index)."""
    cycle, position = divmod(int(index), n)
    return int(np.random.default_rng([seed, 7919, cycle]).permutation(n)[position])


def load_generator(workdir, *, use_ema: bool = True):
    """(generator, params, train config) of the latest checkpoint of a train_diffusion workdir."""
    config, restored = loop.restore_run(workdir, "train_diffusion")
    params = restored["ema_params" if use_ema and restored.get("ema_params") is not None else "params"]
    return generators.make_generator(config), params, config


def checkpoint_step(workdir: pathlib.Path) -> int:
    steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    return max(steps)


def pair_id(index: int) -> str:
    return f"gen_{index:06d}"


# --------------------------------------------------------------------------------------- provenance
def settings(config, generator_workdir: pathlib.Path, step: int, mask_files=()) -> dict:
    """Everything that decides the pairs, as recorded in generation.json and compared on a rerun."""
    g = config.generate
    generator_config = configlib.what_it_computes(json.loads((generator_workdir / "config.json").read_text()))
    fingerprint = hashlib.sha256(json.dumps(generator_config, sort_keys=True).encode()).hexdigest()[:16]
    out = {"generator_workdir": str(generator_workdir.resolve()), "generator_fingerprint": fingerprint,
           "checkpoint_step": int(step), "use_ema": bool(g.use_ema), "mode": g.mode, "seed": int(g.seed),
           "color_reference": g.color_reference}
    if g.mode != "inpaint":  # inpainting has its own sampler settings (paint: guidance from here)
        out["sampler"] = dict(g.sampler.to_dict())
    if g.mode in _SOURCE_MODES:
        out["source"] = g.source
    if g.mode in ("inpaint", "paint"):
        out["inpaint"] = dict(g.inpaint.to_dict())
    if g.mode == "paint":
        out["paint"] = g.paint.to_dict()
    if g.mode == "sdedit":
        out["sdedit"] = dict(g.sdedit.to_dict())
    if g.mode == "from_masks":
        digest = hashlib.sha256()
        for p in mask_files:
            digest.update(p.name.encode() + p.read_bytes())
        out.update(masks=str(pathlib.Path(g.masks).resolve()), masks_digest=digest.hexdigest()[:16],
                   images_per_mask=int(g.images_per_mask))
    if g.filter.enabled:
        out["filter"] = dict(g.filter.to_dict())
    return out


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_folder(workdir: pathlib.Path, wanted: dict, num_samples: int, done: int) -> dict | None:
    """The folder's earlier record, after refusing a rerun that would change or shrink it."""
    path = workdir / "generation.json"
    if not path.exists():
        if done:
            raise ConfigError(f"{workdir}: holds {done} generated pair(s) but no generation.json, so what made "
                              "them is unknown; generate into a new workdir")
        return None
    try:
        record = json.loads(path.read_text())
        old = record["settings"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path}: unreadable or written by an older polypjax (no settings); "
                          "generate into a new workdir") from None
    a, b = _flat(old), _flat(wanted)
    diffs = [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in sorted(a.keys() | b.keys())
             if a.get(k) != b.get(k)]
    if diffs:
        raise ConfigError(f"{workdir}: its pairs were made with other settings ({'; '.join(diffs)}); "
                          "rerun with the recorded settings or generate into a new workdir")
    if num_samples < int(record.get("num_samples", 0)):
        raise ConfigError(f"{workdir}: holds a set of {record['num_samples']} pairs; num_samples={num_samples} "
                          "would misreport it (use a new workdir for a smaller set, or read the first "
                          f"{num_samples} ids)")
    return record


def _write_record(workdir, record) -> None:
    export.atomic_write_text(workdir / "generation.json", json.dumps(record, indent=2) + "\n")


# -------------------------------------------------------------------------------------------- modes
def _resize(image: np.ndarray | None, mask: np.ndarray, size: int):
    from polypjax.data.pipeline import resize_pair
    if image is None:
        image = np.zeros(mask.shape + (3,), np.uint8)
    pair = resize_pair({"image": image, "mask": mask}, size)
    return pair["image"], pair["mask"]


def dilation_radius(inpaint_config, size: int) -> int:
    """`inpaint.dilation` px, or (-1) the paper's radius scaled to the size."""
    r = int(inpaint_config.dilation)
    return generators.paper_dilation_radius(size) if r < 0 else r


def ellipse_region(rng: np.random.Generator, size: int, fraction: float) -> np.ndarray:
    """A random ellipse covering about `fraction` of the frame, inside it."""
    area = max(fraction, 4.0 / size**2) * size * size
    aspect = rng.uniform(0.6, 1.6)
    ry = float(np.clip(np.sqrt(area / np.pi * aspect), 1.0, size / 2 - 0.5))
    rx = float(np.clip(area / (np.pi * ry), 1.0, size / 2 - 0.5))
    cy, cx = rng.uniform(ry, size - ry), rng.uniform(rx, size - rx)
    yy, xx = np.mgrid[:size, :size]
    return ((((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2) <= 1.0).astype(np.uint8)


def inpaint_region(config, index: int, mask: np.ndarray, fractions: np.ndarray) -> tuple[np.ndarray, str]:
    """Region of pair `index` ({0,1}, 1 = regenerated): the dilated real mask, or an ellipse whose
    area is that of a mask of the source drawn by index (also when the real frame has no polyp)."""
    from skimage import morphology
    g = config.generate
    size = mask.shape[0]
    if g.inpaint.region == "dilated_mask" and mask.any():
        r = dilation_radius(g.inpaint, size)
        return morphology.dilation(mask.astype(bool), morphology.ellipse(r, r)).astype(np.uint8), "dilated_mask"
    rng = np.random.default_rng([int(g.seed), 104729, int(index)])
    positive = fractions[fractions > 0]
    fraction = float(rng.choice(positive)) if len(positive) else 0.1
    return ellipse_region(rng, size, fraction), "ellipse"


_FRAME_CACHE_BYTES = 1 << 30  # 1 GiB: Kvasir-SEG's 1000 frames at 256 px take a quarter of it


class Mode:
    """Host inputs and device sampling of one mode; pair i's inputs depend only on i."""

    def __init__(self, config, generator, train_config):
        g = config.generate
        self.config, self.g, self.generator = config, g, generator
        self.size = generator.image_size
        self.spec = generators.SamplerSpec.from_config(g.sampler)
        self.kind = g.mode
        self.source = None
        if g.mode in _SOURCE_MODES:
            data = config.data.copy_and_resolve_references()
            self.source = catalog.make_source(g.source, data, default_split="train", seed=config.seed)
            if len(self.source) == 0:
                raise ConfigError(f"config.generate.source={g.source!r} holds no pairs")
            # Real frames at the model's size, decoded (or rendered) once: each is needed about
            # num_samples / len(source) times, and on the thread that dispatches the sampler.
            self.source = data_pipeline.cached(self.source, self.size, _FRAME_CACHE_BYTES)
            self._fractions = None
        self.mask_files = []
        fam = family(generator.kind, getattr(generator, "joint", True))
        if fam not in MODE_FAMILIES[g.mode]:
            raise ConfigError(f"config.generate.mode={g.mode!r} needs a {' or '.join(MODE_FAMILIES[g.mode])} "
                              f"generator ({_MODE_NEEDS[g.mode]}); {g.generator_workdir} is {fam!r}")
        if g.mode == "from_masks":
            from polypjax.data.sources import IMAGE_EXTENSIONS, _natural_key
            root = pathlib.Path(g.masks).expanduser()
            self.mask_files = sorted((p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
                                      and not p.name.startswith(".")), key=lambda p: _natural_key(p.stem))
            if not self.mask_files:
                raise ConfigError(f"config.generate.masks={g.masks!r}: no mask images there")

    def count(self, num_samples: int) -> int:
        return len(self.mask_files) * int(self.g.images_per_mask) if self.kind == "from_masks" else num_samples

    def _real(self, k: int):
        pair = self.source[k]
        image, mask = _resize(pair["image"], pair["mask"], self.size)  # a no-op on a cached source
        return image, mask, pair["id"]

    def _source_fractions(self) -> np.ndarray:
        if self._fractions is None:
            self._fractions = np.array([self._real(k)[1].mean() for k in range(len(self.source))])
        return self._fractions

    def inputs(self, idx: np.ndarray) -> tuple[dict, list[dict]]:
        """Numpy inputs (one row per index) and each pair's manifest metadata."""
        n, s = len(idx), self.size
        if self.kind == "sample":
            return {}, [{} for _ in idx]
        if self.kind == "from_masks":
            masks, meta = np.zeros((n, s, s), np.uint8), []
            from polypjax.data import sources
            for j, i in enumerate(idx):
                path = self.mask_files[(int(i) // self.g.images_per_mask) % len(self.mask_files)]
                _, masks[j] = _resize(None, sources.read_mask_file(path), s)  # the one label rule, JPEG included
                meta.append({"source_mask": path.name, "variant": int(i) % self.g.images_per_mask})
            return {"mask": masks}, meta
        images, masks, regions, meta = (np.zeros((n, s, s, 3), np.uint8), np.zeros((n, s, s), np.uint8),
                                        np.zeros((n, s, s), np.uint8), [])
        if self.kind == "paint":
            for j, i in enumerate(idx):
                images[j], masks[j], regions[j], record = self._placed(int(i))
                meta.append(record)
            return {"image": images, "region": regions, "mask": masks}, meta
        for j, i in enumerate(idx):
            k = source_frame(self.g.seed, int(i), len(self.source))
            images[j], masks[j], sid = self._real(k)
            record = {"source_frame": k, "source_id": sid}
            if self.kind == "inpaint":
                regions[j], how = inpaint_region(self.config, int(i), masks[j], self._source_fractions())
                ys, xs = np.nonzero(regions[j])
                record["region"] = {"kind": how, "fraction": float(regions[j].mean()),
                                    "bbox": [int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1]}
            meta.append(record)
        return ({"image": images, "region": regions} if self.kind == "inpaint" else
                {"image": images, "mask": masks}), meta

    def _placed(self, index: int):
        """Pair `index` of mode paint: (frame, label, region, manifest record). A polyp of a donor
        frame (another frame of the source, drawn by index) is placed by copy-paste's draws
        (copy_paste.paste_one: scale, rotation, flips, a free place inside the lit frame); only its
        footprint is kept, since the model repaints the whole region. With placement "replace" the
        frame's own polyp is no obstacle and lies inside the region, painted over as mucosa."""
        from skimage import morphology

        from polypjax.data import copy_paste
        p, n = self.g.paint, len(self.source)
        k = source_frame(self.g.seed, index, n)
        image, own, sid = self._real(k)
        own = (own > 0).astype(np.uint8)
        replace = p.placement == "replace"
        rng = np.random.default_rng([int(self.g.seed), 15485863, index])
        footprint, donor_id = np.zeros_like(own), None
        for _ in range(int(p.copy_paste.tries)):
            d = int(rng.integers(n))
            if d == k and n > 1:
                continue
            donor_image, donor_mask, did = self._real(d)
            _, placed_mask, placed = copy_paste.paste_one(image, np.zeros_like(own) if replace else own,
                                                          donor_image, donor_mask, rng, p.copy_paste)
            if placed:
                footprint = ((placed_mask > 0) & ((own == 0) | replace)).astype(np.uint8)
                donor_id = did
                break
        label = footprint if replace else (footprint | own)
        painted = footprint | own if replace else footprint
        r = dilation_radius(self.g.inpaint, self.size)
        region = (morphology.dilation(painted.astype(bool), morphology.ellipse(r, r)).astype(np.uint8)
                  if painted.any() else painted)
        record = {"source_frame": k, "source_id": sid, "donor_id": donor_id, "placement": p.placement,
                  "placed": donor_id is not None}
        if region.any():
            ys, xs = np.nonzero(region)
            record["region"] = {"kind": f"paint_{p.placement}", "fraction": float(region.mean()),
                                "bbox": [int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1]}
        return image, label.astype(np.uint8), region, record

    def unet_calls(self) -> int:
        """UNet forward passes per pair (per network: two_stage runs two networks)."""
        if self.kind == "paint" and self.generator.kind == "inpainter":
            return min(self.spec.steps, len(self.generator.sched))  # a plain sampler: no jumps
        if self.kind in ("inpaint", "paint"):
            p = self.g.inpaint
            times = samplers.repaint_times(p.steps, p.jump_length, p.jump_n_sample)
            calls = int((np.diff(times) < 0).sum())
            return calls * (2 if self.kind == "paint" and self.spec.guidance else 1)
        if self.kind == "sdedit":
            return self._sdedit_skip() + 1
        if self.generator.kind == "gan":
            return 1  # one generator forward pass per pair
        steps = min(self.spec.steps, len(self.generator.sched))
        image_calls = steps * (2 if self.spec.guidance and self.generator.kind == "two_stage" else 1)
        # two_stage sample: the mask model's steps, then the (guided) image model's.
        return image_calls + (steps if self.kind == "sample" and self.generator.kind == "two_stage" else 0)

    def _spaced(self, steps):
        return schedule_lib.respaced(self.generator.sched, steps)

    def _sdedit_skip(self) -> int:
        n = min(self.spec.steps, len(self.generator.sched))
        return max(0, min(n - 1, round(float(self.g.sdedit.strength) * n) - 1))

    def device_fn(self):
        """(params, indices int32 [n], inputs) -> (images, masks) float [-1,1]; pure, for jax.jit."""
        gen, spec, key = self.generator, self.spec, jax.random.PRNGKey(int(self.g.seed))
        if self.kind == "sample":
            return lambda params, idx, inputs: gen.sample(params, key, idx.shape[0], spec, indices=idx)
        if self.kind == "from_masks":
            def from_masks(params, idx, inputs):
                cond = inputs["mask"].astype(jnp.float32)[..., None] * 2.0 - 1.0
                return gen.sample_images(params, key, cond, spec, indices=idx), cond
            return from_masks
        if self.kind == "sdedit":
            spaced, t_skip = self._spaced(spec.steps), self._sdedit_skip()
            method = "ddpm" if spec.kind == "ddpm" else "ddim"

            def sdedit(params, idx, inputs):
                image, mask = generators.to_model_range(inputs)
                x = samplers.sdedit_sample(gen._model_fn(gen.model, params["joint"]), spaced,
                                           jnp.concatenate([image, mask], -1), t_skip, key, method=method,
                                           eta=spec.eta, pred=gen.pred, clip_x0=spec.clip_x0,
                                           learn_sigma=gen.learn_sigma, indices=idx)
                return x[..., :3], x[..., 3:]
            return sdedit
        p = self.g.inpaint
        method = "ddim" if p.sampler == "repaint_ddim" else "ddpm"
        if self.kind == "paint" and gen.kind == "inpainter":
            def paint_trained(params, idx, inputs):
                cond = inputs["mask"].astype(jnp.float32)[..., None] * 2.0 - 1.0
                return gen.paint(params, key, inputs["image"], inputs["region"], cond, spec, indices=idx), cond
            return paint_trained
        if self.kind == "paint":
            def paint(params, idx, inputs):
                cond = inputs["mask"].astype(jnp.float32)[..., None] * 2.0 - 1.0
                image = gen.paint(params, key, inputs["image"], inputs["region"], cond, jump_length=p.jump_length,
                                  jump_n_sample=p.jump_n_sample, steps=p.steps, guidance=spec.guidance,
                                  indices=idx, method=method)
                return image, cond
            return paint

        def inpaint(params, idx, inputs):
            return gen.inpaint(params, key, inputs["image"], inputs["region"], jump_length=p.jump_length,
                               jump_n_sample=p.jump_n_sample, steps=p.steps, indices=idx, method=method)
        return inpaint

    def finish(self, image: np.ndarray, mask: np.ndarray, inputs_row: dict) -> tuple[np.ndarray, np.ndarray]:
        """Host side: the inpaint region is composited exactly (real pixels and background mask
        outside it); paint composites its region the same way and keeps the given label, as
        from_masks keeps the given mask."""
        if self.kind == "paint":
            region = inputs_row["region"].astype(bool)
            return np.where(region[..., None], image, inputs_row["image"]), inputs_row["mask"]
        if self.kind == "inpaint":
            region = inputs_row["region"].astype(bool)
            image = np.where(region[..., None], image, inputs_row["image"])
            mask = np.where(region, mask, 0).astype(np.uint8)
        elif self.kind == "from_masks":
            mask = inputs_row["mask"]
        return image, mask


# ------------------------------------------------------------------------------------------- filter
class QualityFilter:
    """Rejects pairs whose mask is empty, too small, has too many components, or that a real-trained
    segmenter disagrees with (Dice below `min_dice`)."""

    def __init__(self, config):
        self.f = config.generate.filter
        self.predict = None
        if self.f.min_dice > 0:
            from polypjax.experiments.segmenter_inference import load_segmenter
            self.predict = load_segmenter(pathlib.Path(self.f.segmenter_workdir).expanduser())
            self._lock = threading.Lock()

    def reasons(self, images: np.ndarray, masks: np.ndarray) -> list[list[str]]:
        from skimage import measure
        out = []
        dice = None
        if self.predict is not None:
            from polypjax.data.pipeline import resize_pair
            s = self.predict.image_size
            batch = np.stack([resize_pair({"image": im, "mask": m}, s)["image"] for im, m in zip(images, masks)])
            with self._lock:
                pred = np.asarray(self.predict(batch))[..., 0] > 0
            dice = []
            for p, m in zip(pred, masks):
                m = np.asarray(resize_pair({"image": images[0], "mask": m}, s)["mask"]) > 0
                denom = p.sum() + m.sum()
                dice.append(1.0 if denom == 0 else 2.0 * (p & m).sum() / denom)
        for j, mask in enumerate(masks):
            why = []
            fraction = float((mask > 0).mean())
            if fraction == 0:
                why.append("empty mask")
            elif fraction < self.f.min_mask_fraction:
                why.append(f"mask fraction {fraction:.4f} < {self.f.min_mask_fraction}")
            if self.f.max_components > 0 and fraction > 0:
                n = int(measure.label(mask > 0, connectivity=2).max())
                if n > self.f.max_components:
                    why.append(f"{n} components > {self.f.max_components}")
            if dice is not None and dice[j] < self.f.min_dice:
                why.append(f"label consistency dice {dice[j]:.3f} < {self.f.min_dice}")
            out.append(why)
        return out


# ---------------------------------------------------------------------------------------------- run
def _local_rows(sharding, n: int) -> np.ndarray:
    """Rows of a global batch of n that live on this process's devices (its own indices)."""
    rows = set()
    for index in sharding.addressable_devices_indices_map((n,)).values():
        rows.update(range(n)[index[0]])
    return np.array(sorted(rows), np.int64)


def _gather_local(x: jax.Array, rows: np.ndarray) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in `rows` order."""
    parts = {}
    for shard in x.addressable_shards:
        start = shard.index[0].start or 0
        data = np.asarray(shard.data)
        for j in range(data.shape[0]):
            parts.setdefault(start + j, data[j])
    return np.stack([parts[int(r)] for r in rows])


def run(config, workdir: pathlib.Path) -> dict:
    g = config.generate
    workdir = pathlib.Path(workdir)
    generator_workdir = pathlib.Path(g.generator_workdir).expanduser()
    generator, params, train_config = load_generator(generator_workdir, use_ema=g.use_ema)
    config.data.image_size = generator.image_size  # real frames and masks at the model's size
    mode = Mode(config, generator, train_config)
    wanted = settings(config, generator_workdir, checkpoint_step(generator_workdir), mode.mask_files)
    num = mode.count(g.num_samples)
    pid, nproc = jax.process_index(), jax.process_count()
    writer = export.PairWriter(workdir, "manifest.jsonl" if nproc == 1 else f"manifest-{pid:03d}.jsonl")
    rejected_path = workdir / "rejected.jsonl"
    rejected = _read_rejected(rejected_path)
    record = check_folder(workdir, wanted, num, len(writer.done))
    _barrier("generate-checked")
    start_record = {"status": "incomplete", "num_samples": num, "settings": wanted,
                    "progress": f"{_accepted_count(writer.done, num, g.filter.enabled)}/{num} pairs"}
    if pid == 0 and record != start_record:
        _write_record(workdir, start_record)

    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    batch_sharding = parallel.batch_sharding(mesh)
    devices = mesh.devices.size
    batch = -(-g.batch_size // devices) * devices  # a multiple of the device count
    rows = _local_rows(batch_sharding, batch)
    param_sh = parallel.param_shardings(mesh, params)
    params = jax.tree.map(lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda i, x=x: np.asarray(x)[i]),
                          params, param_sh)
    fn = mode.device_fn()
    sample = jax.jit(fn, out_shardings=(batch_sharding, batch_sharding))
    reference = (catalog.make_source(g.color_reference, config.data, default_split="train", seed=config.seed)
                 if g.color_reference else None)
    quality = QualityFilter(config) if g.filter.enabled else None
    rejected_lock = threading.Lock()

    def host_work(start, local_idx, inputs, meta, out):
        # Runs in the writer pool while the device samples the next batch.
        images, masks = (_gather_local(o, rows) for o in out)
        images, masks = generators.postprocess_pairs(images, masks, train_config.postprocess)
        todo = []
        for j, i in enumerate(local_idx):
            pair = pair_id(int(i))
            if pair in writer.done or pair in rejected or (quality is None and i >= num):
                continue  # padding rows of the last batch are not part of the set
            row = {k: v[j] for k, v in inputs.items()}
            image, mask = mode.finish(images[j], masks[j], row)
            extra = dict(meta[j])
            if reference is not None:
                k = reference_index(g.seed, int(i), len(reference))
                image = postprocess.match_colors(image, reference[k]["image"])
                extra["color_reference"] = k
            todo.append((int(i), image, mask, extra))
        reasons = quality.reasons(np.stack([t[1] for t in todo]), np.stack([t[2] for t in todo])) \
            if quality is not None and todo else [[] for _ in todo]
        for (i, image, mask, extra), why in zip(todo, reasons):
            if why:
                line = {"id": pair_id(i), "index": i, "reasons": why, "mask_fraction": float((mask > 0).mean())}
                with rejected_lock:
                    with faults.writing(rejected_path), open(rejected_path, "a") as f:
                        f.write(json.dumps(line) + "\n")
                    rejected[line["id"]] = line
                continue
            writer.write(pair_id(i), image, mask, index=i, seed=int(g.seed), mode=mode.kind,
                         generator=train_config.generator.kind, sampler=_sampler_name(g), **extra)
        return len(local_idx)

    from tqdm import tqdm
    progress = tqdm(total=num, initial=min(num, _accepted_count(writer.done, num, g.filter.enabled)),
                    desc=f"generating ({mode.kind})", unit="pair", disable=None if pid == 0 else True)
    start = 0
    with concurrent.futures.ThreadPoolExecutor(g.writer_threads) as pool:
        while True:
            pending = []
            # Without the filter the target is the fixed range 0..N-1; with it, the first N accepted indices.
            limit = num if quality is None else start + max(batch, 4 * (num - _accepted_count(writer.done, num, True)))
            while start < limit:
                idx = np.arange(start, start + batch)
                start += batch
                if quality is None:
                    idx_needed = [i for i in idx if i < num and pair_id(int(i)) not in writer.done]
                else:
                    idx_needed = [i for i in idx if pair_id(int(i)) not in writer.done and pair_id(int(i)) not in rejected]
                if not idx_needed:
                    continue
                local_idx = idx[rows]
                inputs, meta = mode.inputs(local_idx)
                global_inputs = parallel.global_batch(inputs, mesh)
                global_idx = parallel.global_batch({"i": local_idx.astype(np.int32)}, mesh)["i"]
                out = sample(params, global_idx, global_inputs)  # dispatched asynchronously
                pending.append(pool.submit(host_work, start - batch, local_idx, inputs, meta, out))
                while len(pending) > g.writer_threads + 1:  # bounded look-ahead: host memory stays flat
                    pending.pop(0).result()
                    progress.n = min(num, _accepted_count(writer.done, num, quality is not None))
                    progress.refresh()
            for f in pending:
                f.result()
            progress.n = min(num, _accepted_count(writer.done, num, quality is not None))
            progress.refresh()
            _barrier(f"generate-round-{start}")
            writer.done = writer._read_manifest()
            if quality is None or _accepted_count(writer.done, num, True) >= num:
                break
            if start > 100 * num + batch:
                raise RuntimeError(f"{workdir}: the quality filter rejected {len(rejected)} of {start} pairs; "
                                   "loosen config.generate.filter (see rejected.jsonl for the reasons)")
    progress.close()
    _barrier("generate-written")
    return _finish(workdir, writer, wanted, num, g, mode, train_config, generator, rejected, pid)


def _sampler_name(g) -> str:
    return g.inpaint.sampler if g.mode in ("inpaint", "paint") else g.sampler.kind


def _read_rejected(path: pathlib.Path) -> dict:
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(r, dict) and isinstance(r.get("id"), str):
                out[r["id"]] = r
    return out


def _accepted_count(done: dict, num: int, filtered: bool) -> int:
    if filtered:
        return len(done)
    return sum(1 for i in range(num) if pair_id(i) in done)


def kept_ids(done: dict, num: int, filtered: bool) -> list[str]:
    """The folder's set: ids 0..N-1, or with the filter the first N accepted in index order."""
    if not filtered:
        return [pair_id(i) for i in range(num)]
    return sorted(done, key=lambda k: done[k]["index"])[:num]


def _finish(workdir, writer, wanted, num, g, mode, train_config, generator, rejected, pid) -> dict:
    done = writer.done
    ids = kept_ids(done, num, g.filter.enabled)
    missing = [i for i in ids if i not in done]
    if missing or len(ids) < num:
        raise RuntimeError(f"{workdir}: {len(missing) or num - len(ids)} pair(s) missing after generation")
    if g.filter.enabled:
        last = done[ids[-1]]["index"]
        extra = [k for k in done if done[k]["index"] > last]
        # Later accepted pairs (a larger batch overshot) are removed so the set is the same for any batch size.
        for k in extra:
            for d in (writer.image_dir, writer.mask_dir):
                (d / f"{k}.png").unlink(missing_ok=True)
        if extra and pid == 0:
            for path in export.manifest_paths(workdir):
                lines = [line for line in path.read_text().splitlines()
                         if not any(f'"id": "{k}"' in line for k in extra)]
                export.atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
        rejected_within = [r for r in rejected.values() if r["index"] <= last]
    else:
        rejected_within = []
    records = [done[i] for i in ids]
    fractions = np.array([r["mask_fraction"] for r in records])
    summary = {"status": "complete", "num_samples": num, "settings": wanted, "num_pairs": len(records),
               "generator": train_config.generator.kind, "generator_workdir": str(g.generator_workdir),
               "mode": mode.kind, "sampler": _sampler_name(g), "steps": int(g.inpaint.steps if mode.kind in ("inpaint", "paint")
                                                                           else g.sampler.steps),
               "guidance": float(g.sampler.guidance), "seed": int(g.seed), "color_reference": g.color_reference,
               "unet_calls_per_pair": mode.unet_calls(),
               "mask_fraction_mean": float(fractions.mean()),
               "empty_mask_fraction": float((fractions == 0).mean())}
    if g.filter.enabled:
        tried = len(records) + len(rejected_within)
        summary.update(rejected=len(rejected_within), acceptance_rate=len(records) / tried)
    if pid == 0:
        _write_record(workdir, summary)
        from polypjax.data import sources
        pairs = [sources.load_pair(i, writer.image_dir / f"{i}.png", writer.mask_dir / f"{i}.png") for i in ids[:16]]
        export.atomic_write_bytes(workdir / "preview.png",
                                  export.encode_png(visualize.pair_grid(pairs, size=max(64, generator.image_size))))
    return summary


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
