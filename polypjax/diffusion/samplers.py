"""Samplers: DDPM, DDIM (+ inversion), DPM-Solver++(2M), classifier-free guidance, RePaint, SDEdit.

All samplers are pure functions of arrays. The loop over steps is one ``lax.scan`` (so it compiles
once and runs without Python overhead); wrap the call in ``jax.jit`` with the parameters as an
argument of the jitted function to fuse the set-up as well. ``debug=True`` runs the *same* per-step
function in a Python loop instead, for stepping through with a debugger or printing.

Conventions
-----------
* ``model_fn(x, t) -> output``: ``x`` [N, H, W, C] float32, ``t`` int32 [N] holding the schedule's
  *original* timesteps (``sched.timesteps[i]`` for index ``i``), as guided-diffusion's
  ``_WrappedModel`` passes them; the model is already closed over its parameters and any
  conditioning. The output has C channels, or 2C when ``learn_sigma`` (the second half are
  guided-diffusion LEARNED_RANGE variance values).
* ``sched`` may be respaced (``schedule.respace``); samplers step over its indices ``T-1 .. 0``.
  Time grids are computed on the host from the schedule's static float64 betas, so a schedule may
  be closed over or passed through ``jax.jit``.
* ``pred`` is the model parameterisation ("eps", "x0" or "v"); ``clip_x0`` clips the x0 estimate to
  [-1, 1] before it is used (and eps is re-derived from the clipped x0, as guided-diffusion does).
* Per-sample randomness: example ``j`` of the batch draws all its noise from
  ``fold_in(rng, indices[j])`` (``indices`` defaults to ``arange(N)``). A global batch split over
  devices or hosts, or generated in pieces, therefore gives the same pairs as one big batch as long
  as each piece passes its global indices. This relies on batched key use matching unbatched use,
  which JAX guarantees for the default threefry keys but not for "rbg" / "unsafe_rbg". Under a mesh with Explicit axes, shard the batch inputs
  (``indices``, ``known_x0``, ...) the same way, since JAX then refuses to mix shardings.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from polypjax.diffusion import objectives as obj
from polypjax.diffusion.schedule import Schedule

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]

# Independent noise streams per example, so that e.g. the initial noise never collides with the
# noise of step 0.
_INIT, _STEP, _KNOWN, _JUMP = 0, 1, 2, 3


# ----------------------------------------------------------------------------------------- helpers
def example_keys(rng: jax.Array, n: int, indices: Optional[jax.Array] = None) -> jax.Array:
    """One key per example: ``fold_in(rng, global_index)``."""
    if indices is None:
        indices = jnp.arange(n)
    indices = jnp.asarray(indices)
    if indices.shape != (n,):
        raise ValueError(f"indices must have shape ({n},), got {indices.shape}")
    return jax.vmap(lambda i: jax.random.fold_in(rng, i))(indices)


def _normal(keys: jax.Array, stream: int, step: Any, shape: Sequence[int]) -> jax.Array:
    """Per-example standard normal noise of ``shape`` (per example) for (stream, step)."""

    def one(k):
        k = jax.random.fold_in(jax.random.fold_in(k, stream), step)
        return jax.random.normal(k, tuple(shape), dtype=jnp.float32)

    return jax.vmap(one)(keys)


def _loop(body: Callable, carry: Any, xs: Any, debug: bool) -> Any:
    """Run ``carry = body(carry, x)`` over the leading axis of ``xs``: one scan, or a Python loop."""
    if not debug:
        carry, _ = lax.scan(lambda c, x: (body(c, x), None), carry, xs)
        return carry
    length = jax.tree.leaves(xs)[0].shape[0]
    for i in range(length):
        carry = body(carry, jax.tree.map(lambda a: a[i], xs))
    return carry


def _split_output(out: jax.Array, c: int, learn_sigma: bool):
    out = out.astype(jnp.float32)
    if learn_sigma:
        if out.shape[-1] != 2 * c:
            raise ValueError(f"learn_sigma needs {2 * c} output channels, model gave {out.shape[-1]}")
        return out[..., :c], out[..., c:]
    if out.shape[-1] != c:
        raise ValueError(f"model gave {out.shape[-1]} output channels, samples have {c}")
    return out, None


def denoise(
    model_fn: ModelFn,
    sched: Schedule,
    x: jax.Array,
    t_idx: jax.Array,
    *,
    pred: str = "eps",
    clip_x0: bool = True,
    learn_sigma: bool = False,
):
    """Model call at schedule index ``t_idx`` (scalar): returns (x0 estimate, eps estimate, var values)."""
    n = x.shape[0]
    t = jnp.full((n,), t_idx, dtype=jnp.int32)
    out, var_values = _split_output(model_fn(x, sched.timesteps[t]), x.shape[-1], learn_sigma)
    x0 = obj.predict_x0(sched, x, t, out, pred)
    if clip_x0:
        x0 = jnp.clip(x0, -1.0, 1.0)
    if pred == "eps" and not clip_x0:
        eps = out
    else:
        eps = obj.predict_eps_from_x0(sched, x, t, x0)
    return x0, eps, var_values


def _log_variance(sched: Schedule, t: jax.Array, var_values, var_type: str, ndim: int):
    if var_values is not None:
        return obj.learned_range_log_variance(sched, t, var_values)
    if var_type == "small":
        return obj.extract(sched.posterior_log_variance_clipped, t, ndim)
    if var_type == "large":
        # guided-diffusion FIXED_LARGE: beta_t, except the posterior variance at t = 0.
        large = jnp.concatenate([sched.posterior_variance[1:2], sched.betas[1:]])
        return obj.extract(jnp.log(large), t, ndim)
    raise ValueError(f"var_type must be 'small' or 'large', got {var_type!r}")


def ddpm_step(model_fn, sched, x, t_idx, noise, *, pred="eps", clip_x0=True, learn_sigma=False,
              var_type="small"):
    """One ancestral step from index ``t_idx`` to ``t_idx - 1``; no noise is added at index 0."""
    t = jnp.full((x.shape[0],), t_idx, dtype=jnp.int32)
    x0, _, var_values = denoise(
        model_fn, sched, x, t_idx, pred=pred, clip_x0=clip_x0, learn_sigma=learn_sigma
    )
    mean, _, _ = obj.q_posterior_mean_variance(sched, x0, x, t)
    log_var = _log_variance(sched, t, var_values, var_type, x.ndim)
    nonzero = (jnp.asarray(t_idx) > 0).astype(x.dtype)
    return mean + nonzero * jnp.exp(0.5 * log_var) * noise, x0


def ddim_step(model_fn, sched, x, t_idx, noise, *, eta=0.0, pred="eps", clip_x0=True,
              learn_sigma=False):
    """One DDIM step (Song et al. eq. 12) from index ``t_idx`` to ``t_idx - 1``."""
    t = jnp.full((x.shape[0],), t_idx, dtype=jnp.int32)
    x0, eps, _ = denoise(model_fn, sched, x, t_idx, pred=pred, clip_x0=clip_x0, learn_sigma=learn_sigma)
    a = obj.extract(sched.alphas_cumprod, t, x.ndim)
    a_prev = obj.extract(sched.alphas_cumprod_prev, t, x.ndim)
    sigma = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a)) * jnp.sqrt(1.0 - a / a_prev)
    mean = x0 * jnp.sqrt(a_prev) + jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma**2, 0.0)) * eps
    nonzero = (jnp.asarray(t_idx) > 0).astype(x.dtype)
    return mean + nonzero * sigma * noise, x0


def _check_shape(shape, x_T):
    shape = tuple(int(s) for s in shape)
    if x_T is not None and tuple(x_T.shape) != shape:
        raise ValueError(f"x_T has shape {x_T.shape}, expected {shape}")
    return shape


# ------------------------------------------------------------------------------------- DDPM / DDIM
def _reverse_loop(model_fn, sched, x, keys, t_start, *, method, eta, pred, clip_x0, learn_sigma,
                  var_type, debug):
    """Reverse process from index ``t_start`` down to clean data (DDPM or DDIM)."""
    per_example = x.shape[1:]

    def body(x, t_idx):
        noise = _normal(keys, _STEP, t_idx, per_example)
        if method == "ddpm":
            x, _ = ddpm_step(model_fn, sched, x, t_idx, noise, pred=pred, clip_x0=clip_x0,
                             learn_sigma=learn_sigma, var_type=var_type)
        else:
            x, _ = ddim_step(model_fn, sched, x, t_idx, noise, eta=eta, pred=pred,
                             clip_x0=clip_x0, learn_sigma=learn_sigma)
        return x

    ts = jnp.arange(t_start, -1, -1, dtype=jnp.int32)
    return _loop(body, x, ts, debug)


def ddpm_sample(
    model_fn: ModelFn,
    sched: Schedule,
    shape: Sequence[int],
    rng: jax.Array,
    *,
    pred: str = "eps",
    clip_x0: bool = True,
    learn_sigma: bool = False,
    var_type: str = "small",
    indices: Optional[jax.Array] = None,
    x_T: Optional[jax.Array] = None,
    debug: bool = False,
) -> jax.Array:
    """Ancestral sampling (guided-diffusion ``p_sample_loop``).

    Variance: learned-range interpolation when ``learn_sigma``, else ``var_type`` "small"
    (posterior variance) or "large" (beta).
    """
    shape = _check_shape(shape, x_T)
    keys = example_keys(rng, shape[0], indices)
    x = _normal(keys, _INIT, 0, shape[1:]) if x_T is None else x_T.astype(jnp.float32)
    return _reverse_loop(model_fn, sched, x, keys, len(sched) - 1, method="ddpm", eta=0.0,
                         pred=pred, clip_x0=clip_x0, learn_sigma=learn_sigma, var_type=var_type,
                         debug=debug)


def ddim_sample(
    model_fn: ModelFn,
    sched: Schedule,
    shape: Sequence[int],
    rng: jax.Array,
    *,
    eta: float = 0.0,
    pred: str = "eps",
    clip_x0: bool = True,
    learn_sigma: bool = False,
    indices: Optional[jax.Array] = None,
    x_T: Optional[jax.Array] = None,
    debug: bool = False,
) -> jax.Array:
    """DDIM sampling over all indices of ``sched`` (respace it for fewer steps); eta=0 is deterministic."""
    shape = _check_shape(shape, x_T)
    keys = example_keys(rng, shape[0], indices)
    x = _normal(keys, _INIT, 0, shape[1:]) if x_T is None else x_T.astype(jnp.float32)
    return _reverse_loop(model_fn, sched, x, keys, len(sched) - 1, method="ddim", eta=eta,
                         pred=pred, clip_x0=clip_x0, learn_sigma=learn_sigma, var_type="small",
                         debug=debug)


def ddim_invert(
    model_fn: ModelFn,
    sched: Schedule,
    x0: jax.Array,
    *,
    pred: str = "eps",
    clip_x0: bool = False,
    learn_sigma: bool = False,
    debug: bool = False,
) -> jax.Array:
    """Deterministic DDIM reverse ODE: clean ``x0`` -> ``x`` at index T-1, the input ``ddim_sample``
    (eta=0) starts from.

    It mirrors ``ddim_sample`` step by step: the last sampling step maps index 0 to clean data, so
    the first inversion step maps clean data to index 0, with eps taken from the model at index 0
    (evaluated on x0). Each later step goes from index k-1 to k using the model at k-1. Unlike
    guided-diffusion's ``ddim_reverse_sample`` loop, which treats x0 as already being at index 0 and
    ends at alphas_cumprod = 0, this ends exactly where sampling starts.
    """
    x0 = x0.astype(jnp.float32)
    n = x0.shape[0]

    def body(x, k):
        x0_hat, eps, _ = denoise(model_fn, sched, x, jnp.maximum(k - 1, 0), pred=pred,
                                 clip_x0=clip_x0, learn_sigma=learn_sigma)
        # From clean data (k = 0) the x0 estimate is the data itself.
        x0_hat = jnp.where(k == 0, x, x0_hat)
        t = jnp.full((n,), k, dtype=jnp.int32)
        a = obj.extract(sched.alphas_cumprod, t, x.ndim)
        return jnp.sqrt(a) * x0_hat + jnp.sqrt(1.0 - a) * eps

    return _loop(body, x0, jnp.arange(len(sched), dtype=jnp.int32), debug)


def sdedit_sample(
    model_fn: ModelFn,
    sched: Schedule,
    x0_real: jax.Array,
    t_skip: int,
    rng: jax.Array,
    *,
    method: str = "ddpm",
    eta: float = 0.0,
    pred: str = "eps",
    clip_x0: bool = True,
    learn_sigma: bool = False,
    var_type: str = "small",
    indices: Optional[jax.Array] = None,
    debug: bool = False,
) -> jax.Array:
    """SDEdit (Meng et al. 2022): noise real pairs to index ``t_skip`` with q(x_t | x_0), then run
    the reverse process (``method`` "ddpm" or "ddim") from there. Smaller ``t_skip`` stays closer
    to the real pair."""
    t_skip = int(t_skip)
    if not 0 <= t_skip < len(sched):
        raise ValueError(f"t_skip must be in [0, {len(sched)}), got {t_skip}")
    if method not in ("ddpm", "ddim"):
        raise ValueError(f"method must be 'ddpm' or 'ddim', got {method!r}")
    x0_real = x0_real.astype(jnp.float32)
    n = x0_real.shape[0]
    keys = example_keys(rng, n, indices)
    noise = _normal(keys, _INIT, 0, x0_real.shape[1:])
    x = obj.q_sample(sched, x0_real, jnp.full((n,), t_skip, jnp.int32), noise)
    return _reverse_loop(model_fn, sched, x, keys, t_skip, method=method, eta=eta, pred=pred,
                         clip_x0=clip_x0, learn_sigma=learn_sigma, var_type=var_type, debug=debug)


# ----------------------------------------------------------------------------------- DPM-Solver++
def dpm_solver_timesteps(sched: Schedule, steps: int, skip_type: str = "time_uniform") -> np.ndarray:
    """Decreasing schedule indices t_0 = T-1 > ... > t_M = 0 for DPM-Solver++ (M <= ``steps``).

    "time_uniform" spaces indices evenly; "logSNR" spaces lambda = log(alpha / sigma) evenly and
    takes the nearest index (duplicates from rounding are dropped, so M may be below ``steps``).
    """
    n = len(sched)
    if not 1 <= steps <= n - 1:
        raise ValueError(f"steps must be in [1, {n - 1}] for a {n}-step schedule, got {steps}")
    if skip_type == "time_uniform":
        ts = np.round(np.linspace(n - 1, 0, steps + 1)).astype(np.int64)
    elif skip_type == "logSNR":
        acp = np.cumprod(1.0 - np.asarray(sched.betas64, dtype=np.float64))
        lam = 0.5 * (np.log(acp) - np.log1p(-acp))
        targets = np.linspace(lam[-1], lam[0], steps + 1)
        ts = np.abs(lam[None, :] - targets[:, None]).argmin(axis=1)
        ts[0], ts[-1] = n - 1, 0
    else:
        raise ValueError(f"skip_type must be 'time_uniform' or 'logSNR', got {skip_type!r}")
    out = [int(ts[0])]
    for t in ts[1:]:
        if t < out[-1]:
            out.append(int(t))
    return np.asarray(out, dtype=np.int64)


def dpm_solver_coefficients(sched: Schedule, ts: np.ndarray, lower_order_final: bool = True):
    """float64 host coefficients of the 2M updates along ``ts``.

    Step i (t_i -> t_{i+1}) is ``x <- ratio_i x + a_i (D_i + c_i (D_i - D_{i-1}))`` with
    ``ratio = sigma_{t+1} / sigma_t``, ``a = -alpha_{t+1} expm1(-h)``, ``h = lambda_{t+1} - lambda_t``,
    and ``c = 1 / (2 r)``, ``r = h_{i-1} / h_i`` for second order, 0 for first order (step 0, and the
    last step when ``lower_order_final``). The last step of a grid over DDPM indices ends at index 0,
    where lambda rises steeply (linear schedule, 10 steps: h = 3.5 after 0.75), so the second-order
    extrapolation with r = 0.2 overshoots badly there; DPM-Solver and diffusers also drop to first
    order at the end, though only for few steps.
    """
    acp = np.cumprod(1.0 - np.asarray(sched.betas64, dtype=np.float64))[ts]
    alpha, sigma = np.sqrt(acp), np.sqrt(1.0 - acp)
    lam = np.log(alpha) - np.log(sigma)
    h = np.diff(lam)
    m = len(h)
    ratio = sigma[1:] / sigma[:-1]
    a = -alpha[1:] * np.expm1(-h)
    c = np.zeros(m)
    c[1:] = 1.0 / (2.0 * (h[:-1] / h[1:]))
    if lower_order_final:
        c[-1] = 0.0
    return ratio, a, c


def dpm_solver_pp_sample(
    model_fn: ModelFn,
    sched: Schedule,
    shape: Sequence[int],
    rng: jax.Array,
    *,
    steps: int = 20,
    skip_type: str = "time_uniform",
    pred: str = "eps",
    clip_x0: bool = False,
    learn_sigma: bool = False,
    lower_order_final: bool = True,
    denoise_to_zero: bool = True,
    indices: Optional[jax.Array] = None,
    x_T: Optional[jax.Array] = None,
    debug: bool = False,
) -> jax.Array:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep, second order, data prediction.

    The time grid is a set of indices of ``sched`` (``dpm_solver_timesteps``: "time_uniform" or
    "logSNR"), from T-1 to 0, using the exact alpha/sigma of those indices; the solver is exact for
    any grid, so no continuous-time interpolation is needed. ``steps`` model evaluations take the
    sample to index 0; with ``denoise_to_zero`` one more evaluation returns the x0 estimate there
    (DPM-Solver's ``denoise_to_zero``), otherwise the index-0 state is returned.
    ``clip_x0`` clips the data prediction (static thresholding).
    """
    shape = _check_shape(shape, x_T)
    ts = dpm_solver_timesteps(sched, steps, skip_type)
    ratio, a, c = dpm_solver_coefficients(sched, ts, lower_order_final)
    keys = example_keys(rng, shape[0], indices)
    x = _normal(keys, _INIT, 0, shape[1:]) if x_T is None else x_T.astype(jnp.float32)
    kw = dict(pred=pred, clip_x0=clip_x0, learn_sigma=learn_sigma)

    def body(carry, step):
        x, d_prev = carry
        t_idx, ratio_i, a_i, c_i = step
        d, _, _ = denoise(model_fn, sched, x, t_idx, **kw)
        x = ratio_i * x + a_i * (d + c_i * (d - d_prev))
        return x, d

    xs = (
        jnp.asarray(ts[:-1], jnp.int32),
        jnp.asarray(ratio, jnp.float32),
        jnp.asarray(a, jnp.float32),
        jnp.asarray(c, jnp.float32),
    )
    x, _ = _loop(body, (x, jnp.zeros_like(x)), xs, debug)
    if denoise_to_zero:
        x, _, _ = denoise(model_fn, sched, x, jnp.int32(0), **kw)
    return x


# ---------------------------------------------------------------------- classifier-free guidance
def cfg_model_fn(
    model_fn_cond: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    cond: jax.Array,
    w: float,
    *,
    null_cond: Optional[jax.Array] = None,
    learn_sigma: bool = False,
) -> ModelFn:
    """Classifier-free guidance (Ho & Salimans 2022) as a ``model_fn(x, t)`` for any sampler.

    ``model_fn_cond(x, t, cond)`` is the conditional model; the unconditional prediction is the same
    model with ``null_cond`` (default zeros, the value conditioning dropout must use in training).
    Both come from ONE forward pass on the concatenated batch [cond; null]. Convention:
    ``out = (1 + w) out_c - w out_u``, so ``w = 0`` is exactly the conditional model and ``w = -1``
    the unconditional one (GLIDE / Imagen's guidance scale is 1 + w). The combination is affine, so
    it is the same for eps, x0 and v outputs. With ``learn_sigma`` only the first half of the
    channels is guided; the variance values are the conditional model's.
    """
    cond = jnp.asarray(cond)
    null = jnp.zeros_like(cond) if null_cond is None else jnp.broadcast_to(null_cond, cond.shape)

    def model_fn(x, t):
        n = x.shape[0]
        out = model_fn_cond(
            jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([cond, null])
        )
        out_c, out_u = out[:n], out[n:]
        if learn_sigma:
            c = out.shape[-1] // 2
            guided = (1.0 + w) * out_c[..., :c] - w * out_u[..., :c]
            return jnp.concatenate([guided, out_c[..., c:]], axis=-1)
        return (1.0 + w) * out_c - w * out_u

    return model_fn


# ------------------------------------------------------------------------------------------ RePaint
def repaint_times(num_steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> np.ndarray:
    """RePaint's time schedule (``get_schedule_jump`` with n_sample = 1): ints from T-1 to -1.

    Going down, at every multiple j of ``jump_length`` below T - jump_length the schedule jumps back
    up ``jump_length`` steps, ``jump_n_sample - 1`` times in all for each j. Consecutive entries
    differ by exactly 1: a decrease is a reverse (model) step, an increase a forward noising step.
    """
    if jump_length < 1 or jump_n_sample < 1:
        raise ValueError("jump_length and jump_n_sample must be >= 1")
    jumps = {j: jump_n_sample - 1 for j in range(0, num_steps - jump_length, jump_length)}
    t = num_steps
    ts = []
    while t >= 1:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    ts.append(-1)
    ts = np.asarray(ts, dtype=np.int64)
    assert np.all(np.abs(np.diff(ts)) == 1) and ts[-1] == -1 and ts.max() <= num_steps - 1
    return ts


def repaint_sample(
    model_fn: ModelFn,
    sched: Schedule,
    known_x0: jax.Array,
    known_mask: jax.Array,
    rng: jax.Array,
    *,
    jump_length: int = 10,
    jump_n_sample: int = 10,
    pred: str = "eps",
    clip_x0: bool = True,
    learn_sigma: bool = False,
    var_type: str = "small",
    indices: Optional[jax.Array] = None,
    debug: bool = False,
    method: str = "ddpm",
    eta: float = 0.0,
) -> jax.Array:
    """RePaint inpainting (Lugmayr et al. 2022, Algorithm 1 with the jump schedule).

    ``known_mask`` (broadcastable to ``known_x0``; 1 = known) keeps ``known_x0`` where it is 1 and
    lets the unconditional model fill the rest. A reverse step t -> t-1 takes the unknown part from
    the model's ancestral step and the known part from q(x_{t-1} | known_x0) (``known_x0`` itself
    after the last step, so the known region comes out exact). A forward step t -> t+1 re-noises
    the whole image with q(x_{t+1} | x_t) = N(sqrt(1 - beta_{t+1}) x_t, beta_{t+1}). RePaint's code
    injects the known part at the start of the next reverse step instead; the two differ only in
    that final step. The paper used 250 respaced steps with jump_length = jump_n_sample = 10.

    ``method="ddim"`` replaces the ancestral reverse step by a DDIM step (``eta``): with a respaced
    schedule of a few tens of steps and a few jumps this is the fast variant. The forward jump uses
    the respaced schedule's betas, i.e. q(x_{t+1} | x_t) between the kept steps, so it is exact there.

    For joint image+mask models, conditioning on a given mask means ``known_x0`` holds the mask in
    its mask channel and ``known_mask`` is 1 on that channel only.
    """
    if method not in ("ddpm", "ddim"):
        raise ValueError(f"method must be 'ddpm' or 'ddim', got {method!r}")
    known_x0 = known_x0.astype(jnp.float32)
    m = jnp.broadcast_to(jnp.asarray(known_mask, jnp.float32), known_x0.shape)
    n = known_x0.shape[0]
    per_example = known_x0.shape[1:]
    times = repaint_times(len(sched), jump_length, jump_n_sample)
    keys = example_keys(rng, n, indices)
    x = _normal(keys, _INIT, 0, per_example)

    def down(x, t_last, t_cur, i):
        noise = _normal(keys, _STEP, i, per_example)
        if method == "ddim":
            x_unknown, _ = ddim_step(model_fn, sched, x, t_last, noise, eta=eta, pred=pred, clip_x0=clip_x0,
                                     learn_sigma=learn_sigma)
        else:
            x_unknown, _ = ddpm_step(model_fn, sched, x, t_last, noise, pred=pred, clip_x0=clip_x0,
                                     learn_sigma=learn_sigma, var_type=var_type)
        t_known = jnp.full((n,), jnp.maximum(t_cur, 0), jnp.int32)
        x_known = obj.q_sample(sched, known_x0, t_known, _normal(keys, _KNOWN, i, per_example))
        x_known = jnp.where(t_cur < 0, known_x0, x_known)
        return m * x_known + (1.0 - m) * x_unknown

    def up(x, t_last, t_cur, i):
        beta = sched.betas[t_cur]
        return jnp.sqrt(1.0 - beta) * x + jnp.sqrt(beta) * _normal(keys, _JUMP, i, per_example)

    def body(x, step):
        t_last, t_cur, i = step
        return lax.cond(t_cur < t_last, down, up, x, t_last, t_cur, i)

    xs = (
        jnp.asarray(times[:-1], jnp.int32),
        jnp.asarray(times[1:], jnp.int32),
        jnp.arange(len(times) - 1, dtype=jnp.int32),
    )
    return _loop(body, x, xs, debug)
