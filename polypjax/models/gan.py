"""GAN networks for the mask-conditioned and joint generator baselines (NHWC, images in [-1, 1]).

* ``SPADEGenerator``: Park et al. 2019 ("Semantic Image Synthesis with Spatially-Adaptive
  Normalization"): a noise vector is projected to a coarse feature map and upsampled through
  residual blocks whose normalisation is parameter-free and then modulated per pixel by a scale
  and shift predicted from the segmentation map (SPADE). With ``condition=False`` there is no map:
  the modulation is an ordinary learned affine (the joint variant, which draws image and mask from
  noise as SinGAN-Seg's 4-channel output does).
* ``MultiScaleDiscriminator``: pix2pixHD (Wang et al. 2018): PatchGAN discriminators (Isola et al.
  2017: 4x4 stride-2 convolutions, LeakyReLU 0.2, instance norm, one logit per patch) on the input
  and on its 2x average-pooled copies; every layer's features are returned for feature matching.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from polypjax.models.conv import make_conv


def _instance_norm(affine: bool) -> nn.Module:
    return nn.GroupNorm(num_groups=None, group_size=1, use_scale=affine, use_bias=affine, epsilon=1e-5)


class SPADE(nn.Module):
    """Parameter-free instance norm, then per-pixel (1 + gamma(mask)), beta(mask)."""
    features: int
    hidden: int = 32
    condition: bool = True
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, segmap):
        conv = make_conv(self.conv)
        if not self.condition:
            return _instance_norm(True)(x)
        x = _instance_norm(False)(x)
        seg = jax.image.resize(segmap, x.shape[:3] + segmap.shape[-1:], "nearest")
        h = nn.relu(nn.Conv(self.hidden, (3, 3), conv_general_dilated=conv)(seg))
        gamma = nn.Conv(self.features, (3, 3), conv_general_dilated=conv)(h)
        beta = nn.Conv(self.features, (3, 3), conv_general_dilated=conv)(h)
        return x * (1.0 + gamma) + beta


class SPADEResBlock(nn.Module):
    features: int
    condition: bool = True
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, segmap):
        conv = make_conv(self.conv)
        mid = min(x.shape[-1], self.features)
        h = nn.Conv(mid, (3, 3), conv_general_dilated=conv)(
            nn.leaky_relu(SPADE(x.shape[-1], condition=self.condition, conv=self.conv)(x, segmap), 0.2))
        h = nn.Conv(self.features, (3, 3), conv_general_dilated=conv)(
            nn.leaky_relu(SPADE(mid, condition=self.condition, conv=self.conv)(h, segmap), 0.2))
        if x.shape[-1] != self.features:  # learned shortcut, as in the paper
            x = nn.Conv(self.features, (1, 1), use_bias=False, conv_general_dilated=conv)(
                SPADE(x.shape[-1], condition=self.condition, conv=self.conv)(x, segmap))
        return x + h


class SPADEGenerator(nn.Module):
    """(z [N, z_dim], segmap [N, S, S, 1] or None) -> tanh output [N, S, S, out_channels]."""
    image_size: int
    out_channels: int = 3
    channels: int = 64
    num_up: int = 3
    condition: bool = True
    conv: str = "auto"

    @nn.compact
    def __call__(self, z, segmap=None):
        conv = make_conv(self.conv)
        s0 = self.image_size // 2 ** self.num_up
        c0 = self.channels * 2 ** (self.num_up - 1)
        x = nn.Dense(s0 * s0 * c0)(z).reshape(z.shape[0], s0, s0, c0)
        for i in range(self.num_up):
            x = SPADEResBlock(self.channels * 2 ** (self.num_up - 1 - i), condition=self.condition,
                              conv=self.conv)(x, segmap)
            n, h, w, c = x.shape
            x = jax.image.resize(x, (n, 2 * h, 2 * w, c), "nearest")
        x = SPADEResBlock(self.channels, condition=self.condition, conv=self.conv)(x, segmap)
        x = nn.Conv(self.out_channels, (3, 3), conv_general_dilated=conv)(nn.leaky_relu(x, 0.2))
        return jnp.tanh(x)


class PatchDiscriminator(nn.Module):
    """-> list of every layer's activations; the last is the patch logits [N, h, w, 1]."""
    channels: int = 64
    num_layers: int = 3
    conv: str = "auto"

    @nn.compact
    def __call__(self, x):
        conv = make_conv(self.conv)
        feats = []
        for i in range(self.num_layers):
            x = nn.Conv(self.channels * 2 ** i, (4, 4), strides=(2, 2), conv_general_dilated=conv)(x)
            if i:  # no norm on the first layer (Isola et al.)
                x = _instance_norm(True)(x)
            x = nn.leaky_relu(x, 0.2)
            feats.append(x)
        feats.append(nn.Conv(1, (4, 4), conv_general_dilated=conv)(x))
        return feats


class MultiScaleDiscriminator(nn.Module):
    """-> one feature list per scale (input, 1/2, 1/4, ...)."""
    channels: int = 64
    num_layers: int = 3
    num_scales: int = 2
    conv: str = "auto"

    @nn.compact
    def __call__(self, x):
        out = []
        for i in range(self.num_scales):
            if i:
                x = nn.avg_pool(x, (3, 3), strides=(2, 2), padding="SAME")
            out.append(PatchDiscriminator(self.channels, self.num_layers, conv=self.conv)(x))
        return out
