"""Forward process, parameterisation conversions and training losses (guided-diffusion maths).

Arrays are NHWC; ``t`` is an int array [N] of schedule indices (see ``schedule.py``). The model is
always called with the schedule's *original* timestep values ``sched.timesteps[t]``, so a respaced
schedule can drive a model trained on the full one.

Parameterisations (alpha = sqrt(acp), sigma = sqrt(1 - acp), x_t = alpha x0 + sigma eps):

* ``eps``: the noise; ``x0 = (x_t - sigma eps) / alpha``.
* ``x0``: the clean data.
* ``v``: ``v = alpha eps - sigma x0`` (Salimans & Ho 2022); ``x0 = alpha x_t - sigma v``,
  ``eps = sigma x_t + alpha v``.

``training_loss`` is guided-diffusion's ``training_losses`` with ``LossType.RESCALED_MSE``: the MSE on
the chosen target plus, when the variance is learned (``learn_sigma``; output channels doubled, the
second half in [-1, 1] interpolating log-variance between the posterior and beta), the VLB term
computed with the mean output frozen (``stop_gradient``), in bits per dimension and scaled by
T / 1000: Nichol & Dhariwal's hybrid loss with lambda = 1/1000.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from polypjax.diffusion.schedule import Schedule

PREDS = ("eps", "x0", "v")


def extract(arr: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
    """``arr[t]`` reshaped to broadcast against an array of rank ``ndim`` (batch first)."""
    t = jnp.asarray(t)
    out = arr[t]
    return out.reshape(out.shape + (1,) * (ndim - out.ndim))


def mean_flat(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def q_sample(sched: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Sample q(x_t | x_0) with the given standard-normal ``noise``."""
    return (
        extract(sched.sqrt_alphas_cumprod, t, x0.ndim) * x0
        + extract(sched.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise
    )


def predict_x0_from_eps(sched: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    return (
        extract(sched.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
        - extract(sched.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps
    )


def predict_eps_from_x0(sched: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    return (extract(sched.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - x0) / extract(
        sched.sqrt_recipm1_alphas_cumprod, t, x_t.ndim
    )


def v_target(sched: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """v = alpha eps - sigma x0."""
    return (
        extract(sched.sqrt_alphas_cumprod, t, x0.ndim) * noise
        - extract(sched.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0
    )


def x0_from_v(sched: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    return (
        extract(sched.sqrt_alphas_cumprod, t, x_t.ndim) * x_t
        - extract(sched.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * v
    )


def eps_from_v(sched: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    return (
        extract(sched.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * x_t
        + extract(sched.sqrt_alphas_cumprod, t, x_t.ndim) * v
    )


def predict_x0(sched: Schedule, x_t: jax.Array, t: jax.Array, out: jax.Array, pred: str) -> jax.Array:
    """x0 implied by a model output under parameterisation ``pred``."""
    if pred == "eps":
        return predict_x0_from_eps(sched, x_t, t, out)
    if pred == "x0":
        return out
    if pred == "v":
        return x0_from_v(sched, x_t, t, out)
    raise ValueError(f"pred must be one of {PREDS}, got {pred!r}")


def q_posterior_mean_variance(sched: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array):
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
    mean = (
        extract(sched.posterior_mean_coef1, t, x_t.ndim) * x0
        + extract(sched.posterior_mean_coef2, t, x_t.ndim) * x_t
    )
    var = extract(sched.posterior_variance, t, x_t.ndim)
    log_var = extract(sched.posterior_log_variance_clipped, t, x_t.ndim)
    return mean, var, log_var


def learned_range_log_variance(sched: Schedule, t: jax.Array, var_values: jax.Array) -> jax.Array:
    """guided-diffusion LEARNED_RANGE: values in [-1, 1] span [posterior log-var, log beta]."""
    min_log = extract(sched.posterior_log_variance_clipped, t, var_values.ndim)
    max_log = extract(sched.log_betas, t, var_values.ndim)
    frac = (var_values + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * jnp.exp(-logvar2)
    )


def approx_standard_normal_cdf(x):
    # The tanh approximation guided-diffusion uses; kept so that VLB values match it.
    return 0.5 * (1.0 + jnp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
    """Log-likelihood (nats) of 8-bit data rescaled to [-1, 1] under a discretised Gaussian."""
    centered = x - means
    inv_stdv = jnp.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(
        x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta)
    )


def vb_terms_bpd(sched: Schedule, x0, x_t, t, model_mean, model_log_variance):
    """One VLB term in bits/dim: decoder NLL at t = 0, KL(q(x_{t-1}|x_t,x_0) || p) otherwise."""
    true_mean, _, true_log_var = q_posterior_mean_variance(sched, x0, x_t, t)
    kl = mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_variance)) / np.log(2.0)
    nll = -discretized_gaussian_log_likelihood(
        x0, means=model_mean, log_scales=0.5 * model_log_variance
    )
    nll = mean_flat(nll) / np.log(2.0)
    return jnp.where(t == 0, nll, kl)


TIMESTEP_SAMPLING = ("uniform", "lognormal")
# Karras et al. (2022), EDM: ln(sigma) ~ N(-1.2, 1.2^2) for data scaled to [-1, 1].
EDM_P_MEAN, EDM_P_STD = -1.2, 1.2


def sample_timesteps(sched: Schedule, rng: jax.Array, n: int, kind: str = "uniform") -> jax.Array:
    """Training timesteps [N]: uniform over the schedule's indices (DDPM), or ``lognormal``: EDM's
    noise-level distribution, mapped onto this discrete schedule through the equivalent variance-
    exploding noise level sigma_t = sqrt((1 - acp_t) / acp_t) = SNR_t^-1/2 (x_t / alpha_t = x0 +
    sigma_t eps), each draw taking the first index whose sigma_t reaches it."""
    if kind == "uniform":
        return jax.random.randint(rng, (n,), 0, len(sched))
    if kind != "lognormal":
        raise ValueError(f"timestep sampling must be one of {TIMESTEP_SAMPLING}, got {kind!r}")
    acp = sched.alphas_cumprod
    log_sigma = 0.5 * (jnp.log1p(-acp) - jnp.log(acp))  # increasing in t
    draws = EDM_P_MEAN + EDM_P_STD * jax.random.normal(rng, (n,))
    return jnp.clip(jnp.searchsorted(log_sigma, draws), 0, len(sched) - 1)


def training_loss(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    sched: Schedule,
    x0: jax.Array,
    rng: jax.Array,
    *,
    pred: str = "eps",
    learn_sigma: bool = False,
    cond: Optional[jax.Array] = None,
    t: Optional[jax.Array] = None,
    noise: Optional[jax.Array] = None,
    min_snr_gamma: float = 0.0,
    timestep_sampling: str = "uniform",
) -> dict[str, jax.Array]:
    """Per-example diffusion loss for one uniformly drawn timestep per example.

    ``apply_fn(params, x_t, timesteps, cond)`` returns the model output (float32, channels last;
    ``2 * C`` channels when ``learn_sigma``). Dropout rngs and ``train=True`` are the caller's to
    close over. ``t`` and ``noise`` override the random draws (for tests). ``min_snr_gamma`` > 0
    weights the MSE by Hang et al.'s (2023) min-SNR-gamma rule, expressed for the chosen target:
    min(SNR, gamma) / SNR for eps, min(SNR, gamma) / (SNR + 1) for v, min(SNR, gamma) for x0.
    ``timestep_sampling`` picks the distribution of ``t`` (``sample_timesteps``).

    Returns a dict of [N] arrays: ``loss`` (= mse + vb), ``mse``, ``vb`` (zeros unless
    ``learn_sigma``) and ``t``.
    """
    if pred not in PREDS:
        raise ValueError(f"pred must be one of {PREDS}, got {pred!r}")
    n = x0.shape[0]
    t_rng, n_rng = jax.random.split(rng)
    if t is None:
        t = sample_timesteps(sched, t_rng, n, timestep_sampling)
    if noise is None:
        noise = jax.random.normal(n_rng, x0.shape, dtype=x0.dtype)
    x_t = q_sample(sched, x0, t, noise)
    out = apply_fn(params, x_t, sched.timesteps[t], cond).astype(jnp.float32)
    c = x0.shape[-1]
    if learn_sigma:
        if out.shape[-1] != 2 * c:
            raise ValueError(f"learn_sigma needs {2 * c} output channels, model gave {out.shape[-1]}")
        out, var_values = out[..., :c], out[..., c:]
    elif out.shape[-1] != c:
        raise ValueError(f"model gave {out.shape[-1]} output channels, data has {c}")

    if pred == "eps":
        target = noise
    elif pred == "x0":
        target = x0
    else:
        target = v_target(sched, x0, t, noise)
    mse = mean_flat((target - out) ** 2)
    if min_snr_gamma > 0:
        snr = sched.alphas_cumprod[t] / (1.0 - sched.alphas_cumprod[t])
        clipped = jnp.minimum(snr, min_snr_gamma)
        mse = mse * {"eps": clipped / snr, "v": clipped / (snr + 1.0), "x0": clipped}[pred]

    if learn_sigma:
        # The VLB only trains the variance: the mean output is frozen, as in guided-diffusion.
        frozen_x0 = predict_x0(sched, x_t, t, jax.lax.stop_gradient(out), pred)
        model_mean, _, _ = q_posterior_mean_variance(sched, frozen_x0, x_t, t)
        log_var = learned_range_log_variance(sched, t, var_values)
        vb = vb_terms_bpd(sched, x0, x_t, t, model_mean, log_var) * (len(sched) / 1000.0)
    else:
        vb = jnp.zeros_like(mse)
    return {"loss": mse + vb, "mse": mse, "vb": vb, "t": t}
