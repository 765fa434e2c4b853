"""Convolutions for the CPU backend: oneDNN kernels, or XLA's with a faster kernel gradient.

XLA:CPU's kernel (filter) gradient of a convolution runs several times slower than its forward pass
and input gradient; the oneDNN kernels PyTorch uses on the CPU run all three at about the same rate
(figures: ``tools/README.md``, "Measurements"; ``tools/bench_conv.py`` measures them). A model
takes its path from the string field ``conv`` (``config.model.conv``), passed to every ``nn.Conv``
as ``conv_general_dilated=make_conv(conv)``:

- ``onednn``: forward, input gradient and kernel gradient as XLA FFI calls into oneDNN
  (``polypjax.native.onednn``; built when a CPU computation first traces one);
- ``taps``: XLA's forward and input gradient, and the kernel gradient as one GEMM per kernel tap,
  ``dW[i, j] = X_shifted(i, j)^T @ dY`` (no native code);
- ``xla``: ``lax.conv_general_dilated`` unchanged (the baseline benchmarks compare against);
- ``auto`` (default): ``onednn`` where it builds, else ``taps``.

Only NHWC/HWIO 2-D convolutions without groups or input dilation on the CPU backend take the
first two paths, in float32; oneDNN also takes bfloat16 (float32 accumulation) on CPUs with
AVX512-BF16 or AMX, where its bf16 kernels beat its float32 ones (``onednn.has_bf16()``). Everything
else, and every other backend (XLA's GPU/TPU convolutions are already fast), is
``lax.conv_general_dilated``, so a path is a choice of speed, never of result: parameters and
results are those of ``lax.conv_general_dilated`` (tests check values and both gradients to
float32 rounding). ``forced(impl)`` overrides every model's choice while a computation is traced
(FLOP counts trace with ``xla``: XLA's cost analysis counts nothing inside FFI calls).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from polypjax.native import onednn

_NHWC = ("NHWC", "HWIO", "NHWC")


def _explicit_padding(padding, in_shape, kernel_shape, strides, dilation):
    if isinstance(padding, str):
        eff = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilation)]
        return tuple(lax.padtype_to_pads(in_shape, eff, strides, padding))
    return tuple(tuple(p) for p in padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_tapgrad(x, w, strides, padding, dilation, precision):
    return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                    dimension_numbers=_NHWC, precision=precision)


def _fwd(x, w, strides, padding, dilation, precision):
    return _conv_tapgrad(x, w, strides, padding, dilation, precision), (x, w)


def _after(a, dep):
    """``a``, with a data dependence on ``dep`` that XLA keeps (x * 0 is not folded for floats)."""
    return a + (dep.reshape(-1)[0] * 0).astype(a.dtype)


def _bwd(strides, padding, dilation, precision, res, dy):
    x, w = res
    # The input gradient XLA emits is a plain forward-style convolution and already fast.
    _, vjp_x = jax.vjp(lambda x_: lax.conv_general_dilated(
        x_, w, strides, padding, rhs_dilation=dilation, dimension_numbers=_NHWC,
        precision=precision), x)
    (dx,) = vjp_x(dy)
    kh, kw, cin, cout = w.shape
    (pt, pb), (pl, pr) = padding
    n, ho, wo, _ = dy.shape
    sh, sw = strides
    dh, dw_ = dilation
    dy2 = dy.reshape(-1, cout)
    # The shifted copies depend only on the forward input, so XLA's scheduler would make the copies
    # of every layer early and keep them all alive (20 GiB at the paper's scale). Optimization
    # barriers are gone by scheduling time on XLA:CPU, so each copy gets a real data dependence on
    # dY or on the previous tap's product (adding 0 * one element, which XLA does not fold for
    # floats): one copy alive at a time, made only once dY exists.
    xp = jnp.pad(_after(x, dy2), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    taps = []
    for i in range(kh):
        for j in range(kw):
            xs = lax.slice(_after(xp, taps[-1]) if taps else xp, (0, i * dh, j * dw_, 0),
                           (n, i * dh + sh * (ho - 1) + 1, j * dw_ + sw * (wo - 1) + 1, cin),
                           (1, sh, sw, 1))
            # The barrier keeps the slice out of the dot: fused, XLA:CPU would emit a naive loop
            # instead of calling its GEMM.
            xs = lax.optimization_barrier(xs).reshape(-1, cin)
            taps.append(jnp.dot(xs.T, dy2, precision=precision,
                                preferred_element_type=jnp.float32))
    dw = jnp.stack(taps).reshape(kh, kw, cin, cout).astype(w.dtype)
    return dx, dw


_conv_tapgrad.defvjp(_fwd, _bwd)


def _onednn_call(op, shape, a, b, strides, padding, dilation):
    """One oneDNN convolution call; operands and result share ``a``'s dtype."""
    onednn.load()  # registers the targets (once) before anything is lowered
    return jax.ffi.ffi_call(onednn.TARGETS[op], jax.ShapeDtypeStruct(shape, a.dtype),
                            vmap_method="sequential")(
        a, b, strides=np.asarray(strides, np.int64),
        padding=np.asarray([p for pair in padding for p in pair], np.int64),
        dilation=np.asarray(dilation, np.int64))


def _out_shape(x_shape, w_shape, strides, padding, dilation):
    n, h, w, _ = x_shape
    kh, kw, _, cout = w_shape
    spatial = [(size + lo + hi - (k - 1) * d - 1) // s + 1 for size, (lo, hi), k, s, d
               in zip((h, w), padding, (kh, kw), strides, dilation)]
    return (n, *spatial, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_onednn(x, w, strides, padding, dilation):
    return _onednn_call("forward", _out_shape(x.shape, w.shape, strides, padding, dilation),
                        x, w, strides, padding, dilation)


def _onednn_fwd(x, w, strides, padding, dilation):
    return _conv_onednn(x, w, strides, padding, dilation), (x, w)


def _onednn_bwd(strides, padding, dilation, res, dy):
    x, w = res
    dx = _onednn_call("input_grad", x.shape, dy, w, strides, padding, dilation)
    dw = _onednn_call("kernel_grad", w.shape, x, dy, strides, padding, dilation)
    return dx, dw


_conv_onednn.defvjp(_onednn_fwd, _onednn_bwd)

IMPLS = ("auto", "onednn", "taps", "xla")
_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("polypjax_conv_forced", default=None)


def check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"conv={impl!r} is unknown; choose one of {', '.join(IMPLS)}")


@contextlib.contextmanager
def forced(impl: str):
    """Every convolution traced inside the block takes path ``impl``, whatever its model says.
    Only traces made inside count: a function jax.jit traced before keeps its cached trace, so
    trace a fresh one (``jax.jit(lambda *a: fn(*a))``)."""
    check_impl(impl)
    token = _FORCED.set(impl)
    try:
        yield
    finally:
        _FORCED.reset(token)


def _onednn_dtype(dtype) -> bool:
    """float32 always; bfloat16 where the CPU has bf16 instructions (oneDNN's bf16 kernels there
    beat its float32 ones; elsewhere XLA's bf16 convolution is the better fallback)."""
    return dtype == jnp.float32 or (dtype == jnp.bfloat16 and onednn.has_bf16())


def resolve_impl(impl: str = "auto") -> str:
    """The path ``impl`` stands for on this machine (``auto`` builds or loads oneDNN to find out)."""
    check_impl(impl)
    if impl == "auto":
        return "onednn" if jax.default_backend() == "cpu" and onednn.available() else "taps"
    if impl == "onednn":
        onednn.load()  # raises NativeUnavailable with the reason
    return impl


@functools.cache
def make_conv(impl: str = "auto"):
    """A drop-in for ``lax.conv_general_dilated`` taking path ``impl`` (see the module docstring).
    The path is resolved when a CPU convolution it can take is traced, so building a model, and
    running it on another backend, never builds the native kernels."""
    check_impl(impl)

    def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                             rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                             batch_group_count=1, precision=None, preferred_element_type=None):
        nd = lhs.ndim - 2
        lhs_dilation = tuple(lhs_dilation or (1,) * nd)
        rhs_dilation = tuple(rhs_dilation or (1,) * nd)
        dn = dimension_numbers
        choice = _FORCED.get() or impl
        simple = (
            nd == 2 and choice != "xla" and feature_group_count == 1 and batch_group_count == 1
            and lhs_dilation == (1, 1) and preferred_element_type is None and dn is not None
            and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dn)
            == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
            and jax.default_backend() == "cpu"
        )
        if simple:
            path = resolve_impl(choice)
            strides = tuple(window_strides)
            pads = _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2], strides, rhs_dilation)
            if (path == "onednn" and lhs.dtype == rhs.dtype and _onednn_dtype(lhs.dtype)
                    and min(p for pair in pads for p in pair) >= 0):
                return _conv_onednn(lhs, rhs, strides, pads, rhs_dilation)
            return _conv_tapgrad(lhs, rhs, strides, pads, rhs_dilation, precision)
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, batch_group_count=batch_group_count,
            precision=precision, preferred_element_type=preferred_element_type)

    return conv_general_dilated
