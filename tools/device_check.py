"""The accelerator check: one prepared script for a machine with a GPU or TPU (under 8 minutes on
one GPU), printing and writing as JSON:

- the paper-scale ADM training step (configs/diffusion.py:paper, 256 px, bfloat16, batch 1 per
  device) time and model FLOP utilisation against a bf16 matmul peak measured in the same run;
- DDIM-50 pairs/s and RePaint pairs/s at the paper schedule (configs/generate.py's inpaint block:
  200 steps, jumps of 10, 5 samples) with the paper model;
- segmenter (configs/segmentation.py's model) training and inference images/s;
- FID Inception feature images/s (random weights: the speed is the weights');
- a miniature pipeline's wall time (configs/pipeline.py:mini, through polypjax.main.run);
- `kvasir_gpu`: the real-data experiment of configs/kvasir_gpu.py on `--data` (a Kvasir-SEG folder)
  in `--workdir`, its wall time per stage and where its report is.

    python tools/device_check.py [--out device_check.json] [--reduced] [--cases a,b] [--data DIR]

`--reduced` runs every case at toy sizes on whatever backend is there (the CPU in tests; kvasir_gpu
then runs its grid at toy sizes on phantom data); the pipeline cases are the ones of minutes on a
CPU and `--cases` can leave them out. The JSON is rewritten after every case, so a run stopped by a
time limit keeps what it measured. It records what the accelerator path imported: tensorflow, the
oneDNN kernels and the malloc re-exec must all stay out of a GPU or TPU run (tools/device_run.sh).
"""
import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # fid_inception_recipe: numpy-only random weights
from polypjax import hostenv  # noqa: E402

hostenv.reexec_with_hugepage_malloc()

CASES = ("adm_train_paper", "ddim50", "repaint", "seg_train", "seg_infer", "fid_features", "pipeline_mini",
         "kvasir_gpu")


def _timed(fn, items, args, flops=None, min_iters=2, warmup=1, max_iters=None):
    from bench_common import summarise, timed_loop
    times = timed_loop(fn, warmup=warmup, min_iters=min_iters if not args.reduced else 1,
                       max_iters=max_iters or args.max_iters, budget_s=args.budget)
    out = summarise(times, items, flops)
    out.pop("ms_per_iter_all")
    return out


def diffusion_cases(args, cases, results, peak, save):
    import jax
    import jax.numpy as jnp
    from polypjax import configlib, parallel, tasks
    from polypjax.diffusion import generators
    from polypjax.train import compute, diffusion, loop

    config = configlib.load_config("diffusion", "paper")
    n_dev = jax.device_count()
    config.data.batch_size = n_dev * args.batch_per_device  # 256 px images
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
        save()
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
        save()
    if "repaint" in cases:
        g = configlib.load_config("generate").generate.inpaint
        steps, jump, jumps = (int(g.steps), int(g.jump_length), int(g.jump_n_sample))
        if args.reduced:
            steps, jump, jumps = 6, 2, 2
        s = config.data.image_size
        n_rp = n_dev  # 960 UNet calls of the paper model take seconds a pair even on a GPU
        image = jnp.zeros((n_rp, s, s, 3), jnp.uint8)
        region = jnp.zeros((n_rp, s, s), jnp.uint8).at[:, s // 4: 3 * s // 4, s // 4: 3 * s // 4].set(1)
        f = jax.jit(lambda p, rng: gen.inpaint(p, rng, image, region, jump_length=jump, jump_n_sample=jumps,
                                               steps=steps))
        rng = jax.random.PRNGKey(2)
        t0 = time.perf_counter()
        compiled = f.lower(params, rng).compile()  # compiled ahead: one timed call, no warm-up call
        compile_s = time.perf_counter() - t0
        r = _timed(lambda: jax.block_until_ready(compiled(params, rng)), n_rp, args, min_iters=1, warmup=0,
                   max_iters=1 if not args.reduced else None)
        results["repaint"] = {"pairs_per_s": r["items_per_s"], "steps": steps, "jump_length": jump,
                              "jump_n_sample": jumps, "compile_s": compile_s, **r}
        save()


def segmenter_cases(args, cases, results, save):
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
    else:  # the accelerator path: bfloat16 compute, float32 parameters (as configs/kvasir_gpu.py)
        config.model.dtype = "bfloat16"
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
                                "dtype": config.model.dtype, **_timed(run, b, args)}
        state = holder[0]
    if "seg_infer" in cases:
        predict = task.predict_fn(mesh)
        jax.block_until_ready(predict(state.params, state.model_state, batch))
        results["seg_infer"] = {"model": config.model.name, "image_size": config.data.image_size,
                                **_timed(lambda: jax.block_until_ready(predict(state.params, state.model_state,
                                                                               batch)), b, args)}
    save()


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


def kvasir_gpu_config(args):
    """configs/kvasir_gpu.py on --data; reduced: the same grid (regimes, N, seeds, validation split)
    at toy sizes on phantom data, for a CPU test."""
    from polypjax import configlib
    config = configlib.load_config("pipeline", "kvasir_gpu")
    if not args.reduced:
        config.data.train = args.data
        return config
    mini = configlib.load_config("pipeline", "mini")
    config.data.update({"train": "phantom-a", "test": "phantom-b", "image_size": 32,
                        "phantom_train_examples": 30, "phantom_test_examples": 4})
    g = config.generators.joint.overrides
    g.data.update({"batch_size": 4, "worker_count": 0})
    g.model = mini.generators.joint.overrides.model
    g.model.dtype = "bfloat16"  # the accelerator path's setting, at toy size
    g.train.update({"num_steps": 4, "checkpoint_every": 4, "log_every": 2})
    config.generate.overrides.generate.update({"batch_size": 4})
    config.generate.mode_overrides.inpaint.generate.inpaint.update({"steps": 4, "jump_length": 2, "jump_n_sample": 2})
    config.generate.multiple = 0.2
    config.evaluate.overrides.evaluate.update(mini.evaluate.overrides.evaluate)
    s = config.segmentation
    s.models.unet.model.kwargs.features = (4, 8)
    s.seeds = (0,)
    s.validation.update({"max_steps": 4, "eval_every": 2})
    s.low_data.sizes = (8,)
    s.overrides.data.update({"batch_size": 4, "worker_count": 0})
    s.overrides.train.update({"num_steps": 4, "log_every": 2})
    config.review.enabled = False
    return config


def kvasir_gpu_case(args, results, save):
    """The real-data grid end to end through polypjax.main.run: wall time per stage from each
    stage.json, the report's folder, and the per-regime scores of results.json."""
    from polypjax import main
    if not args.reduced and not args.data:
        results["kvasir_gpu"] = {"skipped": "no --data folder given"}
        return
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp())
    t0 = time.perf_counter()
    results["kvasir_gpu"] = {"workdir": str(workdir), "status": "running"}
    save()
    main.run(kvasir_gpu_config(args), str(workdir))
    stages = {}
    for path in sorted(workdir.rglob("stage.json")):
        record = json.loads(path.read_text())
        stages[record["stage"]] = (record.get("compute") or {}).get("wall_s")
    results["kvasir_gpu"] = {"workdir": str(workdir), "status": "done", "wall_s": time.perf_counter() - t0,
                             "stage_wall_s": stages, "report": str(workdir / "report"),
                             "result_rows": len(json.loads((workdir / "report" / "results.json").read_text())["rows"])}
    save()


def imports_record() -> dict:
    """What the accelerator path must not load (ARCHITECTURE.md): tensorflow, the oneDNN CPU kernels
    (built and loaded on first use), the malloc tunables' re-exec."""
    from polypjax import hostenv
    onednn = sys.modules.get("polypjax.native.onednn")
    return {"tensorflow": "tensorflow" in sys.modules,
            "onednn_kernels_loaded": bool(onednn and onednn.load.cache_info().currsize),
            "malloc_reexec": bool(hostenv.applied()),
            "top_level_modules": sorted({m.split(".")[0] for m in sys.modules if not m.startswith("_")})}


def main_():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="device_check.json")
    ap.add_argument("--reduced", action="store_true", help="toy sizes (a CPU test in seconds)")
    ap.add_argument("--cases", default=",".join(c for c in CASES if c != "pipeline_mini"),
                    help=f"comma-separated subset of {CASES}")
    ap.add_argument("--budget", type=float, default=None, help="seconds of timed iterations per case")
    ap.add_argument("--max_iters", type=int, default=None)
    ap.add_argument("--batch_per_device", type=int, default=None,
                    help="256 px images a device in the paper-scale ADM step (default 8; reduced 1)")
    ap.add_argument("--data", default="", help="a Kvasir-SEG folder (images/, masks/) for the kvasir_gpu case")
    ap.add_argument("--workdir", default="", help="the kvasir_gpu case's workdir (default: a temporary folder)")
    args = ap.parse_args()
    cases = args.cases.split(",")
    unknown = set(cases) - set(CASES)
    if unknown:
        sys.exit(f"error: unknown cases {sorted(unknown)}; choose from {CASES}")
    if args.budget is None:
        args.budget = 0.5 if args.reduced else 5.0
    if args.max_iters is None:
        args.max_iters = 2 if args.reduced else 20
    if args.batch_per_device is None:
        args.batch_per_device = 1 if args.reduced else 8

    import jax
    from bench_common import matmul_peak
    from polypjax import main as polyp_main
    from polypjax.data import export
    polyp_main.make_grain_flags_readable()
    start = time.perf_counter()
    results = {}
    report = {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
              "device_count": jax.device_count(), "jax": jax.__version__, "reduced": args.reduced,
              "cases": results}

    def save():
        report.update(wall_s=time.perf_counter() - start, imports=imports_record(),
                      tensorflow_imported="tensorflow" in sys.modules)
        export.atomic_write_text(pathlib.Path(args.out), json.dumps(report, indent=2) + "\n")

    # The bf16 peak of this chip, measured here (an 8192^3 matmul; small on a CPU in reduced mode).
    peak = matmul_peak(0.5 if args.reduced else 5.0, n=256 if args.reduced else 8192, dtype=jax.numpy.bfloat16)
    report["bf16_matmul_peak"] = peak
    save()
    if {"adm_train_paper", "ddim50", "repaint"} & set(cases):
        diffusion_cases(args, cases, results, peak, save)
    if {"seg_train", "seg_infer"} & set(cases):
        segmenter_cases(args, cases, results, save)
    if "fid_features" in cases:
        fid_case(args, results)
        save()
    if "pipeline_mini" in cases:
        pipeline_case(args, results)
        save()
    if "kvasir_gpu" in cases:
        kvasir_gpu_case(args, results, save)
    save()
    for name, r in results.items():
        rate = r.get("pairs_per_s", r.get("items_per_s"))
        extra = f", MFU {100 * r['mfu']:.1f} %" if "mfu" in r else ""
        print(f"{name}: " + (f"{rate:.3f}/s, median {r['ms_per_iter_median']:.1f} ms{extra}" if rate is not None
                             else f"{r.get('wall_s', 0):.1f} s wall"), flush=True)
    print(f"bf16 matmul peak {peak['gflops_per_s']:.1f} GFLOP/s on {report['device_kind']}; "
          f"total {report['wall_s']:.0f} s", flush=True)
    print(json.dumps({k: (v.get("pairs_per_s", v.get("items_per_s", v.get("wall_s")))) for k, v in results.items()}))


if __name__ == "__main__":
    main_()
