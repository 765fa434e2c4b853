"""Convolution with a faster kernel gradient on XLA:CPU.

XLA:CPU lowers the kernel (filter) gradient of a convolution to a convolution whose "kernel" is the
whole output gradient, which runs at 3-20 GFLOP/s on the CPUs we measured, 5-20x slower than the
forward pass (measured per layer at batch 8; the session note on issue 3 has the table). Written instead as one matmul per kernel tap,
``dW[i, j] = X_shifted(i, j)^T @ dY``, it goes through the CPU's GEMM and is 4-6x faster; the
forward pass and the input gradient stay XLA's own. On GPU/TPU XLA's own gradient is already fast,
so ``conv_general_dilated`` only takes this path on the CPU backend. ``POLYPJAX_CONV_GRAD=xla`` turns
it off (benchmarks use it for the baseline).

Pass it to Flax as ``nn.Conv(..., conv_general_dilated=conv_general_dilated)``; parameters and
results are those of ``lax.conv_general_dilated`` (the gradient agrees to float32 rounding).
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from jax import lax

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


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
    """Drop-in for ``lax.conv_general_dilated``; NHWC/HWIO 2-D convolutions on CPU use tap gradients."""
    nd = lhs.ndim - 2
    lhs_dilation = tuple(lhs_dilation or (1,) * nd)
    rhs_dilation = tuple(rhs_dilation or (1,) * nd)
    dn = dimension_numbers
    simple = (
        nd == 2 and jax.default_backend() == "cpu" and feature_group_count == 1
        and os.environ.get("POLYPJAX_CONV_GRAD", "taps") != "xla"
        and batch_group_count == 1 and lhs_dilation == (1, 1) and preferred_element_type is None
        and dn is not None
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dn)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    )
    if not simple:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, batch_group_count=batch_group_count,
            precision=precision, preferred_element_type=preferred_element_type)
    strides = tuple(window_strides)
    pads = _explicit_padding(padding, lhs.shape[1:3], rhs.shape[:2], strides, rhs_dilation)
    return _conv_tapgrad(lhs, rhs, strides, pads, rhs_dilation, precision)
