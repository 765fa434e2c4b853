"""Random-access sources of (image, mask) pairs.

Every source has `len()` and `[i] -> {"image": uint8 [H,W,3], "mask": uint8 [H,W] in {0,1},
"id": str}` so grain can read it by index. Folder sources read the published layouts as they are
downloaded (no conversion step):

- Kvasir-SEG / HyperKvasir `segmented-images`, CVC-ClinicDB's PraNet PNG release and the folders
  polypjax writes: `images/<stem>.<ext>` + `masks/<stem>.<ext>`;
- CVC-ClinicDB original release: `Original/<n>.tif` + `Ground Truth/<n>.tif`.

Problems are reported with the file they concern. `check_pair` is the one per-pair check: the
inspector (`inspect.inspect_folder`) and the pre-run check of every task (`check.py`) collect its
problems over a folder; the sources raise `DataError` on the first one they meet, through the
same decoding rules (`read_array`, `to_uint8`, `read_mask_values`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import re
import unicodedata
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


def _children(folder: pathlib.Path) -> list[pathlib.Path]:
    """A folder's entries, sorted; DataError naming it when it cannot be listed (permissions, or
    removed meanwhile)."""
    try:
        return sorted(folder.iterdir())
    except OSError as e:
        raise DataError(f"{folder}: cannot list this folder ({e.strerror or e})") from e


def _find_child(root: pathlib.Path, name: str) -> pathlib.Path | None:
    for child in _children(root):
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
    nested = [f for f in (_layout_in(c) for c in _children(root) if c.is_dir()) if f]
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


def _index_folder(folder: pathlib.Path, problems: list[Problem]) -> dict[str, pathlib.Path]:
    """{NFC-normalised stem: file}; two files with one stem (`a.png` beside `a.jpg`) are an error.

    Names are compared in Unicode NFC form: macOS writes NFD (`e` + combining accent), most other
    systems NFC, so one name can reach a folder in either spelling.
    """
    by_stem: dict[str, list[pathlib.Path]] = {}
    for p in _children(folder):
        if _is_image_file(p):
            by_stem.setdefault(unicodedata.normalize("NFC", p.stem), []).append(p)
    out = {}
    for stem, paths in by_stem.items():
        if len(paths) > 1:
            problems.append(Problem("error", str(paths[0]), f"{len(paths)} files share the name {stem!r} "
                                    f"({', '.join(p.name for p in paths)}): keep one"))
        else:
            out[stem] = paths[0]
    return out


def list_pairs(image_dir: pathlib.Path, mask_dir: pathlib.Path
               ) -> tuple[list[tuple[str, pathlib.Path, pathlib.Path]], list[Problem]]:
    """Matches images and masks by file stem (NFC-normalised); unmatched files become problems."""
    problems: list[Problem] = []
    images = _index_folder(image_dir, problems)
    masks = _index_folder(mask_dir, problems)
    for stem in sorted(images.keys() - masks.keys()):
        problems.append(Problem("error", str(images[stem]), f"image has no mask in {mask_dir}"))
    for stem in sorted(masks.keys() - images.keys()):
        problems.append(Problem("error", str(masks[stem]), f"mask has no image in {image_dir}"))
    pairs = [(stem, images[stem], masks[stem]) for stem in sorted(images.keys() & masks.keys(),
                                                                    key=_natural_key)]
    for stem, image, mask in pairs:
        if image.stem != mask.stem:
            problems.append(Problem("warning", str(image), f"paired with mask {mask.name!r}, the same name in "
                                    "another Unicode spelling (NFC/NFD); names are compared in NFC form"))
    if not images and not masks and not problems:
        problems.append(Problem("error", str(image_dir.parent),
                                f"empty dataset: no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                                f"in {image_dir.name}/ or {mask_dir.name}/"))
    return pairs, problems


def _natural_key(stem: str):
    # CVC-ClinicDB numbers its frames 1..612: sort 2 before 10.
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


# --------------------------------------------------------------------------- decoding rules
#
# Shape: H x W (gray), H x W x C or planar C x H x W with C = 1 (gray), 3 (RGB) or 4 (RGBA);
# anything else (2 channels, stacks of pages) is not an image. At most Image.MAX_IMAGE_PIXELS
# pixels, checked from the header before decoding, for TIFF as for the formats Pillow reads.
# Values to uint8 (`to_uint8`): bool -> 0/255; unsigned and signed integers are scaled from their
# type's full range [0, max] (16-bit: x * 255 / 65535, negative values clip to 0), never by the
# file's own maximum; floats are taken as [0, 1] (clipped) and scaled by 255. Pillow's 32-bit
# mode "I" (how it may open a 16-bit PNG) is read as 16-bit.
#
# Scaling (`config.data.image_scaling`, `SCALINGS`): 12-bit sensor data is often stored in 16-bit
# containers and decodes nearly black under the full-range rule. "full" (the default) keeps the
# rule; "declared" scales from the range the file declares (a TIFF's BitsPerSample below its
# container or its MaxSampleValue tag, a PNG's sBIT chunk) and from the full range where it
# declares none; "N-bit" (e.g. "12-bit") scales every file from [0, 2^N - 1]. Values above the
# chosen top clip to 255. `check_pair` warns about images that use a small part of their range.

LOSSY_FORMATS = ("JPEG", "MPO")

_PIL_CHANNELS = {"1": 1, "L": 1, "I": 1, "F": 1, "RGB": 3, "RGBA": 4, "LA": 4, "PA": 4, "RGBa": 4, "La": 4}


@dataclasses.dataclass(frozen=True)
class Header:
    height: int
    width: int
    channels: int
    dtype: str
    format: str
    declared_max: int | None = None  # the largest value the file says it holds, below its type's maximum

    @property
    def lossy(self) -> bool:
        return self.format in LOSSY_FORMATS


def _is_tiff(path: pathlib.Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff")


def image_layout(shape: Sequence[int], path) -> tuple[int, int, int, bool]:
    """(height, width, channels, planar) of an array shape, or DataError if it cannot be an image."""
    from PIL import Image
    shape = tuple(int(s) for s in shape)
    planar = False
    if len(shape) == 2:
        (h, w), c = shape, 1
    elif len(shape) == 3 and shape[-1] in (1, 3, 4):
        h, w, c = shape
    elif len(shape) == 3 and shape[0] in (1, 3, 4):
        (c, h, w), planar = shape, True
    else:
        what = f"{shape[-1]} channels" if len(shape) == 3 else f"{len(shape)} dimensions"
        raise DataError(f"{path}: array of shape {shape} ({what}) is not an image; expected height x width "
                        "with 1 (gray), 3 (RGB) or 4 (RGBA) channels")
    if min(h, w) == 0:
        raise DataError(f"{path}: empty image of shape {shape}")
    limit = Image.MAX_IMAGE_PIXELS
    if limit and h * w > limit:
        raise DataError(f"{path}: {w}x{h} px is more than the limit of {limit} pixels "
                        "(PIL.Image.MAX_IMAGE_PIXELS, a guard against decompression bombs)")
    return h, w, c, planar


def _pil_mode_channels(im) -> int:
    if im.mode.startswith("I;16") or im.mode in _PIL_CHANNELS:
        return _PIL_CHANNELS.get(im.mode, 1)
    return 4 if "transparency" in im.info else 3  # P, CMYK, YCbCr, ... convert to RGB(A)


def read_header(path: pathlib.Path) -> Header:
    """Size, channels, dtype and format from the file header, without decoding pixels."""
    path = pathlib.Path(path)
    try:
        if _is_tiff(path):
            import tifffile
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, dtype = series.shape, np.dtype(series.dtype)
                declared = _tiff_declared_max(tif.pages[0], dtype)
            h, w, c, _ = image_layout(shape, path)
            _check_dtype(dtype, path)
            return Header(h, w, c, dtype.name, "TIFF", declared)
        from PIL import Image
        with Image.open(path) as im:
            c = _pil_mode_channels(im)
            h, w, _, _ = image_layout((im.height, im.width, c), path)
            dtype = "uint16" if im.mode.startswith("I") else "float32" if im.mode == "F" else "uint8"
            declared = _png_declared_max(path) if dtype == "uint16" and im.format == "PNG" else None
            return Header(h, w, c, dtype, im.format or "", declared)
    except DataError:
        raise
    except (FileNotFoundError, PermissionError) as e:  # the file is gone or closed to us, not corrupt
        raise DataError(f"{path}: cannot be read ({e.strerror})") from e
    except Exception as e:  # PIL and tifffile raise many types for corrupt files.
        raise DataError(f"{path}: unreadable or corrupt image file ({type(e).__name__}: {e})") from e


def _tiff_declared_max(page, dtype: np.dtype) -> int | None:
    if not np.issubdtype(dtype, np.integer):
        return None
    top = int(np.iinfo(dtype).max)
    bits = page.bitspersample  # tifffile unpacks 10/12/14-bit samples into a wider type
    declared = 2 ** bits - 1 if 0 < bits < dtype.itemsize * 8 else None
    tag = page.tags.get("MaxSampleValue")
    if tag is not None:
        value = max(np.atleast_1d(tag.value).tolist())
        declared = min(declared or top, int(value))
    return declared if declared is not None and 0 < declared < top else None


def _png_declared_max(path: pathlib.Path) -> int | None:
    """A 16-bit PNG's sBIT chunk (significant bits per channel), which Pillow does not expose."""
    import struct
    with open(path, "rb") as f:
        f.read(8)  # signature
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND"):
                return None
            body = f.read(length)
            f.read(4)  # CRC
            if kind == b"sBIT" and body:
                bits = max(body)
                return 2 ** bits - 1 if 0 < bits < 16 else None


SCALINGS = ("full", "declared", "N-bit (e.g. 12-bit)")


def parse_scaling(value) -> str | int:
    """`config.data.image_scaling` -> "full", "declared" or a bit count; ValueError when it is none."""
    text = str(value).strip().lower()
    if text in ("full", "declared"):
        return text
    match = re.fullmatch(r"(\d+)-?bits?", text)
    if match and 1 <= int(match.group(1)) <= 32:
        return int(match.group(1))
    raise ValueError(f"{value!r} is not an image scaling: expected one of {', '.join(SCALINGS)}")


def scaling_top(dtype, header: Header | None, scaling="full") -> int | None:
    """The integer value that decodes to 255 under `scaling` (None: not an integer type)."""
    dtype = np.dtype(dtype)
    if dtype == bool or not np.issubdtype(dtype, np.integer):
        return None
    top = int(np.iinfo(dtype).max)
    rule = parse_scaling(scaling)
    if rule == "declared" and header is not None and header.declared_max:
        return header.declared_max
    if isinstance(rule, int):
        return min(top, 2 ** rule - 1)
    return top


def _check_dtype(dtype: np.dtype, path) -> None:
    if not (dtype == bool or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DataError(f"{path}: pixel type {dtype} is not an image type (bool, integer or float)")


def read_array(path: pathlib.Path, min_size: int | None = None) -> tuple[np.ndarray, Header]:
    """Decodes a file to its native dtype as (H,W) or (H,W,C), C in {3, 4}; DataError naming the file.

    With `min_size`, a JPEG is decoded at the smallest power-of-two reduction (libjpeg's DCT
    scaling) whose shorter side stays >= min_size: a 1920 px Kvasir frame trained at 256 px then
    decodes several times faster. Image and mask of a pair share a size, so they shrink alike.
    """
    path = pathlib.Path(path)
    header = read_header(path)  # shape and pixel limit checked before any pixel is decoded
    try:
        if _is_tiff(path):
            # PIL cannot read CVC-ClinicDB's RGB TIFFs; tifffile can.
            import tifffile
            array = tifffile.imread(path)
            if image_layout(array.shape, path)[3]:
                array = np.moveaxis(array, 0, -1)
        else:
            from PIL import Image
            with Image.open(path) as im:
                if min_size and im.format == "JPEG":
                    w, h = im.size
                    scale = min(w, h) / min_size
                    im.draft(im.mode, (int(np.ceil(w / scale)), int(np.ceil(h / scale))))
                im.load()
                if im.mode == "I":
                    array = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
                elif im.mode.startswith("I;16"):
                    array = np.asarray(im).astype(np.uint16)
                elif im.mode == "1":
                    array = np.asarray(im.convert("L"))
                elif im.mode in ("L", "RGB", "RGBA", "F"):
                    array = np.asarray(im)
                else:
                    array = np.asarray(im.convert("RGBA" if _pil_mode_channels(im) == 4 else "RGB"))
    except (FileNotFoundError, PermissionError) as e:  # removed or closed between header and pixels
        raise DataError(f"{path}: cannot be read ({e.strerror})") from e
    except Exception as e:  # PIL and tifffile raise many types for corrupt files.
        raise DataError(f"{path}: unreadable or corrupt image file ({type(e).__name__}: {e})") from e
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array, header


def to_uint8(array: np.ndarray, top: int | None = None) -> np.ndarray:
    """The one value rule for every bit depth (see the comment above `Header`); `top`: the integer
    value that maps to 255 (default: the type's maximum)."""
    if array.dtype == np.uint8 and top in (None, 255):
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        top = top or np.iinfo(array.dtype).max
        return np.round(np.clip(array, 0, top) * (255.0 / top)).astype(np.uint8)
    return np.round(np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0) * 255.0).astype(np.uint8)


def read_image_file(path: pathlib.Path, min_size: int | None = None, scaling="full") -> np.ndarray:
    """Decodes an image file to uint8 (H,W) or (H,W,C) by the rules above."""
    array, header = read_array(path, min_size)
    return to_uint8(array, scaling_top(array.dtype, header, scaling))


def to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=-1)
    return array[..., :3]  # RGBA frames: the alpha channel is dropped


def _value_counts(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if a.dtype in (np.uint8, np.uint16):  # bincount is linear, unique sorts
        counts = np.bincount(a.ravel(), minlength=2)
        values = np.flatnonzero(counts)
        return values.astype(a.dtype), counts[values]
    return np.unique(a, return_counts=True)


@dataclasses.dataclass(frozen=True)
class MaskReading:
    """A decoded mask and what the label rule did to it (see `read_mask_values`)."""
    mask: np.ndarray  # uint8 {0, 1}
    thresholded: bool = False  # held values besides 0 and one label value: read as >= half range
    faint_share: float = 0.0  # faint pixels (1-127 on 8 bits) per pixel read as polyp
    middle_px: int = 0  # pixels in the middle band (64-191 on 8 bits)
    lossy: bool = False  # a JPEG mask: thresholded without the band test


# The nearly-binary rule, in fractions of the range so that 16-bit masks scale with it: published
# masks (CVC-ClinicDB's original TIFFs) hold 0 and 255 plus faint anti-aliasing values; a mask is
# thresholded when its faint pixels do not outnumber its label pixels and almost none lie in the
# middle band, where a second class or a soft mask would put them.
MIDDLE_BAND_MAX_SHARE = 0.01


def _mask_channel(a: np.ndarray) -> np.ndarray:
    if a.ndim == 3:
        rgb = a[..., :3]
        if a.shape[-1] == 4 and not rgb.any() and a[..., 3].min() != a[..., 3].max():
            return a[..., 3]
        return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
    return a


def read_mask_values(array: np.ndarray, path="mask", lossy: bool = False) -> MaskReading:
    """A decoded mask (native dtype) -> uint8 {0,1} and how it was read; DataError when ambiguous.

    Channels: the largest of R, G, B; a mask drawn only in the alpha channel (RGB all zero, alpha
    not constant) is that alpha channel. Labels: a clean mask holds 0 and one foreground value,
    1, 255 or its type's maximum (65535 for 16-bit, True, 1.0), and is read as it is. Any other mask
    is thresholded at half its range (8-bit: pixels >= 128 are polyp) when it is nearly binary: its
    faint pixels (1-127) do not outnumber those >= 128 and at most 1 % of its non-zero pixels lie in
    the middle band 64-191. Otherwise (0/2, 0/100, 0/1 with a stray 255, class maps) it is refused
    with the values found. A lossy (JPEG) mask carries compression noise around 0 and 255, so it is
    thresholded at >= 128 without the band test.
    """
    a = _mask_channel(array)
    if lossy:
        a = to_uint8(a)
        top = int(a.max(initial=0))
        if 0 < top <= 127:
            raise DataError(f"{path}: JPEG mask values go up to {top}, none above 127 (lossy masks are "
                            "thresholded at >= 128, so it would be empty); store masks as 0/255")
        mask = (a >= 128).astype(np.uint8)
        faint = int(np.count_nonzero((a > 0) & (a < 128)))
        return MaskReading(mask, bool(faint) or bool(np.count_nonzero(a[a >= 128] != 255)),
                           faint / max(1, int(mask.sum())), int(np.count_nonzero((a >= 64) & (a < 192))), True)
    values, counts = _value_counts(a)
    labels = [v for v in values.tolist() if v != 0]
    allowed = {1, 255}
    if np.issubdtype(a.dtype, np.integer):
        allowed.add(int(np.iinfo(a.dtype).max))
    if not labels or (len(labels) == 1 and labels[0] in allowed):
        return MaskReading((a != 0).astype(np.uint8))
    reading = _nearly_binary(a, values, counts)
    if reading is not None:
        return reading
    found = ", ".join(f"{v:g} ({c} px)" for v, c in zip(values.tolist()[:8], counts.tolist()[:8]))
    more = f", ... ({len(values)} values)" if len(values) > 8 else ""
    raise DataError(f"{path}: mask values {found}{more} are not binary labels: a mask holds 0 and one of "
                    "1, 255 or 65535 (16-bit), or is nearly binary (pixels >= 128 are polyp when the faint "
                    "ones, 1-127, do not outnumber them and at most 1% of non-zero pixels lie in 64-191)")


def _nearly_binary(a: np.ndarray, values: np.ndarray, counts: np.ndarray) -> MaskReading | None:
    if a.dtype == bool:
        return None
    if not np.issubdtype(a.dtype, np.integer):  # floats are [0, 1]: judged on the 8-bit scale
        a = to_uint8(a)
        values, counts = _value_counts(a)
    span = float(np.iinfo(a.dtype).max) + 1.0  # 256 for 8 bits: half 128, band 64-191
    v = values.astype(np.float64)
    high = int(counts[v >= span / 2].sum())
    faint = int(counts[(v > 0) & (v < span / 2)].sum())
    middle = int(counts[(v >= span / 4) & (v < 3 * span / 4)].sum())
    if high == 0 or faint > high or middle > MIDDLE_BAND_MAX_SHARE * (high + faint):
        return None
    return MaskReading((a >= span / 2).astype(np.uint8), True, faint / high, middle)


def to_binary_mask(array: np.ndarray, path="mask", lossy: bool = False) -> np.ndarray:
    """`read_mask_values`' mask alone."""
    return read_mask_values(array, path, lossy).mask


def read_mask_file(path: pathlib.Path, min_size: int | None = None) -> np.ndarray:
    array, header = read_array(path, min_size)
    return to_binary_mask(array, path, lossy=header.lossy)


def load_pair(stem: str, image_path: pathlib.Path, mask_path: pathlib.Path, min_size: int | None = None,
              scaling="full") -> dict:
    image = to_rgb(read_image_file(image_path, min_size, scaling))
    mask = read_mask_file(mask_path, min_size)
    if min_size and image.shape[:2] != mask.shape:  # e.g. a JPEG image with a PNG mask: no draft
        image, mask = to_rgb(read_image_file(image_path, scaling=scaling)), read_mask_file(mask_path)
    if image.shape[:2] != mask.shape:
        raise DataError(f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image "
                        f"size {image.shape[1]}x{image.shape[0]} ({image_path.name})")
    return {"image": np.ascontiguousarray(image), "mask": mask, "id": stem}


# An image whose brightest value decodes below this (of 255) under the chosen scaling uses a small
# part of its range: 12-bit data in a 16-bit container decodes to at most 16.
LOW_RANGE_BELOW = 64


@dataclasses.dataclass(frozen=True)
class ImageRange:
    """The values an integer image of more than 8 bits uses, when they decode nearly black."""
    low: int
    high: int
    top: int  # the value that decodes to 255 under the scaling used
    bits: int  # the container's bits
    declared_max: int | None


@dataclasses.dataclass(frozen=True)
class PairCheck:
    problems: tuple[Problem, ...]
    size: tuple[int, int] | None = None  # (width, height) when the pair is usable
    coverage: float | None = None  # mask foreground fraction
    mask: MaskReading | None = None  # how the mask was read (`mask.mask` is dropped to save memory)
    low_range: ImageRange | None = None


def _problem(e: DataError) -> Problem:
    path, _, message = str(e).partition(": ")
    return Problem("error", path, message)


def _low_range(array: np.ndarray, header: Header, scaling) -> ImageRange | None:
    top = scaling_top(array.dtype, header, scaling)
    if top is None or array.dtype.itemsize == 1 or array.size == 0:
        return None
    high = int(array.max())
    if high * 255.0 / top >= LOW_RANGE_BELOW:
        return None
    return ImageRange(int(max(0, array.min())), high, top, array.dtype.itemsize * 8, header.declared_max)


def check_pair(image_path: pathlib.Path, mask_path: pathlib.Path, scaling="full") -> PairCheck:
    """Every check of one pair that the readers apply, without decoding the image at full size.

    The image is read from its header (size, channels, type, pixel limit) and decoded at the
    smallest JPEG reduction to find corrupt data; the mask is decoded in full (labels, coverage).
    """
    problems = []
    header = reading = low_range = None
    try:
        array, header = read_array(image_path, min_size=1)
        low_range = _low_range(array, header, scaling)
    except DataError as e:
        problems.append(_problem(e))
    try:
        mask_array, mask_header = read_array(mask_path)
        reading = read_mask_values(mask_array, mask_path, lossy=mask_header.lossy)
    except DataError as e:
        problems.append(_problem(e))
    if header is None or reading is None:
        return PairCheck(tuple(problems))
    mask = reading.mask
    if (header.height, header.width) != mask.shape:
        return PairCheck((Problem("error", str(mask_path), f"mask size {mask.shape[1]}x{mask.shape[0]} differs "
                                  f"from image size {header.width}x{header.height} ({image_path.name})"),))
    coverage = float(mask.mean())
    if coverage == 0.0:
        problems.append(Problem("warning", str(mask_path), "mask is empty (all zero)"))
    return PairCheck(tuple(problems), (header.width, header.height), coverage,
                     dataclasses.replace(reading, mask=None), low_range)


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


def warn_if_incomplete(root: pathlib.Path) -> bool:
    """Warns when `root` is a generated folder whose run has not finished; True if so."""
    import json
    import logging
    path = pathlib.Path(root) / "generation.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if isinstance(record, dict) and record.get("status") == "incomplete":
        logging.warning("%s: generated folder is incomplete (%s); its run was interrupted or is still "
                        "running, rerun `generate` on it to finish", root, record.get("progress", "pairs missing"))
        return True
    return False


class FolderSource:
    """Pairs from a folder in a Kvasir-SEG or CVC-ClinicDB layout (see module docstring)."""

    def __init__(self, root: str | pathlib.Path, *, split: str = "all", test_fraction: float = 0.1,
                 split_seed: int = 0, allow_unpaired: bool = False, decode_size: int | None = None,
                 image_scaling="full"):
        self.root = pathlib.Path(root)
        self.layout, self.image_dir, self.mask_dir = detect_layout(self.root)
        warn_if_incomplete(self.image_dir.parent)
        pairs, problems = list_pairs(self.image_dir, self.mask_dir)
        errors = [p for p in problems if p.severity == "error"]
        if not pairs:
            raise DataError(errors[0].path + ": " + errors[0].message if errors else
                            f"{self.root}: no image/mask pairs")
        if errors and not allow_unpaired:
            more = f" (and {len(errors) - 1} more; run `python -m polypjax.data {self.root}`)" \
                if len(errors) > 1 else ""
            raise DataError(f"{errors[0].path}: {errors[0].message}{more}")  # main adds "error: "
        keep = split_ids([s for s, _, _ in pairs], split, test_fraction, split_seed)
        self._pairs = [pairs[i] for i in keep]
        self.split = split
        self.decode_size = decode_size  # pairs are only needed at this size or larger (JPEG draft)
        parse_scaling(image_scaling)
        self.image_scaling = image_scaling
        self.name = f"{self.root.name}/{split}"

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self._pairs):
            raise IndexError(f"index {index} out of range for {self.name} ({len(self)} pairs)")
        return load_pair(*self._pairs[index], min_size=self.decode_size, scaling=self.image_scaling)

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
