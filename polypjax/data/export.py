"""Atomic, resumable writing of labelled pairs in the Kvasir-SEG layout.

`<out>/images/<id>.png`, `<out>/masks/<id>.png` (0/255) and `<out>/manifest.jsonl`. A pair counts
as written only once its manifest line is on disk, and that line is appended after both PNGs were
renamed into place; so a run killed at any moment leaves no half-written file under a final name,
and a restart skips exactly the pairs that are complete. The folder is read back by
`sources.FolderSource` like any downloaded dataset.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import tempfile
import threading

import numpy as np

from polypjax import faults


def atomic_write_bytes(path: pathlib.Path, data: bytes) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with faults.writing(path):
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


PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk every complete PNG ends with


def png_complete(path: pathlib.Path) -> bool:
    """Cheap check that a PNG was not truncated: it exists and ends with its IEND chunk."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < 8 + len(PNG_END):
                return False
            f.seek(-len(PNG_END), os.SEEK_END)
            return f.read() == PNG_END
    except OSError:
        return False


def manifest_paths(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """`manifest.jsonl` and the per-process `manifest-<k>.jsonl` of a multi-process run."""
    out_dir = pathlib.Path(out_dir)
    return sorted(p for p in out_dir.glob("manifest*.jsonl") if p.is_file())


def read_manifest_records(out_dir: pathlib.Path) -> list[dict]:
    """Every valid record of every manifest of a folder; bad lines are skipped with a warning."""
    records = []
    for path in manifest_paths(out_dir):
        complete, _, _ = path.read_text().rpartition("\n")  # a torn last line is not a record
        for n, line in enumerate(complete.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                logging.warning("%s:%d: skipped a manifest line that is not a JSON object with an id", path, n)
                continue
            records.append(record)
    return records


class PairWriter:
    """Writes pairs to a folder; `done` holds the ids already complete (from an earlier run).

    `manifest` names this writer's manifest (one per process in a multi-process run); `done` is
    read from all of them, and an entry counts only if both PNGs are complete on disk, so a file
    damaged under its final name is regenerated. `write` is safe to call from several threads.
    """

    def __init__(self, out_dir: str | pathlib.Path, manifest: str = "manifest.jsonl"):
        self.out_dir = pathlib.Path(out_dir)
        self.image_dir = self.out_dir / "images"
        self.mask_dir = self.out_dir / "masks"
        self.manifest = self.out_dir / manifest
        for d in (self.image_dir, self.mask_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._trim_torn_line()
        self.done = self._read_manifest()

    def _trim_torn_line(self) -> None:
        if not self.manifest.exists():
            return
        text = self.manifest.read_text()
        complete, _, torn = text.rpartition("\n")
        if torn:
            # A kill mid-append left a partial last line: drop it so the next append starts clean.
            atomic_write_text(self.manifest, complete + "\n" if complete else "")

    def _read_manifest(self) -> dict[str, dict]:
        done = {}
        for record in read_manifest_records(self.out_dir):
            pid = record["id"]
            image, mask = self.image_dir / f"{pid}.png", self.mask_dir / f"{pid}.png"
            if png_complete(image) and png_complete(mask):
                done[pid] = record
            elif image.exists() or mask.exists():
                logging.warning("%s: %s has a damaged or missing PNG; it will be written again", self.out_dir, pid)
        return done

    def write(self, pair_id: str, image: np.ndarray, mask: np.ndarray, **metadata) -> dict:
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
        with self._lock:
            with faults.writing(self.manifest), open(self.manifest, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.done[pair_id] = record
        return record


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
