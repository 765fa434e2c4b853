"""Noise schedules and timestep respacing, ported from openai/guided-diffusion.

Every table is computed in float64 with numpy (as ``GaussianDiffusion.__init__`` does) and only then
stored as float32 ``jnp`` arrays; cumulative products and the differences taken by respacing lose
too much in float32. Indexing follows guided-diffusion: index ``t`` in ``0..T-1`` is the state after
``t + 1`` noising steps, so ``alphas_cumprod[0] = 1 - betas[0]`` and "index -1" is clean data.

A :class:`Schedule` is a pytree (``flax.struct.dataclass``): it may be closed over or passed through
``jax.jit``. Its float64 betas also ride along as static, hashable metadata so that ``respace`` can
rebuild a schedule without going through float32.

``respace(sched, "ddim50")`` keeps a subset of the timesteps (``space_timesteps``) and gives the kept
steps new betas so that the kept ``alphas_cumprod`` are exactly the original ones
(``SpacedDiffusion``). ``sched.timesteps[i]`` is the original timestep of respaced index ``i``: the
value a model trained on the full schedule must be called with (guided-diffusion's
``_WrappedModel``).
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import jax.numpy as jnp
import numpy as np
from flax import struct

SectionCounts = Union[str, Sequence[int]]


def linear_betas(num_timesteps: int) -> np.ndarray:
    """Ho et al.'s linear schedule, rescaled so that any T gives a similar process (guided-diffusion)."""
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def betas_for_alpha_bar(num_timesteps: int, alpha_bar, max_beta: float = 0.999) -> np.ndarray:
    """Betas that discretise a continuous ``alpha_bar(t)``, t in [0, 1], clipped at ``max_beta``."""
    betas = []
    for i in range(num_timesteps):
        t1 = i / num_timesteps
        t2 = (i + 1) / num_timesteps
        betas.append(min(1.0 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.asarray(betas, dtype=np.float64)


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule (offset s = 0.008)."""
    return betas_for_alpha_bar(
        num_timesteps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2, max_beta
    )


@struct.dataclass
class Schedule:
    """Diffusion tables for one (possibly respaced) process; all arrays float32 [T] except ``timesteps``."""

    betas: jnp.ndarray
    log_betas: jnp.ndarray
    alphas_cumprod: jnp.ndarray
    alphas_cumprod_prev: jnp.ndarray
    alphas_cumprod_next: jnp.ndarray
    sqrt_alphas_cumprod: jnp.ndarray
    sqrt_one_minus_alphas_cumprod: jnp.ndarray
    log_one_minus_alphas_cumprod: jnp.ndarray
    sqrt_recip_alphas_cumprod: jnp.ndarray
    sqrt_recipm1_alphas_cumprod: jnp.ndarray
    posterior_variance: jnp.ndarray
    posterior_log_variance_clipped: jnp.ndarray
    posterior_mean_coef1: jnp.ndarray
    posterior_mean_coef2: jnp.ndarray
    # Original timestep of each index (int32); arange(T) for an unrespaced schedule.
    timesteps: jnp.ndarray
    # Static: float64 betas (exact, hashable) and the length of the schedule this one was cut from.
    betas64: tuple = struct.field(pytree_node=False, default=())
    original_num_steps: int = struct.field(pytree_node=False, default=0)

    @property
    def num_timesteps(self) -> int:
        return len(self.betas64)

    def __len__(self) -> int:
        return len(self.betas64)


def schedule_tables(betas: np.ndarray) -> dict[str, np.ndarray]:
    """guided-diffusion's float64 tables for ``betas`` (the formulas of ``GaussianDiffusion.__init__``)."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
        raise ValueError("betas must be 1-D and in (0, 1]")
    alphas = 1.0 - betas
    acp = np.cumprod(alphas)
    acp_prev = np.append(1.0, acp[:-1])
    acp_next = np.append(acp[1:], 0.0)
    posterior_variance = betas * (1.0 - acp_prev) / (1.0 - acp)
    # The posterior variance is 0 at index 0; guided-diffusion clips its log by repeating index 1.
    if len(betas) > 1:
        post_log = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
    else:
        post_log = np.log(betas)
    with np.errstate(divide="ignore"):
        log_one_minus = np.log(1.0 - acp)
    return dict(
        betas=betas,
        log_betas=np.log(betas),
        alphas_cumprod=acp,
        alphas_cumprod_prev=acp_prev,
        alphas_cumprod_next=acp_next,
        sqrt_alphas_cumprod=np.sqrt(acp),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - acp),
        log_one_minus_alphas_cumprod=log_one_minus,
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / acp),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / acp - 1.0),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=post_log,
        posterior_mean_coef1=betas * np.sqrt(acp_prev) / (1.0 - acp),
        posterior_mean_coef2=(1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp),
    )


def schedule_from_betas(
    betas: np.ndarray, timesteps: Sequence[int] | None = None, original_num_steps: int | None = None
) -> Schedule:
    """Build a :class:`Schedule` from float64 betas (and the original-timestep map when respaced)."""
    betas = np.asarray(betas, dtype=np.float64)
    tables = schedule_tables(betas)
    if timesteps is None:
        timesteps = np.arange(len(betas))
    timesteps = np.asarray(timesteps, dtype=np.int64)
    if timesteps.shape != betas.shape:
        raise ValueError(f"timesteps map has shape {timesteps.shape}, betas {betas.shape}")
    arrays = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in tables.items()}
    return Schedule(
        **arrays,
        timesteps=jnp.asarray(timesteps, dtype=jnp.int32),
        betas64=tuple(float(b) for b in betas),
        original_num_steps=int(original_num_steps or len(betas)),
    )


def make_schedule(kind: str, num_timesteps: int) -> Schedule:
    """``kind`` is "linear" or "cosine" (guided-diffusion's ``get_named_beta_schedule``)."""
    if kind == "linear":
        betas = linear_betas(num_timesteps)
    elif kind == "cosine":
        betas = cosine_betas(num_timesteps)
    else:
        raise ValueError(f"unknown beta schedule {kind!r}; expected 'linear' or 'cosine'")
    return schedule_from_betas(betas)


def space_timesteps(num_timesteps: int, section_counts: SectionCounts) -> list[int]:
    """guided-diffusion ``space_timesteps``: sorted timesteps kept from a ``num_timesteps`` process.

    ``section_counts`` is a list of step counts for equal-sized sections ("10,15,20" as a string is
    accepted too), or "ddimN" for the DDIM paper's fixed integer stride giving exactly N steps.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {desired} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start = 0
    steps: list[int] = []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide section of {size} steps into {count}")
        frac_stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            # Python's round (banker's rounding) on purpose: it is what guided-diffusion uses.
            steps.append(start + round(cur))
            cur += frac_stride
        start += size
    return sorted(set(steps))


def respaced(sched: Schedule, steps: int) -> Schedule:
    """``steps`` evenly spaced steps of ``sched`` (:func:`respace`), or ``sched`` itself when it has
    no more than that: the schedule every sampler and RePaint run on for a step count."""
    return sched if steps >= len(sched) else respace(sched, [steps])


def respace(sched: Schedule, section_counts: Union[SectionCounts, Sequence[int]]) -> Schedule:
    """Keep a subset of ``sched``'s steps with betas that preserve their ``alphas_cumprod``.

    ``section_counts`` is anything :func:`space_timesteps` accepts; an explicit sorted list of kept
    indices can be given as ``("indices", [...])``.
    """
    n = len(sched)
    if isinstance(section_counts, tuple) and len(section_counts) == 2 and section_counts[0] == "indices":
        use = sorted(set(int(i) for i in section_counts[1]))
    else:
        use = space_timesteps(n, section_counts)
    if not use or use[0] < 0 or use[-1] >= n:
        raise ValueError(f"kept timesteps must lie in [0, {n})")
    acp = np.cumprod(1.0 - np.asarray(sched.betas64, dtype=np.float64))
    keep = set(use)
    new_betas, last = [], 1.0
    for i, a in enumerate(acp):
        if i in keep:
            new_betas.append(1.0 - a / last)
            last = a
    # Respacing composes: map through this schedule's own original timesteps.
    original = np.asarray(sched.timesteps)[np.asarray(use)]
    return schedule_from_betas(np.asarray(new_betas), original, sched.original_num_steps)
