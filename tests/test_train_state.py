"""EMA of the train state: warm-up rule, then the configured decay."""
import jax.numpy as jnp
import numpy as np
import optax

from polypjax.train.state import TrainState


def test_ema_warms_up_then_uses_the_decay():
    tx = optax.sgd(1.0)
    state = TrainState.create({"w": jnp.zeros(())}, tx, rng=None, ema_decay=0.9)
    ema, params = 0.0, 0.0
    for step in range(30):
        state = state.apply_gradients({"w": jnp.asarray(-1.0)})  # params += 1 each step
        params += 1.0
        d = min(0.9, (1 + step) / (10 + step))
        ema = d * ema + (1 - d) * params
        np.testing.assert_allclose(float(state.ema_params["w"]), ema, rtol=1e-5)
    # step 0 uses decay 0.1: the average follows the first update almost entirely
    first = TrainState.create({"w": jnp.zeros(())}, tx, rng=None, ema_decay=0.9999)
    first = first.apply_gradients({"w": jnp.asarray(-1.0)})
    np.testing.assert_allclose(float(first.ema_params["w"]), 0.9, rtol=1e-6)


def test_no_ema_tracks_params():
    state = TrainState.create({"w": jnp.zeros(())}, optax.sgd(1.0), rng=None, ema_decay=0.0)
    state = state.apply_gradients({"w": jnp.asarray(-2.0)})
    assert float(state.ema_params["w"]) == float(state.params["w"]) == 2.0
