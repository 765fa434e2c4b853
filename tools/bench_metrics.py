"""Generation-metric throughput, mirroring ../shared/bench/peers.py cases `fid_features_299` and
`msssim_256` (and `fid_features_256`).

    python tools/bench_metrics.py [--budget 25] [--dtype float32|bfloat16] [--cases fid_features_299,msssim_256]
    python ../shared/bench/peers.py --cases matmul_peak,fid_features_299,msssim_256 --out peers.json  # PyTorch

fid_features_*: the FID InceptionV3 pool3 (2048-d) on a batch of 32 uint8 images; the timed step
includes uint8 -> float / 255, the bilinear resize to 299 and the forward, as pytorch-fid's
InceptionV3(resize_input=True, normalize_input=True). The weights are random (the tests' seeded
recipe, same shapes as the real file): only speed is measured, so the features mean nothing.
msssim_256: MS-SSIM (pytorch_msssim defaults) of 32 pairs of 256x256x3, X ~ U[0,1),
Y = clip(X + 0.1 N(0,1), 0, 1), one call on all pairs.

Prints items/s and achieved GFLOP/s (XLA cost analysis of the compiled step) beside a matmul peak
measured in this run; the last line is one JSON object {case: items/s}. XLA:CPU options go in
XLA_FLAGS as usual (they are printed with the results).
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # fid_inception_recipe: numpy-only random weights
from polypjax import hostenv  # noqa: E402

hostenv.reexec_with_hugepage_malloc()

CASES = ("fid_features_299", "fid_features_256", "msssim_256")


def fid_case(args, size):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from bench_common import compiled_flops, seeded_uint8, summarise, timed_loop
    from fid_inception_recipe import random_fid_inception_state_dict
    from polypjax.models import inception

    flat = inception.convert_state_dict(random_fid_inception_state_dict(inception.torch_state_dict_shapes(), seed=0))
    variables = inception.variables_from_flat(flat)
    model = inception.FIDInceptionV3(dtype=jnp.dtype(args.dtype))
    apply = jax.jit(model.apply)
    images = jnp.asarray(seeded_uint8((args.batch, size, size, 3), seed=1))
    flops = compiled_flops(apply, variables, images)
    feats = apply(variables, images)
    assert feats.shape == (args.batch, inception.FEATURE_DIM) and bool(np.isfinite(np.asarray(feats)).all())
    times = timed_loop(lambda: apply(variables, images).block_until_ready(), warmup=1, min_iters=3,
                       max_iters=args.max_iters, budget_s=args.budget)
    return summarise(times, args.batch, flops)


def msssim_case(args):
    import jax
    import jax.numpy as jnp
    from bench_common import compiled_flops, summarise, timed_loop
    from polypjax.metrics import msssim

    kx, kn = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.uniform(kx, (args.pairs, 256, 256, 3), jnp.float32)
    y = jnp.clip(x + 0.1 * jax.random.normal(kn, x.shape, jnp.float32), 0.0, 1.0)
    f = jax.jit(lambda a, b: msssim.ms_ssim(a, b, data_range=1.0, size_average=True))
    flops = compiled_flops(f, x, y)
    value = float(f(x, y))
    assert 0.0 < value < 1.0, value
    times = timed_loop(lambda: f(x, y).block_until_ready(), warmup=2, min_iters=3, max_iters=args.max_iters,
                       budget_s=args.budget)
    out = summarise(times, args.pairs, flops)
    out["ms_ssim_value"] = value
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=25.0, help="seconds of timed iterations per case")
    ap.add_argument("--max_iters", type=int, default=50)
    ap.add_argument("--batch", type=int, default=32, help="images per Inception call")
    ap.add_argument("--pairs", type=int, default=32, help="pairs per MS-SSIM call")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="Inception compute dtype (MS-SSIM always runs in float32)")
    ap.add_argument("--cases", default="fid_features_299,msssim_256", help=f"comma-separated subset of {CASES}")
    ap.add_argument("--no_peak", action="store_true", help="skip the matmul peak")
    args = ap.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in cases:
        if c not in CASES:
            ap.error(f"unknown case {c!r}; choose from {CASES}")

    import jax
    from bench_common import matmul_peak, print_results

    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s)), "
          f"Inception dtype {args.dtype}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
    if any(c.startswith("fid") for c in cases):
        print("fid_features_*: RANDOM Inception weights (seeded recipe, real shapes): a speed test only", flush=True)
    results = {}
    for case in cases:
        results[case] = msssim_case(args) if case == "msssim_256" else fid_case(args, int(case.rsplit("_", 1)[1]))
        print(f"  {case} done: {results[case]['items_per_s']:.3f} items/s", flush=True)
    peak = None if args.no_peak else matmul_peak()
    print_results(results, peak)


if __name__ == "__main__":
    main()
