"""RePaint at the paper's settings against the few-call DDIM variant, on one trained joint generator.

For each sampler the generate task (mode inpaint, the same seed, source frames and regions) writes
`--pairs` pairs; the table gives UNet calls per pair, pairs/s (run time, checkpoint loading and
compilation included), fidelity outside the region (the largest absolute pixel difference from the
real frame there, and whether the mask is 0 there: both must be exact) and, with
--segmenter_workdir (a segmenter trained on real data), label consistency inside the region: the
Dice of its prediction against the generated mask, both restricted to the region, averaged.

    python tools/inpaint_compare.py --generator_workdir runs/s9_gen_joint \
        [--segmenter_workdir runs/seg_phantom] [--pairs 8] [--source phantom-a]

Last line: one JSON object {sampler: {unet_calls, pairs_per_s, outside_max_abs, mdice_in_region}}.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from polypjax import hostenv  # noqa: E402

hostenv.reexec_with_hugepage_malloc()

# name -> generate.inpaint settings: the paper's RePaint (200 respaced steps, jumps of 10, 5
# resamplings: 960 UNet calls), and deterministic DDIM steps with RePaint's resampling at few jumps.
VARIANTS = {
    "repaint_paper": {"sampler": "repaint", "steps": 200, "jump_length": 10, "jump_n_sample": 5},
    "repaint_ddim_25": {"sampler": "repaint_ddim", "steps": 25, "jump_length": 5, "jump_n_sample": 2},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--generator_workdir", required=True)
    ap.add_argument("--segmenter_workdir", default="")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--source", default="phantom-a")
    ap.add_argument("--source_examples", type=int, default=64, help="phantom frames (when --source is phantom)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()

    import numpy as np
    from polypjax import configlib, tasks
    from polypjax import main as entry
    from polypjax.data.pipeline import resize_pair
    from polypjax.data.sources import FolderSource
    from polypjax.experiments import generate

    predict = None
    if args.segmenter_workdir:
        from polypjax.experiments.segmenter_inference import load_segmenter
        predict = load_segmenter(args.segmenter_workdir)
    root = tempfile.mkdtemp(prefix="inpaint_compare_")
    table = {}
    for name in args.variants.split(","):
        c = configlib.load_config("generate")
        c.generate.update(generator_workdir=args.generator_workdir, num_samples=args.pairs, batch_size=args.batch,
                          mode="inpaint", source=args.source)
        c.data.phantom_train_examples = args.source_examples
        c.generate.inpaint.update(VARIANTS[name])
        out = os.path.join(root, name)
        t = time.perf_counter()
        summary = entry.run(c, out)
        seconds = time.perf_counter() - t
        # The regions again, from the task's own (seeded) choice.
        resolved = tasks.resolve(c)
        generator, _, train_config = generate.load_generator(args.generator_workdir)
        resolved.data.image_size = generator.image_size
        mode = generate.Mode(resolved, generator, train_config)
        inputs, _ = mode.inputs(np.arange(args.pairs))
        made = FolderSource(out)
        by_id = {made[k]["id"]: made[k] for k in range(len(made))}
        worst, mask_outside, dice = 0, 0, []
        for i in range(args.pairs):
            pair, region = by_id[generate.pair_id(i)], inputs["region"][i].astype(bool)
            outside = ~region
            worst = max(worst, int(np.abs(pair["image"].astype(int) - inputs["image"][i].astype(int))[outside].max(
                initial=0)))
            mask_outside += int(pair["mask"][outside].sum())
            if predict is not None:
                s = predict.image_size
                image = resize_pair({"image": pair["image"], "mask": pair["mask"]}, s)["image"]
                pred = np.asarray(predict(image[None]))[0, ..., 0] > 0
                small = {"image": inputs["image"][i], "mask": region.astype(np.uint8)}
                reg = resize_pair(small, s)["mask"] > 0
                gm = resize_pair({"image": pair["image"], "mask": pair["mask"]}, s)["mask"] > 0
                p, g = pred & reg, gm & reg
                denom = p.sum() + g.sum()
                dice.append(1.0 if denom == 0 else 2.0 * (p & g).sum() / denom)
        table[name] = {"unet_calls": summary["unet_calls_per_pair"], "pairs_per_s": args.pairs / seconds,
                       "outside_max_abs": worst, "mask_pixels_outside": mask_outside,
                       "mdice_in_region": float(np.mean(dice)) if dice else None,
                       "mask_fraction_mean": summary["mask_fraction_mean"]}
    print("| sampler | UNet calls/pair | pairs/s | max abs diff outside | mask px outside | mDice in region |")
    print("|---|---|---|---|---|---|")
    for name, r in table.items():
        md = "n/a" if r["mdice_in_region"] is None else f"{r['mdice_in_region']:.3f}"
        print(f"| {name} | {r['unet_calls']} | {r['pairs_per_s']:.3f} | {r['outside_max_abs']} | "
              f"{r['mask_pixels_outside']} | {md} |")
    print(json.dumps(table), flush=True)


if __name__ == "__main__":
    main()
