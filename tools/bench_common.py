"""Timing helpers shared by the benchmarks; they mirror ../shared/bench/peers.py.

Same protocol as the PyTorch peers: warm-up iterations, then timed iterations until a time budget
or an iteration cap is reached; throughput = items timed / total time. Achieved GFLOP/s come from
XLA's cost analysis of the compiled computation, next to a matmul peak measured in the same run.
"""
from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def timed_loop(step, *, warmup: int, min_iters: int, max_iters: int, budget_s: float) -> list[float]:
    """step() must block until its work is done (call jax.block_until_ready inside)."""
    for _ in range(warmup):
        step()
    times = []
    start = time.perf_counter()
    while len(times) < max_iters:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        if len(times) >= min_iters and time.perf_counter() - start >= budget_s:
            break
    return times


class StolenTime:
    """Share of the machine's CPU time the hypervisor gave to other guests during a block
    (/proc/stat "steal"): on a shared VM it rises in bursts, and a rate timed during one is not
    comparable with one timed outside it. `fraction` is None where /proc/stat has no steal column."""

    def __enter__(self):
        self._start, self.fraction = _cpu_times(), None
        return self

    def __exit__(self, *exc):
        end = _cpu_times()
        if self._start and end:
            total = sum(end) - sum(self._start)
            self.fraction = (end[7] - self._start[7]) / total if total > 0 else 0.0
        return False


def _cpu_times() -> list[int] | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[:8] if len(fields) >= 8 else None


def summarise(times: list[float], items_per_iter: int, flops_per_iter: float | None = None) -> dict:
    out = {"timed_iters": len(times), "ms_per_iter_median": 1e3 * statistics.median(times),
           "ms_per_iter_mean": 1e3 * statistics.fmean(times), "ms_per_iter_min": 1e3 * min(times),
           "ms_per_iter_all": [round(1e3 * t, 1) for t in times],
           "items_per_s": items_per_iter * len(times) / sum(times)}
    if flops_per_iter:
        out["gflop_per_iter"] = flops_per_iter / 1e9
        out["gflops_per_s"] = flops_per_iter * len(times) / sum(times) / 1e9
    return out


def compiled_flops(jitted, *args) -> float | None:
    """FLOPs of one call from XLA's cost analysis of the compiled function (polypjax.train.compute)."""
    from polypjax.train import compute
    return compute.step_flops(jitted, *args, compile=True)


def compute_peak(dtype: str, budget_s: float = 10.0) -> dict:
    """The matmul peak a benchmark's GFLOP/s are compared with: on the CPU the fp32 2048^3 matmul of
    peers.py (the PyTorch peers run fp32); on an accelerator an 8192^3 matmul in the benchmark's
    compute dtype, so that the percentage is the model FLOP utilisation of that dtype."""
    if jax.default_backend() == "cpu":
        return matmul_peak(budget_s)
    return matmul_peak(budget_s, n=8192, dtype=jnp.dtype(dtype))


def matmul_peak(budget_s: float = 10.0, n: int = 2048, dtype=jnp.float32) -> dict:
    """n^3 matmul GFLOP/s (fp32 2048^3 by default, as peers.py's matmul_peak case)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    mm = jax.jit(jnp.matmul)
    times = timed_loop(lambda: mm(a, b).block_until_ready(), warmup=3, min_iters=5, max_iters=50, budget_s=budget_s)
    flop = 2.0 * n ** 3
    return {"gflops_per_s": flop * len(times) / sum(times) / 1e9, "gflops_per_s_best": flop / min(times) / 1e9,
            "timed_iters": len(times), "n": n, "dtype": jnp.dtype(dtype).name}


def print_results(results: dict, peak: dict | None) -> None:
    """Human-readable lines, then one JSON object {case: items/s} as the last line."""
    for name, r in results.items():
        line = (f"{name}: {r['items_per_s']:.3f} items/s, median {r['ms_per_iter_median']:.1f} ms/iter"
                f" (min {r['ms_per_iter_min']:.1f}, {r['timed_iters']} iters)")
        if "gflops_per_s" in r:
            line += f", {r['gflops_per_s']:.1f} GFLOP/s"
            if peak:
                line += f" ({100 * r['gflops_per_s'] / peak['gflops_per_s']:.0f}% of matmul peak)"
        print(line, flush=True)
        print(f"  ms per iteration: {' '.join(f'{t:.0f}' for t in r['ms_per_iter_all'])}", flush=True)
    if peak:
        print(f"matmul_peak ({peak['n']}^3 {peak['dtype']}): {peak['gflops_per_s']:.1f} GFLOP/s "
              f"(best {peak['gflops_per_s_best']:.1f})", flush=True)
    last = {name: r["items_per_s"] for name, r in results.items()}
    if peak:
        last["matmul_peak"] = peak["gflops_per_s"]  # GFLOP/s, as peers.py reports that case
    print(json.dumps(last), flush=True)


def seeded_uint8(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def add_common_args(ap, *, batch: int, size: int) -> None:
    """The options every training benchmark takes: budget, iterations, batch, size, conv path, peak."""
    ap.add_argument("--budget", type=float, default=25.0)
    ap.add_argument("--max_iters", type=int, default=50)
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--size", type=int, default=size)
    ap.add_argument("--conv", default="auto", choices=["auto", "onednn", "taps", "xla"],
                    help="the models' convolution path (config.model.conv; polypjax/models/conv.py)")
    ap.add_argument("--no_peak", action="store_true")
