"""Task `prepare_data`: materialise and inspect the configured datasets.

Writes every phantom split named in `data.train`/`data.test` as a Kvasir-style folder under
`<workdir>/data/` (resumable), inspects all train/test sources, and writes `data_report.json`,
`data_report.md` and a PNG grid of samples per dataset.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np

from polypjax.data import catalog, export, inspect, phantom, sources, visualize


def run(config, workdir: pathlib.Path) -> None:
    reports = []
    for field, split in (("train", "train"), ("test", "test")):
        for name, source in catalog.make_sources(config.data[field], config.data, default_split=split,
                                                 seed=config.seed).items():
            if isinstance(source, phantom.PhantomSource):  # written out so any tool can read it
                out = workdir / "data" / name.replace("@", "-")
                export.write_source(source, out, desc=f"phantom {name}")
                report = inspect.inspect_folder(out, progress=False)
            elif isinstance(source, sources.FolderSource):
                report = inspect.inspect_folder(source.root)
            else:
                report = {"root": name, "layout": "tfds", "num_pairs": len(source), "errors": 0,
                          "warnings": 0, "problems": []}
            report["name"] = name
            report["role"] = field
            reports.append(report)
            grid = visualize.pair_grid([source[i] for i in _sample_indices(len(source), 8)], size=96)
            export.atomic_write_bytes(workdir / f"samples_{name.replace('@', '-')}.png", export.encode_png(grid))
            print(inspect.format_report(report))
    export.atomic_write_text(workdir / "data_report.json", json.dumps(reports, indent=2) + "\n")
    export.atomic_write_text(workdir / "data_report.md", markdown_table(reports))


def _sample_indices(n: int, k: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, min(n, k)).astype(int).tolist()))


def markdown_table(reports: list[dict]) -> str:
    lines = ["| dataset | role | layout | pairs | width px | mask coverage (mean) | errors | warnings |",
             "|---|---|---|---|---|---|---|---|"]
    for r in reports:
        width = "{}-{}".format(*r["image_size"]["width"]) if "image_size" in r else "-"
        cov = f"{r['mask_coverage']['mean']:.1%}" if "mask_coverage" in r else "-"
        lines.append(f"| {r['name']} | {r['role']} | {r['layout']} | {r['num_pairs']} | {width} | {cov} "
                     f"| {r['errors']} | {r['warnings']} |")
    return "\n".join(lines) + "\n"
