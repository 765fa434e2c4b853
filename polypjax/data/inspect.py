"""Reads every pair of a folder and reports its layout, sizes, mask coverage and problems."""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from polypjax.data import sources


def inspect_folder(root: str | pathlib.Path, *, progress: bool = True) -> dict:
    """Returns a JSON-ready report; `report["errors"]` > 0 means the folder is not usable as is."""
    root = pathlib.Path(root)
    problems: list[sources.Problem] = []
    report: dict = {"root": str(root), "layout": None, "num_pairs": 0}
    try:
        layout, image_dir, mask_dir = sources.detect_layout(root)
    except sources.DataError as e:
        problems.append(sources.Problem("error", str(root), str(e).removeprefix(f"{root}: ")))
        return _finish(report, problems, [], [])
    report.update(layout=layout, image_dir=str(image_dir), mask_dir=str(mask_dir))
    pairs, problems = sources.list_pairs(image_dir, mask_dir)
    sizes, coverage = [], []
    iterator = pairs
    if progress:
        from tqdm import tqdm
        iterator = tqdm(pairs, desc=f"reading {root.name}", unit="pair", leave=False, disable=None)
    for stem, image_path, mask_path in iterator:
        try:
            pair = sources.load_pair(stem, image_path, mask_path)
        except sources.DataError as e:
            path, _, message = str(e).partition(": ")
            problems.append(sources.Problem("error", path, message))
            continue
        h, w = pair["mask"].shape
        sizes.append((w, h))
        fraction = float(pair["mask"].mean())
        coverage.append(fraction)
        if fraction == 0.0:
            problems.append(sources.Problem("warning", str(mask_path), "mask is empty (all zero)"))
    return _finish(report, problems, sizes, coverage)


def _finish(report, problems, sizes, coverage) -> dict:
    report["num_pairs"] = len(sizes)
    if sizes:
        w, h = np.array(sizes).T
        report["image_size"] = {"width": [int(w.min()), int(w.max())],
                                "height": [int(h.min()), int(h.max())]}
        c = np.array(coverage)
        report["mask_coverage"] = {"mean": float(c.mean()), "median": float(np.median(c)),
                                   "min": float(c.min()), "max": float(c.max()),
                                   "empty": int((c == 0).sum())}
    report["errors"] = sum(p.severity == "error" for p in problems)
    report["warnings"] = sum(p.severity == "warning" for p in problems)
    report["problems"] = [dataclasses.asdict(p) for p in problems]
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['root']}: layout {report['layout'] or 'unknown'}, {report['num_pairs']} readable pairs"]
    if "image_size" in report:
        s = report["image_size"]
        lines.append(f"  image size: width {s['width'][0]}-{s['width'][1]} px, "
                     f"height {s['height'][0]}-{s['height'][1]} px")
        c = report["mask_coverage"]
        lines.append(f"  mask coverage: mean {c['mean']:.1%}, median {c['median']:.1%}, "
                     f"range {c['min']:.1%}-{c['max']:.1%}, empty masks {c['empty']}")
    lines.append(f"  {report['errors']} error(s), {report['warnings']} warning(s)")
    for p in report["problems"]:
        lines.append(f"  {p['severity']}: {p['path']}: {p['message']}")
    return "\n".join(lines)
