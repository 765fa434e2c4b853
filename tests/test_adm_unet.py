"""guided-diffusion UNet in Flax: embedding, tiny configs, CFG with a real network, paper-scale build."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polypjax.diffusion import samplers as SM
from polypjax.models.adm_unet import ADMUNet, num_groups, param_count, timestep_embedding

TINY = dict(model_channels=16, num_res_blocks=1, attention_resolutions=(8,), channel_mult=(1, 2),
            num_head_channels=8, use_scale_shift_norm=True, resblock_updown=True)
PAPER = dict(model_channels=256, num_res_blocks=2, attention_resolutions=(16, 8),
             channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64, use_scale_shift_norm=True,
             resblock_updown=True, in_channels=4, out_channels=4)


def _random_params(shapes, seed=0, scale=0.05):
    # Host-side random values for every leaf: makes the zero-initialised layers non-trivial and
    # avoids compiling another initialiser.
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), shapes)


def _shapes(model, x, t, cond=None):
    return jax.eval_shape(model.init, jax.random.key(0), x, t, cond)


def test_timestep_embedding_matches_guided_diffusion():
    t = np.array([0, 1, 250, 999], dtype=np.float64)
    for dim in (8, 9):
        half = dim // 2
        freqs = np.exp(-math.log(10000) * np.arange(half) / half)
        args = t[:, None] * freqs[None]
        want = np.concatenate([np.cos(args), np.sin(args)], axis=-1)
        if dim % 2:
            want = np.concatenate([want, np.zeros_like(want[:, :1])], axis=-1)
        np.testing.assert_allclose(timestep_embedding(jnp.asarray(t), dim), want, atol=2e-4)
        np.testing.assert_allclose(timestep_embedding(jnp.asarray(t, jnp.int32), dim), want, atol=2e-4)


def test_num_groups():
    assert num_groups(256) == 32 and num_groups(64) == 32
    assert num_groups(16) == 16 and num_groups(12) == 12 and num_groups(48) == 24 and num_groups(3) == 3


def test_tiny_init_forward_and_options():
    model = ADMUNet(out_channels=4, learn_sigma=True, cond_channels=1, dropout=0.1, **TINY)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 4)), jnp.float32)
    cond = jnp.ones((2, 16, 16, 1))
    t = jnp.array([3, 700])
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x, t, cond)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    assert set(variables) == {"params"}  # no batch statistics: samples are independent of the batch
    apply = jax.jit(model.apply, static_argnames="train")
    out = apply(variables, x, t, cond)
    assert out.shape == (2, 16, 16, 8) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)  # zero-initialised output conv, as guided-diffusion

    params = _random_params(variables)
    ev = apply(params, x, t, cond)
    assert float(jnp.abs(ev).mean()) > 0
    tr = apply(params, x, t, cond, train=True, rngs={"dropout": jax.random.key(1, impl="rbg")})
    assert not np.allclose(tr, ev)  # dropout is active in training only
    # Each example depends only on itself (GroupNorm, no batch norm): reversing the batch
    # reverses the outputs.
    np.testing.assert_allclose(apply(params, x[::-1], t[::-1], cond[::-1]), ev[::-1], atol=1e-5)

    with pytest.raises(ValueError, match="cond"):
        model.apply(params, x, t, None)
    with pytest.raises(ValueError, match="multiples"):
        model.apply(params, x[:, :15, :15], t, cond[:, :15, :15])


def test_bf16_compute_and_plain_resampling():
    base = dict(TINY, resblock_updown=False, use_scale_shift_norm=False, num_heads=2, num_head_channels=-1)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 16, 16, 3)), jnp.float32)
    t = jnp.array([10])
    f32 = ADMUNet(out_channels=3, **base)
    params = _random_params(_shapes(f32, x, t), seed=1)
    bf16 = ADMUNet(out_channels=3, dtype=jnp.bfloat16, **base)
    both = jax.jit(lambda p: (f32.apply(p, x, t), bf16.apply(p, x, t)))
    a, b = both(params)
    assert b.dtype == jnp.float32 and a.shape == (1, 16, 16, 3)
    rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
    assert rel < 0.05, rel
    # conv_resample=False: avg-pool down, nearest up, no resampling parameters.
    no_conv = ADMUNet(out_channels=3, conv_resample=False, **base)
    assert param_count(_shapes(no_conv, x, t)) < param_count(params)


def test_bf16_training_gradient_matches_float32():
    """bfloat16 compute (oneDNN's bf16 convolutions where the CPU has them) gives the float32
    gradient of a denoising loss up to bf16 rounding: the same direction, the same size."""
    base = dict(TINY, use_scale_shift_norm=False, num_heads=2, num_head_channels=-1)
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((2, 16, 16, 4)), jnp.float32)
    eps = jnp.asarray(rng.standard_normal((2, 16, 16, 4)), jnp.float32)
    t = jnp.array([10, 700])
    f32 = ADMUNet(out_channels=4, **base)
    params = _random_params(_shapes(f32, x, t), seed=3)
    bf16 = ADMUNet(out_channels=4, dtype=jnp.bfloat16, **base)

    def grad(model):
        loss = lambda p: jnp.mean((model.apply(p, x, t) - eps) ** 2)  # noqa: E731
        g = jax.jit(jax.grad(loss))(params)
        return jnp.concatenate([v.ravel() for v in jax.tree_util.tree_leaves(g)])

    a, b = grad(f32), grad(bf16)
    assert b.dtype == jnp.float32
    cos = float(jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
    assert cos > 0.995, cos
    assert abs(float(jnp.linalg.norm(b) / jnp.linalg.norm(a)) - 1) < 0.05


def test_cfg_with_unet_w0_equals_conditional():
    model = ADMUNet(out_channels=4, cond_channels=1, **TINY)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 16, 16, 4)), jnp.float32)
    cond = jnp.asarray(np.random.default_rng(3).random((2, 16, 16, 1)) > 0.5, jnp.float32)
    t = jnp.array([5, 400])
    params = _random_params(_shapes(model, x, t, cond), seed=2)

    @jax.jit
    def run(params):
        cond_fn = lambda xx, tt, cc: model.apply(params, xx, tt, cc)  # noqa: E731
        return cond_fn(x, t, cond), SM.cfg_model_fn(cond_fn, cond, 0.0)(x, t), \
            SM.cfg_model_fn(cond_fn, cond, 3.0)(x, t), cond_fn(x, t, jnp.zeros_like(cond))

    direct, w0, w3, uncond = run(params)
    np.testing.assert_allclose(w0, direct, atol=1e-6)
    np.testing.assert_allclose(w3, 4.0 * direct - 3.0 * uncond, atol=1e-4)


def test_guided_diffusion_param_counts():
    # guided-diffusion's released 256x256 unconditional model (attention at 32, 16, 8; learned
    # sigma, 3 -> 6 channels) has 552,814,086 parameters; the same config here must match exactly.
    gd = ADMUNet(model_channels=256, num_res_blocks=2, attention_resolutions=(32, 16, 8),
                 channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64, use_scale_shift_norm=True,
                 resblock_updown=True, out_channels=3, learn_sigma=True)
    x = jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32)
    assert param_count(_shapes(gd, x, jnp.zeros((1,), jnp.int32))) == 552_814_086
    # The paper-scale joint RGB+mask model (attention at 16, 8; 4 -> 4 channels).
    paper = ADMUNet(**PAPER)
    x4 = jax.ShapeDtypeStruct((1, 256, 256, 4), jnp.float32)
    assert param_count(_shapes(paper, x4, jnp.zeros((1,), jnp.int32))) == 547_553_540


def test_paper_scale_forward_256():
    x = jnp.asarray(np.random.default_rng(4).standard_normal((1, 256, 256, 4)), jnp.float32)
    t = jnp.array([500])
    # Every layer of the paper's model traces at 256 px (shapes and dtypes, no compute) ...
    paper = ADMUNet(**PAPER)
    shapes = _shapes(paper, x, t)
    out = jax.eval_shape(paper.apply, shapes, x, t)
    assert out.shape == (1, 256, 256, 4) and out.dtype == jnp.float32
    # ... and runs: its depth, attention resolutions and head size at an eighth of its width
    # (550M parameters cost a minute of CI for no extra code path).
    narrow = ADMUNet(**dict(PAPER, model_channels=32))
    shapes = _shapes(narrow, x, t)
    # Constant weights (filled without drawing random numbers): enough to run every layer.
    params = jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype), shapes)
    out = np.asarray(jax.jit(narrow.apply)(params, x, t))
    assert out.shape == (1, 256, 256, 4) and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and np.abs(out).max() > 0


def test_remat_same_params_loss_and_grads():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 16, 16, 4)), jnp.float32)
    t = jnp.array([5, 500])
    plain, remat = ADMUNet(out_channels=4, **TINY), ADMUNet(out_channels=4, remat=True, **TINY)
    shapes = _shapes(plain, x, t)
    # Same parameter names: a checkpoint trained either way loads into the other.
    assert jax.tree.structure(_shapes(remat, x, t)) == jax.tree.structure(shapes)
    params = _random_params(shapes, seed=2)

    def loss(model):
        return lambda p: jnp.mean(model.apply(p, x, t) ** 2)

    (la, ga), (lb, gb) = jax.jit(lambda p: (jax.value_and_grad(loss(plain))(p),
                                            jax.value_and_grad(loss(remat))(p)))(params)
    np.testing.assert_allclose(la, lb, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape,groups", [((2, 8, 8, 64), 32), ((3, 5, 7, 12), 4), ((2, 16, 24), 8)])
def test_group_norm_matches_flax(shape, groups):
    """The per-channel-statistics GroupNorm has flax's parameters and flax's values and gradients."""
    from polypjax.models.adm_unet import GroupNorm

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape) * 3 + 1, jnp.float32)
    ours, ref = GroupNorm(num_groups=groups), nn.GroupNorm(num_groups=groups, epsilon=1e-5)
    params = ref.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x)) == jax.tree.map(jnp.shape, params)
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
    np.testing.assert_allclose(jax.jit(ours.apply)(params, x), jax.jit(ref.apply)(params, x), rtol=1e-4, atol=1e-4)
    w = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    g_ours = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(ours.apply(p, x)) * w), (0, 1)))(params, x)
    g_ref = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(ref.apply(p, x)) * w), (0, 1)))(params, x)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(jnp.abs(b).max()))


def test_attention_block_matches_qkv_attention_legacy():
    """AttentionBlock against a numpy transcription of guided-diffusion's QKVAttentionLegacy
    (heads split first, then q/k/v; both scaled by ch**-1/4), with its norm and projections."""
    from polypjax.models.adm_unet import AttentionBlock

    b, hgt, wid, c, head_ch = 2, 4, 4, 16, 4
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((b, hgt, wid, c)), jnp.float32)
    block = AttentionBlock(num_head_channels=head_ch)
    params = block.init(jax.random.PRNGKey(0), x)
    params = jax.tree.map(lambda p: p + 0.3 * jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
    got = np.asarray(block.apply(params, x))

    p = jax.tree.map(np.asarray, params["params"])
    xn = np.asarray(nn.GroupNorm(num_groups=num_groups(c), epsilon=1e-5).apply(
        {"params": p["Norm_0"]["GroupNorm_0"]}, x))
    qkv = xn.reshape(b, hgt * wid, c) @ p["qkv"]["kernel"] + p["qkv"]["bias"]   # [b, t, 3c]
    heads = c // head_ch
    qkv = qkv.transpose(0, 2, 1).reshape(b * heads, 3 * head_ch, hgt * wid)   # torch layout [B, 3C, T]
    q, k, v = np.split(qkv, 3, axis=1)
    scale = 1 / math.sqrt(math.sqrt(head_ch))
    w = np.einsum("bct,bcs->bts", q * scale, k * scale)
    w = np.exp(w - w.max(-1, keepdims=True)); w /= w.sum(-1, keepdims=True)
    a = np.einsum("bts,bcs->bct", w, v).reshape(b, c, hgt * wid).transpose(0, 2, 1)
    want = x + (a @ p["proj_out"]["kernel"] + p["proj_out"]["bias"]).reshape(b, hgt, wid, c)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
