"""The oneDNN and tap-gradient convolutions agree with lax.conv_general_dilated in value and both
gradients, and the path is chosen as documented."""
import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from polypjax.models import conv as conv_mod
from polypjax.native import onednn

# The oneDNN wheels exist for Linux x86_64, where the package depends on them: there the native
# path must build (a test failing here means the fast path silently fell back).
ONEDNN_EXPECTED = platform.system() == "Linux" and platform.machine() == "x86_64"
IMPLS = ["taps", "onednn"]


def _need(impl):
    """Elsewhere oneDNN is tried when a test first needs it, never while tests are collected."""
    if impl == "onednn" and not ONEDNN_EXPECTED and not onednn.available():
        pytest.skip("oneDNN not available here")

CASES = [  # kernel, stride, dilation, padding, cin, cout, size
    (3, 1, 1, ((1, 1), (1, 1)), 8, 16, 17),
    (3, 2, 1, ((1, 1), (1, 1)), 8, 16, 17),  # odd size: the last strided window is partial
    (7, 2, 1, ((3, 3), (3, 3)), 3, 16, 32),  # ResNet stem
    (1, 1, 1, "SAME", 8, 4, 9),
    (1, 2, 1, "VALID", 8, 8, 16),  # strided 1x1 shortcut
    (3, 1, 2, ((2, 2), (2, 2)), 8, 8, 16),  # atrous
    (3, 2, 1, "SAME", 4, 4, 16),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k,s,d,pad,cin,cout,size", CASES)
def test_matches_lax(k, s, d, pad, cin, cout, size, impl):
    _need(impl)
    rng = np.random.default_rng(k * 100 + s * 10 + d)
    x = jnp.asarray(rng.standard_normal((2, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)), jnp.float32)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (s, s), pad, rhs_dilation=(d, d),
                                                 dimension_numbers=dn)))

    ref_val, ref_grads = jax.value_and_grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
    val, grads = jax.jit(jax.value_and_grad(loss(conv_mod.make_conv(impl)), (0, 1)))(x, w)
    np.testing.assert_allclose(val, ref_val, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.abs(r).max()))


def test_onednn_builds_where_its_wheel_exists():
    if not ONEDNN_EXPECTED:
        pytest.skip("no oneDNN wheel for this platform; the taps path is used")
    onednn.load()  # raises with the compiler's message if the build fails
    assert onednn.available()
    assert conv_mod.resolve_impl("auto") == "onednn"


def test_onednn_call_is_an_ffi_custom_call():
    _need("onednn")
    x = jnp.ones((2, 8, 8, 4)); w = jnp.ones((3, 3, 4, 4))
    f = lambda x, w: conv_mod.make_conv("onednn")(x, w, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    hlo = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), (0, 1))).lower(x, w).as_text()
    for target in onednn.TARGETS.values():
        assert target in hlo


def test_onednn_under_vmap():
    _need("onednn")
    conv = conv_mod.make_conv("onednn")
    dn = ("NHWC", "HWIO", "NHWC")
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.standard_normal((3, 2, 6, 6, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.float32)
    got = jax.jit(jax.vmap(lambda x: conv(x, w, (1, 1), "SAME", dimension_numbers=dn)))(xs)
    want = jax.vmap(lambda x: lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                       dimension_numbers=dn))(xs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,s,d,pad,cin,cout,size", CASES)
def test_bfloat16_matches_float32_to_bf16_rounding(k, s, d, pad, cin, cout, size):
    """bfloat16 convolutions take oneDNN where the CPU has bf16 instructions, XLA's elsewhere; on
    either path value and both gradients match a float32 convolution of the same bf16 numbers to
    bfloat16 rounding (float32 accumulation)."""
    _need("onednn")
    rng = np.random.default_rng(k * 100 + s * 10 + d)
    x = jnp.asarray(rng.standard_normal((2, size, size, cin)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.bfloat16)
    dn = ("NHWC", "HWIO", "NHWC")
    conv = conv_mod.make_conv("onednn")
    f = lambda x, w: conv(x, w, (s, s), pad, rhs_dilation=(d, d), dimension_numbers=dn)
    ref = lambda x, w: lax.conv_general_dilated(x, w, (s, s), pad, rhs_dilation=(d, d),
                                                dimension_numbers=dn)
    hlo = jax.jit(f).lower(x, w).as_text()
    assert ("polypjax_onednn" in hlo) == onednn.has_bf16()

    y, vjp = jax.vjp(f, x, w)
    f32 = lambda a: a.astype(jnp.float32)  # noqa: E731
    y_ref, vjp_ref = jax.vjp(ref, f32(x), f32(w))
    dy = jnp.asarray(rng.standard_normal(y.shape), jnp.bfloat16)
    assert y.dtype == jnp.bfloat16
    for got, want in [(y, y_ref), *zip(jax.jit(vjp)(dy), vjp_ref(f32(dy)))]:
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(f32(got), want, rtol=2 ** -7, atol=2 ** -7 * float(jnp.abs(want).max()))


def test_bad_impl_is_named():
    match = "conv='cudnn' is unknown; choose one of auto, onednn, taps, xla"
    for call in (conv_mod.make_conv, conv_mod.resolve_impl):
        with pytest.raises(ValueError, match=match):
            call("cudnn")
    with pytest.raises(ValueError, match=match):
        with conv_mod.forced("cudnn"):
            pass


def test_forced_overrides_every_model_while_tracing():
    """FLOP counts trace with forced("xla"): XLA counts nothing inside the FFI calls."""
    _need("onednn")
    x = jnp.ones((2, 8, 8, 4)); w = jnp.ones((3, 3, 4, 4))
    f = lambda x, w: conv_mod.make_conv("onednn")(x, w, (1, 1), "SAME",  # noqa: E731
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    hlo = lambda: jax.jit(lambda *a: f(*a)).lower(x, w).as_text()  # noqa: E731 - a fresh trace each
    assert "polypjax_onednn" in hlo()
    with conv_mod.forced("xla"):
        forced_hlo = hlo()
    assert "polypjax_onednn" not in forced_hlo and "convolution" in forced_hlo
    assert "polypjax_onednn" in hlo()  # the block ended


def test_native_kernels_build_only_when_a_cpu_convolution_needs_them():
    """Importing the models and the tasks, building models and running XLA-path convolutions
    leave oneDNN alone; the first convolution that may take it loads it."""
    code = (
        "import jax, jax.numpy as jnp\n"
        "from polypjax.native import onednn\n"
        "import polypjax.train.segmentation, polypjax.train.diffusion, polypjax.experiments.generate\n"
        "from polypjax.models import segmenters, adm_unet\n"
        "m = segmenters.create_model('unet', features=(4, 8), conv='xla')\n"
        "v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)\n"
        "m.apply(v, jnp.zeros((1, 8, 8, 3)), train=False)\n"
        "adm_unet.ADMUNet(model_channels=8, channel_mult=(1,), attention_resolutions=())\n"
        "print(onednn.load.cache_info().currsize)\n"
        "segmenters.create_model('unet', features=(4, 8)).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)\n"
        "print(onednn.load.cache_info().currsize)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0", "1" if ONEDNN_EXPECTED or onednn.available() else "0"]


def test_grouped_falls_back_to_lax():
    x = jnp.ones((1, 8, 8, 4)); w = jnp.ones((3, 3, 1, 4))
    dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    f = lambda x, w: jnp.sum(conv_mod.make_conv("auto")(x, w, (1, 1), "SAME", dimension_numbers=dn,
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
            for name, conv in (("taps", conv_mod.make_conv("taps")),
                               ("xla", lax.conv_general_dilated))}
    one_copy = 2 * 34 * 34 * 32 * 4
    assert temp["taps"] <= temp["xla"] + 2 * one_copy, temp


def test_native_cache_refuses_unsafe_folders_and_foreign_libraries(tmp_path, monkeypatch):
    import os

    from polypjax.native import onednn
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    monkeypatch.setenv("POLYPJAX_NATIVE_CACHE", str(shared))
    with pytest.raises(onednn.NativeUnavailable, match="writable by group or others"):
        onednn._safe_cache_dir()
    own = tmp_path / "own"
    monkeypatch.setenv("POLYPJAX_NATIVE_CACHE", str(own))
    assert onednn._safe_cache_dir() == own and (own.stat().st_mode & 0o777) == 0o700
    lib = own / "polypjax_onednn_abc.so"
    lib.write_bytes(b"\x7fELF built")
    assert not onednn._verified(lib, "abc")  # no sidecar: not known to be ours
    onednn._write_sidecar(lib, "abc")
    assert onednn._verified(lib, "abc") and not onednn._verified(lib, "other-build")
    lib.write_bytes(b"\x7fELF swapped")  # replaced after the build
    assert not onednn._verified(lib, "abc")


def test_flop_counts_see_through_the_native_path():
    """XLA counts nothing inside FFI calls: step_flops traces under forced("xla")."""
    _need("onednn")
    from polypjax.train import compute
    x = jnp.ones((2, 16, 16, 8)); w = jnp.ones((3, 3, 8, 8))
    dn = ("NHWC", "HWIO", "NHWC")

    def step(conv):
        return jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w, (1, 1), "SAME", dimension_numbers=dn)), 1))

    native, xla = (compute.step_flops(step(conv_mod.make_conv(impl)), x, w) for impl in ("onednn", "xla"))
    # The kernel gradient's multiply-adds (fewer at the zero-padded border); custom calls count none.
    assert native == xla and xla > 0.8 * 2 * 2 * 16 * 16 * 9 * 8 * 8
