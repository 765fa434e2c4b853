"""The accelerator check: one prepared script for a machine with a GPU or TPU (under 8 minutes on
one GPU), printing and writing as JSON:

- the paper-scale ADM training step (configs/diffusion.py:paper, 256 px, bfloat16, batch 1 per
  device) time and model FLOP utilisation against a bf16 matmul peak measured in the same run;
- DDIM-50 pairs/s and RePaint pairs/s at the paper schedule (configs/generate.py's inpaint block:
  200 steps, jumps of 10, 5 samples) with the paper model;
- segmenter (configs/segmentation.py's model) training and inference images/s;
- FID Inception feature images/s (random weights: the speed is the weights');
- a miniature pipeline's wall time (configs/pipeline.py:mini, through polypjax.main.run).

    python tools/device_check.py [--out device_check.json] [--reduced] [--cases a,b]

`--reduced` runs every case at toy sizes on whatever backend is there (the CPU in tests); the
pipeline case is the only one of minutes on a CPU and `--cases` can leave it out. Nothing on this
script's path imports tensorflow (the JSON records whether anything did).
"""
import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # fid_inception_recipe: numpy-only random weights
from polypjax import hostenv  # noqa: E402

hostenv.reexec_with_hugepage_malloc()

CASES = ("adm_train_paper", "ddim50", "repaint", "seg_train", "seg_infer", "fid_features", "pipeline_mini")


def _timed(fn, items, args, flops=None):
    from bench_common import summarise, timed_loop
    times = timed_loop(fn, warmup=1, min_iters=2 if not args.reduced else 1,
                       max_iters=args.max_iters, budget_s=args.budget)
    out = summarise(times, items, flops)
    out.pop("ms_per_iter_all")
    return out


def diffusion_cases(args, cases, results, peak):
    import jax
    import jax.numpy as jnp
    from polypjax import configlib, parallel, tasks
    from polypjax.diffusion import generators
    from polypjax.train import compute, diffusion, loop

    config = configlib.load_config("diffusion", "paper")
    n_dev = jax.device_count()
    config.data.batch_size = n_dev  # one 256 px image per device
    config.data.phantom_train_examples = 2 * n_dev
    config.model.dtype = "bfloat16"
    if args.reduced:  # float32 and XLA's convolutions: a CPU compiles these in seconds
        config.model.update(dtype="float32", conv="xla")
        config.data.image_size = 16
        config.model.update(channels=16, channel_mult=(1, 2), attention_resolutions=(8,), num_head_channels=8)
        config.diffusion.num_timesteps = 100
    config = tasks.resolve(config)
    task = diffusion.DiffusionTask(config, tempfile.mkdtemp())
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    batch = parallel.global_batch(next(iter(task.train_iterator())), mesh)
    state, shardings = loop.create_state(task, config, mesh, batch, 10)
    step = jax.jit(loop.make_train_step(task.loss), in_shardings=(shardings, parallel.batch_sharding(mesh)),
                   out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=(0,))
    params_count = sum(x.size for x in jax.tree.leaves(state.params))
    if "adm_train_paper" in cases:
        flops = compute.step_flops(step, state, batch)
        holder = [state]

        def run():
            holder[0], metrics = step(holder[0], batch)
            jax.block_until_ready(metrics)
        t0 = time.perf_counter()
        run()
        compile_s = time.perf_counter() - t0
        r = _timed(run, config.data.batch_size, args, flops)
        r.update(compile_and_first_step_s=compile_s, params=int(params_count), devices=n_dev,
                 image_size=config.data.image_size, dtype=config.model.dtype)
        if flops and peak:
            # FLOPs of the whole (global) step over every device's share of the measured peak.
            r["mfu"] = flops / (r["ms_per_iter_median"] / 1e3) / (peak["gflops_per_s"] * 1e9 * n_dev)
        results["adm_train_paper"] = r
        state = holder[0]
    params = state.params
    gen = task.generator
    n = n_dev * (1 if args.reduced else 4)
    if "ddim50" in cases:
        spec = generators.SamplerSpec(kind="ddim", steps=50 if not args.reduced else 5)
        f = jax.jit(lambda p, rng: gen.sample(p, rng, n, spec))
        rng = jax.random.PRNGKey(1)
        jax.block_until_ready(f(params, rng))
        r = _timed(lambda: jax.block_until_ready(f(params, rng)), n, args)
        results["ddim50"] = {"pairs_per_s": r["items_per_s"], "steps": spec.steps, **r}
    if "repaint" in cases:
        g = configlib.load_config("generate").generate.inpaint
        steps, jump, jumps = (int(g.steps), int(g.jump_length), int(g.jump_n_sample))
        if args.reduced:
            steps, jump, jumps = 6, 2, 2
        s = config.data.image_size
        image = jnp.zeros((n, s, s, 3), jnp.uint8)
        region = jnp.zeros((n, s, s), jnp.uint8).at[:, s // 4: 3 * s // 4, s // 4: 3 * s // 4].set(1)
        f = jax.jit(lambda p, rng: gen.inpaint(p, rng, image, region, jump_length=jump, jump_n_sample=jumps,
                                               steps=steps))
        rng = jax.random.PRNGKey(2)
        jax.block_until_ready(f(params, rng))
        r = _timed(lambda: jax.block_until_ready(f(params, rng)), n, args)
        results["repaint"] = {"pairs_per_s": r["items_per_s"], "steps": steps, "jump_length": jump,
                              "jump_n_sample": jumps, **r}


def segmenter_cases(args, cases, results):
    import jax
    from polypjax import configlib, parallel, tasks
    from polypjax.train import loop, segmentation

    config = configlib.load_config("segmentation")
    n_dev = jax.device_count()
    config.data.batch_size = n_dev * (1 if args.reduced else 8)
    config.data.phantom_train_examples = 2 * config.data.batch_size
    config.data.test = "phantom-b"
    config.data.phantom_test_examples = 2
    if args.reduced:
        config.data.image_size = 16
        config.model.update(name="unet", conv="xla")
    config = tasks.resolve(config)
    task = segmentation.SegmentationTask(config, tempfile.mkdtemp())
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    batch = parallel.global_batch(next(iter(task.train_iterator())), mesh)
    state, shardings = loop.create_state(task, config, mesh, batch, 10)
    b = config.data.batch_size
    if "seg_train" in cases:
        step = jax.jit(loop.make_train_step(task.loss), in_shardings=(shardings, parallel.batch_sharding(mesh)),
                       out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=(0,))
        holder = [state]

        def run():
            holder[0], metrics = step(holder[0], batch)
            jax.block_until_ready(metrics)
        run()
        results["seg_train"] = {"model": config.model.name, "image_size": config.data.image_size,
                                **_timed(run, b, args)}
        state = holder[0]
    if "seg_infer" in cases:
        predict = task.predict_fn(mesh)
        jax.block_until_ready(predict(state.params, state.model_state, batch))
        results["seg_infer"] = {"model": config.model.name, "image_size": config.data.image_size,
                                **_timed(lambda: jax.block_until_ready(predict(state.params, state.model_state,
                                                                               batch)), b, args)}


def fid_case(args, results):
    import jax
    import jax.numpy as jnp
    from bench_common import seeded_uint8
    from fid_inception_recipe import random_fid_inception_state_dict
    from polypjax.models import inception
    flat = inception.convert_state_dict(random_fid_inception_state_dict(inception.torch_state_dict_shapes(), seed=0))
    variables = inception.variables_from_flat(flat)
    apply = jax.jit(inception.FIDInceptionV3().apply)
    b, s = (2, 75) if args.reduced else (64 * jax.device_count(), 256)
    images = jnp.asarray(seeded_uint8((b, s, s, 3), seed=1))
    jax.block_until_ready(apply(variables, images))
    results["fid_features"] = {"image_size": s, **_timed(lambda: jax.block_until_ready(apply(variables, images)),
                                                         b, args)}


def pipeline_case(args, results):
    from polypjax import configlib, main
    with tempfile.TemporaryDirectory() as wd:
        t0 = time.perf_counter()
        main.run(configlib.load_config("pipeline", "mini"), wd)
        results["pipeline_mini"] = {"wall_s": time.perf_counter() - t0}


def main_():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="device_check.json")
    ap.add_argument("--reduced", action="store_true", help="toy sizes (a CPU test in seconds)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {CASES}")
    ap.add_argument("--budget", type=float, default=None, help="seconds of timed iterations per case")
    ap.add_argument("--max_iters", type=int, default=None)
    args = ap.parse_args()
    cases = args.cases.split(",")
    unknown = set(cases) - set(CASES)
    if unknown:
        sys.exit(f"error: unknown cases {sorted(unknown)}; choose from {CASES}")
    if args.budget is None:
        args.budget = 0.5 if args.reduced else 10.0
    if args.max_iters is None:
        args.max_iters = 2 if args.reduced else 20

    import jax
    from bench_common import matmul_peak
    from polypjax import main as polyp_main
    polyp_main.make_grain_flags_readable()
    start = time.perf_counter()
    # The bf16 peak of this chip, measured here (an 8192^3 matmul; small on a CPU in reduced mode).
    peak = matmul_peak(0.5 if args.reduced else 10.0, n=256 if args.reduced else 8192, dtype=jax.numpy.bfloat16)
    results = {}
    if {"adm_train_paper", "ddim50", "repaint"} & set(cases):
        diffusion_cases(args, cases, results, peak)
    if {"seg_train", "seg_infer"} & set(cases):
        segmenter_cases(args, cases, results)
    if "fid_features" in cases:
        fid_case(args, results)
    if "pipeline_mini" in cases:
        pipeline_case(args, results)
    report = {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
              "device_count": jax.device_count(), "jax": jax.__version__, "reduced": args.reduced,
              "bf16_matmul_peak": peak, "cases": results, "wall_s": time.perf_counter() - start,
              "tensorflow_imported": "tensorflow" in sys.modules}
    for name, r in results.items():
        rate = r.get("pairs_per_s", r.get("items_per_s"))
        extra = f", MFU {100 * r['mfu']:.1f} %" if "mfu" in r else ""
        print(f"{name}: " + (f"{rate:.3f}/s, median {r['ms_per_iter_median']:.1f} ms{extra}" if rate is not None
                             else f"{r['wall_s']:.1f} s wall"), flush=True)
    print(f"bf16 matmul peak {peak['gflops_per_s']:.1f} GFLOP/s on {report['device_kind']}; "
          f"total {report['wall_s']:.0f} s", flush=True)
    from polypjax.data import export
    export.atomic_write_text(__import__("pathlib").Path(args.out), json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: (v.get("pairs_per_s", v.get("items_per_s", v.get("wall_s")))) for k, v in results.items()}))


if __name__ == "__main__":
    main_()
