"""The GAN generator family (`config.generator.kind = "gan"`), the baseline the paper compares with.

- `gan.joint = False`: a SPADE generator draws an image for a given mask (mask + noise -> image);
  its masks come from elsewhere (real masks: generate mode `from_masks`), so only the image stage
  differs from the two_stage family.
- `gan.joint = True`: image and mask from noise, one 4-channel output (SinGAN-Seg's analogue).

The discriminator always judges the (image, mask) pair, 4 channels. Losses: hinge (Lim & Ye 2017;
Miyato et al. 2018) and pix2pixHD's discriminator feature matching (L1 between the discriminator's
features of real and generated pairs, weight `gan.feature_matching`).

Both networks train in one step of the shared loop (`train/loop.py`) from one scalar: the
discriminator's loss sees the generated pairs through `stop_gradient`, the generator's sees the
discriminator's parameters through `stop_gradient`, so the one gradient of their sum is each
network's own gradient (simultaneous updates), and each parameter tree ({'gen', 'disc'}) has its own
optimizer (`optim_fields`, TTUR learning rates as in SPADE). The API is that of the diffusion families
(diffusion/generators.py): pure functions of (params, arrays, rng); per-pair noise from
`fold_in(rng, index)`, so pairs do not depend on the batch split.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from polypjax.diffusion import samplers
from polypjax.diffusion.generators import to_model_range
from polypjax.models import gan as gan_models


def _hinge_d(real_logits, fake_logits):
    return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


class GanGenerator:
    kind = "gan"

    def __init__(self, config):
        g, m = config.gan, config.model
        self.config = config
        self.image_size = int(config.data.image_size)
        self.joint = bool(g.joint)
        self.conditions_on_masks = not self.joint
        self.z_dim = int(g.z_dim)
        self.fm_weight = float(g.feature_matching)
        # The config block of each parameter tree's optimizer (the training task builds them).
        self.optim_fields = {"gen": "optim", "disc": "optim_disc"}
        conv = m.get("conv", "auto")
        self.gen = gan_models.SPADEGenerator(self.image_size, out_channels=4 if self.joint else 3,
                                             channels=int(m.gen_channels), num_up=int(m.num_up),
                                             condition=not self.joint, conv=conv)
        self.disc = gan_models.MultiScaleDiscriminator(int(m.disc_channels), int(m.disc_layers),
                                                       int(m.disc_scales), conv=conv)

    def init(self, rng, batch):
        s = self.image_size
        kg, kd = jax.random.split(rng)
        segmap = None if self.joint else jnp.zeros((1, s, s, 1))
        gen = self.gen.init(kg, jnp.zeros((1, self.z_dim)), segmap)["params"]
        disc = self.disc.init(kd, jnp.zeros((1, s, s, 4)))["params"]
        return {"gen": gen, "disc": disc}, {}

    def _generate(self, gen_params, z, masks):
        out = self.gen.apply({"params": gen_params}, z, None if self.joint else masks)
        if self.joint:
            return out[..., :3], out[..., 3:]
        return out, masks

    def _noise(self, rng, n, indices=None):
        keys = samplers.example_keys(rng, n, indices)
        return jax.vmap(lambda k: jax.random.normal(k, (self.z_dim,)))(keys)

    def loss(self, params, model_state, batch, rng):
        image, mask = to_model_range(batch)
        real = jnp.concatenate([image, mask], -1)
        fake_image, fake_mask = self._generate(params["gen"], self._noise(rng, image.shape[0]), mask)
        fake = jnp.concatenate([fake_image, fake_mask], -1)
        disc = lambda p, x: self.disc.apply({"params": p}, x)  # noqa: E731
        frozen = jax.lax.stop_gradient(params["disc"])
        real_feats = disc(params["disc"], real)
        d_loss = sum(_hinge_d(r[-1], f[-1]) for r, f in
                     zip(real_feats, disc(params["disc"], jax.lax.stop_gradient(fake))))
        fake_feats = disc(frozen, fake)
        adv = sum(-jnp.mean(f[-1]) for f in fake_feats)
        fm = sum(jnp.mean(jnp.abs(fl - jax.lax.stop_gradient(rl)))
                 for r, f in zip(real_feats, fake_feats) for rl, fl in zip(r[:-1], f[:-1])) / len(fake_feats)
        g_loss = adv + self.fm_weight * fm
        return d_loss + g_loss, ({"d_loss": d_loss, "g_loss": g_loss, "g_adv": adv, "feature_matching": fm},
                                 model_state)

    def sample_images(self, params, rng, masks, spec=None, indices=None):
        """Images [n,S,S,3] in [-1,1] for given masks ([n,S,S,1] in [-1,1]); `spec` is unused."""
        cond = jnp.where(masks > 0, 1.0, -1.0)
        return self._generate(params["gen"], self._noise(rng, masks.shape[0], indices), cond)[0]

    def sample(self, params, rng, n: int, spec=None, indices=None):
        """-> (image [n,S,S,3], mask [n,S,S,1]) in [-1,1]; the joint variant only."""
        if not self.joint:
            raise ValueError("the mask-conditioned GAN (gan.joint=False) samples images for given masks: "
                             "use sample_images (generate mode from_masks)")
        return self._generate(params["gen"], self._noise(rng, n, indices), None)
