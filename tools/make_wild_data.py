"""Writes small image/mask folders shaped like public releases as they are found, for the tests.

    python tools/make_wild_data.py OUT_DIR [--pairs 6] [--size 48 64]

Nothing real is shipped: every file is drawn here, with the oddities seen in downloads.

- `cvc-original/CVC-ClinicDB/`: CVC-ClinicDB's original release layout (`Original/<n>.tif` RGB,
  `Ground Truth/<n>.tif`), one wrapping folder deep. Most masks are 0/255 with faint values around
  the polyp's edge (as in the real release: values 3-112, tens to thousands of pixels, a handful in
  the middle band 64-191); one mask has a large faint patch (a third of its polyp's area at 11);
  two masks are clean.
- `refused/<case>/`: one Kvasir-layout folder per mask that must stay an error: 0/1 with a stray
  255, 0/2, 0/100, a {0, 1, 2} class map, a soft (blurred) mask, a faint ring that outnumbers the
  polyp.
- `kvasir-wild/`: Kvasir layout with JPEG masks, a palette PNG mask, a mask drawn in the alpha
  channel, an RGB mask, and odd names (spaces, an accent in NFD form, upper-case extensions).
- `deep/`: 12-bit frames in 16-bit containers: TIFFs with and without a MaxSampleValue tag and a
  16-bit PNG with an sBIT chunk (the ways a file declares its bit depth), with 0/255 PNG masks.

`EXPECTED` records, per folder, what the readers must make of it; the tests compare with it.
"""
from __future__ import annotations

import argparse
import pathlib
import struct
import unicodedata
import zlib

import numpy as np

# folder -> (usable pairs, masks thresholded with a warning, whether the folder is an error)
EXPECTED = {
    "cvc-original": {"pairs": None, "clean": 2, "error": False},  # pairs: --pairs; thresholded: pairs - 2
    "kvasir-wild": {"pairs": 6, "error": False},
    "deep": {"pairs": 3, "error": False},
    **{f"refused/{case}": {"error": True} for case in
       ("stray-255", "two", "hundred", "class-map", "soft", "faint-ring")},
}
TWELVE_BIT_MAX = 4095


def frame(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A reddish textured frame, uint8 RGB."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([170 + 40 * xx, 80 + 30 * yy, 70 + 20 * xx * yy], -1)
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def blob(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    """Signed distance outside an ellipse, in pixels (negative inside)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.hypot((yy - cy) / 0.8, xx - cx) - r


def noisy_cvc_mask(rng, h, w, big_faint_patch=False) -> np.ndarray:
    """0/255 inside the polyp and faint 3-112 values in a ring just outside, as the release has."""
    d = blob(h, w, h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65), min(h, w) * rng.uniform(0.18, 0.28))
    m = np.where(d <= 0, 255, 0).astype(np.uint8)
    ring = (d > 0) & (d <= 2.0)
    m[ring] = rng.integers(3, 64, ring.sum())  # faint, below the middle band
    ring_pixels = np.flatnonzero(ring)
    m.flat[rng.choice(ring_pixels, size=min(2, ring_pixels.size), replace=False)] = 112  # a few in the band
    if big_faint_patch:  # one real mask has thousands of pixels at 11, far from the polyp
        polyp = int((m == 255).sum())
        patch = np.zeros_like(ring)
        patch[: h // 6, : w // 2] = True
        patch &= d > 3
        idx = np.flatnonzero(patch)[: polyp // 3]
        m.flat[idx] = 11
    return m


def write_cvc_original(root: pathlib.Path, pairs: int, size: tuple[int, int], seed: int = 0) -> pathlib.Path:
    import tifffile
    rng = np.random.default_rng(seed)
    base = root / "cvc-original" / "CVC-ClinicDB"
    (base / "Original").mkdir(parents=True, exist_ok=True)
    (base / "Ground Truth").mkdir(exist_ok=True)
    h, w = size
    for n in range(1, pairs + 1):
        tifffile.imwrite(base / "Original" / f"{n}.tif", frame(rng, h, w), photometric="rgb")
        mask = noisy_cvc_mask(rng, h, w, big_faint_patch=(n == 1))
        if n > pairs - EXPECTED["cvc-original"]["clean"]:
            mask = np.where(mask >= 128, 255, 0).astype(np.uint8)
        tifffile.imwrite(base / "Ground Truth" / f"{n}.tif", mask)
    return base


def _kvasir(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    return root / "images", root / "masks"


def square(h: int, w: int, value: int = 255, dtype=np.uint8) -> np.ndarray:
    m = np.zeros((h, w), dtype)
    m[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = value
    return m


def refused_masks(h: int, w: int) -> dict[str, np.ndarray]:
    """Masks the label rule must refuse, each drawn the way such a file looks."""
    stray = square(h, w, 1)
    stray[0, 0] = 255
    class_map = square(h, w, 1)
    class_map[h // 4: h // 2, w // 4: w // 2] = 2
    yy, xx = np.mgrid[0:h, 0:w]
    soft = np.clip(255 - 8 * np.hypot(yy - h / 2, xx - w / 2), 0, 255).astype(np.uint8)  # a probability map
    ring = np.where(blob(h, w, h / 2, w / 2, min(h, w) / 8) <= 0, 255, 0).astype(np.uint8)
    ring[(blob(h, w, h / 2, w / 2, min(h, w) / 8) > 0) & (blob(h, w, h / 2, w / 2, min(h, w) / 8) <= 8)] = 20
    return {"stray-255": stray, "two": square(h, w, 2), "hundred": square(h, w, 100), "class-map": class_map,
            "soft": soft, "faint-ring": ring}


def write_refused(root: pathlib.Path, size: tuple[int, int], seed: int = 0) -> None:
    from PIL import Image
    rng = np.random.default_rng(seed)
    h, w = size
    for case, mask in refused_masks(h, w).items():
        images, masks = _kvasir(root / "refused" / case)
        Image.fromarray(frame(rng, h, w)).save(images / "a.png")
        Image.fromarray(mask).save(masks / "a.png")


def write_kvasir_wild(root: pathlib.Path, size: tuple[int, int], seed: int = 0) -> None:
    from PIL import Image
    rng = np.random.default_rng(seed)
    h, w = size
    images, masks = _kvasir(root / "kvasir-wild")
    sq = square(h, w)
    names = ["cju0 jpeg mask", "cju1", unicodedata.normalize("NFD", "polype_\u00e9"), "PAL", "alpha", "rgb"]
    for name in names:
        Image.fromarray(frame(rng, h, w)).save(images / f"{name}.JPG" if name == "cju1" else images / f"{name}.jpg",
                                               quality=90)
    Image.fromarray(sq).save(masks / "cju0 jpeg mask.jpg", quality=75)  # compression noise around 0 and 255
    Image.fromarray(sq).save(masks / "cju1.JPG", quality=60)
    Image.fromarray(sq).save(masks / f"{names[2]}.png")
    palette = Image.fromarray((sq > 0).astype(np.uint8), "P")
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    palette.save(masks / "PAL.png")
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 3] = sq
    Image.fromarray(rgba, "RGBA").save(masks / "alpha.png")
    Image.fromarray(np.stack([sq, sq, sq], -1)).save(masks / "rgb.PNG")


def _png_with_sbit(path: pathlib.Path, bits: int) -> None:
    """Inserts an sBIT chunk (significant bits) after IHDR, as scanner software writes it."""
    data = path.read_bytes()
    ihdr_end = 8 + 8 + 13 + 4
    chunk = b"sBIT" + bytes([bits])
    sbit = struct.pack(">I", 1) + chunk + struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    path.write_bytes(data[:ihdr_end] + sbit + data[ihdr_end:])


def twelve_bit(rng, h, w) -> np.ndarray:
    """A frame with 12-bit values (0-4095) in a uint16 array."""
    return (frame(rng, h, w).astype(np.uint32) * TWELVE_BIT_MAX // 255).astype(np.uint16)


def write_deep(root: pathlib.Path, size: tuple[int, int], seed: int = 0) -> None:
    import tifffile
    from PIL import Image
    rng = np.random.default_rng(seed)
    h, w = size
    images, masks = _kvasir(root / "deep")
    tifffile.imwrite(images / "declared.tif", twelve_bit(rng, h, w), photometric="rgb",
                     extratags=[(281, "H", 1, TWELVE_BIT_MAX, True)])  # MaxSampleValue
    tifffile.imwrite(images / "undeclared.tif", twelve_bit(rng, h, w), photometric="rgb")
    gray = twelve_bit(rng, h, w)[..., 0]
    Image.fromarray(gray.astype(np.uint16)).save(images / "sbit.png")
    _png_with_sbit(images / "sbit.png", 12)
    for stem in ("declared", "undeclared", "sbit"):
        Image.fromarray(square(h, w)).save(masks / f"{stem}.png")


def write_all(out: pathlib.Path, pairs: int = 6, size: tuple[int, int] = (48, 64), seed: int = 0) -> pathlib.Path:
    out = pathlib.Path(out)
    write_cvc_original(out, pairs, size, seed)
    write_refused(out, size, seed)
    write_kvasir_wild(out, size, seed)
    write_deep(out, size, seed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--pairs", type=int, default=6, help="pairs in the CVC-ClinicDB-like folder")
    parser.add_argument("--size", type=int, nargs=2, default=(48, 64), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_all(args.out, args.pairs, tuple(args.size), args.seed)
    print(f"wrote {args.out}: " + ", ".join(EXPECTED))


if __name__ == "__main__":
    main()
