"""One training loop for every task.

A task supplies the model (`init`), the loss, the data iterator and the evaluation; the loop owns
the sharded, jitted step, checkpoints (train state and data iterator together), resume, metric
writers, progress and the non-finite-loss guard.

Resume is exact: the state holds the RNG (each step folds in its step number) and the grain
iterator state is saved beside it, so a run killed at any moment and restarted ends bitwise equal
to an uninterrupted one on the same machine. orbax writes each checkpoint to a temporary folder
and renames it when complete, so a kill mid-save leaves the previous checkpoint as the latest.
"""
from __future__ import annotations

import logging
import math
import pathlib
import threading
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from polypjax import faults, parallel
from polypjax.train import compute
from polypjax.train import writers as writers_lib
from polypjax.train.state import TrainState, make_optimizer


class NonFiniteLossError(RuntimeError):
    pass


_PARAMS_FINITE = "params_finite"  # step metric read by the guard, not logged


class Task(Protocol):
    def init(self, rng: jax.Array, batch: dict) -> tuple[Any, Any]:
        """-> (params, model_state) for an example batch."""

    def loss(self, params, model_state, batch: dict, rng: jax.Array) -> tuple[jax.Array, tuple[dict, Any]]:
        """-> (scalar loss, (metrics dict, new model_state))."""

    def train_iterator(self):
        """A checkpointable grain iterator of process-local batches (numpy)."""

    def evaluate(self, state: TrainState, step: int, writer) -> dict:
        """Host-side evaluation; returns scalars to log."""


def make_train_step(loss_fn: Callable):
    def train_step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.model_state, batch, rng)
        new_state = state.apply_gradients(grads, model_state)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
                   # A finite loss can still give non-finite gradients (and so parameters): checked too.
                   _PARAMS_FINITE: jnp.all(jnp.array([jnp.isfinite(x).all() for x in jax.tree.leaves(new_state.params)]))}
        return new_state, metrics
    return train_step


def create_state(task: Task, config, mesh, example_batch: dict, num_steps: int) -> tuple[TrainState, Any]:
    """Initialises the train state directly into its shardings (params never whole on one device
    when fsdp > 1)."""
    # A task with several networks (a GAN) brings its own optimizer, one per parameter tree.
    tx = task.optimizer(num_steps) if hasattr(task, "optimizer") else make_optimizer(config.optim, num_steps)
    rng = jax.random.PRNGKey(config.seed)

    def create():
        init_rng, state_rng = jax.random.split(rng)
        params, model_state = task.init(init_rng, example_batch)
        return TrainState.create(params, tx, state_rng, model_state, ema_decay=config.train.ema_decay)

    abstract = jax.eval_shape(create)
    shardings = parallel.param_shardings(mesh, abstract)
    state = jax.jit(create, out_shardings=shardings, compiler_options=_ONE_OFF_OPTIONS.get(jax.default_backend()))()
    return state, shardings


# The init program runs once, but XLA:CPU's LLVM -O3 spends most of a run's start-up optimising its
# random-number code (tools/README.md, "Measurements"). Its speed does not matter; the values
# differ from -O3 only in the last float bit.
_ONE_OFF_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


def checkpoint_manager(workdir: pathlib.Path, config) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints,
                                           save_interval_steps=1, enable_async_checkpointing=True,
                                           create=True)
    return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / "checkpoints", options=options,
                                 item_names=("state", "data"))


def restore_run(workdir, task: str):
    """(config, state dict) of the latest checkpoint of a finished or running `task` workdir, for
    inference: arrays on the host, no optimizer or data state needed to read it."""
    import json

    import ml_collections
    from polypjax.configlib import ConfigError
    workdir = pathlib.Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise ConfigError(f"{workdir}: no config.json; not a {task} workdir")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    if config.get("task") != task:
        raise ConfigError(f"{workdir}: a {config.get('task')!r} workdir, expected {task!r}")
    ckpt_dir = (workdir / "checkpoints").absolute()
    import grain
    mngr = (ocp.CheckpointManager(ckpt_dir, item_names=("state", "data"),
                                  item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                 "data": grain.checkpoint.CheckpointHandler()})
            if ckpt_dir.exists() else None)
    if mngr is None or mngr.latest_step() is None:
        raise ConfigError(f"{workdir}: no checkpoint found in {ckpt_dir}")
    step = mngr.latest_step()
    # Every array whole on this process's first device: the checkpoint may come from another
    # topology (8 devices, 2 processes), which orbax restores only into a target it is given.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            mngr.item_metadata(step)["state"])
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
    return config, restored


def _save(mngr, step, state, data_iter):
    import grain
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            data=grain.checkpoint.CheckpointSave(data_iter)), force=True)


def _restore(mngr, step, state, shardings, data_iter):
    import grain
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                          data=grain.checkpoint.CheckpointRestore(data_iter)))
    return restored.state


def _restore_latest_good(mngr, state, shardings, data_iter):
    """(step, state) of the newest checkpoint that restores; a corrupt one (a disk that failed, a
    file edited by hand) is reported, removed so the run can save that step again, and the one
    before it is used."""
    from polypjax.configlib import ConfigError
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            restored = _restore(mngr, step, state, shardings, data_iter)
        except Exception as e:  # orbax / tensorstore raise many types for damaged files
            if faults.permission_denied(e):
                raise  # the files may be whole: deleting them would lose the run's training
            logging.warning("checkpoint step %d in %s cannot be restored (%s: %s); removing it and "
                            "trying the one before", step, mngr.directory, type(e).__name__, str(e)[:200])
            mngr.delete(step)
            continue
        logging.info("resumed from %s at step %d", mngr.directory, step)
        return int(step), restored
    raise ConfigError(f"{mngr.directory}: no checkpoint can be restored; delete the folder to start afresh")


def train(task: Task, config, workdir: str | pathlib.Path) -> TrainState:
    """Runs (or resumes) `config.train.num_steps` steps of `task`; returns the final state."""
    workdir = pathlib.Path(workdir)
    # tensorflow (TensorBoard writer) takes seconds to import: done while XLA compiles.
    warm = threading.Thread(target=writers_lib.tensorflow_available, name="import-tensorflow", daemon=True)
    warm.start()
    try:
        mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
        num_steps = int(config.train.num_steps)
        data_iter = iter(task.train_iterator())
        try:
            return _train(task, config, workdir, mesh, num_steps, data_iter, warm)
        finally:
            # Also when the run fails before its first step (a data file gone): grain's workers and their
            # shared memory would otherwise outlive it, and Python reports the memory leaked at exit.
            _close(data_iter)
    finally:
        # A run that fails before _train joins it (an unreadable checkpoint, a data file gone) would
        # leave the import running while main prints the error and exits: tensorflow loads its
        # libraries one after another and each prints its oneDNN banner, so the second one came
        # after the `error:` line. Waiting for the import (seconds at most, already under way) keeps
        # its output before the error and nothing importing tensorflow after it.
        warm.join()


def _train(task: Task, config, workdir: pathlib.Path, mesh, num_steps: int, data_iter, warm) -> TrainState:
    start_state = data_iter.get_state()
    first = parallel.global_batch(next(data_iter), mesh)  # shapes for initialisation
    data_iter.set_state(start_state)  # so the first batch is also the first one trained on
    state, shardings = create_state(task, config, mesh, first, num_steps)
    batch_sharding = parallel.batch_sharding(mesh)
    step_fn = jax.jit(make_train_step(task.loss), in_shardings=(shardings, batch_sharding),
                      out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=(0,))

    state_bytes = compute.bytes_per_device(state)
    logging.info("train state: %.1f MiB per device on a data=%d x fsdp=%d mesh", state_bytes / 2**20,
                 mesh.shape["data"], mesh.shape["fsdp"])
    mngr = checkpoint_manager(workdir, config)
    start = 0
    if mngr.latest_step() is not None:
        start, state = _restore_latest_good(mngr, state, shardings, data_iter)
    warm.join()
    writer = writers_lib.make_writer(workdir, is_main_process=jax.process_index() == 0)
    if start == 0:
        writer.write_hparams({k: v for k, v in _flat(config.to_dict()).items()})
    progress = writers_lib.Progress(num_steps, writer, start, every_steps=config.train.log_every,
                                    show_bar=jax.process_index() == 0)
    flops_thread = None
    pending = None  # (step, device metrics) checked one step late so the host never stalls the device
    window: dict[str, list] = {}

    def check(step, metrics):
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        params_finite = host.pop(_PARAMS_FINITE, 1.0) > 0
        if not math.isfinite(host["loss"]) or not params_finite:
            mngr.wait_until_finished()
            what = f"loss is {host['loss']}" if not math.isfinite(host["loss"]) else "parameters are not finite"
            raise NonFiniteLossError(
                f"{what} at step {step}: stopping; the last good checkpoint "
                f"(step {mngr.latest_step()}) in {mngr.directory} is kept. Lower optim.learning_rate or "
                "set optim.grad_clip.")
        for k, v in host.items():
            window.setdefault(k, []).append(v)
        if step % config.train.log_every == 0 or step == num_steps:
            writer.write_scalars(step, {f"train/{k}": np.mean(v) for k, v in window.items()})
            window.clear()

    try:
        for step in range(start + 1, num_steps + 1):
            batch = parallel.global_batch(next(data_iter), mesh)
            old_state, state, metrics = state, *step_fn(state, batch)
            if step == start + 1:  # after the first step's trace and compile, not beside them
                flops_thread = compute.record_step_flops(  # the compute column of pipeline reports
                    workdir, step_fn, old_state, batch, state_bytes_per_device=state_bytes, mesh=dict(mesh.shape))
            del old_state  # donated: only its shapes are read
            if pending is not None:
                check(*pending)
            pending = (step, metrics)
            progress(step)
            due_ckpt = step % config.train.checkpoint_every == 0 or step == num_steps
            due_eval = config.train.eval_every and step % config.train.eval_every == 0 and step != num_steps
            if due_ckpt or due_eval:
                check(*pending)  # never checkpoint or evaluate a state produced by a non-finite loss
                pending = None
            if due_ckpt:
                _save(mngr, step, state, data_iter)
            if due_eval:
                writer.write_scalars(step, task.evaluate(state, step, writer))
        if pending is not None:
            check(*pending)
        _close(data_iter)  # data workers stop before the final evaluation needs the CPU
        # The last checkpoint is written in orbax's background threads while the model is evaluated
        # (seconds of a short run); the `finally` waits for it.
        writer.write_scalars(num_steps, task.evaluate(state, num_steps, writer))
    finally:
        _close(data_iter)
        progress.close()
        mngr.wait_until_finished()
        writer.flush()
        if flops_thread is not None:
            flops_thread.join()
    return state


def _close(data_iter) -> None:
    """Stops grain's worker processes and frees their shared-memory batches (idempotent); left to
    the garbage collector, they are still held at exit and Python warns of leaked shared memory."""
    close = getattr(data_iter, "close", None)
    if close is not None:
        close()


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def validate_train_config(config) -> None:
    """Checks `config.train` and `config.optim` (shared by every training task)."""
    from polypjax.configlib import ConfigError, check_number
    for name in ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        check_number(config, f"train.{name}", 1, integer=True)
    check_number(config, "train.eval_every", 0, integer=True)  # 0: at the end only
    check_number(config, "train.ema_decay", 0, 1, high_open=True)
    check_number(config, "optim.learning_rate", 0, low_open=True)
    for name in ("b1", "b2"):
        check_number(config, f"optim.{name}", 0, 1, high_open=True)
    check_number(config, "optim.weight_decay", 0)
    check_number(config, "optim.end_factor", 0)
    check_number(config, "optim.warmup_steps", 0, integer=True)
    check_number(config, "optim.grad_clip", 0)
    o = config.optim
    if o.name not in ("adam", "adamw", "sgd"):
        raise ConfigError(f"config.optim.name={o.name!r} is unknown; choose adam, adamw or sgd")
    if o.schedule not in ("cosine", "constant"):
        raise ConfigError(f"config.optim.schedule={o.schedule!r} is unknown; choose cosine or constant")
