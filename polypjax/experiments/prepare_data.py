"""Task `prepare_data`: materialise and inspect the configured datasets.

Writes every phantom split named in `data.train`/`data.test` as a Kvasir-style folder under
`<workdir>/data/` (resumable), inspects all train/test sources, and writes `data_report.json`,
`data_report.md` and a PNG grid of samples per dataset; exits with an error (after writing the
report) when the report lists any.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np

from polypjax.data import catalog, export, inspect, phantom, sources, visualize


def data_sources(config) -> list:
    # Nothing is checked before the run: finding and reporting the problems is this task's job,
    # and it fails after writing its report when there are any.
    return []


def run(config, workdir: pathlib.Path) -> None:
    reports = []
    for field, split in (("train", "train"), ("test", "test")):
        for spec in catalog.split_specs(config.data[field]):
            name = catalog.display_name(spec, split)
            s = catalog.parse_spec(spec, split)
            if s.kind == "folder":  # inspected before a source is made: making one stops at an error
                report = inspect.inspect_folder(s.name, split=s.split, test_fraction=config.data.test_fraction,
                                                split_seed=config.data.split_seed)
                source = (catalog.make_source(spec, config.data, default_split=split, seed=config.seed)
                          if not report["errors"] else None)
            else:
                source = catalog.make_source(spec, config.data, default_split=split, seed=config.seed)
                if isinstance(source, phantom.PhantomSource):  # written out so any tool can read it
                    out = workdir / "data" / name.replace("@", "-")
                    export.write_source(source, out, desc=f"phantom {name}")
                    report = inspect.inspect_folder(out, progress=False)
                else:
                    report = {"root": name, "layout": "tfds", "num_pairs": len(source), "errors": 0,
                              "warnings": 0, "problems": []}
            report["name"] = name
            report["role"] = field
            reports.append(report)
            if source is not None:
                grid = visualize.pair_grid([source[i] for i in _sample_indices(len(source), 8)], size=96)
                export.atomic_write_bytes(workdir / f"samples_{name.replace('@', '-')}.png", export.encode_png(grid))
            print(inspect.format_report(report))
    export.atomic_write_text(workdir / "data_report.json", json.dumps(reports, indent=2) + "\n")
    export.atomic_write_text(workdir / "data_report.md", markdown_table(reports))
    bad = [r for r in reports if r["errors"]]
    if bad:
        first = next(p for p in bad[0]["problems"] if p["severity"] == "error")
        total = sum(r["errors"] for r in bad)
        raise sources.DataError(f"{total} data error(s) in {', '.join(r['name'] for r in bad)} (report: "
                                f"{workdir / 'data_report.md'}); first: {first['path']}: {first['message']}")


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
