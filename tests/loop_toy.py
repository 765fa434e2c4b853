"""A tiny task for the training-loop tests; also run as a script (kill/resume test).

    python tests/loop_toy.py WORKDIR NUM_STEPS [nan_at_step]
prints the sha256 of the final params.
"""
import hashlib
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from polypjax import configlib  # noqa: E402
from polypjax.data import pipeline  # noqa: E402
from polypjax.train import loop  # noqa: E402


class Source:
    def __len__(self):
        return 64

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        return {"image": image, "mask": (image[..., 0] > 128).astype(np.uint8), "id": str(i)}


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(8, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.Dropout(0.2, deterministic=not train)(nn.relu(x))
        return nn.Conv(1, (1, 1))(x)


class ToyTask:
    def __init__(self, config):
        self.config, self.model = config, Net()
        self.evaluations = []

    def train_iterator(self):
        return pipeline.train_dataset(Source(), image_size=None, global_batch_size=8, seed=self.config.seed)

    def init(self, rng, batch):
        v = self.model.init(rng, batch["image"].astype(jnp.float32), train=False)
        return v["params"], {"batch_stats": v["batch_stats"]}

    def loss(self, params, model_state, batch, rng):
        x = batch["image"].astype(jnp.float32) / 255.0
        y = batch["mask"].astype(jnp.float32)[..., None]
        out, upd = self.model.apply({"params": params, **model_state}, x, train=True,
                                    mutable=["batch_stats"], rngs={"dropout": rng})
        loss = jnp.mean((out - y) ** 2)
        return loss, ({"mse": loss}, {**model_state, **upd})

    def evaluate(self, state, step, writer):
        self.evaluations.append(step)
        return {"eval/step_seen": float(step)}


class WideNet(nn.Module):
    """The toy segmenter with one layer large enough for fsdp to shard (>= 2**14 weights). No bias
    before BatchNorm: its true gradient is zero, so Adam would amplify rounding noise to +-lr."""

    @nn.compact
    def __call__(self, x, train):
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(16, (3, 3), use_bias=False)(x)))
        x = nn.Dropout(0.2, deterministic=not train)(nn.relu(nn.Conv(128, (3, 3))(x)))
        return nn.Conv(1, (1, 1))(x)


class WideTask(ToyTask):
    def __init__(self, config):
        super().__init__(config)
        self.model = WideNet()


def config(num_steps=12):
    c = configlib.base_config("train_segmentation")
    c.train, c.optim = configlib.train_config()
    c.train.num_steps = num_steps
    c.train.checkpoint_every = 2
    c.train.log_every = 2
    c.train.ema_decay = 0.9
    c.optim.warmup_steps = 2
    return c


def params_digest(state) -> str:
    leaves = jax.tree.leaves(jax.device_get((state.params, state.ema_params, state.model_state, state.opt_state)))
    h = hashlib.sha256()
    for leaf in leaves:
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    workdir, steps = sys.argv[1], int(sys.argv[2])
    state = loop.train(ToyTask(config(steps)), config(steps), workdir)
    print("DIGEST", params_digest(state), flush=True)
