"""Checks every pair of a folder and reports its layout, sizes, mask coverage and problems.

The same scan serves `python -m polypjax.data DIR` and the check every task runs on its data
sources before it starts (`check.py`), so both find the same problems (`sources.check_pair`).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import sys

import numpy as np

from polypjax.data import sources

# Below this many pairs a progress bar would only flicker.
PROGRESS_MIN_PAIRS = 200


def inspect_folder(root: str | pathlib.Path, *, progress: bool | None = None, split: str = "all",
                   test_fraction: float = 0.1, split_seed: int = 0) -> dict:
    """Returns a JSON-ready report; `report["errors"]` > 0 means the folder is not usable as is.

    With `split`, only the pairs of that split (the seeded hash split of `FolderSource`) are read;
    problems with the file listing (unpaired or duplicate names) are reported for the whole folder.
    `progress=None`: a bar on a terminal for folders of `PROGRESS_MIN_PAIRS` pairs or more.
    """
    root = pathlib.Path(root)
    problems: list[sources.Problem] = []
    report: dict = {"root": str(root), "layout": None, "num_pairs": 0}
    try:
        layout, image_dir, mask_dir = sources.detect_layout(root)
        report.update(layout=layout, image_dir=str(image_dir), mask_dir=str(mask_dir))
        pairs, problems = sources.list_pairs(image_dir, mask_dir)
    except sources.DataError as e:  # the messages start with the folder they concern
        path, _, message = str(e).partition(": ")
        problems.append(sources.Problem("error", path, message))
        return _finish(report, problems, [], [])
    if split != "all":
        report["split"] = split
        pairs = [pairs[i] for i in sources.split_ids([s for s, _, _ in pairs], split, test_fraction, split_seed)]
    sizes, coverage = [], []
    for check in _check_all(pairs, progress, desc=f"checking {root.name}"):
        problems.extend(check.problems)
        if check.size is not None:
            sizes.append(check.size)
            coverage.append(check.coverage)
    return _finish(report, problems, sizes, coverage)


def _check_all(pairs, progress: bool | None, desc: str):
    """`check_pair` over `pairs`, in order; decoding releases the GIL, so threads run it in parallel."""
    from tqdm import tqdm
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(total=len(pairs), desc=desc, unit="pair", leave=False,
               disable=not progress or len(pairs) < PROGRESS_MIN_PAIRS)
    workers = min(8, os.cpu_count() or 1, max(1, len(pairs) // 16))
    try:
        if workers == 1:
            for _, image, mask in pairs:
                yield sources.check_pair(image, mask)
                bar.update()
            return
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for check in pool.map(lambda p: sources.check_pair(p[1], p[2]), pairs):
                yield check
                bar.update()
    finally:
        bar.close()


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
    split = f" ({report['split']} split)" if report.get("split") else ""
    lines = [f"{report['root']}{split}: layout {report['layout'] or 'unknown'}, "
             f"{report['num_pairs']} readable pairs"]
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
