"""Input pipeline throughput vs the rate a training step consumes examples.

    python tools/bench_pipeline.py [--source phantom-a|/path/to/Kvasir-SEG] [--image_size 128]
        [--batch_size 16] [--model unet] [--workers 0]

Prints examples/s of the grain pipeline alone, of the jitted segmentation train step alone (both
measured in this run, on this machine), and their ratio; the pipeline is not the bottleneck when
the ratio is > 1. The last line is a JSON object.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--source", default="phantom-a")
    p.add_argument("--image_size", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--model", default="unet")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batches", type=int, default=20)
    args = p.parse_args()

    import importlib.util
    import jax
    from polypjax import parallel, tasks
    from polypjax.train import loop, segmentation

    spec = importlib.util.spec_from_file_location("seg", os.path.join(os.path.dirname(__file__), "..", "configs", "segmentation.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config("cpu")
    config.data.train = args.source
    config.data.test = args.source + "@test" if args.source.startswith("phantom") else args.source
    config.data.image_size = args.image_size
    config.data.batch_size = args.batch_size
    config.data.worker_count = args.workers
    config.model.name = args.model
    if args.model != "unet":
        config.model.kwargs = {}
    config = tasks.resolve(config)
    task = segmentation.SegmentationTask(config, "/tmp/bench_pipeline")

    it = iter(task.train_iterator())
    next(it)  # worker start-up and first decode are not steady state
    t0 = time.perf_counter()
    batches = [next(it) for _ in range(args.batches)]
    pipeline_rate = args.batches * args.batch_size / (time.perf_counter() - t0)

    mesh = parallel.make_mesh()
    batch = parallel.global_batch(batches[0], mesh)
    state, shardings = loop.create_state(task, config, mesh, batch, 100)
    step = jax.jit(loop.make_train_step(task.loss), in_shardings=(shardings, parallel.batch_sharding(mesh)),
                   out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=(0,))
    state, m = step(state, batch)
    jax.block_until_ready(m)
    n = 5
    t0 = time.perf_counter()
    for i in range(n):
        state, m = step(state, parallel.global_batch(batches[i % len(batches)], mesh))
    jax.block_until_ready(m)
    step_rate = n * args.batch_size / (time.perf_counter() - t0)
    print(f"pipeline: {pipeline_rate:.1f} examples/s ({args.workers} workers); train step ({args.model}, "
          f"{args.image_size}px, batch {args.batch_size}): {step_rate:.1f} examples/s; "
          f"ratio pipeline/step = {pipeline_rate / step_rate:.2f}")
    print(json.dumps({"pipeline_examples_per_s": pipeline_rate, "train_step_examples_per_s": step_rate,
                      "ratio": pipeline_rate / step_rate}))


if __name__ == "__main__":
    main()
