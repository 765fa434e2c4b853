"""FID InceptionV3 (pytorch-fid's `fid_inception_v3`) in flax.linen, NHWC.

The network is the TensorFlow 2015-12-05 Inception graph that FID was defined with, as pytorch-fid
rebuilds it on top of torchvision's Inception3.  Its quirks are kept exactly:
  * average pooling in the A, C and E_1 blocks ignores the zero padding (count_include_pad=False);
  * the last block (E_2) max-pools in its pool branch;
  * BatchNorm eps is 1e-3 in every conv unit;
  * the original graph has a 1008-way classifier; pool3 features do not use it, so it is dropped.

Input is uint8 NHWC of any size.  Preprocessing is pytorch-fid's InceptionV3(resize_input=True,
normalize_input=True): x/255, then F.interpolate(bilinear, align_corners=False, no antialias) to
299x299 (run even when the input is already 299x299, where it is the identity), then 2x-1.  The
resize is a gather-and-lerp with the exact PyTorch source indices and weights; jax.image.resize
would antialias when shrinking and give different features.

Weights come from a converted local file (tools/convert_fid_inception.py); `convert_state_dict`
is numpy-only so the converter and the tests share it.
"""
import functools
import os
from typing import Any, Tuple

import numpy as np

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
INPUT_SIZE = 299
FEATURE_DIM = 2048
BN_EPS = 1e-3


# --------------------------------------------------------------------------- preprocessing

def bilinear_source_indices(in_size, out_size):
    """(i0, i1, lambda) of PyTorch's bilinear, align_corners=False, size=out_size (no scale).

    Follows ATen's area_pixel_compute_source_index in float32 (PyTorch's opmath for float32):
    src = (dst + 0.5) * in/out - 0.5, clamped at 0; the right neighbour is clamped to the edge.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    return i0, i1, lam


def resize_bilinear(x, size=(INPUT_SIZE, INPUT_SIZE)):
    """Resize float NHWC like F.interpolate(mode='bilinear', align_corners=False), no antialias.

    A gather of the two neighbours and a lerp per axis: O(output) work for any input size, where
    an interpolation matmul would cost O(input x output) per row.
    """
    for axis, out_size in ((1, size[0]), (2, size[1])):
        i0, i1, lam = bilinear_source_indices(x.shape[axis], out_size)
        shape = [1] * x.ndim
        shape[axis] = out_size
        lam = jnp.asarray(lam, x.dtype).reshape(shape)
        a = jnp.take(x, jnp.asarray(i0), axis=axis)
        b = jnp.take(x, jnp.asarray(i1), axis=axis)
        # (1-l)*a + l*b, the form ATen uses, rather than a + l*(b-a): the rounding matches.
        x = (1 - lam) * a + lam * b
    return x


def preprocess(images):
    """uint8 (or [0,255] float) NHWC -> float32 [-1,1] NHWC at 299x299, as pytorch-fid does."""
    x = jnp.asarray(images).astype(jnp.float32) / 255.0
    x = resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE))
    return 2 * x - 1


# --------------------------------------------------------------------------- network

def _avg_pool_3x3_exclude_pad(x):
    # TensorFlow's average pool divides by the number of real (unpadded) inputs.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=False)


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU."""
    features: int
    kernel_size: Tuple[int, int]
    strides: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                    padding=[(p, p) for p in self.padding], use_bias=False, dtype=self.dtype,
                    precision=self.precision, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, dtype=self.dtype,
                         name="bn")(x)
        return nn.relu(x)


class _Block(nn.Module):
    dtype: Any = jnp.float32
    precision: Any = None

    def conv(self, features, kernel_size, name, strides=(1, 1), padding=(0, 0)):
        return BasicConv2d(features, kernel_size, strides, padding, dtype=self.dtype,
                           precision=self.precision, name=name)


class FIDInceptionA(_Block):
    pool_features: int = 32

    @nn.compact
    def __call__(self, x):
        b1 = self.conv(64, (1, 1), "branch1x1")(x)
        b5 = self.conv(48, (1, 1), "branch5x5_1")(x)
        b5 = self.conv(64, (5, 5), "branch5x5_2", padding=(2, 2))(b5)
        b3 = self.conv(64, (1, 1), "branch3x3dbl_1")(x)
        b3 = self.conv(96, (3, 3), "branch3x3dbl_2", padding=(1, 1))(b3)
        b3 = self.conv(96, (3, 3), "branch3x3dbl_3", padding=(1, 1))(b3)
        bp = self.conv(self.pool_features, (1, 1), "branch_pool")(_avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
    @nn.compact
    def __call__(self, x):
        b3 = self.conv(384, (3, 3), "branch3x3", strides=(2, 2))(x)
        bd = self.conv(64, (1, 1), "branch3x3dbl_1")(x)
        bd = self.conv(96, (3, 3), "branch3x3dbl_2", padding=(1, 1))(bd)
        bd = self.conv(96, (3, 3), "branch3x3dbl_3", strides=(2, 2))(bd)
        bp = nn.max_pool(x, (3, 3), strides=(2, 2))
        return jnp.concatenate([b3, bd, bp], axis=-1)


class FIDInceptionC(_Block):
    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = self.conv(192, (1, 1), "branch1x1")(x)
        b7 = self.conv(c7, (1, 1), "branch7x7_1")(x)
        b7 = self.conv(c7, (1, 7), "branch7x7_2", padding=(0, 3))(b7)
        b7 = self.conv(192, (7, 1), "branch7x7_3", padding=(3, 0))(b7)
        bd = self.conv(c7, (1, 1), "branch7x7dbl_1")(x)
        bd = self.conv(c7, (7, 1), "branch7x7dbl_2", padding=(3, 0))(bd)
        bd = self.conv(c7, (1, 7), "branch7x7dbl_3", padding=(0, 3))(bd)
        bd = self.conv(c7, (7, 1), "branch7x7dbl_4", padding=(3, 0))(bd)
        bd = self.conv(192, (1, 7), "branch7x7dbl_5", padding=(0, 3))(bd)
        bp = self.conv(192, (1, 1), "branch_pool")(_avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
    @nn.compact
    def __call__(self, x):
        b3 = self.conv(192, (1, 1), "branch3x3_1")(x)
        b3 = self.conv(320, (3, 3), "branch3x3_2", strides=(2, 2))(b3)
        b7 = self.conv(192, (1, 1), "branch7x7x3_1")(x)
        b7 = self.conv(192, (1, 7), "branch7x7x3_2", padding=(0, 3))(b7)
        b7 = self.conv(192, (7, 1), "branch7x7x3_3", padding=(3, 0))(b7)
        b7 = self.conv(192, (3, 3), "branch7x7x3_4", strides=(2, 2))(b7)
        bp = nn.max_pool(x, (3, 3), strides=(2, 2))
        return jnp.concatenate([b3, b7, bp], axis=-1)


class FIDInceptionE(_Block):
    """E_1 (average pool excluding padding) when max_pool is False, E_2 (max pool) when True."""
    max_pool: bool = False

    @nn.compact
    def __call__(self, x):
        b1 = self.conv(320, (1, 1), "branch1x1")(x)
        b3 = self.conv(384, (1, 1), "branch3x3_1")(x)
        b3 = jnp.concatenate([
            self.conv(384, (1, 3), "branch3x3_2a", padding=(0, 1))(b3),
            self.conv(384, (3, 1), "branch3x3_2b", padding=(1, 0))(b3)], axis=-1)
        bd = self.conv(448, (1, 1), "branch3x3dbl_1")(x)
        bd = self.conv(384, (3, 3), "branch3x3dbl_2", padding=(1, 1))(bd)
        bd = jnp.concatenate([
            self.conv(384, (1, 3), "branch3x3dbl_3a", padding=(0, 1))(bd),
            self.conv(384, (3, 1), "branch3x3dbl_3b", padding=(1, 0))(bd)], axis=-1)
        if self.max_pool:
            # pytorch-fid: "the FID Inception model uses max pooling instead of average pooling"
            # here, as the TF graph does; flax pads max pooling with -inf, like PyTorch.
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3_exclude_pad(x)
        bp = self.conv(192, (1, 1), "branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """uint8 NHWC images -> float32 [N, 2048] pool3 features.

    dtype: compute dtype (float32, or bfloat16 for speed; parameters stay float32).  precision:
    matmul/conv precision; None picks HIGHEST for float32 so GPUs/TPUs do not silently use
    TF32/bf16 passes and drift from the reference, and the backend default for bfloat16.
    With preprocess=False the input must already be float NHWC in [-1, 1] at 299x299.
    """
    dtype: Any = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x, preprocess_input: bool = True):
        if preprocess_input:
            x = preprocess(x)
        precision = self.precision
        if precision is None and jnp.dtype(self.dtype) == jnp.float32:
            precision = jax.lax.Precision.HIGHEST
        kw = dict(dtype=self.dtype, precision=precision)
        conv = functools.partial(BasicConv2d, **kw)
        x = x.astype(self.dtype)
        x = conv(32, (3, 3), (2, 2), name="Conv2d_1a_3x3")(x)
        x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = FIDInceptionA(pool_features=32, name="Mixed_5b", **kw)(x)
        x = FIDInceptionA(pool_features=64, name="Mixed_5c", **kw)(x)
        x = FIDInceptionA(pool_features=64, name="Mixed_5d", **kw)(x)
        x = InceptionB(name="Mixed_6a", **kw)(x)
        x = FIDInceptionC(channels_7x7=128, name="Mixed_6b", **kw)(x)
        x = FIDInceptionC(channels_7x7=160, name="Mixed_6c", **kw)(x)
        x = FIDInceptionC(channels_7x7=160, name="Mixed_6d", **kw)(x)
        x = FIDInceptionC(channels_7x7=192, name="Mixed_6e", **kw)(x)
        x = InceptionD(name="Mixed_7a", **kw)(x)
        x = FIDInceptionE(max_pool=False, name="Mixed_7b", **kw)(x)
        x = FIDInceptionE(max_pool=True, name="Mixed_7c", **kw)(x)
        # Adaptive average pool to 1x1, accumulated in float32 even for bfloat16 compute.
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


# --------------------------------------------------------------------------- weights

_BN_KEYS = {"weight": ("params", "scale"), "bias": ("params", "bias"),
            "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def convert_state_dict(state_dict):
    """pytorch-fid FID-Inception state_dict (numpy arrays) -> flat {'params/...': array} dict.

    Numpy only.  Conv kernels OIHW -> HWIO; BatchNorm weight/bias -> params scale/bias and
    running_mean/var -> batch_stats mean/var.  The 1008-way fc and BN step counters are dropped
    (pool3 does not use them); any other key is an error, so a wrong file fails loudly.
    """
    out = {}
    for key, value in state_dict.items():
        value = np.asarray(value)
        parts = key.split(".")
        if parts[0] == "fc" or parts[-1] == "num_batches_tracked":
            continue
        module, layer, leaf = parts[:-2], parts[-2], parts[-1]
        path = "/".join(module + [layer])
        if layer == "conv" and leaf == "weight" and value.ndim == 4:
            out[f"params/{path}/kernel"] = np.ascontiguousarray(
                value.transpose(2, 3, 1, 0)).astype(np.float32)
        elif layer == "bn" and leaf in _BN_KEYS:
            collection, name = _BN_KEYS[leaf]
            out[f"{collection}/{path}/{name}"] = value.astype(np.float32)
        else:
            raise ValueError(f"unexpected key {key!r} {value.shape} in FID Inception state_dict")
    return out


@functools.lru_cache(maxsize=None)
def _variable_shapes():
    abstract = jax.eval_shape(FIDInceptionV3().init, jax.random.PRNGKey(0),
                              jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.uint8))
    flat = traverse_util.flatten_dict(jax.tree_util.tree_map(lambda a: a.shape, abstract),
                                      sep="/")
    return {k: tuple(v) for k, v in flat.items()}


def variable_shapes():
    """{'params/Conv2d_1a_3x3/conv/kernel': (3, 3, 3, 32), ...} of the flax model (no compute)."""
    return dict(_variable_shapes())


def torch_state_dict_shapes():
    """PyTorch names and shapes of the state_dict tensors pool3 depends on (inverse mapping)."""
    inverse = {v: k for k, v in _BN_KEYS.items()}
    out = {}
    for path, shape in _variable_shapes().items():
        collection, *module, name = path.split("/")
        prefix = ".".join(module)
        if name == "kernel":
            kh, kw, cin, cout = shape
            out[f"{prefix}.weight"] = (cout, cin, kh, kw)
        else:
            out[f"{prefix}.{inverse[(collection, name)]}"] = shape
    return out


def variables_from_flat(flat):
    """Check a flat converted dict against the model and nest it for `FIDInceptionV3.apply`."""
    expected = _variable_shapes()
    missing = sorted(set(expected) - set(flat))
    extra = sorted(set(flat) - set(expected))
    bad = [f"{k}: {tuple(flat[k].shape)} != {expected[k]}" for k in sorted(set(expected) & set(flat))
           if tuple(flat[k].shape) != expected[k]]
    if missing or extra or bad:
        raise ValueError("FID Inception weights do not match the model: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}, "
                         f"wrong shapes {bad[:5]}")
    return traverse_util.unflatten_dict(
        {k: jnp.asarray(v, jnp.float32) for k, v in flat.items()}, sep="/")


@functools.lru_cache(maxsize=None)
def _jitted_apply(dtype: str, precision):
    # One jitted function per (dtype, precision) for the whole process: the weights are an
    # argument, so every loaded copy (every set, every run in one process) shares its compilations.
    return jax.jit(FIDInceptionV3(dtype=jnp.dtype(dtype), precision=precision).apply)


def load_fid_inception(path, dtype=jnp.float32, precision=None, sharding=None):
    """Jitted `images uint8 [N,H,W,3] -> float32 [N,2048]` from a converted `.npz` weights file.

    Weights are passed to the jitted function as arguments rather than closed over, so 90 MB of
    constants are not baked into every compiled executable (one per input size); `sharding`
    (e.g. replicated over a mesh) places them. The jitted function is built once per dtype and
    precision per process, whatever the number of loads.
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"FID Inception weights not found at {path!r}. Download pytorch-fid's "
            f"{FID_WEIGHTS_URL.rsplit('/', 1)[-1]} from {FID_WEIGHTS_URL} and convert it with "
            f"`python tools/convert_fid_inception.py --src pt_inception-2015-12-05-6726825d.pth "
            f"--dst {path}` (needs PyTorch in the converting environment).")
    with np.load(path) as data:
        flat = {k: data[k] for k in data.files}
    variables = variables_from_flat(flat)
    if sharding is not None:
        variables = jax.device_put(variables, sharding)
    return functools.partial(_jitted_apply(jnp.dtype(dtype).name, precision), variables)
