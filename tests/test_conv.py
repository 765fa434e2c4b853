"""The tap-gradient convolution agrees with lax.conv_general_dilated in value and both gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from polypjax.models.conv import conv_general_dilated

CASES = [  # kernel, stride, dilation, padding, cin, cout, size
    (3, 1, 1, ((1, 1), (1, 1)), 8, 16, 17),
    (3, 2, 1, ((1, 1), (1, 1)), 8, 16, 17),  # odd size: the last strided window is partial
    (7, 2, 1, ((3, 3), (3, 3)), 3, 16, 32),  # ResNet stem
    (1, 1, 1, "SAME", 8, 4, 9),
    (1, 2, 1, "VALID", 8, 8, 16),  # strided 1x1 shortcut
    (3, 1, 2, ((2, 2), (2, 2)), 8, 8, 16),  # atrous
    (3, 2, 1, "SAME", 4, 4, 16),
]


@pytest.mark.parametrize("k,s,d,pad,cin,cout,size", CASES)
def test_matches_lax(k, s, d, pad, cin, cout, size):
    rng = np.random.default_rng(k * 100 + s * 10 + d)
    x = jnp.asarray(rng.standard_normal((2, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)), jnp.float32)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (s, s), pad, rhs_dilation=(d, d),
                                                 dimension_numbers=dn)))

    ref_val, ref_grads = jax.value_and_grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
    val, grads = jax.jit(jax.value_and_grad(loss(conv_general_dilated), (0, 1)))(x, w)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.abs(r).max()))


def test_grouped_falls_back_to_lax():
    x = jnp.ones((1, 8, 8, 4)); w = jnp.ones((3, 3, 1, 4))
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    f = lambda x, w: jnp.sum(conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn,
                                                  feature_group_count=4) ** 2)
    g = lambda x, w: jnp.sum(lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn,
                                                      feature_group_count=4) ** 2)
    np.testing.assert_allclose(jax.grad(f, 1)(x, w), jax.grad(g, 1)(x, w), rtol=1e-6)


def test_tap_gradient_memory_stays_near_xla():
    """The shifted copies are made one at a time inside each layer's backward pass: without the
    data dependences XLA:CPU scheduled all copies of all layers early (3.5x XLA's temporaries here,
    20 GiB at the paper's scale)."""
    if jax.default_backend() != "cpu":
        pytest.skip("the tap gradient is a CPU path")
    dn = ("NHWC", "HWIO", "NHWC")

    def net(conv):
        def f(ws, x):
            for w in ws:
                x = jax.nn.silu(conv(x, w, (1, 1), "SAME", dimension_numbers=dn))
            return jnp.sum(x)
        return f

    ws = [jax.ShapeDtypeStruct((3, 3, 32, 32), jnp.float32)] * 6
    x = jax.ShapeDtypeStruct((2, 32, 32, 32), jnp.float32)
    temp = {name: jax.jit(jax.grad(net(conv))).lower(ws, x).compile().memory_analysis().temp_size_in_bytes
            for name, conv in (("taps", conv_general_dilated), ("xla", lax.conv_general_dilated))}
    one_copy = 2 * 34 * 34 * 32 * 4
    assert temp["taps"] <= temp["xla"] + 2 * one_copy, temp
