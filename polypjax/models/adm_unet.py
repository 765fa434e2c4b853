"""guided-diffusion's UNet (Dhariwal & Nichol 2021, "ADM") in Flax linen, NHWC.

Same architecture as ``guided_diffusion/unet.py`` ``UNetModel``: sinusoidal timestep embedding and a
two-layer time MLP (width 4 * model_channels); ResBlocks of GroupNorm + SiLU + conv with the time
embedding added, or applied as a FiLM scale/shift after the second norm (``use_scale_shift_norm``);
dropout before the zero-initialised second conv; multi-head self-attention (legacy head ordering,
softmax in float32); down/upsampling by ResBlocks (``resblock_updown``) or by strided conv / nearest
+ conv (``conv_resample``) / average pooling; a middle block ResBlock-Attention-ResBlock; skip
connections from every input block; zero-initialised output conv.

Differences from the PyTorch code, all deliberate:

* ``attention_resolutions`` are feature-map sizes (e.g. (16, 8) at 256x256), not downsampling
  rates, since the module sees its input size; the height of the current feature map is compared.
* GroupNorm uses the largest group count <= 32 that divides the channels, so tiny test models
  work; at the usual widths this is 32 as in guided-diffusion.
* Conditioning images ``cond`` [N, H, W, cond_channels] (e.g. the mask, for a mask-conditioned
  image model) are concatenated to the input channels.
* ``dtype`` is the compute dtype (e.g. bfloat16); parameters stay float32, norms and softmax run in
  float32 and the output is float32.
* ``conv`` picks how the convolutions run on the CPU (``polypjax.models.conv``: auto, onednn,
  taps, xla); it changes speed only, not parameters or results.

Call as ``model.apply(variables, x, t, cond, train=..., rngs={"dropout": key})``; ``t`` is an int or
float array [N] (or a scalar, broadcast over the batch).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from polypjax.models.conv import make_conv

Dtype = Any

_zeros = nn.initializers.zeros


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """guided-diffusion ``timestep_embedding``: [cos(t f), sin(t f)], f geometric from 1 to 1/max_period."""
    t = jnp.asarray(t, jnp.float32)
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


def num_groups(channels: int, max_groups: int = 32) -> int:
    """Largest group count <= max_groups dividing ``channels``."""
    for g in range(min(max_groups, channels), 0, -1):
        if channels % g == 0:
            return g
    return 1


class GroupNorm(nn.Module):
    """``nn.GroupNorm`` (same parameters, same maths) with its statistics taken per channel first.

    Flax reduces over (H, W, C/G) of an [N, H, W, G, C/G] view; XLA:CPU runs that strided
    reduction far below memory bandwidth. Means of x and x^2 over the spatial axes are contiguous
    in C; the group averages of those [N, C] sums are then tiny.
    """

    num_groups: int
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        x = x.astype(jnp.float32)
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        spatial = tuple(range(1, x.ndim - 1))
        grouped = (x.shape[0], self.num_groups, c // self.num_groups)
        mean = jnp.mean(jnp.mean(x, spatial).reshape(grouped), -1)
        mean_sq = jnp.mean(jnp.mean(jnp.square(x), spatial).reshape(grouped), -1)
        var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)  # flax's use_fast_variance
        inv = jnp.repeat(lax.rsqrt(var + self.epsilon), c // self.num_groups, -1) * scale
        shift = bias - jnp.repeat(mean, c // self.num_groups, -1) * inv
        bshape = (x.shape[0],) + (1,) * len(spatial) + (c,)
        return x * inv.reshape(bshape) + shift.reshape(bshape)


class Norm(nn.Module):
    """GroupNorm computed in float32 (guided-diffusion ``GroupNorm32``), cast back to the input dtype."""

    @nn.compact
    def __call__(self, x):
        return GroupNorm(num_groups=num_groups(x.shape[-1]), epsilon=1e-5)(x).astype(x.dtype)


def _conv(features, dtype, conv, kernel=3, stride=1, zero=False, name=None):
    pad = kernel // 2
    kw = dict(kernel_init=_zeros) if zero else {}
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), dtype=dtype, name=name,
                   conv_general_dilated=make_conv(conv), **kw)


def _upsample(x):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _avgpool(x):
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class ResBlock(nn.Module):
    out_channels: int
    dropout: float = 0.0
    use_scale_shift_norm: bool = False
    up: bool = False
    down: bool = False
    dtype: Dtype = jnp.float32
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, emb, train: bool = False):
        h = nn.silu(Norm()(x))
        if self.up:
            h, x = _upsample(h), _upsample(x)
        elif self.down:
            h, x = _avgpool(h), _avgpool(x)
        h = _conv(self.out_channels, self.dtype, self.conv)(h)
        emb_width = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
        emb_out = nn.Dense(emb_width, dtype=self.dtype)(nn.silu(emb)).astype(h.dtype)
        emb_out = emb_out[:, None, None, :]
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(emb_out, 2, axis=-1)
            h = Norm()(h) * (1 + scale) + shift
        else:
            h = Norm()(h + emb_out)
        h = nn.silu(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = _conv(self.out_channels, self.dtype, self.conv, zero=True)(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, self.dtype, self.conv, kernel=1)(x)
        return x + h


# Recomputes the block's activations in the backward pass. Named like ResBlock so that parameter
# trees (and checkpoints) are the same with and without remat.
_RematResBlock = nn.remat(ResBlock, static_argnums=(3,))
_RematResBlock.__name__ = "ResBlock"


class AttentionBlock(nn.Module):
    num_heads: int = 1
    num_head_channels: int = -1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        if self.num_head_channels == -1:
            heads = self.num_heads
        else:
            if c % self.num_head_channels:
                raise ValueError(f"{c} channels not divisible by num_head_channels={self.num_head_channels}")
            heads = c // self.num_head_channels
        if c % heads:
            raise ValueError(f"{c} channels not divisible by num_heads={heads}")
        ch = c // heads
        qkv = nn.Dense(3 * c, dtype=self.dtype, name="qkv")(Norm()(x)).reshape(b, hgt * wid, 3 * c)
        # Legacy ordering (QKVAttentionLegacy): heads split first, then q/k/v within each head.
        qkv = qkv.reshape(b, hgt * wid, heads, 3 * ch)
        q, k, v = (jnp.swapaxes(a, 1, 2) for a in jnp.split(qkv, 3, axis=-1))  # [b, heads, t, ch]
        scale = 1.0 / math.sqrt(math.sqrt(ch))
        # The barriers keep each matmul and the softmax in fusions of their own: XLA:CPU fuses the
        # whole block into one YNNPACK graph otherwise, which runs several times slower.
        q, k, v = lax.optimization_barrier((q * scale, k * scale, v))
        logits = lax.optimization_barrier(jnp.einsum("bhtc,bhsc->bhts", q, k))
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        a = jnp.einsum("bhts,bhsc->bhtc", lax.optimization_barrier(weights), v)
        a = jnp.swapaxes(a, 1, 2).reshape(b, hgt, wid, c)
        a = nn.Dense(c, dtype=self.dtype, kernel_init=_zeros, name="proj_out")(a)
        return x + a.astype(x.dtype)


class ADMUNet(nn.Module):
    """guided-diffusion ``UNetModel`` (see the module docstring for the differences)."""

    model_channels: int = 128
    out_channels: int = 4
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = (16, 8)
    dropout: float = 0.0
    channel_mult: Sequence[int] = (1, 2, 4, 8)
    conv_resample: bool = True
    num_heads: int = 1
    num_head_channels: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    learn_sigma: bool = False
    in_channels: Optional[int] = None  # checked when given
    cond_channels: int = 0
    remat: bool = False  # gradient checkpointing of ResBlocks (guided-diffusion use_checkpoint)
    dtype: Dtype = jnp.float32
    conv: str = "auto"  # how convolutions run on the CPU (polypjax.models.conv); not what they compute

    @property
    def size_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @nn.compact
    def __call__(self, x, t, cond=None, *, train: bool = False):
        if x.ndim != 4:
            raise ValueError(f"ADMUNet expects NHWC input [N, H, W, C], got shape {x.shape}")
        n, hgt, wid, c_in = x.shape
        if self.in_channels is not None and c_in != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {c_in}")
        if hgt % self.size_factor or wid % self.size_factor:
            raise ValueError(f"H and W must be multiples of {self.size_factor}, got {hgt}x{wid}")
        if self.cond_channels:
            if cond is None or cond.shape != (n, hgt, wid, self.cond_channels):
                got = None if cond is None else cond.shape
                raise ValueError(f"cond must have shape {(n, hgt, wid, self.cond_channels)}, got {got}")
            x = jnp.concatenate([x, cond.astype(x.dtype)], axis=-1)
        elif cond is not None:
            raise ValueError("cond given but the model was built with cond_channels=0")
        t = jnp.broadcast_to(jnp.asarray(t), (n,))

        mc = self.model_channels
        emb = timestep_embedding(t, mc)
        emb = nn.Dense(4 * mc, dtype=self.dtype, name="time_embed_0")(emb)
        emb = nn.Dense(4 * mc, dtype=self.dtype, name="time_embed_1")(nn.silu(emb))

        block_cls = _RematResBlock if self.remat else ResBlock

        def res(ch, h, up=False, down=False):
            blk = block_cls(ch, self.dropout, self.use_scale_shift_norm, up, down, self.dtype, self.conv)
            return blk(h, emb, train)

        def attn(h):
            if h.shape[1] in self.attention_resolutions:
                h = AttentionBlock(self.num_heads, self.num_head_channels, self.dtype)(h)
            return h

        h = _conv(int(self.channel_mult[0] * mc), self.dtype, self.conv)(x.astype(self.dtype))
        hs = [h]
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = attn(res(int(mult * mc), h))
                hs.append(h)
            if level != len(self.channel_mult) - 1:
                ch = h.shape[-1]
                if self.resblock_updown:
                    h = res(ch, h, down=True)
                elif self.conv_resample:
                    h = _conv(ch, self.dtype, self.conv, stride=2)(h)
                else:
                    h = _avgpool(h)
                hs.append(h)

        ch = h.shape[-1]
        h = res(ch, h)
        h = AttentionBlock(self.num_heads, self.num_head_channels, self.dtype)(h)
        h = res(ch, h)

        for level, mult in list(enumerate(self.channel_mult))[::-1]:
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, hs.pop()], axis=-1)
                h = attn(res(int(mc * mult), h))
                if level and i == self.num_res_blocks:
                    ch = h.shape[-1]
                    if self.resblock_updown:
                        h = res(ch, h, up=True)
                    else:
                        h = _upsample(h)
                        if self.conv_resample:
                            h = _conv(ch, self.dtype, self.conv)(h)

        h = nn.silu(Norm()(h))
        out_ch = self.out_channels * (2 if self.learn_sigma else 1)
        out = _conv(out_ch, self.dtype, self.conv, zero=True, name="out")(h)
        return out.astype(jnp.float32)


def param_count(params: Any) -> int:
    return int(sum(p.size for p in jax.tree.leaves(params)))
