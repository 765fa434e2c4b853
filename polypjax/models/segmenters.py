"""Segmentation models (Flax linen, NHWC) behind one registry.

Every model maps normalised float images [N, H, W, 3] to logits [N, H, W, num_classes] in float32,
whatever the compute ``dtype`` (parameters always stay float32). Every model uses BatchNorm and is
called as ``model.apply(variables, x, train=..., mutable=["batch_stats"] if train else False)``, so
the training loop treats them all alike.

Models (``create_model(name, **kwargs)``):

* ``unet``: Ronneberger et al. 2015 with same-padding, BatchNorm, transposed-conv upsampling.
* ``unetpp``: UNet++ (Zhou et al. 2018), nested dense skips, optional deep supervision.
* ``resunet34``: ResNet-34 encoder + UNet decoder shaped like segmentation_models_pytorch
  ``Unet("resnet34", classes=1)``; 24,436,369 parameters with the defaults, as smp.
* ``deeplabv3plus``: DeepLabV3+ (Chen et al. 2018) on the same ResNet-34 encoder at output stride 16,
  laid out like smp's ``DeepLabV3Plus("resnet34")`` (separable ASPP, rates 12/24/36).

Every model takes ``conv`` (``config.model.conv``): how its convolutions run on the CPU
(``polypjax.models.conv``: auto, onednn, taps, xla); it changes speed only, not parameters or results.

H and W must be multiples of the model's ``size_factor`` (its total downsampling); any other size
raises ValueError rather than silently cropping or padding feature maps.

Every model also sows its deepest encoder feature map (the UNets' bottleneck, the ResNet's last
stage) as ``intermediates/encoder``; :func:`encoder_features` returns it average-pooled, [N, C]:
a feature space learnt on polyp frames, for Fréchet distances that need no downloaded network.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from polypjax.models.conv import make_conv

Dtype = Any

# PyTorch's BatchNorm defaults (momentum 0.1 there is 0.9 here), so models behave like the smp ones.
_BN_MOMENTUM = 0.9
_BN_EPS = 1e-5
ENCODER = "encoder"  # name of the sown deepest encoder feature map


def _check_size(x: jax.Array, factor: int, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name} expects NHWC images [N, H, W, C], got shape {x.shape}")
    h, w = x.shape[1], x.shape[2]
    if h % factor or w % factor:
        raise ValueError(
            f"{name} needs H and W to be multiples of {factor}, got {h}x{w}; resize or pad the input"
        )


def _upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
    # Exact nearest-neighbour x2 (as torch F.interpolate(scale_factor=2)); repeat is cheaper than resize.
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def _resize_bilinear(x: jax.Array, h: int, w: int) -> jax.Array:
    # Half-pixel centres (torch align_corners=False); smp's DeepLabV3+ uses align_corners=True, which
    # only matters when porting trained weights, not when training here.
    return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), method="bilinear")


class ConvBNAct(nn.Module):
    """Conv (no bias, BN follows) + BatchNorm + optional ReLU: the one building block of all models."""

    features: int
    kernel: int = 3
    strides: int = 1
    dilation: int = 1
    groups: int = 1
    act: bool = True
    dtype: Dtype = jnp.float32
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool):
        pad = self.dilation * (self.kernel - 1) // 2
        x = nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=(self.strides, self.strides),
            padding=((pad, pad), (pad, pad)),
            kernel_dilation=(self.dilation, self.dilation),
            feature_group_count=self.groups,
            use_bias=False,
            conv_general_dilated=make_conv(self.conv),
            dtype=self.dtype,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        )(x)
        x = nn.BatchNorm(
            use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS, dtype=self.dtype
        )(x)
        return nn.relu(x) if self.act else x


class DoubleConv(nn.Module):
    """Two 3x3 conv-BN-ReLU, the UNet / UNet++ node."""

    features: int
    dtype: Dtype = jnp.float32
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool):
        x = ConvBNAct(self.features, dtype=self.dtype, conv=self.conv)(x, train)
        return ConvBNAct(self.features, dtype=self.dtype, conv=self.conv)(x, train)


class Head(nn.Module):
    """Final conv with bias, cast to float32 so losses and metrics never see bf16 logits."""

    num_classes: int
    kernel: int = 1
    dtype: Dtype = jnp.float32
    conv: str = "auto"

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.num_classes, (self.kernel, self.kernel), padding="SAME", dtype=self.dtype,
                    conv_general_dilated=make_conv(self.conv))(x)
        return x.astype(jnp.float32)


def _up_conv(features: int, dtype: Dtype) -> nn.Module:
    # Learned 2x2 stride-2 up-convolution as in Ronneberger et al. ("up-conv 2x2").
    return nn.ConvTranspose(features, (2, 2), strides=(2, 2), padding="SAME", dtype=dtype)


class UNet(nn.Module):
    """UNet; ``features`` gives the width per level and its length the depth (len-1 poolings)."""

    features: Sequence[int] = (32, 64, 128, 256, 512)
    num_classes: int = 1
    dtype: Dtype = jnp.float32
    conv: str = "auto"

    @property
    def size_factor(self) -> int:
        return 2 ** (len(self.features) - 1)

    @nn.compact
    def __call__(self, x, train: bool):
        _check_size(x, self.size_factor, "unet")
        x = x.astype(self.dtype)
        skips = []
        for i, f in enumerate(self.features):
            if i:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = DoubleConv(f, dtype=self.dtype, conv=self.conv)(x, train)
            skips.append(x)
        self.sow("intermediates", ENCODER, x)
        for f, skip in zip(reversed(self.features[:-1]), reversed(skips[:-1])):
            x = _up_conv(f, self.dtype)(x)
            x = DoubleConv(f, dtype=self.dtype, conv=self.conv)(jnp.concatenate([skip, x], axis=-1), train)
        return Head(self.num_classes, dtype=self.dtype, conv=self.conv)(x)


class UNetPlusPlus(nn.Module):
    """UNet++ with nested dense skips X^{i,j} = node(concat[X^{i,0..j-1}, up(X^{i+1,j-1})]).

    With L = len(features) - 1 the decoder nodes on the top row are X^{0,1..L}.

    Output:
      * ``deep_supervision=False``: one 1x1 head on X^{0,L}: [N, H, W, C].
      * ``deep_supervision=True`` and ``train=True``: the L heads on X^{0,1..L} stacked on a new
        leading axis: [L, N, H, W, C] (shallowest first); the loss should average over that axis.
      * ``deep_supervision=True`` and ``train=False``: the mean of those L logit maps, [N, H, W, C]
        (the paper's "accurate mode", averaged in logit space so the output stays logits).
    """

    features: Sequence[int] = (32, 64, 128, 256, 512)
    num_classes: int = 1
    deep_supervision: bool = False
    dtype: Dtype = jnp.float32
    conv: str = "auto"

    @property
    def size_factor(self) -> int:
        return 2 ** (len(self.features) - 1)

    @nn.compact
    def __call__(self, x, train: bool):
        _check_size(x, self.size_factor, "unetpp")
        x = x.astype(self.dtype)
        depth = len(self.features) - 1
        # nodes[i][j] is X^{i,j}; column j is computed once column j-1 exists on every row below.
        nodes = [[] for _ in range(depth + 1)]
        for i, f in enumerate(self.features):
            if i:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = DoubleConv(f, dtype=self.dtype, conv=self.conv, name=f"X_{i}_0")(x, train)
            nodes[i].append(x)
        self.sow("intermediates", ENCODER, x)
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                up = _up_conv(self.features[i], self.dtype)(nodes[i + 1][j - 1])
                inp = jnp.concatenate(nodes[i][:j] + [up], axis=-1)
                node = DoubleConv(self.features[i], dtype=self.dtype, conv=self.conv, name=f"X_{i}_{j}")
                nodes[i].append(node(inp, train))
        if not self.deep_supervision:
            return Head(self.num_classes, dtype=self.dtype, conv=self.conv)(nodes[0][depth])
        heads = jnp.stack(
            [Head(self.num_classes, dtype=self.dtype, conv=self.conv, name=f"head_{j}")(nodes[0][j])
             for j in range(1, depth + 1)]
        )
        return heads if train else heads.mean(axis=0)


class BasicBlock(nn.Module):
    """torchvision ResNet BasicBlock; ``dilation`` replaces stride in the dilated (OS16) stage."""

    features: int
    strides: int = 1
    dilation: int = 1
    dtype: Dtype = jnp.float32
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool):
        residual = x
        cba = functools.partial(ConvBNAct, dtype=self.dtype, conv=self.conv)
        y = cba(self.features, 3, self.strides, self.dilation)(x, train)
        y = cba(self.features, 3, 1, self.dilation, act=False)(y, train)
        if self.strides != 1 or x.shape[-1] != self.features:
            residual = cba(self.features, 1, self.strides, act=False)(x, train)
        return nn.relu(y + residual)


class ResNetEncoder(nn.Module):
    """ResNet (BasicBlock) encoder; defaults are ResNet-34. Returns the smp feature list.

    Features: [stem (after ReLU, stride 2), stage1 (4), stage2 (8), stage3 (16), stage4 (32 or 16)].
    ``dilate_last`` keeps stage 4 at stride 16 with dilation 2 (smp's ``output_stride=16``).
    """

    stage_features: Sequence[int] = (64, 128, 256, 512)
    stage_blocks: Sequence[int] = (3, 4, 6, 3)
    stem_features: int = 64
    dilate_last: bool = False
    dtype: Dtype = jnp.float32
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool):
        x = ConvBNAct(self.stem_features, 7, 2, dtype=self.dtype, conv=self.conv, name="stem")(x, train)
        feats = [x]
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        last = len(self.stage_features) - 1
        for s, (f, n) in enumerate(zip(self.stage_features, self.stage_blocks)):
            dilated = self.dilate_last and s == last
            for b in range(n):
                strides = 2 if (b == 0 and s > 0 and not dilated) else 1
                x = BasicBlock(f, strides, 2 if dilated else 1, dtype=self.dtype, conv=self.conv,
                               name=f"layer{s + 1}_{b}")(x, train)
            feats.append(x)
        return feats


class ResUNet34(nn.Module):
    """smp ``Unet("resnet34")``: ResNet-34 encoder, decoder blocks of nearest-up x2, concat skip,
    two conv3x3-BN-ReLU, then a 3x3 head. The encoder/decoder widths can be shrunk for tests."""

    num_classes: int = 1
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16)
    stage_features: Sequence[int] = (64, 128, 256, 512)
    stage_blocks: Sequence[int] = (3, 4, 6, 3)
    stem_features: int = 64
    dtype: Dtype = jnp.float32
    conv: str = "auto"

    @property
    def size_factor(self) -> int:
        return 32

    @nn.compact
    def __call__(self, x, train: bool):
        _check_size(x, self.size_factor, "resunet34")
        x = x.astype(self.dtype)
        feats = ResNetEncoder(
            self.stage_features, self.stage_blocks, self.stem_features, dtype=self.dtype, conv=self.conv,
            name="encoder",
        )(x, train)
        self.sow("intermediates", ENCODER, feats[-1])
        # Deepest first; the last decoder block (back to full resolution) has no skip.
        x, skips = feats[-1], feats[-2::-1] + [None]
        for d, (ch, skip) in enumerate(zip(self.decoder_channels, skips)):
            x = _upsample_nearest(x)
            if skip is not None:
                x = jnp.concatenate([x, skip], axis=-1)
            x = ConvBNAct(ch, dtype=self.dtype, conv=self.conv, name=f"decoder{d}_conv1")(x, train)
            x = ConvBNAct(ch, dtype=self.dtype, conv=self.conv, name=f"decoder{d}_conv2")(x, train)
        return Head(self.num_classes, kernel=3, dtype=self.dtype, conv=self.conv)(x)


class SeparableConvBNAct(nn.Module):
    """Depthwise (dilated) 3x3 then pointwise 1x1 + BN + ReLU, as smp's ``SeparableConv2d`` blocks."""

    features: int
    dilation: int = 1
    dtype: Dtype = jnp.float32
    conv: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool):
        c, d = x.shape[-1], self.dilation
        x = nn.Conv(
            c, (3, 3), padding=((d, d), (d, d)), kernel_dilation=(d, d), feature_group_count=c,
            use_bias=False, dtype=self.dtype,
        )(x)
        return ConvBNAct(self.features, 1, dtype=self.dtype, conv=self.conv)(x, train)


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ on a ResNet encoder at output stride 16, smp layout.

    ASPP on stage 4: 1x1 branch, separable 3x3 branches at ``atrous_rates``, image pooling branch;
    concat -> 1x1 projection (-> dropout) -> separable 3x3 -> bilinear x4 up to stride 4, concat with
    the stage-1 features reduced to 48 channels, separable 3x3, 1x1 head, then bilinear upsampling to
    the input size. smp uses dropout 0.5 after the projection; the default here is 0 so that, like the
    other models, training needs no "dropout" rng (set ``dropout=0.5`` and pass
    ``rngs={"dropout": key}`` to match smp).
    """

    num_classes: int = 1
    decoder_channels: int = 256
    atrous_rates: Sequence[int] = (12, 24, 36)
    low_level_channels: int = 48
    stage_features: Sequence[int] = (64, 128, 256, 512)
    stage_blocks: Sequence[int] = (3, 4, 6, 3)
    stem_features: int = 64
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    conv: str = "auto"

    @property
    def size_factor(self) -> int:
        return 16

    @nn.compact
    def __call__(self, x, train: bool):
        _check_size(x, self.size_factor, "deeplabv3plus")
        n, h, w, _ = x.shape
        x = x.astype(self.dtype)
        feats = ResNetEncoder(
            self.stage_features, self.stage_blocks, self.stem_features, dilate_last=True,
            dtype=self.dtype, conv=self.conv, name="encoder",
        )(x, train)
        high, low = feats[-1], feats[1]
        self.sow("intermediates", ENCODER, high)
        c = self.decoder_channels
        cba = functools.partial(ConvBNAct, dtype=self.dtype, conv=self.conv)
        sep = functools.partial(SeparableConvBNAct, dtype=self.dtype, conv=self.conv)
        branches = [cba(c, 1, name="aspp_1x1")(high, train)]
        for r in self.atrous_rates:
            branches.append(sep(c, r, name=f"aspp_rate{r}")(high, train))
        pooled = jnp.mean(high, axis=(1, 2), keepdims=True)
        # BN over a 1x1 map needs batch>1 in train mode, exactly as in PyTorch; fine for training batches.
        pooled = cba(c, 1, name="aspp_pool")(pooled, train)
        branches.append(jnp.broadcast_to(pooled, branches[0].shape))
        y = cba(c, 1, name="aspp_project")(jnp.concatenate(branches, -1), train)
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        y = sep(c, name="aspp_sep")(y, train)
        y = _resize_bilinear(y, low.shape[1], low.shape[2])
        low = cba(self.low_level_channels, 1, name="low_level")(low, train)
        y = sep(c, name="fuse")(jnp.concatenate([y, low], -1), train)
        y = Head(self.num_classes, kernel=1, dtype=self.dtype, conv=self.conv)(y)
        return _resize_bilinear(y, h, w)


MODELS: dict[str, type] = {
    "unet": UNet,
    "unetpp": UNetPlusPlus,
    "resunet34": ResUNet34,
    "deeplabv3plus": DeepLabV3Plus,
}


def create_model(name: str, **kwargs) -> nn.Module:
    """Builds the segmenter registered as ``name`` with the given constructor kwargs."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown segmentation model {name!r}; known models: {sorted(MODELS)}") from None
    if "features" in kwargs and kwargs["features"] is not None:
        kwargs["features"] = tuple(kwargs["features"])
    return cls(**kwargs)


def input_multiple(model: nn.Module) -> int:
    """The side lengths a model accepts are multiples of this (its total downsampling): skip
    connections must meet feature maps of the same size on the way up."""
    if isinstance(model, (UNet, UNetPlusPlus)):
        return 2 ** (len(model.features) - 1)
    if isinstance(model, DeepLabV3Plus):
        return 16  # output stride 16 (the last stage is dilated)
    return 32  # ResNet encoder: stem, max-pool and three strided stages


def count_params(params) -> int:
    """Number of trainable scalars (BatchNorm running statistics live in batch_stats, not here)."""
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))


def encoder_features(model: nn.Module, variables: dict, x: jax.Array) -> jax.Array:
    """Average-pooled deepest encoder features [N, C] (float32) of ``model`` in inference mode."""
    _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    (fmap,) = state["intermediates"][ENCODER]
    return jnp.mean(fmap.astype(jnp.float32), axis=(1, 2))
