"""Task `quickstart`: the system end to end on the embedded phantom data, on a CPU, in minutes.

Stages (each skipped when its output exists, so a rerun resumes): (1) write and inspect the
phantom datasets (`data/`, `data_report.md`); (2) train a small segmenter on real-like data and
score it in-domain and cross-domain (`segmentation/results.json`). Later stages (diffusion,
generation, generation metrics, the real-vs-synthetic grid) join as their issues land.
"""
from __future__ import annotations

import json
import pathlib

from polypjax import configlib
from polypjax.data import export
from polypjax.experiments import prepare_data, train_segmentation


def validate(config) -> None:
    train_segmentation.validate(config)


def data_sources(config) -> list[tuple[str, str, str]]:
    return train_segmentation.data_sources(config)


def run(config, workdir: pathlib.Path) -> None:
    workdir = pathlib.Path(workdir)
    if not (workdir / "data_report.json").exists():
        prepare_data.run(config, workdir)
    seg_dir = workdir / "segmentation"
    if not (seg_dir / "results.json").exists():
        seg_dir.mkdir(parents=True, exist_ok=True)
        # Its own config.json makes the segmenter reusable (load_segmenter, label consistency).
        configlib.write_config(seg_dir, config, task="train_segmentation")
        train_segmentation.run(config, seg_dir)
    results = json.loads((seg_dir / "results.json").read_text())
    lines = ["# polypjax quickstart", "", "## Data", "", (workdir / "data_report.md").read_text(),
             "## Segmentation (trained on phantom-a train)", "",
             "| test set | mDice | mIoU | Dice | IoU | images |", "|---|---|---|---|---|---|"]
    for name, r in results["test"].items():
        lines.append(f"| {name} | {r['mDice']:.3f} | {r['mIoU']:.3f} | {r['dice']:.3f} | {r['iou']:.3f} "
                     f"| {r['num_images']} |")
    export.atomic_write_text(workdir / "report.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
