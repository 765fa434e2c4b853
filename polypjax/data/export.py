"""Atomic, resumable writing of labelled pairs in the Kvasir-SEG layout.

`<out>/images/<id>.png`, `<out>/masks/<id>.png` (0/255) and `<out>/manifest.jsonl`. A pair counts
as written only once its manifest line is on disk, and that line is appended after both PNGs were
renamed into place; so a run killed at any moment leaves no half-written file under a final name,
and a restart skips exactly the pairs that are complete. The folder is read back by
`sources.FolderSource` like any downloaded dataset.
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile

import numpy as np


def atomic_write_bytes(path: pathlib.Path, data: bytes) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: pathlib.Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def encode_png(array: np.ndarray) -> bytes:
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class PairWriter:
    """Writes pairs to a folder; `done` holds the ids already complete (from an earlier run)."""

    def __init__(self, out_dir: str | pathlib.Path):
        self.out_dir = pathlib.Path(out_dir)
        self.image_dir = self.out_dir / "images"
        self.mask_dir = self.out_dir / "masks"
        self.manifest = self.out_dir / "manifest.jsonl"
        for d in (self.image_dir, self.mask_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.done = self._read_manifest()

    def _read_manifest(self) -> dict[str, dict]:
        done = {}
        if not self.manifest.exists():
            return done
        text = self.manifest.read_text()
        complete, _, torn = text.rpartition("\n")
        if torn:
            # A kill mid-append left a partial last line: drop it so the next append starts clean.
            atomic_write_text(self.manifest, complete + "\n" if complete else "")
        for line in complete.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (self.image_dir / f"{record['id']}.png").exists() and \
                    (self.mask_dir / f"{record['id']}.png").exists():
                done[record["id"]] = record
        return done

    def write(self, pair_id: str, image: np.ndarray, mask: np.ndarray, **metadata) -> None:
        image = np.asarray(image)
        mask = np.asarray(mask)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"{pair_id}: image must be uint8 [H,W,3], got {image.dtype} {image.shape}")
        if mask.shape != image.shape[:2]:
            raise ValueError(f"{pair_id}: mask shape {mask.shape} differs from image {image.shape[:2]}")
        atomic_write_bytes(self.image_dir / f"{pair_id}.png", encode_png(image))
        atomic_write_bytes(self.mask_dir / f"{pair_id}.png", encode_png((mask > 0).astype(np.uint8) * 255))
        record = {"id": pair_id, "height": int(mask.shape[0]), "width": int(mask.shape[1]),
                  "mask_fraction": float((mask > 0).mean()), **metadata}
        with open(self.manifest, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[pair_id] = record


def write_source(source, out_dir: str | pathlib.Path, *, progress: bool = True, desc: str | None = None) -> PairWriter:
    """Writes every pair of a source to `out_dir`, skipping those an earlier run completed."""
    writer = PairWriter(out_dir)
    indices = range(len(source))
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc=desc or f"writing {writer.out_dir.name}", unit="pair", disable=None)
    for i in indices:
        pair = source[i]
        if pair["id"] not in writer.done:
            writer.write(pair["id"], pair["image"], pair["mask"])
    return writer
