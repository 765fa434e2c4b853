"""A PNG of copy-paste examples to look at: target | result | label (target polyp green, pasted red).

    python tools/copy_paste_grid.py --out /tmp/cp.png                       # phantom-a, 64 px
    python tools/copy_paste_grid.py --source /path/to/Kvasir-SEG@all --size 256 --out /tmp/cp_kvasir.png

Pairs are read at `--size` (the model resolution, where the regime pastes); `--match_colour` and
`--feather_sigma` override the defaults of `config.regime.copy_paste`.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from polypjax import configlib  # noqa: E402
from polypjax.data import catalog, copy_paste, export, visualize  # noqa: E402
from polypjax.data.pipeline import resize_pair  # noqa: E402


def grid(source, n: int, size: int, seed: int, cfg, tile: int) -> tuple[np.ndarray, int]:
    """`n` targets, each with one paste drawn as the regime draws it, from a pool of at most 64
    donors (reading all of a large folder would take longer than looking at the result)."""
    rng = np.random.default_rng(seed)
    pool = rng.choice(len(source), size=min(len(source), 64), replace=False)
    donors = [{**source[int(i)], **resize_pair(source[int(i)], size)} for i in pool]
    cfg.probability, cfg.max_pastes = 1.0, 1
    rows, placed = [], 0
    for i in rng.choice(len(donors), size=min(n, len(donors)), replace=False):
        target = donors[int(i)]
        out, records = copy_paste.paste_random(target, donors, rng, cfg)
        image, mask = out["image"], out["mask"]
        placed += records[0]["placed"]
        label = visualize.overlay(image, mask & (target["mask"] == 0), colour=(255, 0, 0))
        label = visualize.overlay(label, target["mask"], colour=(0, 255, 0))
        rows.append([resize_pair({"image": t, "mask": mask}, tile)["image"] for t in (target["image"], image, label)])
    return visualize.tile_grid(rows), placed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="phantom-a")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tile", type=int, default=192, help="display size of each tile")
    ap.add_argument("--match_colour", action="store_true")
    ap.add_argument("--feather_sigma", type=float)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    data = configlib.data_config(image_size=args.size)
    data.phantom_train_examples = 16
    source = catalog.make_source(args.source, data, default_split="train", seed=args.seed)
    cfg = configlib.copy_paste_config()
    cfg.match_colour = args.match_colour
    if args.feather_sigma is not None:
        cfg.feather_sigma = args.feather_sigma
    image, placed = grid(source, args.n, args.size, args.seed, cfg, args.tile)
    export.atomic_write_bytes(pathlib.Path(args.out), export.encode_png(image))
    print(f"{args.out}: {placed} of {args.n} pastes placed")


if __name__ == "__main__":
    main()
