"""Segmentation train/inference throughput, mirroring ../shared/bench/peers.py cases
`seg_train_256` and `seg_infer_256` (smp Unet('resnet34') -> our `resunet34`, 256x256, batch 8,
BCE + Dice, Adam lr 1e-3).

    python tools/bench_segmentation.py [--budget 25] [--dtype float32|bfloat16] [--conv auto|onednn|taps|xla]
                                       [--cases seg_train_256,seg_infer_256]
    python ../shared/bench/peers.py --cases matmul_peak,seg_train_256,seg_infer_256   # PyTorch, same machine

Prints images/s, achieved GFLOP/s (XLA cost analysis of the compiled step) beside a matmul peak
measured in this run; the last line is one JSON object {case: images/s}.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from polypjax import hostenv  # noqa: E402

hostenv.reexec_with_hugepage_malloc()
sys.path.insert(0, os.path.dirname(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=25.0)
    ap.add_argument("--max_iters", type=int, default=50)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--model", default="resunet34")
    ap.add_argument("--conv", default="auto", choices=["auto", "onednn", "taps", "xla"],
                    help="the model's convolution path (config.model.conv; polypjax/models/conv.py)")
    ap.add_argument("--cases", default="seg_train_256,seg_infer_256")
    ap.add_argument("--no_peak", action="store_true")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import optax
    from bench_common import compiled_flops, compute_peak, print_results, summarise, timed_loop
    from polypjax.models import segmenters
    from polypjax.train.segmentation import bce_dice_loss

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    model = segmenters.create_model(args.model, dtype=dtype, conv=args.conv)
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(k[0], (args.batch, args.size, args.size, 3))
    y = (jax.random.uniform(k[1], (args.batch, args.size, args.size, 1)) > 0.5).astype(jnp.float32)
    variables = model.init(k[2], x[:1], train=False)
    params, stats = variables["params"], variables["batch_stats"]
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    def train_step(params, stats, opt_state, x, y):
        def loss_fn(p):
            out, upd = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return bce_dice_loss(out, y)[0], upd["batch_stats"]
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    def infer(params, stats, x):
        return model.apply({"params": params, "batch_stats": stats}, x, train=False)

    results = {}
    cases = args.cases.split(",")
    if "seg_train_256" in cases:
        step = jax.jit(train_step, donate_argnums=(0, 1, 2))
        flops = compiled_flops(step, params, stats, opt_state, x, y)
        state = [params, stats, opt_state]

        def run():
            state[0], state[1], state[2], loss = step(state[0], state[1], state[2], x, y)
            loss.block_until_ready()
        results["seg_train_256"] = summarise(
            timed_loop(run, warmup=2, min_iters=3, max_iters=args.max_iters, budget_s=args.budget), args.batch, flops)
        params, stats = state[0], state[1]
    if "seg_infer_256" in cases:
        f = jax.jit(infer)
        flops = compiled_flops(f, params, stats, x)
        results["seg_infer_256"] = summarise(
            timed_loop(lambda: f(params, stats, x).block_until_ready(), warmup=2, min_iters=3,
                       max_iters=args.max_iters, budget_s=args.budget), args.batch, flops)
    peak = None if args.no_peak else compute_peak(args.dtype)
    from polypjax.models.conv import resolve_impl
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, dtype {args.dtype}, "
          f"convolutions {resolve_impl(args.conv) if jax.default_backend() == 'cpu' else 'xla'}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, malloc tunables {hostenv.applied() or 'none'}")
    print_results(results, peak)


if __name__ == "__main__":
    main()
