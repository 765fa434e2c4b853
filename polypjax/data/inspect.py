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
                   test_fraction: float = 0.1, split_seed: int = 0, image_scaling="full") -> dict:
    """Returns a JSON-ready report; `report["errors"]` > 0 means the folder is not usable as is.

    With `split`, only the pairs of that split (the seeded hash split of `FolderSource`) are read;
    problems with the file listing (unpaired or duplicate names) are reported for the whole folder.
    `progress=None`: a bar on a terminal for folders of `PROGRESS_MIN_PAIRS` pairs or more.
    Rules applied to many files (masks thresholded, images in a small part of their range) are
    reported once, as one warning each with a count (`report["rules_applied"]`), not per file.
    """
    root = pathlib.Path(root)
    problems: list[sources.Problem] = []
    report: dict = {"root": str(root), "layout": None, "num_pairs": 0, "rules_applied": []}
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
    sizes, coverage, thresholded, low_range = [], [], [], []
    for (_, image, mask), check in zip(pairs, _check_all(pairs, progress, desc=f"checking {root.name}",
                                                          image_scaling=image_scaling)):
        problems.extend(check.problems)
        if check.size is not None:
            sizes.append(check.size)
            coverage.append(check.coverage)
        if check.mask is not None and check.mask.thresholded:
            thresholded.append((mask, check.mask))
        if check.low_range is not None:
            low_range.append((image, check.low_range))
    report["rules_applied"] = [dataclasses.asdict(p) for p in
                               _thresholded_note(mask_dir, thresholded) + _low_range_note(image_dir, low_range,
                                                                                          image_scaling)]
    problems.extend(sources.Problem(**p) for p in report["rules_applied"])
    return _finish(report, problems, sizes, coverage)


def _thresholded_note(mask_dir, found) -> list[sources.Problem]:
    if not found:
        return []
    path, worst = max(found, key=lambda f: f[1].faint_share)
    lossy = sum(r.lossy for _, r in found)
    jpeg = f" ({lossy} of them JPEG)" if lossy else ""
    middle = (f", at most {max(r.middle_px for _, r in found if not r.lossy)} px in the middle band 64-191"
              if lossy < len(found) else "")
    return [sources.Problem("warning", str(mask_dir), (
        f"{len(found)} mask(s){jpeg} hold values besides 0 and 255 and were thresholded (pixels >= 128 "
        f"are polyp): faint pixels (1-127) at most {worst.faint_share:.2f} of a mask's polyp pixels "
        f"({path.name}){middle}"))]


def _low_range_note(image_dir, found, image_scaling) -> list[sources.Problem]:
    if not found:
        return []
    path, first = found[0]
    low, high = min(r.low for _, r in found), max(r.high for _, r in found)
    bits = max(1, int(high).bit_length())
    declared = sum(r.declared_max is not None for _, r in found)
    hint = f"config.data.image_scaling='{bits}-bit' if they hold {bits}-bit data"
    if declared:
        hint += f", or 'declared' for the range each file declares ({declared} of {len(found)} declare one)"
    return [sources.Problem("warning", str(image_dir), (
        f"{len(found)} image(s) of {first.bits}-bit use only values {low}-{high} (e.g. {path.name}): "
        f"with image_scaling='{image_scaling}' they decode to at most "
        f"{round(high * 255 / first.top)}/255, nearly black; set {hint}"))]


def _check_all(pairs, progress: bool | None, desc: str, image_scaling="full"):
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
                yield sources.check_pair(image, mask, image_scaling)
                bar.update()
            return
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for check in pool.map(lambda p: sources.check_pair(p[1], p[2], image_scaling), pairs):
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
