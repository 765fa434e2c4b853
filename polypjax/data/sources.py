"""Random-access sources of (image, mask) pairs.

Every source has `len()` and `[i] -> {"image": uint8 [H,W,3], "mask": uint8 [H,W] in {0,1},
"id": str}` so grain can read it by index. Folder sources read the published layouts as they are
downloaded (no conversion step):

- Kvasir-SEG / HyperKvasir `segmented-images`, CVC-ClinicDB's PraNet PNG release and the folders
  polypjax writes: `images/<stem>.<ext>` + `masks/<stem>.<ext>`;
- CVC-ClinicDB original release: `Original/<n>.tif` + `Ground Truth/<n>.tif`.

Problems are reported with the file they concern; `inspect_folder` collects all of them, the
sources raise `DataError` on the first one they meet.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Iterable, Sequence

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")

# (layout name, image folder, mask folder); folder names are matched case-insensitively.
LAYOUTS = (
    ("kvasir", "images", "masks"),
    ("cvc-clinicdb", "original", "ground truth"),
)


class DataError(ValueError):
    """A problem with input data; the message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Problem:
    severity: str  # "error" or "warning"
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}"


def _is_image_file(p: pathlib.Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _find_child(root: pathlib.Path, name: str) -> pathlib.Path | None:
    for child in root.iterdir():
        if child.is_dir() and child.name.lower() == name:
            return child
    return None


def detect_layout(root: str | pathlib.Path) -> tuple[str, pathlib.Path, pathlib.Path]:
    """Returns (layout, image_dir, mask_dir); looks one level down when the root wraps one folder.

    Archives unpack to a wrapping folder (`kvasir-seg.zip` -> `Kvasir-SEG/`), so a root whose only
    subfolder holds a known layout is accepted as well.
    """
    root = pathlib.Path(root)
    if not root.exists():
        raise DataError(f"{root}: folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    found = _layout_in(root)
    if found is not None:
        return found
    nested = [f for f in (_layout_in(c) for c in sorted(root.iterdir()) if c.is_dir()) if f]
    if len(nested) == 1:
        return nested[0]
    if len(nested) > 1:
        raise DataError(f"{root}: several datasets inside ({', '.join(str(f[1].parent) for f in nested)}); "
                        "point at one of them")
    expected = " or ".join(f"'{i}/' + '{m}/'" for _, i, m in LAYOUTS)
    raise DataError(f"{root}: no known layout found; expected subfolders {expected} "
                    "(Kvasir-SEG, CVC-ClinicDB, or a polypjax-generated folder)")


def _layout_in(base: pathlib.Path):
    for name, image_name, mask_name in LAYOUTS:
        image_dir, mask_dir = _find_child(base, image_name), _find_child(base, mask_name)
        if image_dir is not None and mask_dir is not None:
            return name, image_dir, mask_dir
    return None


def list_pairs(image_dir: pathlib.Path, mask_dir: pathlib.Path
               ) -> tuple[list[tuple[str, pathlib.Path, pathlib.Path]], list[Problem]]:
    """Matches images and masks by file stem; unmatched files become problems."""
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if _is_image_file(p)}
    masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if _is_image_file(p)}
    problems = []
    for stem in sorted(images.keys() - masks.keys()):
        problems.append(Problem("error", str(images[stem]), f"image has no mask in {mask_dir}"))
    for stem in sorted(masks.keys() - images.keys()):
        problems.append(Problem("error", str(masks[stem]), f"mask has no image in {image_dir}"))
    pairs = [(stem, images[stem], masks[stem]) for stem in sorted(images.keys() & masks.keys(),
                                                                    key=_natural_key)]
    if not images and not masks:
        problems.append(Problem("error", str(image_dir.parent),
                                f"empty dataset: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                                f"in {image_dir.name}/ or {mask_dir.name}/"))
    return pairs, problems


def _natural_key(stem: str):
    # CVC-ClinicDB numbers its frames 1..612: sort 2 before 10.
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def read_image_file(path: pathlib.Path, min_size: int | None = None) -> np.ndarray:
    """Decodes an image file to uint8 (H,W) or (H,W,C); DataError naming the file if it fails.

    With `min_size`, a JPEG is decoded at the smallest power-of-two reduction (libjpeg's DCT
    scaling) whose shorter side stays >= min_size: a 1920 px Kvasir frame trained at 256 px then
    decodes several times faster. Image and mask of a pair share a size, so they shrink alike.
    """
    path = pathlib.Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            # PIL cannot read CVC-ClinicDB's RGB TIFFs; tifffile can.
            import tifffile
            array = tifffile.imread(path)
        else:
            from PIL import Image
            with Image.open(path) as im:
                if min_size and im.format == "JPEG":
                    w, h = im.size
                    scale = min(w, h) / min_size
                    im.draft(im.mode, (int(np.ceil(w / scale)), int(np.ceil(h / scale))))
                im.load()
                if im.mode not in ("L", "RGB"):
                    im = im.convert("RGBA" if "A" in im.mode else "RGB")
                array = np.asarray(im)
    except Exception as e:  # PIL and tifffile raise many types for corrupt files.
        raise DataError(f"{path}: unreadable or corrupt image file ({type(e).__name__}: {e})") from e
    if array.dtype != np.uint8:
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        elif np.issubdtype(array.dtype, np.integer) and array.max(initial=0) > 255:
            array = (array / (np.iinfo(array.dtype).max / 255.0)).round().astype(np.uint8)
        else:
            array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # planar TIFF
    if array.ndim not in (2, 3) or min(array.shape[:2]) == 0:
        raise DataError(f"{path}: unexpected image shape {array.shape}")
    return array


def to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=-1)
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    return array[..., :3]


def to_binary_mask(array: np.ndarray) -> np.ndarray:
    """Collapses a mask to one channel and thresholds it to {0,1}.

    JPEG masks carry compression noise around 0 and 255, hence the threshold at 127; masks stored
    as 0/1 (max value 1) are already binary and kept as they are.
    """
    if array.ndim == 3:
        array = array[..., :3].max(axis=-1)
    if array.max(initial=0) <= 1:
        return (array > 0).astype(np.uint8)
    return (array > 127).astype(np.uint8)


def load_pair(stem: str, image_path: pathlib.Path, mask_path: pathlib.Path, min_size: int | None = None) -> dict:
    image = to_rgb(read_image_file(image_path, min_size))
    mask = to_binary_mask(read_image_file(mask_path, min_size))
    if min_size and image.shape[:2] != mask.shape:  # e.g. a JPEG image with a PNG mask: no draft
        image, mask = to_rgb(read_image_file(image_path)), to_binary_mask(read_image_file(mask_path))
    if image.shape[:2] != mask.shape:
        raise DataError(f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image "
                        f"size {image.shape[1]}x{image.shape[0]} ({image_path.name})")
    return {"image": np.ascontiguousarray(image), "mask": mask, "id": stem}


def split_ids(ids: Sequence[str], split: str, test_fraction: float, seed: int) -> list[int]:
    """Deterministic train/test split by a seeded hash of each id.

    Hashing the id (not its position) keeps every pair on the same side when files are added or
    removed, so a test set never leaks into training after the folder changes.
    """
    if split == "all":
        return list(range(len(ids)))
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}: expected 'train', 'test' or 'all'")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    keep = []
    for i, name in enumerate(ids):
        h = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        in_test = int.from_bytes(h[:8], "little") / 2.0**64 < test_fraction
        if in_test == (split == "test"):
            keep.append(i)
    return keep


class FolderSource:
    """Pairs from a folder in a Kvasir-SEG or CVC-ClinicDB layout (see module docstring)."""

    def __init__(self, root: str | pathlib.Path, *, split: str = "all", test_fraction: float = 0.1,
                 split_seed: int = 0, allow_unpaired: bool = False, decode_size: int | None = None):
        self.root = pathlib.Path(root)
        self.layout, self.image_dir, self.mask_dir = detect_layout(self.root)
        pairs, problems = list_pairs(self.image_dir, self.mask_dir)
        errors = [p for p in problems if p.severity == "error"]
        if not pairs:
            raise DataError(errors[0].path + ": " + errors[0].message if errors else
                            f"{self.root}: no image/mask pairs")
        if errors and not allow_unpaired:
            more = f" (and {len(errors) - 1} more; run `python -m polypjax.data {self.root}`)" \
                if len(errors) > 1 else ""
            raise DataError(f"{errors[0]}{more}")
        keep = split_ids([s for s, _, _ in pairs], split, test_fraction, split_seed)
        self._pairs = [pairs[i] for i in keep]
        self.split = split
        self.decode_size = decode_size  # pairs are only needed at this size or larger (JPEG draft)
        self.name = f"{self.root.name}/{split}"

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self._pairs):
            raise IndexError(f"index {index} out of range for {self.name} ({len(self)} pairs)")
        return load_pair(*self._pairs[index], min_size=self.decode_size)

    def pair_paths(self, index: int) -> tuple[pathlib.Path, pathlib.Path]:
        """(image file, mask file) of pair `index`, e.g. for a record of where a pair came from."""
        _, image_path, mask_path = self._pairs[index]
        return image_path, mask_path

    def __repr__(self) -> str:
        return f"FolderSource({str(self.root)!r}, layout={self.layout!r}, split={self.split!r}, n={len(self)})"


class SubsetSource:
    """A fixed selection of another source's indices (low-data experiments, per-process shards)."""

    def __init__(self, source, indices: Iterable[int], name: str | None = None):
        self.source = source
        self.indices = np.asarray(list(indices), dtype=np.int64)
        self.name = name or f"{getattr(source, 'name', 'source')}[{len(self.indices)}]"

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.source[int(self.indices[index])]


def random_subset(source, n: int, seed: int) -> SubsetSource:
    if not 0 < n <= len(source):
        raise DataError(f"subset size {n} must be in [1, {len(source)}] for {getattr(source, 'name', source)}")
    idx = np.sort(np.random.default_rng(seed).choice(len(source), size=n, replace=False))
    return SubsetSource(source, idx, name=f"{getattr(source, 'name', 'source')}[subset {n}, seed {seed}]")
