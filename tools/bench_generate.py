"""The generate task's end-to-end pairs/s beside its sampler's alone, for `sample` and `inpaint`.

End to end is the task as a user runs it (`main.run`: host inputs, the jitted sampler, the writer
pool's post-processing, PNG encoding and manifest); sampler-only is the same jitted device function
on the same batch, three calls in flight at a time and blocked on. The end-to-end rate is marginal:
after a warm-up run (it fills the compilation cache), runs of n and 3n pairs into fresh folders,
rate = 2n / (t(3n) - t(n)), so loading the checkpoint and compiling cancel out. Both are measured
in turns, --repeats times, and the medians printed; a turn during which the hypervisor took more
than --max_steal of the CPU (/proc/stat steal, which comes in bursts on a shared VM) is discarded
and run again. The target
(issue 15) is end to end >= 90 % of sampler-only: the host work hides behind the device.

    python tools/bench_generate.py [--generator_workdir DIR] [--size 32] [--batch 8] [--pairs 16]
                                   [--steps 10] [--modes sample,inpaint]

Without --generator_workdir a tiny generator (`--size` px) is trained for 2 steps first; speed does
not depend on how well it is trained. Last line: one JSON object {case: pairs/s}.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from polypjax import hostenv  # noqa: E402

hostenv.reexec_with_hugepage_malloc()
sys.path.insert(0, os.path.dirname(__file__))


IN_FLIGHT = 3


def _generator(size: int, root: str) -> str:
    from polypjax import configlib, main
    c = configlib.load_config("diffusion", "cpu")
    c.data.image_size, c.data.batch_size, c.data.phantom_train_examples = size, 4, 16
    c.model.update(channels=32, channel_mult=(1, 2), attention_resolutions=(size // 2,), num_heads=2)
    c.train.update(num_steps=2, checkpoint_every=2, log_every=1, eval_every=0)
    wd = os.path.join(root, "generator")
    main.run(c, wd)
    return wd


def _config(generator_workdir, mode, n, batch, steps):
    from polypjax import configlib
    c = configlib.load_config("generate")
    c.generate.update(generator_workdir=generator_workdir, num_samples=n, batch_size=batch, mode=mode)
    c.generate.sampler.steps = steps
    if mode == "inpaint":
        c.generate.source = "phantom-a"
        c.data.phantom_train_examples = 16
        # The fast variant at `steps` respaced steps: the same device/host split as the paper's settings.
        c.generate.inpaint.update(sampler="repaint_ddim", steps=steps, jump_length=5, jump_n_sample=2)
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--generator_workdir", default="")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=16, help="n: the timed runs make n and 3n pairs")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--modes", default="sample,inpaint")
    ap.add_argument("--budget", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3, help="turns of sampler-only and end-to-end runs")
    ap.add_argument("--max_steal", type=float, default=0.05,
                    help="a turn in which the VM's host took more of the CPU than this is run again (up to 3x repeats turns)")
    args = ap.parse_args()

    import jax
    import numpy as np
    from bench_common import StolenTime, summarise, timed_loop
    from polypjax import main as entry
    from polypjax import parallel, tasks
    from polypjax.experiments import generate

    root = tempfile.mkdtemp(prefix="bench_generate_")
    wd = args.generator_workdir or _generator(args.size, root)
    results, line = {}, {}
    for mode in args.modes.split(","):
        # Sampler only: the task's own device function and shardings on one global batch.
        c = tasks.resolve(_config(wd, mode, args.pairs, args.batch, args.steps))
        generator, params, train_config = generate.load_generator(wd)
        c.data.image_size = generator.image_size
        m = generate.Mode(c, generator, train_config)
        mesh = parallel.make_mesh(c.mesh.data, c.mesh.fsdp)
        sh = parallel.batch_sharding(mesh)
        batch = -(-args.batch // mesh.devices.size) * mesh.devices.size
        idx = np.arange(batch)
        inputs, _ = m.inputs(idx)
        g_inputs = parallel.global_batch(inputs, mesh)
        g_idx = parallel.global_batch({"i": idx.astype(np.int32)}, mesh)["i"]
        f = jax.jit(m.device_fn(), out_shardings=(sh, sh))
        params = jax.device_put(params, parallel.replicated(mesh))
        # Several calls in flight, as the task keeps them (it dispatches the next batch before the
        # host writes the last): on a CPU two executions share the cores better than one, so a
        # blocking one-at-a-time loop would understate what the sampler alone can do.
        entry.run(_config(wd, mode, args.pairs, args.batch, args.steps), os.path.join(root, f"{mode}_warm"))
        # Sampler-only and end-to-end measured in turns, `repeats` times, medians reported: on a
        # small shared CPU either rate drifts between runs minutes apart by more than the ratio's margin.
        sampler_rates, e2e_rates, times, steals = [], [], [], []
        for turn in range(args.repeats * 3):
            if len(sampler_rates) == args.repeats:
                break
            with StolenTime() as stolen_s:
                r = summarise(timed_loop(lambda: jax.block_until_ready([f(params, g_idx, g_inputs) for _ in range(IN_FLIGHT)]),
                                         warmup=1, min_iters=2, max_iters=20, budget_s=args.budget), IN_FLIGHT * batch)
            run_s = []  # end to end, marginal over n pairs
            with StolenTime() as stolen_e:
                for n in (args.pairs, 3 * args.pairs):
                    t = time.perf_counter()
                    entry.run(_config(wd, mode, n, args.batch, args.steps), os.path.join(root, f"{mode}_{n}_{turn}"))
                    run_s.append(time.perf_counter() - t)
            steal = max(stolen_s.fraction or 0.0, stolen_e.fraction or 0.0)
            if steal > args.max_steal and turn < args.repeats * 3 - 1:
                # The hypervisor took a burst of CPU from this VM: the turn's two rates are not comparable.
                print(f"{mode}: turn {turn} discarded, {100 * steal:.0f}% of CPU time stolen by the host", flush=True)
                continue
            sampler_rates.append(r["items_per_s"])
            e2e_rates.append(2 * args.pairs / max(1e-9, run_s[1] - run_s[0]))
            times.append(run_s)
            steals.append(round(steal, 3))
        ratios = [e / s for e, s in zip(e2e_rates, sampler_rates)]
        sampler_rate, e2e_rate = statistics.median(sampler_rates), statistics.median(e2e_rates)
        results[mode] = {"sampler_pairs_per_s": sampler_rates, "end_to_end_pairs_per_s": e2e_rates,
                         "ratio": ratios, "unet_calls_per_pair": m.unet_calls(), "run_s": times,
                         "cpu_stolen": steals}
        print(f"{mode}: sampler-only {sampler_rate:.2f} pairs/s, end to end {e2e_rate:.2f} pairs/s (medians of "
              f"{len(ratios)} turns), ratio median {100 * statistics.median(ratios):.0f}% (each: "
              f"{', '.join(f'{100 * x:.0f}%' for x in ratios)}; CPU stolen "
              f"{', '.join(f'{100 * x:.0f}%' for x in steals)}), {m.unet_calls()} UNet calls/pair", flush=True)
        print(json.dumps({mode: results[mode]}), flush=True)
        line[f"{mode}_sampler"] = sampler_rate
        line[f"{mode}_end_to_end"] = e2e_rate
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} x{len(jax.devices())}, {args.size} px, "
          f"batch {args.batch}, {args.steps} steps, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
