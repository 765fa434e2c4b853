"""Device mesh, shardings and host-to-global batches.

The mesh has axes ("data", "fsdp"). Batches are split over both axes (every device holds a slice
of the batch); parameters are replicated, or with fsdp > 1 their largest divisible dimension is
split over "fsdp" (ZeRO-3 style: XLA gathers them for the computation).
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Joins a multi-host job; a no-op on a single host.

    On Cloud TPU VMs and SLURM, `jax.distributed.initialize()` finds its peers from the
    environment; elsewhere the launcher passes the coordinator explicitly. A process that already
    joined (the pipeline runs every stage's task in its own process) stays in its job.
    """
    if jax.distributed.is_initialized():
        return
    # JAX's preemption service turns SIGTERM into a notice for preemption sync points, which no
    # polypjax code reaches: the process would run on after a launcher or scheduler stopped the job
    # (its peers dead, it waits in a collective). Without it SIGTERM ends the process, and rerunning
    # the command resumes from the last checkpoint.
    jax.config.update("jax_enable_preemption_service", False)
    if coordinator_address is not None:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        return
    tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1"))
    if len(tpu_hosts) > 1 or slurm_tasks > 1 or "JAX_COORDINATOR_ADDRESS" in os.environ:
        jax.distributed.initialize()


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """Mesh of shape (data, fsdp); -1 takes all remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} must be a positive divisor of the device count {n}")
    if data == -1:
        data = n // fsdp
    if data < 1 or data * fsdp > n or (data * fsdp != n and jax.process_count() > 1):
        raise ValueError(f"mesh data={data} x fsdp={fsdp} does not match the {n} available devices")
    # On one host a smaller mesh (e.g. 1 device for a reference run) uses the first devices.
    return Mesh(np.asarray(devices[:data * fsdp]).reshape(data, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_shardings(mesh: Mesh, params, min_size: int = 2**14):
    """Replicated leaves, or with fsdp > 1 the largest dimension divisible by it split over fsdp."""
    fsdp = mesh.shape["fsdp"]

    def leaf(x):
        shape = getattr(x, "shape", ())
        if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
            return replicated(mesh)
        for axis in np.argsort(shape)[::-1]:
            if shape[axis] % fsdp == 0:
                spec = [None] * len(shape)
                spec[axis] = "fsdp"
                return NamedSharding(mesh, P(*spec))
        return replicated(mesh)

    return jax.tree.map(leaf, params)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Process-local numpy batch -> global jax.Arrays sharded over the batch axes.

    Non-numeric fields (ids) stay on the host. The local batch size must divide evenly over this
    process's devices.
    """
    sharding = batch_sharding(mesh)
    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        if value.dtype.kind in "biuf":
            if not value.flags.owndata:
                # A view, e.g. of a grain worker's shared-memory batch: the CPU backend may alias
                # it rather than copy, and keep that segment alive past the data iterator.
                value = value.copy()
            out[key] = jax.make_array_from_process_local_data(sharding, value)
        else:
            out[key] = value
    return out


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a global array split over its first axis (what its own `global_batch`
    put in), in order, without a collective: for host work that only process 0 does."""
    shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}  # replicas share a start
    return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


def to_host(x) -> np.ndarray:
    """Fully replicated or addressable global array -> numpy on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def allgather_host(local: np.ndarray) -> np.ndarray:
    """Every process's host array `local` concatenated over the first axis in process order, on
    every process; each process must pass the same shape."""
    if jax.process_count() == 1:
        return np.asarray(local)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))


def allgather_strings(local: list[str]) -> list[str]:
    """`allgather_host` for lists of text (ids): UTF-8 bytes in a zero-padded uint8 array as wide as
    the longest string of any process; each process must pass the same number of strings."""
    if jax.process_count() == 1:
        return list(local)
    encoded = [s.encode() for s in local]
    width = int(allgather_host(np.array([max(map(len, encoded), default=0)], np.int32)).max())
    buf = np.zeros((len(encoded), max(width, 1)), np.uint8)
    for row, b in zip(buf, encoded):
        row[:len(b)] = np.frombuffer(b, np.uint8)
    return [bytes(row).rstrip(b"\0").decode() for row in allgather_host(buf)]
