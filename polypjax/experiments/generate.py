"""Task `generate`: sample labelled pairs from a trained generator into a Kvasir-style folder.

    python -m polypjax.main --config=configs/generate.py --workdir=runs/synthetic \
        --config.generate.generator_workdir=runs/diffusion --config.generate.num_samples=1000

The workdir receives images/*.png, masks/*.png and manifest.jsonl (export.PairWriter), so it is
itself a data source for segmentation training and `evaluate_generation`. Pair i is drawn with the
RNG folded by i, so the set does not depend on the batch size and a rerun after a kill samples only
the pairs that are missing and produces the same files as an uninterrupted run.
"""
from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from polypjax import configlib
from polypjax.configlib import ConfigError
from polypjax.data import catalog, export, visualize
from polypjax.diffusion import generators, postprocess
from polypjax.train import diffusion, loop


def validate(config) -> None:
    g = config.generate
    if not g.generator_workdir:
        raise ConfigError("config.generate.generator_workdir must name a train_diffusion workdir")
    path = pathlib.Path(g.generator_workdir).expanduser()
    if not (path / "config.json").exists():
        raise ConfigError(f"config.generate.generator_workdir={str(path)!r}: no config.json there; "
                          "not a train_diffusion workdir")
    for name in ("num_samples", "batch_size"):
        configlib.check_number(config, f"generate.{name}", 1, integer=True)
    configlib.check_number(config, "generate.seed", 0, integer=True)
    diffusion.validate_sampler(g.sampler, "generate.sampler")
    if g.color_reference:
        configlib.check_source_spec(g.color_reference, "generate.color_reference")


def data_sources(config) -> list[tuple[str, str, str]]:
    g = config.generate
    return [("generate.color_reference", g.color_reference, "train")] if g.color_reference else []


def reference_index(seed: int, index: int, n: int) -> int:
    """The colour reference frame of pair `index`: fixed by (seed, index), like the pair itself."""
    return int(np.random.default_rng([seed, index]).integers(n))


def load_generator(workdir, *, use_ema: bool = True):
    """(generator, params, train config) of the latest checkpoint of a train_diffusion workdir."""
    config, restored = loop.restore_run(workdir, "train_diffusion")
    params = restored["ema_params" if use_ema and restored.get("ema_params") is not None else "params"]
    return generators.make_generator(config), params, config


def pair_id(index: int) -> str:
    return f"gen_{index:06d}"


def run(config, workdir: pathlib.Path) -> dict:
    g = config.generate
    workdir = pathlib.Path(workdir)
    generator, params, train_config = load_generator(pathlib.Path(g.generator_workdir).expanduser(),
                                                     use_ema=g.use_ema)
    spec = generators.SamplerSpec.from_config(g.sampler)
    writer = export.PairWriter(workdir)
    reference = (catalog.make_source(g.color_reference, config.data, default_split="train", seed=config.seed)
                 if g.color_reference else None)
    batch = g.batch_size
    sample = jax.jit(lambda p, idx: generator.sample(p, jax.random.PRNGKey(g.seed), batch, spec, indices=idx))
    starts = [s for s in range(0, g.num_samples, batch)
              if any(pair_id(i) not in writer.done for i in range(s, min(s + batch, g.num_samples)))]
    from tqdm import tqdm
    for start in tqdm(starts, desc="generating", unit="batch", disable=None):
        # The last batch is padded to the full size so one compiled sampler serves every batch.
        idx = np.arange(start, start + batch)
        images, masks = jax.device_get(sample(params, jnp.asarray(idx, jnp.int32)))
        images, masks = generators.postprocess_pairs(images, masks, train_config.postprocess)
        for i, image, mask in zip(idx, images, masks):
            if i < g.num_samples and pair_id(int(i)) not in writer.done:
                extra = {}
                if reference is not None:
                    k = reference_index(g.seed, int(i), len(reference))
                    image = postprocess.match_colors(image, reference[k]["image"])
                    extra = {"color_reference": k}
                writer.write(pair_id(int(i)), image, mask, index=int(i), seed=int(g.seed),
                             generator=train_config.generator.kind, sampler=spec.kind, steps=spec.steps, **extra)
    records = [writer.done[pair_id(i)] for i in range(g.num_samples)]
    fractions = np.array([r["mask_fraction"] for r in records])
    summary = {"num_pairs": len(records), "generator": train_config.generator.kind,
               "generator_workdir": str(g.generator_workdir), "sampler": spec.kind, "steps": spec.steps,
               "guidance": spec.guidance, "seed": int(g.seed), "color_reference": g.color_reference,
               "mask_fraction_mean": float(fractions.mean()),
               "empty_mask_fraction": float((fractions == 0).mean())}
    export.atomic_write_text(workdir / "generation.json", json.dumps(summary, indent=2) + "\n")
    from polypjax.data.sources import FolderSource
    preview = FolderSource(workdir)
    pairs = [preview[i] for i in range(min(16, len(preview)))]
    export.atomic_write_bytes(workdir / "preview.png",
                              export.encode_png(visualize.pair_grid(pairs, size=max(64, generator.image_size))))
    return summary
