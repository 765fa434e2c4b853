"""Diffusion train/sample throughput, mirroring ../shared/bench/peers.py cases
`diffusion_train_64` and `diffusion_sample_64`.

The peers' diffusers UNet2DModel (blocks 64/128/128/256, 2 layers per block, attention at 16x16
down/up and in the middle, head dim 8, no scale-shift norm, conv down/upsampling) maps onto our ADM
UNet as model_channels 64, channel_mult (1,2,2,4), num_res_blocks 2, attention at 16, 8-channel
heads; input = noisy RGB (3) + mask (1) concatenated, output eps (3). Batch 8, 64x64, linear
betas 1e-4..0.02 over 1000 steps, AdamW(1e-4, wd 0.01); sampling = 50 DDIM steps (eta 0) in one
jitted lax.scan.

    python tools/bench_diffusion.py [--budget 25] [--dtype float32|bfloat16] [--size 64] [--batch 8]
                                    [--conv auto|onednn|taps|xla]
    python ../shared/bench/peers.py --cases matmul_peak,diffusion_train_64,diffusion_sample_64

Last line: one JSON object {case: images/s}.
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
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--conv", default="auto", choices=["auto", "onednn", "taps", "xla"],
                    help="the model's convolution path (config.model.conv; polypjax/models/conv.py)")
    ap.add_argument("--cases", default="diffusion_train_64,diffusion_sample_64")
    ap.add_argument("--no_peak", action="store_true")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import optax
    from bench_common import compiled_flops, compute_peak, print_results, summarise, timed_loop
    from polypjax.diffusion import objectives, samplers, schedule
    from polypjax.models.adm_unet import ADMUNet, param_count

    model = ADMUNet(model_channels=64, channel_mult=(1, 2, 2, 4), num_res_blocks=2, attention_resolutions=(16,),
                    num_head_channels=8, use_scale_shift_norm=False, resblock_updown=False, in_channels=3,
                    cond_channels=1, out_channels=3, dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32,
                    conv=args.conv)
    b, s = args.batch, args.size
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    x0 = jax.random.uniform(k[0], (b, s, s, 3)) * 2 - 1
    mask = (jax.random.uniform(k[1], (b, s, s, 1)) > 0.5).astype(jnp.float32)
    params = model.init(k[2], x0[:1], jnp.zeros((1,), jnp.int32), mask[:1])["params"]
    sched = schedule.make_schedule("linear", 1000)
    tx = optax.adamw(1e-4, weight_decay=0.01)
    opt_state = tx.init(params)
    print(f"ADM UNet params: {param_count(params):,} (diffusers UNet2DModel in peers: 17,218,499)")

    def train_step(params, opt_state, rng):
        def loss_fn(p):
            apply = lambda p_, x_t, t, c: model.apply({"params": p_}, x_t, t, c, train=True)  # noqa: E731
            return objectives.training_loss(apply, p, sched, x0, rng, cond=mask)["loss"].mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    results = {}
    cases = args.cases.split(",")
    if "diffusion_train_64" in cases:
        step = jax.jit(train_step, donate_argnums=(0, 1))
        flops = compiled_flops(step, params, opt_state, k[3])
        state = [params, opt_state, k[3]]

        def run():
            state[2], sub = jax.random.split(state[2])
            state[0], state[1], loss = step(state[0], state[1], sub)
            loss.block_until_ready()
        results["diffusion_train_64"] = summarise(
            timed_loop(run, warmup=2, min_iters=3, max_iters=args.max_iters, budget_s=args.budget), b, flops)
        params = state[0]
    if "diffusion_sample_64" in cases:
        spaced = schedule.respace(sched, f"ddim{args.steps}")

        def sample(params, rng):
            model_fn = lambda x, t: model.apply({"params": params}, x, t, mask).astype(jnp.float32)  # noqa: E731
            return samplers.ddim_sample(model_fn, spaced, (b, s, s, 3), rng, eta=0.0, clip_x0=False)
        f = jax.jit(sample)
        # XLA's cost analysis counts a scan body once: count one UNet evaluation, times the steps.
        t = jnp.zeros((b,), jnp.int32)
        one = compiled_flops(jax.jit(lambda p, x: model.apply({"params": p}, x, t, mask)), params, x0)
        flops = one * args.steps if one else None
        results["diffusion_sample_64"] = summarise(
            timed_loop(lambda: f(params, k[3]).block_until_ready(), warmup=1, min_iters=1,
                       max_iters=max(1, args.max_iters), budget_s=args.budget), b, flops)
    peak = None if args.no_peak else compute_peak(args.dtype)
    from polypjax.models.conv import resolve_impl
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, dtype {args.dtype}, "
          f"convolutions {resolve_impl(args.conv) if jax.default_backend() == 'cpu' else 'xla'}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, malloc tunables {hostenv.applied() or 'none'}")
    print_results(results, peak)


if __name__ == "__main__":
    main()
