"""Samplers on an analytically known denoiser, RePaint, CFG, determinism, and mask post-processing.

Data are Gaussian per pixel with a channel covariance Sigma, so the exact noise prediction is
eps(x_t, t) = sigma_t (alpha_t^2 Sigma + sigma_t^2 I)^-1 (x_t - alpha_t mu); for Sigma = s^2 I this
is (x_t - sqrt(acp) mu) sqrt(1 - acp) / (acp s^2 + 1 - acp). The model receives the ORIGINAL
timesteps, so it reads alphas_cumprod from the full schedule; that also checks the respaced
timestep map.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.draw import disk as draw_disk

from polypjax.diffusion import postprocess as P
from polypjax.diffusion import samplers as SM
from polypjax.diffusion import schedule as S

FULL = S.make_schedule("linear", 1000)


def key(i):
    # "rbg" keys compile several times faster than threefry on CPU; the statistical tests do not
    # care which generator runs. The determinism, debug and jit tests use default threefry keys.
    return jax.random.key(i, impl="rbg")


def rnd(seed, shape):
    """Test data from numpy, so that making inputs compiles nothing."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


MU, STD = 0.3, 0.5
SHAPE = (16, 8, 8, 4)  # 4096 scalar samples per run


def gaussian_model(mu, cov, full=FULL, pred="eps"):
    """Exact eps / x0 / v prediction for data ~ N(mu, cov) over the channel axis."""
    mu = jnp.asarray(mu, jnp.float32)
    cov = jnp.asarray(cov, jnp.float32)
    c = cov.shape[0]

    def model_fn(x, t):
        acp = full.alphas_cumprod[t][:, None, None, None, None]
        a, s = jnp.sqrt(acp), jnp.sqrt(1.0 - acp)
        m = acp * cov + (1.0 - acp) * jnp.eye(c)  # [N,1,1,C,C]
        eps = s[..., 0] * jnp.linalg.solve(m, (x - a[..., 0] * mu)[..., None])[..., 0]
        if pred == "eps":
            return eps
        x0 = (x - s[..., 0] * eps) / a[..., 0]
        if pred == "x0":
            return x0
        return a[..., 0] * eps - s[..., 0] * x0

    return model_fn


def iid_model(pred="eps"):
    """The closed form for Sigma = s^2 I (cheaper than the linear solve)."""

    def model_fn(x, t):
        acp = FULL.alphas_cumprod[t][:, None, None, None]
        a, s = jnp.sqrt(acp), jnp.sqrt(1.0 - acp)
        eps = (x - a * MU) * s / (acp * STD**2 + 1.0 - acp)
        if pred == "eps":
            return eps
        x0 = (x - s * eps) / a
        return x0 if pred == "x0" else a * eps - s * x0

    return model_fn


def check_stats(x, mu=MU, std=STD, tol_mean=0.03, tol_std=0.03):
    x = np.asarray(x)
    assert np.all(np.isfinite(x))
    assert abs(x.mean() - mu) < tol_mean, (x.mean(), mu)
    assert abs(x.std() - std) < tol_std, (x.std(), std)


def test_analytic_models_agree():
    x = rnd(0, (3, 2, 2, 4))
    t = jnp.array([0, 500, 999])
    for pred in ("eps", "x0", "v"):
        general = gaussian_model(jnp.full((4,), MU), STD**2 * jnp.eye(4), pred=pred)
        np.testing.assert_allclose(iid_model(pred)(x, t), general(x, t), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------- distributions
def test_ddpm_recovers_gaussian():
    x = SM.ddpm_sample(iid_model(), FULL, SHAPE, key(1), clip_x0=False)
    check_stats(x)


def test_ddpm_large_variance_respaced():
    sched = S.respace(FULL, [250])
    x = SM.ddpm_sample(iid_model(), sched, SHAPE, key(2), clip_x0=False, var_type="large")
    check_stats(x, tol_std=0.04)


def test_ddim_recovers_gaussian_and_is_deterministic():
    sched = S.respace(FULL, [100])
    x_T = rnd(3, SHAPE)
    f = jax.jit(lambda r, eta: SM.ddim_sample(iid_model(), sched, SHAPE, r, clip_x0=False, x_T=x_T, eta=eta))
    a, b = f(key(4), 0.0), f(key(5), 0.0)
    np.testing.assert_array_equal(a, b)  # eta = 0: the rng is never used
    check_stats(a, tol_std=0.04)  # first-order ODE solver at 100 steps: ~2% low on the std
    c = f(key(4), 1.0)
    assert not np.allclose(a, c)
    check_stats(c, tol_std=0.04)


def test_ddim_invert_then_sample_recovers_x0():
    sched = S.respace(FULL, [100])
    x0 = MU + STD * rnd(6, (4, 8, 8, 4))
    x_T = SM.ddim_invert(iid_model(), sched, x0)
    assert abs(float(x_T.std()) - 1.0) < 0.1
    back = SM.ddim_sample(iid_model(), sched, x0.shape, key(0), clip_x0=False, x_T=x_T)
    err = np.abs(np.asarray(back - x0))
    # DDIM is first order: the round-trip error shrinks as 1/steps (0.02 mean at 100 steps).
    assert err.mean() < 0.04 and err.max() < 0.25


@pytest.mark.parametrize("skip_type,tol_std", [("logSNR", 0.03), ("time_uniform", 0.04)])
def test_dpm_solver_pp_20_steps(skip_type, tol_std):
    x = SM.dpm_solver_pp_sample(iid_model(), FULL, SHAPE, key(7), steps=20, skip_type=skip_type)
    check_stats(x, tol_std=tol_std)


def test_dpm_solver_first_order_equals_ddim_on_same_grid():
    ts = SM.dpm_solver_timesteps(FULL, 8, "logSNR")
    ratio, a, c = SM.dpm_solver_coefficients(FULL, ts)
    assert c[0] == 0 and c[-1] == 0 and np.all(c[1:-1] > 0)
    # With c = 0 the update is DDIM(eta = 0) on the grid ts: check on one step.
    x = rnd(8, (2, 4, 4, 4))
    d, _, _ = SM.denoise(iid_model(), FULL, x, ts[0], clip_x0=False)
    dpm = ratio[0] * x + a[0] * d
    sub = S.respace(FULL, ("indices", ts))
    ddim, _ = SM.ddim_step(iid_model(), sub, x, len(sub) - 1, jnp.zeros_like(x), clip_x0=False)
    np.testing.assert_allclose(dpm, ddim, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pred", ["x0", "v"])
def test_other_parameterisations_give_same_steps(pred):
    sched = S.respace(FULL, [20])
    x = rnd(9, (2, 4, 4, 4))
    noise = rnd(10, x.shape)
    for t_idx in (1, 10, 19):
        ref, _ = SM.ddim_step(iid_model(), sched, x, t_idx, noise, eta=0.5, clip_x0=False)
        got, _ = SM.ddim_step(iid_model(pred), sched, x, t_idx, noise, eta=0.5, clip_x0=False, pred=pred)
        np.testing.assert_allclose(got, ref, atol=2e-4)


def test_learned_range_endpoints_equal_fixed_variances():
    sched = S.respace(FULL, [20])
    base = iid_model()

    def with_var(value):
        return lambda x, t: jnp.concatenate([base(x, t), jnp.full_like(x, value)], axis=-1)

    x = rnd(10, (2, 4, 4, 4))
    noise = rnd(11, x.shape)
    for t_idx in (0, 1, 12):
        kw = dict(clip_x0=False)
        small, _ = SM.ddpm_step(base, sched, x, t_idx, noise, var_type="small", **kw)
        large, _ = SM.ddpm_step(base, sched, x, t_idx, noise, var_type="large", **kw)
        lo, _ = SM.ddpm_step(with_var(-1.0), sched, x, t_idx, noise, learn_sigma=True, **kw)
        hi, _ = SM.ddpm_step(with_var(1.0), sched, x, t_idx, noise, learn_sigma=True, **kw)
        np.testing.assert_allclose(lo, small, atol=1e-5)
        np.testing.assert_allclose(hi, large, atol=1e-5)
        if t_idx > 0:
            assert not np.allclose(small, large)


# ------------------------------------------------------------------------------------------- CFG
def test_cfg_w0_is_conditional_and_one_batched_forward():
    calls = []

    def cond_model(x, t, cond):
        calls.append(x.shape[0])
        return iid_model()(x, t) + 0.1 * cond  # any conditional model

    x = rnd(11, (3, 4, 4, 4))
    t = jnp.array([5, 500, 900])
    cond = rnd(12, (3, 4, 4, 4))
    out = SM.cfg_model_fn(cond_model, cond, 0.0)(x, t)
    np.testing.assert_array_equal(out, cond_model(x, t, cond))
    assert calls[0] == 6  # cond and null in one forward of the doubled batch
    out_u = SM.cfg_model_fn(cond_model, cond, -1.0)(x, t)
    np.testing.assert_array_equal(out_u, cond_model(x, t, jnp.zeros_like(cond)))
    w = 2.0
    out_w = SM.cfg_model_fn(cond_model, cond, w)(x, t)
    np.testing.assert_allclose(out_w, (1 + w) * cond_model(x, t, cond) - w * cond_model(x, t, 0 * cond), atol=1e-5)
    # learn_sigma: variance channels come from the conditional branch unguided.
    ls = lambda x, t, c: jnp.concatenate([cond_model(x, t, c), c + 1.0], axis=-1)  # noqa: E731
    out_ls = SM.cfg_model_fn(ls, cond, w, learn_sigma=True)(x, t)
    np.testing.assert_allclose(out_ls[..., 4:], cond + 1.0)
    np.testing.assert_allclose(out_ls[..., :4], out_w, atol=1e-5)


# ---------------------------------------------------------------------------------------- RePaint
def get_schedule_jump_reference(t_T, jump_length, jump_n_sample):
    """RePaint's scheduler.get_schedule_jump with n_sample = 1 and no jump2 / jump3."""
    jumps = {j: jump_n_sample - 1 for j in range(0, t_T - jump_length, jump_length)}
    t, ts = t_T, []
    while t >= 1:
        t = t - 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] = jumps[t] - 1
            for _ in range(jump_length):
                t = t + 1
                ts.append(t)
    ts.append(-1)
    return ts


@pytest.mark.parametrize("T,jl,jn", [(250, 10, 10), (50, 5, 3), (20, 2, 1)])
def test_repaint_times_match_reference(T, jl, jn):
    ts = SM.repaint_times(T, jl, jn)
    np.testing.assert_array_equal(ts, get_schedule_jump_reference(T, jl, jn))
    assert ts[0] == T - 1 and ts[-1] == -1
    n_up = int(np.sum(np.diff(ts) > 0))
    assert n_up == len(range(0, T - jl, jl)) * (jn - 1) * jl


def test_repaint_keeps_known_region_and_harmonises():
    # Two correlated channels; channel 0 is known, channel 1 must follow p(c1 | c0).
    rho, s = 0.9, 0.5
    mu = jnp.array([0.2, -0.1])
    cov = s**2 * jnp.array([[1.0, rho], [rho, 1.0]])
    model = gaussian_model(mu, cov)
    sched = S.respace(FULL, [50])
    n = 64
    known = mu + s * rnd(13, (n, 4, 4, 2))
    mask = jnp.array([1.0, 0.0])  # broadcast: channel 0 known everywhere
    out = SM.repaint_sample(model, sched, known, mask, key(14), jump_length=5,
                            jump_n_sample=5, clip_x0=False)
    out, known = np.asarray(out), np.asarray(known)
    np.testing.assert_allclose(out[..., 0], known[..., 0], atol=1e-6)  # known region exact
    # Unknown channel: conditional mean mu1 + rho (c0 - mu0), conditional std s sqrt(1 - rho^2).
    resid = out[..., 1] - (mu[1] + rho * (known[..., 0] - mu[0]))
    assert abs(resid.mean()) < 0.05, resid.mean()
    assert abs(resid.std() - s * np.sqrt(1 - rho**2)) < 0.06, resid.std()


def test_repaint_unknown_region_follows_model():
    # 250 steps with beta variances: few-step DDPM with posterior variances is biased low on std.
    sched = S.respace(FULL, [250])
    known = jnp.full(SHAPE, -0.9)
    mask = jnp.zeros(SHAPE).at[:, :4].set(1.0)  # top half known
    out = np.asarray(SM.repaint_sample(iid_model(), sched, known, mask, key(15),
                                       jump_length=10, jump_n_sample=2, clip_x0=False, var_type="large"))
    np.testing.assert_allclose(out[:, :4], -0.9, atol=1e-6)
    check_stats(out[:, 4:], tol_mean=0.04, tol_std=0.04)


# ----------------------------------------------------------------------------------------- SDEdit
def test_sdedit_small_skip_stays_close_large_skip_follows_model():
    sched = S.respace(FULL, [50])
    real = jnp.full(SHAPE, 0.8)
    near = np.asarray(SM.sdedit_sample(iid_model(), sched, real, 1, key(16), clip_x0=False))
    assert np.abs(near - 0.8).mean() < 0.1
    sched250 = S.respace(FULL, [250])
    far = SM.sdedit_sample(iid_model(), sched250, real, len(sched250) - 1, key(16),
                           clip_x0=False, var_type="large")
    check_stats(far, tol_std=0.04)
    ddim = SM.sdedit_sample(iid_model(), sched, real, 10, key(16), method="ddim", clip_x0=False)
    assert np.all(np.isfinite(np.asarray(ddim)))


# ----------------------------------------------------------------------- jit / debug / determinism
SMALL = S.respace(FULL, [6])
KNOWN = MU + STD * rnd(99, (8, 4, 4, 4))


def _all_samplers(rng, indices, n, debug=False):
    """Every sampler on the rows ``indices`` (or the first n when None) of one global batch."""
    model = iid_model()
    shape = (n, 4, 4, 4)
    known = KNOWN[:n] if indices is None else KNOWN[indices]
    mask = jnp.zeros(shape[1:]).at[:2].set(1.0)
    kw = dict(indices=indices, debug=debug)
    return {
        "ddpm": SM.ddpm_sample(model, SMALL, shape, rng, **kw),
        "ddim": SM.ddim_sample(model, SMALL, shape, rng, eta=0.5, **kw),
        "dpm": SM.dpm_solver_pp_sample(model, SMALL, shape, rng, steps=4, **kw),
        "repaint": SM.repaint_sample(model, SMALL, known, mask, rng, jump_length=2, jump_n_sample=2, **kw),
        "sdedit": SM.sdedit_sample(model, SMALL, known, 4, rng, **kw),
    }


# One compile per (indices given?, n) for all five samplers together.
_all_samplers_jit = jax.jit(_all_samplers, static_argnames=("n", "debug"))


def test_scan_and_debug_paths_agree():
    idx = jnp.array([3, 6])
    fast = _all_samplers_jit(key(17), idx, 2)
    slow = _all_samplers(key(17), idx, 2, debug=True)
    for k in fast:
        np.testing.assert_allclose(fast[k], slow[k], atol=1e-5, err_msg=k)
    inv_fast = SM.ddim_invert(iid_model(), SMALL, fast["ddim"])
    inv_slow = SM.ddim_invert(iid_model(), SMALL, fast["ddim"], debug=True)
    np.testing.assert_allclose(inv_fast, inv_slow, atol=1e-5)


def test_per_sample_determinism_across_batch_splits():
    # Default threefry keys: batching them is guaranteed to match unbatched draws ("rbg" is not).
    rng = jax.random.key(18)
    # The global batch of 8, sharded one example per device, equals two unsharded halves.
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded_idx = jax.device_put(jnp.arange(8), jax.NamedSharding(mesh, jax.P("data")))
    whole = _all_samplers_jit(rng, sharded_idx, 8)
    a = _all_samplers_jit(rng, jnp.arange(4), 4)
    b = _all_samplers_jit(rng, jnp.arange(4, 8), 4)
    for k in whole:
        assert len(whole[k].sharding.device_set) == 8, k
        np.testing.assert_allclose(whole[k], np.concatenate([a[k], b[k]]), atol=1e-6, err_msg=k)
    assert not np.allclose(a["ddpm"], b["ddpm"])  # different indices, different samples


def test_loop_is_one_scan_and_jits():
    def run(rng, steps):
        sched = S.respace(FULL, [steps])
        return SM.ddpm_sample(iid_model(), sched, (1, 2, 2, 4), rng)

    # The traced program does not grow with the number of steps: the loop is a scan.
    n10 = len(str(jax.make_jaxpr(lambda r: run(r, 10))(jax.random.key(0))))
    n40 = len(str(jax.make_jaxpr(lambda r: run(r, 40))(jax.random.key(0))))
    assert "scan" in str(jax.make_jaxpr(lambda r: run(r, 10))(jax.random.key(0)))
    assert abs(n40 - n10) < 0.05 * n10 + 2000  # only the embedded constant tables grow
    jitted = jax.jit(lambda r: run(r, 10))(key(1))
    np.testing.assert_allclose(jitted, run(key(1), 10), atol=1e-5)


# ------------------------------------------------------------------------------------ postprocess
def _disk_with_spur_and_speck():
    m = np.zeros((64, 64), bool)
    rr, cc = draw_disk((32, 28), 12)
    m[rr, cc] = True
    m[31:33, 40:60] = True  # a 2-pixel-thin spur sticking out of the disk
    m[5:8, 55:58] = True  # a 3x3 speck, far from the polyp
    return m, rr, cc


def test_postprocess_opening_removes_spur_and_small_components():
    m, rr, cc = _disk_with_spur_and_speck()
    logits = np.where(m, 0.7, -0.8).astype(np.float32)
    out = P.postprocess_mask(logits, radius=2, min_size=20)
    assert out.dtype == np.uint8 and out.shape == (64, 64)
    assert out[31:33, 45:60].sum() == 0  # spur gone
    assert out[5:8, 55:58].sum() == 0  # speck gone
    disk = np.zeros_like(m)
    disk[rr, cc] = True
    iou = (out.astype(bool) & disk).sum() / (out.astype(bool) | disk).sum()
    assert iou > 0.95


def test_postprocess_thresholds_and_components():
    m, _, _ = _disk_with_spur_and_speck()
    unit = m.astype(np.float32)[..., None] * 0.9 + 0.05  # [0, 1] range, HxWx1
    a = P.postprocess_mask(unit, value_range="[0,1]", radius=0, min_size=0)
    np.testing.assert_array_equal(a, m.astype(np.uint8))
    b = P.postprocess_mask(unit, value_range="[0,1]", radius=0, min_size=10)
    assert b[5:8, 55:58].sum() == 0 and b.sum() == m.sum() - 9  # only the 9-pixel speck is dropped
    assert P.remove_small_components(m, 9)[5:8, 55:58].all()  # 9 pixels is not smaller than 9
    batch = P.postprocess_masks(np.stack([unit, unit]), value_range="[0,1]", radius=0, min_size=0)
    assert batch.shape == (2, 64, 64)
    with pytest.raises(ValueError):
        P.threshold_mask(unit, value_range="0-255")


def test_postprocess_keeps_polyp_touching_border():
    m = np.zeros((32, 32), bool)
    m[:, :10] = True
    out = P.postprocess_mask(np.where(m, 1.0, -1.0), radius=3, min_size=5)
    np.testing.assert_array_equal(out, m.astype(np.uint8))


def test_match_colors():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 120, (32, 32, 3)).astype(np.uint8)
    ref = rng.integers(100, 255, (48, 40, 3)).astype(np.uint8)
    out = P.match_colors(img, ref)
    assert out.dtype == np.uint8 and out.shape == img.shape
    for ch in range(3):
        assert abs(out[..., ch].mean() - ref[..., ch].mean()) < 3
    # Ranks are preserved: matching is a monotone map per channel.
    order = np.argsort(img[..., 0].ravel(), kind="stable")
    assert np.all(np.diff(out[..., 0].ravel()[order].astype(int)) >= 0)
