"""Per-layer convolution benchmark: XLA:CPU's forward, input gradient and kernel gradient against the
per-tap matmul kernel gradient and the oneDNN calls of ``polypjax.models.conv``, with a matmul peak
from the same run.

    python tools/bench_conv.py [--batch 8] [--budget 5] [--layers 256x64,128x128,64x256,32x512]

Each layer is a 3x3, stride 1, SAME convolution of [batch, S, S, C] with C -> C channels (SxC in
--layers), the shapes of resunet34's and the ADM UNet's stages. GFLOP/s use the analytic count
2 * batch * S^2 * 9 * C^2 for every one of the four operations, so the columns compare directly.
The last line is one JSON object {"<S>x<C>/<op>": GFLOP/s, "matmul_peak": GFLOP/s}.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from polypjax import hostenv  # noqa: E402

hostenv.reexec_with_hugepage_malloc()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from polypjax.models import conv  # noqa: E402
from polypjax.native import onednn  # noqa: E402
import bench_common  # noqa: E402

_DN = ("NHWC", "HWIO", "NHWC")


def _xla(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DN)


def _taps(x, w):
    return conv._conv_tapgrad(x, w, (1, 1), ((1, 1), (1, 1)), (1, 1), None)


def _onednn(x, w):
    return conv._conv_onednn(x, w, (1, 1), ((1, 1), (1, 1)), (1, 1))


def operations():
    return {
        "forward": jax.jit(lambda x, w, dy: _xla(x, w)),
        "input_grad": jax.jit(lambda x, w, dy: jax.vjp(lambda x_: _xla(x_, w), x)[1](dy)[0]),
        "kernel_grad_xla": jax.jit(lambda x, w, dy: jax.vjp(lambda w_: _xla(x, w_), w)[1](dy)[0]),
        "kernel_grad_taps": jax.jit(lambda x, w, dy: jax.vjp(lambda w_: _taps(x, w_), w)[1](dy)[0]),
        **({
            "forward_onednn": jax.jit(lambda x, w, dy: _onednn(x, w)),
            "input_grad_onednn": jax.jit(
                lambda x, w, dy: jax.vjp(lambda x_: _onednn(x_, w), x)[1](dy)[0]),
            "kernel_grad_onednn": jax.jit(
                lambda x, w, dy: jax.vjp(lambda w_: _onednn(x, w_), w)[1](dy)[0]),
        } if onednn.available() else {}),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--budget", type=float, default=5.0, help="seconds of timed iterations per case")
    ap.add_argument("--layers", default="256x64,128x128,64x256,32x512")
    args = ap.parse_args()

    results = {}
    ops = operations()
    print(f"backend {jax.default_backend()}, batch {args.batch}; GFLOP/s per operation", flush=True)
    for spec in args.layers.split(","):
        size, ch = (int(v) for v in spec.split("x"))
        keys = jax.random.split(jax.random.PRNGKey(0), 3)
        x = jax.random.normal(keys[0], (args.batch, size, size, ch), jnp.float32)
        w = jax.random.normal(keys[1], (3, 3, ch, ch), jnp.float32) * 0.05
        dy = jax.random.normal(keys[2], (args.batch, size, size, ch), jnp.float32)
        flop = 2.0 * args.batch * size * size * 9 * ch * ch
        row = []
        for name, fn in ops.items():
            times = bench_common.timed_loop(lambda: fn(x, w, dy).block_until_ready(), warmup=1,
                                            min_iters=2, max_iters=50, budget_s=args.budget)
            gflops = bench_common.summarise(times, args.batch, flop)["gflops_per_s"]
            results[f"{spec}/{name}"] = gflops
            row.append(f"{name} {gflops:6.1f}")
        print(f"{spec:>8}: " + ", ".join(row), flush=True)
    peak = bench_common.matmul_peak(budget_s=args.budget)
    print(f"matmul_peak: {peak['gflops_per_s']:.1f} GFLOP/s", flush=True)
    results["matmul_peak"] = peak["gflops_per_s"]
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
