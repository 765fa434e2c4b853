"""Diffusion task: a generator family trained through the shared loop, with sample grids as eval.

The evaluation samples a fixed set of pairs (fixed RNG and indices, so grids are comparable across
steps) with the EMA parameters and a fast sampler, writes `samples/step_<N>.png` (image | mask |
overlay per row) and logs simple label statistics of the generated masks.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from polypjax.configlib import ConfigError, check_number
from polypjax.train import loop
from polypjax.train import state as state_lib
from polypjax.data import catalog, export, pipeline, visualize
from polypjax.diffusion import generators


class DiffusionTask:
    def __init__(self, config, workdir: pathlib.Path):
        self.config = config
        self.workdir = pathlib.Path(workdir)
        self.generator = generators.make_generator(config)
        self.source = catalog.make_source(config.data.train, config.data, default_split="train", seed=config.seed)
        self._sample = None

    def train_iterator(self):
        c = self.config
        return pipeline.train_dataset(self.source, image_size=c.data.image_size, global_batch_size=c.data.batch_size,
                                      seed=c.seed, augment=c.data.augment, worker_count=c.data.worker_count)

    def init(self, rng, batch):
        return self.generator.init(rng, batch)

    def optimizer(self, num_steps: int):
        return generator_optimizer(self.generator, self.config, num_steps)

    def loss(self, params, model_state, batch, rng):
        return self.generator.loss(params, model_state, batch, rng)

    def sample_pairs(self, params, rng, n: int, spec: generators.SamplerSpec):
        """-> uint8 images [n,S,S,3] and post-processed {0,1} masks [n,S,S] on the host."""
        gen = self.generator
        if self._sample is None or self._sample[0] != (n, spec):
            if getattr(gen, "paints_frames", False):
                # An inpainter draws no pairs from noise: it repaints the first n real training
                # frames inside their dilated masks, for those masks.
                pairs = [pipeline.resize_pair(self.source[i % len(self.source)], self.config.data.image_size)
                         for i in range(n)]
                frames = jnp.asarray(np.stack([p["image"] for p in pairs]))
                masks = jnp.asarray(np.stack([p["mask"] for p in pairs]), jnp.float32)[..., None] * 2.0 - 1.0
                region = generators.dilate((masks[..., 0] > 0).astype(jnp.float32), gen.paint_radius)

                def paint(p, r):
                    painted = gen.paint(p, r, frames, region, masks, spec)
                    known = frames.astype(jnp.float32) / 127.5 - 1.0
                    return jnp.where(region[..., None] > 0, painted, known), masks
                fn = jax.jit(paint)
            elif getattr(gen, "conditions_on_masks", False) and not hasattr(gen, "sample_masks"):
                # A family with no mask model (the mask-conditioned GAN) draws images for the
                # first n real training masks.
                masks = jnp.asarray(np.stack([pipeline.resize_pair(self.source[i % len(self.source)],
                                                                   self.config.data.image_size)["mask"]
                                              for i in range(n)]), jnp.float32)[..., None] * 2.0 - 1.0
                fn = jax.jit(lambda p, r: (gen.sample_images(p, r, masks, spec), masks))
            else:
                fn = jax.jit(lambda p, r: gen.sample(p, r, n, spec))
            self._sample = ((n, spec), fn)
        images, masks = jax.device_get(self._sample[1](params, rng))
        return generators.postprocess_pairs(images, masks, self.config.postprocess)

    def evaluate(self, state, step: int, writer) -> dict:
        c = self.config
        params = state.ema_params
        spec = generators.SamplerSpec.from_config(c.eval.sampler) if "sampler" in c.eval else generators.SamplerSpec()
        images, masks = self.sample_pairs(params, jax.random.PRNGKey(c.eval.seed), c.eval.num_samples, spec)
        if jax.process_index() == 0:
            grid = visualize.pair_grid([{"image": i, "mask": m} for i, m in zip(images, masks)],
                                       size=max(64, c.data.image_size))
            export.atomic_write_bytes(self.workdir / "samples" / f"step_{step:06d}.png", export.encode_png(grid))
        fractions = masks.reshape(len(masks), -1).mean(axis=1)
        return {"sample/mask_fraction_mean": float(fractions.mean()),
                "sample/empty_mask_fraction": float((fractions == 0).mean())}


def generator_optimizer(generator, config, num_steps: int):
    """`config.optim`; a family of several networks (the GAN) names one optimizer block per
    parameter tree (`optim_fields`)."""
    fields = getattr(generator, "optim_fields", None)
    if fields is None:
        return state_lib.make_optimizer(config.optim, num_steps)
    return state_lib.make_partitioned_optimizer({k: config[f] for k, f in fields.items()}, num_steps)


def validate_sampler(s, field: str) -> None:
    """Checks a sampler block (kind, steps) of a config; `field` is its dotted name for messages."""
    if s.kind not in generators.SAMPLERS:
        raise ConfigError(f"config.{field}.kind={s.kind!r} is unknown; choose one of {generators.SAMPLERS}")
    check_number(s, "steps", 1, integer=True, prefix=field)
    for name in ("eta", "guidance"):
        if name in s:
            check_number(s, name, 0, prefix=field)


def validate(config) -> None:
    if config.generator.kind not in generators.KINDS:
        raise ConfigError(f"config.generator.kind={config.generator.kind!r} is unknown; choose one of {generators.KINDS}")
    if config.generator.kind == "gan":
        validate_gan(config)
        return
    d = config.diffusion
    if d.schedule not in ("linear", "cosine"):
        raise ConfigError(f"config.diffusion.schedule must be linear or cosine, got {d.schedule!r}")
    if d.pred not in ("eps", "x0", "v"):
        raise ConfigError(f"config.diffusion.pred must be eps, x0 or v, got {d.pred!r}")
    check_number(config, "diffusion.num_timesteps", 2, integer=True)
    check_number(config, "diffusion.cond_dropout", 0, 1, high_open=True)
    validate_sampler(config.eval.sampler, "eval.sampler")
    m = config.model
    factor = 2 ** (len(m.channel_mult) - 1)
    if config.data.image_size % factor:
        raise ConfigError(f"config.data.image_size={config.data.image_size} must be a multiple of {factor} "
                          f"for channel_mult={tuple(m.channel_mult)}")
    if m.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"config.model.dtype must be float32 or bfloat16, got {m.dtype!r}")
    check_number(config, "eval.num_samples", 1, integer=True)
    loop.validate_train_config(config)


def validate_gan(config) -> None:
    if "gan" not in config:
        raise ConfigError("config.generator.kind='gan' needs the config.gan block of configs/gan.py; "
                          "start from --config=configs/gan.py")
    g, m = config.gan, config.model
    if not isinstance(g.joint, bool):
        raise ConfigError(f"config.gan.joint must be true or false, got {g.joint!r}")
    check_number(config, "gan.z_dim", 1, integer=True)
    check_number(config, "gan.feature_matching", 0)
    for name in ("gen_channels", "num_up", "disc_channels", "disc_layers", "disc_scales"):
        check_number(config, f"model.{name}", 1, integer=True)
    if config.data.image_size % 2 ** m.num_up:
        raise ConfigError(f"config.data.image_size={config.data.image_size} must be a multiple of "
                          f"2**model.num_up={2 ** m.num_up}")
    check_number(config, "eval.num_samples", 1, integer=True)
    loop.validate_train_config(config)
    disc = config.copy_and_resolve_references()
    disc.optim = config.optim_disc  # the discriminator's optimizer block, checked by the same rules
    try:
        loop.validate_train_config(disc)
    except ConfigError as e:
        raise ConfigError(str(e).replace("config.optim.", "config.optim_disc.")) from None
