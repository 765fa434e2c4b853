"""FLOPs of a jitted step from XLA's cost analysis, for the compute column of reports and benchmarks."""
from __future__ import annotations

import json
import pathlib
import threading

import jax

from polypjax.models import conv


def step_flops(jitted, *args, compile: bool = False) -> float | None:
    """FLOPs of one call of `jitted(*args)` (None when the backend reports none).

    XLA counts no FLOPs in custom calls, so the oneDNN convolutions (polypjax.models.conv) would be
    free: the count comes from a fresh trace with XLA's own convolutions (`conv.forced("xla")`),
    the same arithmetic. Without `compile` the unoptimised HLO is analysed, which costs a trace only.
    """
    fn = getattr(jitted, "__wrapped__", jitted)
    try:
        with conv.forced("xla"):
            lowered = jax.jit(lambda *a: fn(*a)).lower(*args)
        analysis = lowered.compile().cost_analysis() if compile else lowered.cost_analysis()
    except Exception:  # cost analysis is best effort on some backends
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops else None


def bytes_per_device(tree) -> int:
    """The most bytes of `tree`'s arrays that any one device holds: with fsdp sharding, what the
    train state costs each device (activations not included)."""
    held: dict = {}
    for leaf in jax.tree.leaves(tree):
        for shard in getattr(leaf, "addressable_shards", ()):
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return max(held.values(), default=0)


class _Recorder(threading.Thread):
    """A thread whose exception (a full disk under compute.json) is raised again by `join`, in the
    training loop, instead of dying with a traceback while the run goes on without its record."""

    def __init__(self, target, name: str):
        super().__init__(name=name, daemon=True)
        self._work, self.error = target, None

    def run(self) -> None:
        try:
            self._work()
        except BaseException as e:  # handed to the thread that joins
            self.error = e

    def join(self, timeout=None) -> None:
        super().join(timeout)
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def record_step_flops(workdir, jitted, *args, **extra) -> threading.Thread | None:
    """Writes `<workdir>/compute.json` (FLOPs per training step, device count, and `extra`) once per
    workdir, in a thread: its trace costs seconds of a short run, and overlaps training when started
    after the first step. Join the returned thread before the workdir is finished: the join raises
    what made the thread fail."""
    path = pathlib.Path(workdir) / "compute.json"
    if path.exists() or jax.process_index() != 0:
        return None
    # Shapes only: the arrays themselves may be donated to the training step meanwhile.
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
                          if hasattr(x, "shape") else x, args)
    device_count = jax.device_count()

    def write():
        from polypjax.data import export
        record = {"flops_per_step": step_flops(jitted, *shapes), "device_count": device_count, **extra,
                  "source": "XLA cost analysis of the unoptimised train step (XLA's convolutions)"}
        export.atomic_write_text(path, json.dumps(record, indent=2) + "\n")

    thread = _Recorder(write, name="step-flops")
    thread.start()
    return thread
