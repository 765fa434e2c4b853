"""Generator families behind one API: `joint` (the paper) and `two_stage` (peers).

- `joint`: one ADM UNet over RGB + mask channels (4 in, 4 out). Samples an image and its mask
  together; with RePaint it paints a new polyp and its mask into a real background.
- `two_stage`: a mask model (1 channel), then an image model conditioned on the mask by
  concatenation, trained with condition dropout so sampling can use classifier-free guidance.
- `inpainter`: a trained inpainter (mask-concat, as peers' inpainting DDPMs): the image model sees
  the real frame with a region blanked, the region and the polyp mask as input channels and learns
  to fill the region, so painting a frame for a given mask takes a plain sampler's steps (e.g. 25
  DDIM calls) instead of RePaint's resampling jumps. It paints frames only: no pairs from noise.

Data convention: images and masks both live in [-1, 1] inside the models (mask -1 = background,
+1 = polyp); the null condition of the two-stage image model is all zeros, a value no real mask
takes. Every method is a pure function of (params, arrays, rng) so it can be jitted and sharded.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from polypjax.diffusion import objectives, samplers
from polypjax.diffusion import schedule as schedule_lib
from polypjax.models.adm_unet import ADMUNet

KINDS = ("joint", "two_stage", "inpainter", "gan")  # gan: diffusion/gan.py, the baseline
SAMPLERS = ("ddpm", "ddim", "dpm++")


def to_model_range(batch: dict) -> tuple[jax.Array, jax.Array]:
    """uint8 image [N,H,W,3] and {0,1} mask [N,H,W] -> float32 in [-1, 1], mask [N,H,W,1]."""
    image = batch["image"].astype(jnp.float32) / 127.5 - 1.0
    mask = batch["mask"].astype(jnp.float32)[..., None] * 2.0 - 1.0
    return image, mask


def to_uint8_image(x) -> np.ndarray:
    """[-1,1] floats -> uint8, on the host in numpy: it runs in generate's writer threads, where a
    jax op would queue behind the sampler's batches on the device."""
    x = (np.asarray(x, np.float32) + np.float32(1.0)) * np.float32(127.5)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def make_unet(model_config, in_channels: int, out_channels: int, cond_channels: int = 0) -> ADMUNet:
    m = model_config
    return ADMUNet(model_channels=m.channels, out_channels=out_channels,  # ADMUNet doubles it for learn_sigma
                   num_res_blocks=m.num_res_blocks, attention_resolutions=tuple(m.attention_resolutions),
                   dropout=m.dropout, channel_mult=tuple(m.channel_mult), num_heads=m.num_heads,
                   num_head_channels=m.num_head_channels, use_scale_shift_norm=m.use_scale_shift_norm,
                   resblock_updown=m.resblock_updown, learn_sigma=m.learn_sigma, in_channels=in_channels,
                   cond_channels=cond_channels, remat=m.get("remat", False),
                   dtype=jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32,
                   conv=m.get("conv", "auto"))  # absent from configs written before the field


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    kind: str = "ddim"  # ddpm | ddim | dpm++
    steps: int = 50
    eta: float = 0.0
    guidance: float = 0.0  # classifier-free guidance w (two_stage image model); 0 = conditional
    clip_x0: bool = True

    @classmethod
    def from_config(cls, c) -> "SamplerSpec":
        return cls(kind=c.kind, steps=int(c.steps), eta=float(c.eta), guidance=float(c.guidance),
                   clip_x0=bool(c.clip_x0))


def run_sampler(model_fn, sched, shape, rng, spec: SamplerSpec, *, pred: str, learn_sigma: bool,
                indices=None) -> jax.Array:
    """Any sampler with any number of steps (respacing for DDPM/DDIM)."""
    if spec.kind not in SAMPLERS:
        raise ValueError(f"sampler {spec.kind!r} is unknown; choose one of {SAMPLERS}")
    if spec.kind == "dpm++":
        return samplers.dpm_solver_pp_sample(model_fn, sched, shape, rng, steps=spec.steps, pred=pred,
                                             learn_sigma=learn_sigma, indices=indices)
    spaced = schedule_lib.respaced(sched, spec.steps)
    if spec.kind == "ddpm":
        return samplers.ddpm_sample(model_fn, spaced, shape, rng, pred=pred, clip_x0=spec.clip_x0,
                                    learn_sigma=learn_sigma, indices=indices)
    return samplers.ddim_sample(model_fn, spaced, shape, rng, eta=spec.eta, pred=pred, clip_x0=spec.clip_x0,
                                learn_sigma=learn_sigma, indices=indices)


class Generator:
    """Shared plumbing: schedule, prediction target, loss of one UNet."""

    kind = ""

    def __init__(self, config):
        d = config.diffusion
        self.config = config
        self.sched = schedule_lib.make_schedule(d.schedule, d.num_timesteps)
        self.pred = d.pred
        self.learn_sigma = bool(config.model.learn_sigma)
        self.image_size = int(config.data.image_size)
        self.min_snr_gamma = float(d.get("min_snr_gamma", 0.0))
        self.timestep_sampling = str(d.get("timestep_sampling", "uniform"))  # configs written before the field
        if self.timestep_sampling not in objectives.TIMESTEP_SAMPLING:
            raise ValueError(f"config.diffusion.timestep_sampling={self.timestep_sampling!r} is unknown; choose one "
                             f"of {', '.join(objectives.TIMESTEP_SAMPLING)}")

    def _unet_loss(self, model: ADMUNet, params, x0, rng, cond=None):
        drop_rng, loss_rng = jax.random.split(rng)

        def apply_fn(p, x_t, t, c):
            return model.apply({"params": p}, x_t, t, c, train=True, rngs={"dropout": drop_rng})

        return objectives.training_loss(apply_fn, params, self.sched, x0, loss_rng, pred=self.pred,
                                        learn_sigma=self.learn_sigma, cond=cond, min_snr_gamma=self.min_snr_gamma,
                                        timestep_sampling=self.timestep_sampling)

    def _model_fn(self, model: ADMUNet, params, cond=None):
        return lambda x, t: model.apply({"params": params}, x, t, cond, train=False).astype(jnp.float32)


class JointGenerator(Generator):
    kind = "joint"

    def __init__(self, config):
        super().__init__(config)
        self.model = make_unet(config.model, in_channels=4, out_channels=4)

    def init(self, rng, batch):
        s = self.image_size
        params = self.model.init({"params": rng}, jnp.zeros((1, s, s, 4)), jnp.zeros((1,), jnp.int32))["params"]
        return {"joint": params}, {}

    def loss(self, params, model_state, batch, rng):
        image, mask = to_model_range(batch)
        terms = self._unet_loss(self.model, params["joint"], jnp.concatenate([image, mask], -1), rng)
        return terms["loss"].mean(), ({"mse": terms["mse"].mean(), "vb": terms["vb"].mean()}, model_state)

    def sample(self, params, rng, n: int, spec: SamplerSpec, indices=None) -> tuple[jax.Array, jax.Array]:
        """-> (image float [-1,1] [n,S,S,3], mask float [-1,1] [n,S,S,1])."""
        s = self.image_size
        x = run_sampler(self._model_fn(self.model, params["joint"]), self.sched, (n, s, s, 4), rng, spec,
                        pred=self.pred, learn_sigma=self.learn_sigma, indices=indices)
        return x[..., :3], x[..., 3:]

    def inpaint(self, params, rng, image_u8, region, *, jump_length=10, jump_n_sample=10, steps=250, indices=None,
                method="ddpm", eta=0.0):
        """RePaint: regenerate image and mask inside `region` ({0,1} [n,S,S], 1 = new content) of
        real frames; outside it the frame is kept and the mask is background. `method="ddim"`
        takes DDIM steps between the resampling jumps (the fast variant: far fewer steps)."""
        image = image_u8.astype(jnp.float32) / 127.5 - 1.0
        known = jnp.concatenate([image, -jnp.ones(image.shape[:3] + (1,))], -1)
        known_mask = (1.0 - region.astype(jnp.float32))[..., None]
        spaced = schedule_lib.respaced(self.sched, steps)
        x = samplers.repaint_sample(self._model_fn(self.model, params["joint"]), spaced, known, known_mask, rng,
                                    jump_length=jump_length, jump_n_sample=jump_n_sample, pred=self.pred,
                                    learn_sigma=self.learn_sigma, indices=indices, method=method, eta=eta)
        return x[..., :3], x[..., 3:]


class TwoStageGenerator(Generator):
    kind = "two_stage"
    conditions_on_masks = True  # sample_images(params, rng, masks, spec, indices)

    def __init__(self, config):
        super().__init__(config)
        self.mask_model = make_unet(config.model, in_channels=1, out_channels=1)
        self.image_model = make_unet(config.model, in_channels=3, out_channels=3, cond_channels=1)
        self.cond_dropout = float(config.diffusion.cond_dropout)

    def init(self, rng, batch):
        s = self.image_size
        k1, k2 = jax.random.split(rng)
        t = jnp.zeros((1,), jnp.int32)
        mask_params = self.mask_model.init({"params": k1}, jnp.zeros((1, s, s, 1)), t)["params"]
        image_params = self.image_model.init({"params": k2}, jnp.zeros((1, s, s, 3)), t, jnp.zeros((1, s, s, 1)))["params"]
        return {"mask": mask_params, "image": image_params}, {}

    def loss(self, params, model_state, batch, rng):
        image, mask = to_model_range(batch)
        k_mask, k_image, k_drop = jax.random.split(rng, 3)
        mask_terms = self._unet_loss(self.mask_model, params["mask"], mask, k_mask)
        # Condition dropout: the unconditional model the guidance needs is the same network with
        # an all-zero condition.
        keep = jax.random.uniform(k_drop, (mask.shape[0], 1, 1, 1)) >= self.cond_dropout
        image_terms = self._unet_loss(self.image_model, params["image"], image, k_image, cond=mask * keep)
        loss = mask_terms["loss"].mean() + image_terms["loss"].mean()
        return loss, ({"mask_mse": mask_terms["mse"].mean(), "image_mse": image_terms["mse"].mean()}, model_state)

    def sample_masks(self, params, rng, n, spec: SamplerSpec, indices=None):
        s = self.image_size
        return run_sampler(self._model_fn(self.mask_model, params["mask"]), self.sched, (n, s, s, 1), rng,
                           spec, pred=self.pred, learn_sigma=self.learn_sigma, indices=indices)

    def _image_model_fn(self, params, masks, guidance: float):
        """The image model as a sampler's model_fn(x, t), conditioned on `masks` ([n,S,S,1], > 0 =
        polyp) with classifier-free guidance `guidance` (0: the conditional model alone)."""
        cond = jnp.where(masks > 0, 1.0, -1.0)
        model = self.image_model

        def model_fn_cond(x, t, c):
            return model.apply({"params": params["image"]}, x, t, c, train=False).astype(jnp.float32)

        if guidance == 0.0:
            return lambda x, t: model_fn_cond(x, t, cond)  # no second forward needed
        return samplers.cfg_model_fn(model_fn_cond, cond, guidance, learn_sigma=self.learn_sigma)

    def sample_images(self, params, rng, masks, spec: SamplerSpec, indices=None):
        """Images for given masks ([n,S,S,1] in [-1,1]), with guidance scale `spec.guidance`."""
        return run_sampler(self._image_model_fn(params, masks, spec.guidance), self.sched, masks.shape[:3] + (3,),
                           rng, spec, pred=self.pred, learn_sigma=self.learn_sigma, indices=indices)

    def paint(self, params, rng, image_u8, region, masks, *, jump_length=10, jump_n_sample=10, steps=250,
              guidance=0.0, indices=None, method="ddpm", eta=0.0):
        """RePaint with the mask-conditioned image model: the frame is regenerated inside `region`
        ({0,1} [n,S,S], 1 = new content) for the given `masks` ([n,S,S,1], > 0 = polyp), which are
        the labels as they are; outside the region the real frame is kept. -> image float [-1,1]."""
        image = image_u8.astype(jnp.float32) / 127.5 - 1.0
        known_mask = (1.0 - region.astype(jnp.float32))[..., None]
        spaced = schedule_lib.respaced(self.sched, steps)
        return samplers.repaint_sample(self._image_model_fn(params, masks, guidance), spaced, image, known_mask, rng,
                                       jump_length=jump_length, jump_n_sample=jump_n_sample, pred=self.pred,
                                       learn_sigma=self.learn_sigma, indices=indices, method=method, eta=eta)

    def sample(self, params, rng, n: int, spec: SamplerSpec, indices=None):
        k_mask, k_image = jax.random.split(rng)
        masks = self.sample_masks(params, k_mask, n, spec, indices)
        images = self.sample_images(params, k_image, masks, spec, indices)
        return images, jnp.where(masks > 0, 1.0, -1.0)


def paper_dilation_radius(size: int) -> int:
    """The paper dilates a mask by a 20x20 px ellipse at 256 px: radius 10 there, scaled with the size."""
    return max(1, round(10 * size / 256))


def dilate(region: jax.Array, radius: int) -> jax.Array:
    """{0,1} [n,S,S] grown by the footprint generate's host-side regions use (skimage's ellipse of
    radius `radius`, taken from skimage itself so the two cannot drift apart), on the device: a max
    over the footprint's offsets, unrolled at trace time."""
    from skimage import morphology
    if radius <= 0:
        return region
    padded = jnp.pad(region, ((0, 0), (radius, radius), (radius, radius)))
    out = region
    for dy, dx in np.argwhere(morphology.ellipse(radius, radius)):
        out = jnp.maximum(out, lax.dynamic_slice(padded, (0, int(dy), int(dx)), region.shape))
    return out


def paint_condition(image, region, masks):
    """The inpainter's input channels: the frame with the region blanked (0, mid-grey in [-1, 1]),
    the region and the polyp mask, both in [-1, 1] -> [n,S,S,5]."""
    r = region.astype(jnp.float32)[..., None]
    return jnp.concatenate([image * (1.0 - r), r * 2.0 - 1.0, jnp.where(masks > 0, 1.0, -1.0)], -1)


class InpainterGenerator(Generator):
    """The trained inpainter: x0 = the real frame, conditioned on paint_condition(frame, region,
    mask) with the region the frame's own mask dilated by `paint_radius` px (a random square of a
    third of the side where a frame has no polyp), so it learns to paint a polyp of a given shape
    and the mucosa around it from the context outside."""

    kind = "inpainter"
    paints_frames = True  # paint(params, rng, image_u8, region, masks, spec) instead of sample()

    def __init__(self, config):
        super().__init__(config)
        self.model = make_unet(config.model, in_channels=3, out_channels=3, cond_channels=5)
        self.paint_radius = paper_dilation_radius(self.image_size)

    def init(self, rng, batch):
        s = self.image_size
        params = self.model.init({"params": rng}, jnp.zeros((1, s, s, 3)), jnp.zeros((1,), jnp.int32),
                                 jnp.zeros((1, s, s, 5)))["params"]
        return {"inpainter": params}, {}

    def training_region(self, mask, rng):
        """{0,1} [n,S,S]: the dilated mask, or a random square where the mask is empty."""
        n, s = mask.shape[0], self.image_size
        region = dilate((mask[..., 0] > 0).astype(jnp.float32), self.paint_radius)
        side = max(2, s // 3)
        corner = jax.random.randint(rng, (n, 2), 0, s - side + 1)
        yy, xx = jnp.arange(s)[None, :, None], jnp.arange(s)[None, None, :]
        box = ((yy >= corner[:, :1, None]) & (yy < corner[:, :1, None] + side)
               & (xx >= corner[:, 1:, None]) & (xx < corner[:, 1:, None] + side)).astype(jnp.float32)
        empty = region.reshape(n, -1).max(axis=1) == 0
        return jnp.where(empty[:, None, None], box, region)

    def loss(self, params, model_state, batch, rng):
        image, mask = to_model_range(batch)
        k_region, k_loss = jax.random.split(rng)
        cond = paint_condition(image, self.training_region(mask, k_region), mask)
        terms = self._unet_loss(self.model, params["inpainter"], image, k_loss, cond=cond)
        return terms["loss"].mean(), ({"mse": terms["mse"].mean(), "vb": terms["vb"].mean()}, model_state)

    def paint(self, params, rng, image_u8, region, masks, spec: SamplerSpec, indices=None):
        """The frame regenerated inside `region` for the given `masks` ([n,S,S,1], > 0 = polyp),
        in `spec.steps` sampler steps; the caller composites the real frame outside the region.
        -> image float [-1,1]."""
        image = image_u8.astype(jnp.float32) / 127.5 - 1.0
        cond = paint_condition(image, region, masks)
        model_fn = self._model_fn(self.model, params["inpainter"], cond)
        return run_sampler(model_fn, self.sched, image.shape, rng, spec, pred=self.pred,
                           learn_sigma=self.learn_sigma, indices=indices)


def make_generator(config):
    kind = config.generator.kind
    if kind == "joint":
        return JointGenerator(config)
    if kind == "inpainter":
        return InpainterGenerator(config)
    if kind == "two_stage":
        return TwoStageGenerator(config)
    if kind == "gan":
        from polypjax.diffusion import gan  # imports this module
        return gan.GanGenerator(config)
    raise ValueError(f"config.generator.kind={kind!r} is unknown; choose one of {KINDS}")


def postprocess_pairs(images: np.ndarray, masks: np.ndarray, post_config) -> tuple[np.ndarray, np.ndarray]:
    """Host-side: [-1,1] floats -> uint8 images and cleaned {0,1} masks (the paper's clean-up)."""
    from polypjax.diffusion import postprocess
    images_u8 = to_uint8_image(images)
    masks_bin = postprocess.postprocess_masks(np.asarray(masks)[..., 0], radius=post_config.opening_radius,
                                              min_size=post_config.min_component_size)
    return images_u8, masks_bin.astype(np.uint8)


