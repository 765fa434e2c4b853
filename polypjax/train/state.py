"""Train state shared by every task: params, EMA params, model state, optimizer state, step, RNG."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any  # same tree as params; equals params when EMA is off (decay 0)
    model_state: Any  # non-trained collections, e.g. {"batch_stats": ...}; {} when none
    opt_state: Any
    rng: jax.Array
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)

    @classmethod
    def create(cls, params, tx, rng, model_state=None, ema_decay: float = 0.0) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                   model_state=model_state or {}, opt_state=tx.init(params), rng=rng, tx=tx,
                   ema_decay=ema_decay)

    def apply_gradients(self, grads, model_state=None) -> "TrainState":
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        if self.ema_decay > 0:
            # Warm-up (TF's ExponentialMovingAverage num_updates rule): early on the average has a
            # short memory, so a short run's EMA is not dominated by the random initialisation.
            step = self.step.astype(jnp.float32)
            d = jnp.minimum(self.ema_decay, (1.0 + step) / (10.0 + step))
            ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, self.ema_params, params)
        else:
            ema = params
        return self.replace(step=self.step + 1, params=params, ema_params=ema, opt_state=opt_state,
                            model_state=self.model_state if model_state is None else model_state)


def make_optimizer(optim_config, num_steps: int) -> optax.GradientTransformation:
    """Adam/AdamW/SGD with warmup + cosine (or constant) schedule and global-norm clipping."""
    c = optim_config
    if c.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, c.learning_rate, max(c.warmup_steps, 1),
                                                max(num_steps, c.warmup_steps + 1), end_value=c.learning_rate * c.end_factor)
    elif c.schedule == "constant":
        lr = optax.join_schedules([optax.linear_schedule(0.0, c.learning_rate, c.warmup_steps),
                                   optax.constant_schedule(c.learning_rate)], [c.warmup_steps]) \
            if c.warmup_steps else c.learning_rate
    else:
        raise ValueError(f"optim.schedule={c.schedule!r}: expected 'cosine' or 'constant'")
    if c.name == "adam":
        opt = optax.adam(lr, b1=c.b1, b2=c.b2)
    elif c.name == "adamw":
        opt = optax.adamw(lr, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay)
    elif c.name == "sgd":
        opt = optax.sgd(lr, momentum=c.b1, nesterov=True)
    else:
        raise ValueError(f"optim.name={c.name!r}: expected adam, adamw or sgd")
    chain = [optax.clip_by_global_norm(c.grad_clip)] if c.grad_clip else []
    return optax.chain(*chain, opt)


def make_partitioned_optimizer(optim_configs: dict, num_steps: int) -> optax.GradientTransformation:
    """One optimizer (`make_optimizer`) per top-level key of the parameter tree, e.g. a GAN's
    {'gen': ..., 'disc': ...}: each network has its own learning rate, clipping and moments."""
    txs = {k: make_optimizer(c, num_steps) for k, c in optim_configs.items()}
    return optax.multi_transform(txs, lambda params: {k: jax.tree.map(lambda _: k, v) for k, v in params.items()})
