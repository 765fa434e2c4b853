"""Builds the blinded review page (one self-contained HTML file) and its key.

`make_review` draws n/2 real and n - n/2 synthetic pairs (seeded), shuffles them, gives each a
random opaque id, and writes `review.html` (frames embedded as data URIs; no network access) and
`review_key.json` (truth and source files per id). Keep the key away from the raters.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.resources
import json
import pathlib
import secrets

import numpy as np

from polypjax.data.export import atomic_write_text
from polypjax.data.sources import DataError, FolderSource
from polypjax.review import frames
from polypjax.review.key import KEY_FORMAT, VERSION

PAGE_NAME = "review.html"
KEY_NAME = "review_key.json"


@dataclasses.dataclass(frozen=True)
class Review:
    page: pathlib.Path
    key: pathlib.Path
    page_id: str
    n_real: int
    n_synthetic: int
    size: int


def _draw(source: FolderSource, count: int, rng: np.random.Generator, role: str, n: int) -> list[int]:
    if count > len(source):
        raise DataError(f"{source.root}: n={n} needs {count} {role} pairs but the folder has only "
                        f"{len(source)}; lower --n")
    return sorted(int(i) for i in rng.choice(len(source), size=count, replace=False))


def _unique_ids(count: int) -> list[str]:
    ids: set[str] = set()
    while len(ids) < count:
        ids.add(secrets.token_hex(4))
    return list(ids)


def make_review(real_dir, synthetic_dir, out_dir, n: int = 30, seed: int = 0, show_masks: bool = False,
                *, size: int | None = None, n_synthetic: int | None = None, title: str | None = None,
                force: bool = False, progress: bool = False) -> Review:
    """Writes `out_dir/review.html` and `out_dir/review_key.json`; see the module docstring.

    The seed fixes which pairs are drawn and their order; page and item ids are random, so two
    pages never share a browser storage slot. An existing key is never overwritten unless `force`:
    answers to a page already handed out can only be scored with its key.
    """
    if n < 2:
        raise DataError(f"n must be at least 2 (one real, one synthetic), got {n}")
    n_synthetic = n - n // 2 if n_synthetic is None else int(n_synthetic)
    if not 0 <= n_synthetic <= n:
        raise DataError(f"n_synthetic must be in [0, {n}], got {n_synthetic}")
    n_real = n - n_synthetic
    if size is not None and not 16 <= size <= 1024:
        raise DataError(f"size must be in [16, 1024] px, got {size}")
    out_dir = pathlib.Path(out_dir)
    page_path, key_path = out_dir / PAGE_NAME, out_dir / KEY_NAME
    if key_path.exists() and not force:
        raise DataError(f"{key_path}: a review key already exists (answers to its page need it); "
                        "choose another output folder or pass --force")
    # JPEG frames decode at a reduced scale that still covers the largest page size.
    real = FolderSource(real_dir, decode_size=frames.MAX_SIZE)
    synthetic = FolderSource(synthetic_dir, decode_size=frames.MAX_SIZE)
    rng = np.random.default_rng(seed)
    drawn = [("real", real, i) for i in _draw(real, n_real, rng, "real", n)] + \
            [("synthetic", synthetic, i) for i in _draw(synthetic, n_synthetic, rng, "synthetic", n)]
    drawn = [drawn[j] for j in rng.permutation(len(drawn))]

    indices = range(len(drawn))
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc="reading frames", unit="frame", disable=None)
    pairs = [src[i] for _, src, i in (drawn[j] for j in indices)]
    side = frames.display_size(pairs, size)

    from polypjax.data.pipeline import resize_pair  # the training resize: frames look as models see them
    page_id = secrets.token_hex(8)
    item_ids = _unique_ids(len(drawn))
    page_items, key_items = [], []
    for item_id, (truth, src, i), pair in zip(item_ids, drawn, pairs):
        p = resize_pair(pair, side)
        page_items.append({"id": item_id, "src": frames.encode_frame(p["image"]),
                           "outline": frames.encode_outline(p["mask"]) if show_masks else None})
        image_path, mask_path = src.pair_paths(i)
        key_items.append({"id": item_id, "truth": truth, "image": str(image_path.resolve()),
                          "mask": str(mask_path.resolve())})

    data = {"page_id": page_id, "title": title or "Polyp image review", "size": side,
            "show_masks": bool(show_masks), "items": page_items}
    key = {"format": KEY_FORMAT, "version": VERSION, "page_id": page_id,
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "seed": int(seed), "n": n, "n_real": n_real, "n_synthetic": n_synthetic, "size": side,
           "show_masks": bool(show_masks), "real_dir": str(pathlib.Path(real_dir).resolve()),
           "synthetic_dir": str(pathlib.Path(synthetic_dir).resolve()), "page": PAGE_NAME,
           "items": key_items}
    # The key first: a page whose key was lost could never be scored.
    atomic_write_text(key_path, json.dumps(key, indent=1) + "\n")
    atomic_write_text(page_path, render_page(data))
    return Review(page_path, key_path, page_id, n_real, n_synthetic, side)


def render_page(data: dict) -> str:
    template = importlib.resources.files("polypjax.review").joinpath("page.html").read_text()
    # "</" inside a <script> element would end it early; JSON allows the escaped form.
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return template.replace("/*REVIEW_DATA*/null", blob, 1)
