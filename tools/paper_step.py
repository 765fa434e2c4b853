"""Builds the paper-scale diffusion config (configs/diffusion.py:paper, 256 px, 256 channels, 2 res
blocks, attention at 16 and 8, 1000 steps) and runs real training steps at batch 1 on this machine
through the shared loop's own state and step functions, on phantom data. No checkpoint is written.

    python tools/paper_step.py [--kind joint|two_stage] [--steps 2] [--batch 1]

Prints the parameter count, compile and step times, the losses and the peak resident memory.
"""
import argparse
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from polypjax import hostenv, tasks  # noqa: E402

hostenv.reexec_with_hugepage_malloc()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="joint", choices=["joint", "two_stage"])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=256, help="image size (256 is the paper's)")
    ap.add_argument("--no-remat", action="store_true", help="keep every activation for the backward pass")
    ap.add_argument("--analyze", action="store_true",
                    help="only compile the step on abstract shapes and print XLA's memory analysis")
    args = ap.parse_args()

    import importlib.util
    import jax
    import numpy as np
    from polypjax import parallel
    from polypjax.train import diffusion, loop

    spec = importlib.util.spec_from_file_location("cfg", os.path.join(os.path.dirname(__file__), "..",
                                                                       "configs", "diffusion.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config("paper")
    config.generator.kind = args.kind
    config.data.batch_size = args.batch
    config.data.phantom_train_examples = 8
    config.data.image_size = args.size
    config.model.remat = not args.no_remat
    config = tasks.resolve(config)

    task = diffusion.DiffusionTask(config, tempfile.mkdtemp())
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    batch = parallel.global_batch(next(iter(task.train_iterator())), mesh)
    step = jax.jit(loop.make_train_step(task.loss), donate_argnums=(0,))
    print(f"{args.kind} at {args.size} px, batch {args.batch}, remat {config.model.remat}", flush=True)
    if args.analyze:
        abstract = jax.eval_shape(lambda: loop.create_state(task, config, mesh, batch, 1)[0])
        t0 = time.time()
        compiled = step.lower(abstract, batch).compile()
        m = compiled.memory_analysis()
        gib = lambda b: f"{b / 2**30:.2f} GiB"
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
        print(f"{n_params:,} params; compiled in {time.time() - t0:.1f}s")
        print(f"arguments {gib(m.argument_size_in_bytes)}, outputs {gib(m.output_size_in_bytes)}, "
              f"aliased (donated) {gib(m.alias_size_in_bytes)}, temporaries {gib(m.temp_size_in_bytes)}; "
              f"peak ~ {gib(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)}")
        return
    t0 = time.time()
    state, shardings = loop.create_state(task, config, mesh, batch, config.train.num_steps)
    jax.block_until_ready(state)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    print(f"{args.kind} paper-scale: {n_params:,} params; state created in {time.time() - t0:.1f}s", flush=True)
    for i in range(args.steps):
        t0 = time.time()
        state, metrics = step(state, batch)
        loss = float(metrics["loss"])
        what = "compile + step" if i == 0 else "step"
        print(f"step {i + 1}: loss {loss:.4f}, grad_norm {float(metrics['grad_norm']):.3f}, "
              f"{what} {time.time() - t0:.1f}s", flush=True)
        assert np.isfinite(loss)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")


if __name__ == "__main__":
    main()
