"""GAN generator training throughput (configs/gan.py at its CPU size): one step of the shared loop's
train step (generator and discriminator updated together, their two optimizers) on one device.

    python tools/bench_gan.py [--variant joint|spade] [--size 32] [--batch 32] [--budget 25]
                              [--conv auto|onednn|taps|xla]

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
    from bench_common import add_common_args
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="joint", choices=["joint", "spade"])
    add_common_args(ap, batch=32, size=32)
    args = ap.parse_args()

    import jax
    from bench_common import compiled_flops, compute_peak, print_results, seeded_uint8, summarise, timed_loop
    from polypjax import configlib
    from polypjax.diffusion import generators
    from polypjax.train import diffusion, loop
    from polypjax.train.state import TrainState

    c = configlib.load_config("gan", args.variant)
    c.data.image_size, c.data.batch_size, c.model.conv = args.size, args.batch, args.conv
    diffusion.validate(c)
    gen = generators.make_generator(c)
    b, s = args.batch, args.size
    mask = (seeded_uint8((b, s, s), 1) > 127).astype("uint8")
    batch = {"image": seeded_uint8((b, s, s, 3)), "mask": mask}
    params, model_state = gen.init(jax.random.PRNGKey(0), batch)
    tx = diffusion.generator_optimizer(gen, c, c.train.num_steps)
    state = TrainState.create(params, tx, jax.random.PRNGKey(1), model_state, ema_decay=c.train.ema_decay)
    state = state.replace(ema_params=jax.tree.map(jax.numpy.copy, state.ema_params))  # own buffers: donated
    print(f"GAN ({args.variant}) params: " + ", ".join(
        f"{k} {sum(x.size for x in jax.tree.leaves(v)):,}" for k, v in params.items()))
    step = jax.jit(loop.make_train_step(gen.loss), donate_argnums=(0,))
    flops = compiled_flops(step, state, batch)
    box = [state]

    def run():
        box[0], metrics = step(box[0], batch)
        metrics["loss"].block_until_ready()

    case = f"gan_{args.variant}_train_{s}"
    results = {case: summarise(timed_loop(run, warmup=2, min_iters=3, max_iters=args.max_iters,
                                          budget_s=args.budget), b, flops)}
    peak = None if args.no_peak else compute_peak("float32")
    from polypjax.models.conv import resolve_impl
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, "
          f"convolutions {resolve_impl(args.conv) if jax.default_backend() == 'cpu' else 'xla'}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, malloc tunables {hostenv.applied() or 'none'}")
    print_results(results, peak)


if __name__ == "__main__":
    main()
