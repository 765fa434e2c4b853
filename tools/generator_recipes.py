"""Which diffusion recipe learns useful pairs on a CPU budget? Train each, measure, print a table.

    PYTHONPATH=. python tools/generator_recipes.py --segmenter_workdir=/tmp/seg \\
        --recipes=baseline,v_cosine --budgets=240,600 --kind=joint --out=/tmp/recipes

Each recipe is a set of overrides of ``configs/diffusion.py``, trained on phantom-a through the
project's own train step (``train.loop.make_train_step``, ``TrainState``, the grain pipeline).
Budgets are *process CPU seconds* (``time.process_time()``, all threads, compile and input
pipeline included, evaluation excluded): on an idle 2-core machine B CPU-seconds are about B / 2
wall seconds, and unlike wall time they do not depend on what else shares the machine.

At every budget the EMA parameters sample ``--num_samples`` pairs (the config's eval sampler) and
these are scored as ``evaluate_generation`` scores them:
- colour: max over RGB of |mean generated - mean real| (0-255 levels);
- segFD: Fréchet distance in the real-trained segmenter's pooled encoder features, to a reference
  half of the real frames; printed with the real-vs-real and colour-matched-noise values at the
  same sample size, which bound it;
- mDice / chance: label consistency of the segmenter on the pairs, and its chance floor;
- MS-SSIM: diversity (mean over random pairs; real's value in the header);
- area W1, border W1: Wasserstein-1 distance of mask area fraction and of touching the border.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import diffusion as diffusion_config  # noqa: E402
from polypjax import parallel  # noqa: E402
from polypjax.data import catalog, export, visualize  # noqa: E402
from polypjax.diffusion import generators  # noqa: E402
from polypjax.experiments import evaluate, generation_metrics  # noqa: E402
from polypjax.metrics import masks as mask_metrics  # noqa: E402
from polypjax.train import loop  # noqa: E402
from polypjax.train.diffusion import DiffusionTask  # noqa: E402

# Overrides of configs/diffusion.py (dotted keys), applied to it with min-SNR weighting off, so that
# each name means the same recipe whatever the default is. "baseline" is the config before this
# study; "v_cosine" is the default of configs/diffusion.py (cpu).
RECIPES = {
    "baseline": {"diffusion.pred": "eps", "diffusion.schedule": "linear"},
    "v_cosine": {"diffusion.pred": "v", "diffusion.schedule": "cosine"},
    "x0_cosine": {"diffusion.pred": "x0", "diffusion.schedule": "cosine"},
    "v_cosine_minsnr5": {"diffusion.pred": "v", "diffusion.schedule": "cosine", "diffusion.min_snr_gamma": 5.0},
    "eps_cosine_minsnr5": {"diffusion.pred": "eps", "diffusion.schedule": "cosine", "diffusion.min_snr_gamma": 5.0},
    "v_cosine_lognormal_t": {"diffusion.pred": "v", "diffusion.schedule": "cosine",
                             "diffusion.timestep_sampling": "lognormal"},
    "v_cosine_small": {"diffusion.pred": "v", "diffusion.schedule": "cosine", "model.channel_mult": (1, 2),
                       "model.attention_resolutions": ()},
    "v_cosine_16px": {"diffusion.pred": "v", "diffusion.schedule": "cosine", "data.image_size": 16,
                      "model.channel_mult": (1, 2), "model.attention_resolutions": (8,)},
    "v_cosine_lr2e-3_b16": {"diffusion.pred": "v", "diffusion.schedule": "cosine",
                            "optim.learning_rate": 2e-3, "data.batch_size": 16},
}


def recipe_config(name: str, kind: str, seed: int = 0):
    config = diffusion_config.get_config()
    config.generator.kind = kind
    config.seed = seed
    config.diffusion.min_snr_gamma = 0.0
    for key, value in RECIPES[name].items():
        node = config
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return config


class Reference:
    """The real frames and the fixed yardsticks every recipe is scored against."""

    def __init__(self, predict, n: int, seed: int = 0):
        self.predict, self.n = predict, n
        config = diffusion_config.get_config()
        source = catalog.make_source("phantom-a", config.data, default_split="train", seed=seed)
        order = np.random.default_rng(seed).permutation(len(source))
        # Half A has as many frames as a generated set so that the two FDs share their sample bias.
        self.half_a = [source[int(i)] for i in order[:n]]
        half_b = [source[int(i)] for i in order[n:3 * n]]
        size = int(predict.image_size)
        self.ref_feats, _ = generation_metrics.segmenter_scan(half_b, predict, size, 32, name="reference")
        a_feats, self.colour = generation_metrics.segmenter_scan(self.half_a, predict, size, 32, name="real A")
        noise = generation_metrics.matched_noise_source(self.colour, n, size, seed)
        noise_feats, _ = generation_metrics.segmenter_scan(noise, predict, size, 32, name="noise")
        self.fd_real = self.fd(a_feats)
        self.fd_noise = self.fd(noise_feats)
        self.masks = mask_metrics.mask_statistics([p["mask"] for p in self.half_a])
        self.msssim = generation_metrics.diversity(self.half_a, num_pairs=32, size=161, seed=seed,
                                                   batch_size=16)["mean"]
        self.lc = generation_metrics.label_consistency(self.half_a, predict, size, 32)

    def fd(self, feats):
        return generation_metrics.feature_distances(self.ref_feats, feats, kid_subsets=20, kid_subset_size=64,
                                                    seed=0)["fd"]

    def score(self, images, masks) -> dict:
        pairs = [{"image": i, "mask": m} for i, m in zip(images, masks)]
        size = int(self.predict.image_size)
        feats, colour = generation_metrics.segmenter_scan(pairs, self.predict, size, 32, name="generated")
        lc = generation_metrics.label_consistency(pairs, self.predict, size, 32)
        dist = mask_metrics.statistic_distances(self.masks, mask_metrics.mask_statistics(masks))
        return {"colour_mean": [round(c, 1) for c in colour["mean"]],
                "colour_err": float(np.max(np.abs(np.subtract(colour["mean"], self.colour["mean"])))),
                "seg_fd": self.fd(feats), "mDice": lc["mDice"], "chance_mDice": lc["chance_mDice"],
                "msssim": generation_metrics.diversity(pairs, num_pairs=32, size=161, seed=0, batch_size=16)["mean"],
                "area_w1": dist["area_fraction"], "border_w1": dist["touches_border"]}


def run_recipe(name: str, kind: str, budgets: list[float], ref: Reference, out: pathlib.Path, n: int,
               seed: int = 0):
    config = recipe_config(name, kind, seed)
    tag = f"{kind}_{name}" + (f"_seed{seed}" if seed else "")
    task = DiffusionTask(config, out / tag)
    mesh = parallel.make_mesh(-1, 1)
    data = iter(task.train_iterator())
    rows, step = [], 0
    t0 = time.process_time()
    state, _ = loop.create_state(task, config, mesh, next(data), 10**9)
    step_fn = jax.jit(loop.make_train_step(task.loss), donate_argnums=(0,))
    spec = generators.SamplerSpec.from_config(config.eval.sampler)
    spent = 0.0
    for budget in sorted(budgets):
        while spent + (time.process_time() - t0) < budget:
            state, metrics = step_fn(state, next(data))
            step += 1
            if step % 50 == 0:
                print(f"  {kind}/{name} step {step} loss {float(metrics['loss']):.4f} "
                      f"cpu {spent + time.process_time() - t0:.0f}s", flush=True)
        jax.block_until_ready(state)
        spent += time.process_time() - t0
        images, masks = task.sample_pairs(state.ema_params, jax.random.PRNGKey(0), n, spec)
        raw_images, _ = task.sample_pairs(state.params, jax.random.PRNGKey(0), 16, spec)
        row = {"kind": kind, "recipe": name, "seed": seed, "cpu_s": budget, "steps": step, **ref.score(images, masks),
               "raw_colour_err": float(np.max(np.abs(raw_images.reshape(-1, 3).mean(0) - ref.colour["mean"])))}
        grid = visualize.pair_grid([{"image": i, "mask": m} for i, m in zip(images[:8], masks[:8])], size=64)
        export.atomic_write_bytes(out / f"grid_{tag}_{int(budget)}.png", export.encode_png(grid))
        print(json.dumps(row), flush=True)
        rows.append(row)
        t0 = time.process_time()
    return rows


def table(rows, ref: Reference) -> str:
    lines = [f"Budgets are process CPU-seconds (~ wall seconds x 2 on an idle 2-core machine). "
             f"{ref.n} pairs per point, EMA parameters. Real frames: RGB mean "
             f"{'/'.join(f'{c:.0f}' for c in ref.colour['mean'])}, MS-SSIM {ref.msssim:.3f}, segmenter mDice on "
             f"real {ref.lc['mDice']:.3f} (chance {ref.lc['chance_mDice']:.3f}). segFD bounds: real vs real "
             f"{ref.fd_real:.3f}, colour-matched noise {ref.fd_noise:.3f}.", "",
             "| kind | recipe | seed | CPU s | steps | colour err | colour err (raw params) | RGB mean | segFD "
             "| mDice | chance | MS-SSIM | area W1 | border W1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['recipe']} | {r['seed']} | {r['cpu_s']:.0f} | {r['steps']} | {r['colour_err']:.1f} | "
                     f"{r['raw_colour_err']:.1f} | {'/'.join(f'{c:.0f}' for c in r['colour_mean'])} | "
                     f"{r['seg_fd']:.3f} | {r['mDice']:.3f} | {r['chance_mDice']:.3f} | {r['msssim']:.3f} | "
                     f"{r['area_w1']:.3f} | {r['border_w1']:.3f} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--segmenter_workdir", required=True, help="a train_segmentation workdir (real-trained)")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--kind", default="joint", choices=generators.KINDS)
    ap.add_argument("--budgets", default="240,600", help="process CPU-seconds, comma-separated")
    ap.add_argument("--num_samples", type=int, default=64)
    ap.add_argument("--out", default="/tmp/generator_recipes")
    ap.add_argument("--seed", type=int, default=0,
                    help="training seed (initialisation, data order, noise); the reference and sampling keys stay fixed")
    args = ap.parse_args()
    unknown = [r for r in args.recipes.split(",") if r not in RECIPES]
    if unknown:
        sys.exit(f"error: unknown recipe(s) {unknown}; known: {sorted(RECIPES)}")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ref = Reference(evaluate.load_segmenter(args.segmenter_workdir), args.num_samples)
    budgets = [float(b) for b in args.budgets.split(",")]
    rows = []
    for name in args.recipes.split(","):
        rows += run_recipe(name, args.kind, budgets, ref, out, args.num_samples, args.seed)
        export.atomic_write_text(out / f"recipes_{args.kind}.md", table(rows, ref))
    print(table(rows, ref))


if __name__ == "__main__":
    main()
