"""Tests for polypjax.models.segmenters: shapes, dtypes, smp parameter counts, overfitting a batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from polypjax.models.segmenters import MODELS, count_params, create_model

# Tiny widths so a full forward/backward compiles and runs in seconds on a shared CPU.
_TINY_RESNET = dict(stage_features=(8, 16, 16, 32), stage_blocks=(1, 1, 1, 1), stem_features=8)
TINY = {
    "unet": dict(features=(8, 16, 32)),
    "unetpp": dict(features=(8, 16, 32)),
    "resunet34": dict(decoder_channels=(32, 16, 16, 8, 8), **_TINY_RESNET),
    "deeplabv3plus": dict(decoder_channels=16, low_level_channels=8, **_TINY_RESNET),
}


def _init(model, x, seed=0):
    """He-normal variables filled on the host from the abstract shapes of ``model.init``.

    XLA:CPU takes ~0.5 s to compile each random initialiser, which would dominate this file on a
    shared 2-core machine; ``model.init`` itself is still traced here and run for real in
    test_model_init_runs.
    """
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape), jnp.float32)
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def _shapes(model, x):
    """Abstract init + eval + train forward: checks shapes and dtypes without compiling."""
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    y_eval = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    y_train, updates = jax.eval_shape(
        lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables
    )
    return variables, y_eval, y_train, updates


def test_registry_names_and_unknown():
    assert set(MODELS) == {"unet", "unetpp", "resunet34", "deeplabv3plus"}
    with pytest.raises(ValueError, match="known models"):
        create_model("segformer")


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("size", [(64, 64), (96, 64)])
def test_output_shape_and_train_mode(name, size):
    model = create_model(name, **TINY[name])
    variables, y_eval, y_train, updates = _shapes(model, jnp.zeros((2, *size, 3), jnp.float32))
    assert set(variables) == {"params", "batch_stats"}
    assert y_eval.shape == y_train.shape == (2, *size, 1)
    assert y_eval.dtype == y_train.dtype == jnp.float32
    assert set(updates) == {"batch_stats"}


@pytest.mark.parametrize("name", sorted(TINY))
def test_bf16_compute_gives_float32_logits_and_params(name):
    model = create_model(name, dtype=jnp.bfloat16, **TINY[name])
    variables, y_eval, y_train, _ = _shapes(model, jnp.zeros((2, 32, 32, 3), jnp.float32))
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables["params"]))
    assert y_eval.shape == (2, 32, 32, 1)
    assert y_eval.dtype == y_train.dtype == jnp.float32


def test_bf16_forward_runs():
    # One real bf16 run (the rest is checked abstractly) to catch numerics, not just dtypes.
    model = create_model("resunet34", dtype=jnp.bfloat16, **TINY["resunet34"])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    variables = _init(model, x)
    y = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert y.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y)))


def test_bf16_unet_training_gradient_and_masks_match_float32():
    """The accelerator path's mixed precision (configs/kvasir_gpu.py: bfloat16 compute, float32
    parameters and BatchNorm statistics) gives the float32 segmentation loss gradient up to bf16
    rounding, and the same predicted masks on all but a few boundary pixels."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
    y = jnp.asarray(rng.random((2, 32, 32, 1)) > 0.6, jnp.float32)
    f32 = create_model("unet", **TINY["unet"])
    bf16 = create_model("unet", dtype=jnp.bfloat16, **TINY["unet"])
    variables = _init(f32, x, seed=6)

    def grad_and_logits(model):
        def loss(params):
            logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
            return optax.sigmoid_binary_cross_entropy(logits, y).mean()
        g = jax.jit(jax.grad(loss))(variables["params"])
        logits = jax.jit(lambda v: model.apply(v, x, train=False))(variables)
        return jnp.concatenate([v.ravel() for v in jax.tree_util.tree_leaves(g)]), logits

    (ga, la), (gb, lb) = grad_and_logits(f32), grad_and_logits(bf16)
    assert gb.dtype == lb.dtype == jnp.float32
    cos = float(jnp.dot(ga, gb) / (jnp.linalg.norm(ga) * jnp.linalg.norm(gb)))
    norm = float(jnp.linalg.norm(gb) / jnp.linalg.norm(ga))
    flipped = float(jnp.mean((la > 0) != (lb > 0)))
    drift = float(jnp.max(jnp.abs(la - lb)) / jnp.max(jnp.abs(la)))
    # Measured: cosine 0.981 (BatchNorm in training mode renormalises bf16 activations at every
    # layer), norm ratio, flipped pixels and logit drift printed below when it fails.
    assert cos > 0.97 and abs(norm - 1) < 0.05 and flipped < 0.02 and drift < 0.05, (cos, norm, flipped, drift)


@pytest.mark.parametrize(
    "name,kwargs,size",
    [
        ("unet", {}, 40),  # default depth 5 needs multiples of 16
        ("unetpp", dict(features=(8, 16, 32)), 30),  # 3 levels need multiples of 4
        ("resunet34", {}, 48),  # needs multiples of 32
        ("deeplabv3plus", {}, 40),  # output stride 16
    ],
)
def test_bad_input_size_raises(name, kwargs, size):
    model = create_model(name, **kwargs)
    with pytest.raises(ValueError, match="multiples of"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, 64, 3)), train=False))


def test_model_init_runs():
    model = create_model("unet", features=(4, 8))
    x = jnp.zeros((1, 16, 16, 3))
    # An rbg key: XLA:CPU compiles flax's threefry key derivations ~5x slower, and models are key-agnostic.
    key = jax.random.key(0, impl="rbg")
    variables = jax.jit(lambda x: model.init(key, x, train=False))(x)
    assert count_params(variables["params"]) > 0
    stats = jax.tree_util.tree_leaves(variables["batch_stats"])
    assert stats and all(s.dtype == jnp.float32 for s in stats)


def test_unet_depth_follows_features():
    model = create_model("unet", features=(4, 8, 16, 32))
    assert model.size_factor == 8
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 24, 40, 3)), train=False))
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 24, 40, 3)), train=False), variables)
    assert out.shape == (1, 24, 40, 1)


def test_unetpp_deep_supervision_output_forms():
    model = create_model("unetpp", features=(4, 8, 16), deep_supervision=True, num_classes=2)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
    variables = _init(model, x)
    heads, _ = jax.eval_shape(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]), variables)
    assert heads.shape == (2, 2, 32, 32, 2)  # [S = len(features) - 1, N, H, W, C]
    y, inter = jax.jit(
        lambda v, x: model.apply(
            v, x, train=False, mutable=["intermediates"],
            capture_intermediates=lambda mdl, _: (mdl.name or "").startswith("head_"),
        )
    )(variables, x)
    assert y.shape == (2, 32, 32, 2) and y.dtype == jnp.float32
    heads_eval = [inter["intermediates"][f"head_{j}"]["__call__"][0] for j in (1, 2)]
    np.testing.assert_allclose(y, (heads_eval[0] + heads_eval[1]) / 2, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,expected", [("resunet34", 24_436_369), ("deeplabv3plus", 22_437_457)])
def test_param_count_matches_smp(name, expected):
    # smp counts BN weight+bias as parameters and running stats as buffers; so do params/batch_stats.
    model = create_model(name)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
    assert count_params(variables["params"]) == expected


def _disc_batch(n=4, size=32, seed=0):
    """Bright discs of random centre/radius on dark noise: an easy, exact target to overfit."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    for _ in range(n):
        cy, cx = rng.uniform(0.3, 0.7, size=2) * size
        r = rng.uniform(0.12, 0.25) * size
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2).astype(np.float32)
        img = rng.normal(0.0, 0.3, size=(size, size, 3)) + 1.5 * m[..., None]
        images.append(img)
        masks.append(m[..., None])
    return jnp.asarray(np.stack(images), jnp.float32), jnp.asarray(np.stack(masks), jnp.float32)


def _overfit(model, steps, lr=1e-2):
    x, m = _disc_batch()
    variables = _init(model, x)
    params, stats = variables["params"], variables["batch_stats"]
    tx = optax.adam(lr)
    opt = tx.init(params)

    def loss_fn(params, stats):
        logits, updates = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        # Deep-supervision heads come stacked on a leading axis; broadcasting averages over them.
        loss = optax.sigmoid_binary_cross_entropy(logits, jnp.broadcast_to(m, logits.shape)).mean()
        return loss, updates["batch_stats"]

    @jax.jit
    def train(params, stats, opt):
        def step(carry, _):
            params, stats, opt = carry
            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
            upd, opt = tx.update(grads, opt)
            return (optax.apply_updates(params, upd), stats, opt), loss

        return jax.lax.scan(step, (params, stats, opt), None, length=steps)

    (params, stats, _), losses = train(params, stats, opt)
    # Eval mode (running statistics), as the metrics would see it.
    logits = jax.jit(lambda v: model.apply(v, x, train=False))({"params": params, "batch_stats": stats})
    pred = (logits > 0).astype(jnp.float32)
    dice = 2 * (pred * m).sum() / (pred.sum() + m.sum())
    return np.asarray(losses), float(dice)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("unet", TINY["unet"]),
        ("unetpp", dict(deep_supervision=True, **TINY["unetpp"])),
        ("resunet34", TINY["resunet34"]),
        ("deeplabv3plus", TINY["deeplabv3plus"]),
    ],
)
def test_overfits_small_batch(name, kwargs):
    losses, dice = _overfit(create_model(name, **kwargs), steps=60)
    print(f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.4f}, eval-mode Dice {dice:.3f}")
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])
    assert dice > 0.9, dice


@pytest.mark.parametrize("name", sorted(TINY))
def test_config_model_conv_picks_the_path_of_every_conv_not_the_values(name):
    """`config.model.conv` reaches every convolution of every segmenter: with xla or taps no
    oneDNN call is left anywhere (a conv that missed the field would take the default, auto, which
    is oneDNN where it builds), and xla and taps agree in value and gradient."""
    from polypjax import configlib
    from polypjax.native import onednn
    from polypjax.train.segmentation import model_kwargs

    config = configlib.load_config("segmentation")
    config.model.name, config.model.kwargs = name, TINY[name]
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
    results, variables = {}, None
    for impl in ("xla", "taps", "auto"):
        config.model.conv = impl
        model = create_model(name, **model_kwargs(config))
        assert model.conv == impl
        variables = variables or _init(model, x)

        def value_and_grad(v, model=model):
            loss = lambda p: model.apply({**v, "params": p}, x, train=False).sum()  # noqa: E731
            return jax.value_and_grad(loss)(v["params"]), model.apply(v, x, train=False)

        lowered = jax.jit(value_and_grad).lower(variables)
        on_onednn = "polypjax_onednn" in lowered.as_text()
        assert on_onednn == (impl == "auto" and onednn.available()), impl
        if impl != "auto":
            results[impl] = lowered.compile()(variables)
    (_, g_xla), y_xla = results["xla"]
    (_, g_taps), y_taps = results["taps"]
    np.testing.assert_allclose(y_taps, y_xla, rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g_taps), jax.tree.leaves(g_xla)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))
