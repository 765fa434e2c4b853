"""FLOPs of a jitted step from XLA's cost analysis, for the compute column of reports and benchmarks."""
from __future__ import annotations

import json
import os
import pathlib

import jax


def step_flops(jitted, *args, compile: bool = False) -> float | None:
    """FLOPs of one call of `jitted(*args)` (None when the backend reports none).

    XLA counts no FLOPs in custom calls, so the oneDNN convolutions (polypjax.models.conv) would be
    free: the count comes from a fresh trace with XLA's own convolutions (POLYPJAX_CONV=xla), the
    same arithmetic. Without `compile` the unoptimised HLO is analysed, which costs a trace only.
    """
    fn = getattr(jitted, "__wrapped__", jitted)
    previous = os.environ.get("POLYPJAX_CONV")
    os.environ["POLYPJAX_CONV"] = "xla"
    try:
        lowered = jax.jit(lambda *a: fn(*a)).lower(*args)
        analysis = lowered.compile().cost_analysis() if compile else lowered.cost_analysis()
    except Exception:  # cost analysis is best effort on some backends
        return None
    finally:
        if previous is None:
            os.environ.pop("POLYPJAX_CONV")
        else:
            os.environ["POLYPJAX_CONV"] = previous
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops else None


def record_step_flops(workdir, jitted, *args) -> None:
    """Writes `<workdir>/compute.json` (FLOPs per training step, device count) once per workdir."""
    path = pathlib.Path(workdir) / "compute.json"
    if path.exists() or jax.process_index() != 0:
        return
    from polypjax.data import export
    record = {"flops_per_step": step_flops(jitted, *args), "device_count": jax.device_count(),
              "source": "XLA cost analysis of the unoptimised train step (POLYPJAX_CONV=xla)"}
    export.atomic_write_text(path, json.dumps(record, indent=2) + "\n")
