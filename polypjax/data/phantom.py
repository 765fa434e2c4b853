"""Procedural endoscopy-like phantom frames with exact polyp masks.

The phantom is the default data of every config, so the whole system runs (and is tested) with no
download. Each frame is rendered from a small scene description drawn from a per-frame RNG:

* a mucosal tube wall (oblique to the camera, folds encircling a dark lumen, vessels, fine texture),
* one to three polyps: raised domes (irregular blobs, ellipses, flat sessile lesions, pedunculated
  heads on a stalk) with their own surface texture and a small, random-signed colour shift,
* a head-light model: Lambert shading of the height field, ambient occlusion (edge shadow at a
  polyp's foot), distance fall-off towards the lumen, wet specular highlights,
* a camera model: field-of-view aperture (black corners), exposure / white balance jitter, blur and
  sensor noise.

Polyps share the mucosa's colour range on purpose: a per-pixel colour threshold is a poor
segmenter, while shape, shading and texture (what a CNN sees) identify them.

Every random draw depends only on the scene, not on the output size: smooth fields are sums of
Gaussian bumps on fixed control grids evaluated at the pixel centres, so `size` changes the
sampling resolution of the same continuous scene instead of resizing a fixed image. Only sensor
noise is drawn per pixel, after the scene. Frames are seeded by (seed, domain, split, index)
through `np.random.SeedSequence`, so any index is generated on its own (random access).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import zlib

import numpy as np
from scipy import ndimage

__all__ = ["DOMAINS", "PhantomDomain", "PhantomSource", "make_pair"]

# Sizes are in normalised frame units: the frame spans [-1, 1] on both axes (area 4).
_FRAME_AREA = 4.0


@dataclasses.dataclass(frozen=True)
class PhantomDomain:
    """Rendering parameters of one phantom "dataset" (colour, lighting, optics, resolution)."""

    name: str
    native_size: int
    mucosa_rgb: tuple[float, float, float]  # albedo of the mucosa, display space in [0, 1]
    vessel_rgb: tuple[float, float, float]  # per-channel darkening of a vessel (blood absorbs G, B)
    vessel_strength: float
    light_rgb: tuple[float, float, float]  # colour of the head light (also of the highlights)
    exposure: float
    ambient: float
    specular: float
    shininess: float
    lumen_darkness: float  # 0: lumen as bright as the wall, 1: black
    fov_radius: float  # radius of the circular aperture; > sqrt(2) means no black corners
    fov_softness: float
    vignette: float  # radial light fall-off from the frame centre
    blur: float  # Gaussian blur sigma in pixels at 128 px (scaled with size)
    noise: float  # sensor noise std in [0, 1] units
    colour_jitter: float  # per-frame white balance jitter (std of a log factor)
    description: str = ""


DOMAINS: dict[str, PhantomDomain] = {
    d.name: d
    for d in (
        PhantomDomain(
            name="phantom-a",
            native_size=128,
            mucosa_rgb=(0.92, 0.46, 0.42),
            vessel_rgb=(0.25, 0.75, 0.65),
            vessel_strength=0.35,
            light_rgb=(1.0, 0.98, 0.95),
            exposure=1.05,
            ambient=0.25,
            specular=0.9,
            shininess=120.0,
            lumen_darkness=0.85,
            fov_radius=1.32,
            fov_softness=0.03,
            vignette=0.25,
            blur=0.6,
            noise=0.01,
            colour_jitter=0.06,
            description="Kvasir-like: warm pink, bright, mild vignette, sharp",
        ),
        PhantomDomain(
            name="phantom-b",
            native_size=96,
            mucosa_rgb=(0.84, 0.46, 0.26),
            vessel_rgb=(0.3, 0.8, 0.55),
            vessel_strength=0.3,
            light_rgb=(1.0, 0.93, 0.82),
            exposure=0.95,
            ambient=0.18,
            specular=0.75,
            shininess=90.0,
            lumen_darkness=0.95,
            fov_radius=1.08,
            fov_softness=0.08,
            vignette=0.45,
            blur=1.3,
            noise=0.015,
            colour_jitter=0.05,
            description="CVC-like: orange, darker, strong vignette, blurrier, lower resolution",
        ),
        PhantomDomain(
            name="phantom-c",
            native_size=160,
            mucosa_rgb=(0.82, 0.46, 0.55),
            vessel_rgb=(0.35, 0.8, 0.7),
            vessel_strength=0.45,
            light_rgb=(0.95, 0.98, 1.0),
            exposure=1.0,
            ambient=0.3,
            specular=1.1,
            shininess=160.0,
            lumen_darkness=0.75,
            fov_radius=1.22,
            fov_softness=0.02,
            vignette=0.3,
            blur=0.9,
            noise=0.03,
            colour_jitter=0.06,
            description="ETIS-like: pale purplish pink, cool light, noisy, prominent vessels",
        ),
    )
}


# ----------------------------------------------------------------------------- smooth fields


# OpenBLAS (numpy's BLAS) by default multithreads a product once m * n * k exceeds 4 * 65536. On
# frames this small the threads cost far more than they save, ten times more on a busy machine,
# so products are cut into row blocks that each stay under that size.
_SINGLE_THREAD_MNK = 4 * 65536


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b for 2-D float32 arrays, computed in row blocks small enough for one BLAS thread."""
    rows = max(1, _SINGLE_THREAD_MNK // (a.shape[1] * b.shape[1]))
    if rows >= a.shape[0]:
        return a @ b
    out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))
    for i in range(0, a.shape[0], rows):
        np.matmul(a[i : i + rows], b, out=out[i : i + rows])
    return out


@functools.lru_cache(maxsize=64)
def _basis(size: int, cells: int) -> np.ndarray:
    """[size, cells + 2] Gaussian bumps on a regular grid, evaluated at the pixel centres.

    Normalised so that white-noise weights give a field of unit standard deviation, whatever the
    number of cells; the extra cell on each side keeps the borders as rough as the middle.
    """
    x = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    step = 2.0 / cells
    centres = -1.0 - step / 2 + step * np.arange(cells + 2)
    b = np.exp(-0.5 * ((x[:, None] - centres[None, :]) / (0.7 * step)) ** 2)
    # Per axis, sum_j b_j(x)^2 is almost constant across x for this width; divide it out.
    b = (b / np.sqrt((b**2).sum(axis=1).mean())).astype(np.float32)
    b.setflags(write=False)
    return b


def _field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field with unit std and feature size ~2/cells frame units."""
    weights = rng.standard_normal((cells + 2, cells + 2)).astype(np.float32)
    b = _basis(size, cells)
    return _matmul(b @ weights, b.T)


@functools.lru_cache(maxsize=32)
def _smoother(size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """(down [cells + 2, size], up [size, cells + 2]): local averages on a grid, and interpolation.

    `up @ (down @ a @ down.T) @ up.T` is a low-pass of about one cell, in frame units. It replaces
    a Gaussian filter: its matrix products stay small at any size, where an S x S blur matrix
    wakes BLAS threads that cost 10x more than they save on a busy machine.
    """
    b = _basis(size, cells).astype(np.float64)
    down = (b / b.sum(axis=0, keepdims=True)).T.astype(np.float32)
    up = (b / b.sum(axis=1, keepdims=True)).astype(np.float32)
    down.setflags(write=False)
    up.setflags(write=False)
    return down, up


def _low_pass(a: np.ndarray, cells: int) -> np.ndarray:
    down, up = _smoother(a.shape[-1], cells)
    coarse = _matmul(_matmul(down, a), down.T)
    return _matmul(up @ coarse, up.T)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (sigma in pixels) of a [C, S, S] image; borders replicate, never darken."""
    for axis in (1, 2):
        img = ndimage.gaussian_filter1d(img, sigma, axis=axis, mode="nearest", truncate=3.0)
    return img


@functools.lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) pixel-centre coordinates in [-1, 1], each [size, size]."""
    t = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    y, x = np.meshgrid(t, t, indexing="ij")
    y.setflags(write=False)
    x.setflags(write=False)
    return y, x


def _channels(rgb) -> np.ndarray:
    """[3, 1, 1] float32: broadcasts an RGB triple over channel-first images.

    Frames are rendered channel-first: broadcasting over a trailing axis of 3 is ~10x slower.
    """
    return np.asarray(rgb, np.float32)[:, None, None]


def _smoothstep(e0: float, e1: float, v: np.ndarray) -> np.ndarray:
    t = np.clip((v - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# ----------------------------------------------------------------------------- polyps


@dataclasses.dataclass(frozen=True)
class _Polyp:
    cy: float
    cx: float
    radius: float  # equivalent radius of the head (area = pi r^2)
    aspect: float  # >= 1: ellipse elongation
    angle: float
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) of the outline, k = 2, 3, ...
    height: float  # dome height relative to the radius
    power: float  # dome profile exponent; below 0.9 a flat-topped (sessile) profile
    stalk: float  # 0: none, else stalk length relative to the radius (pedunculated)
    stalk_angle: float
    tint: tuple[float, float, float]  # multiplicative albedo shift, redder or paler


def _draw_polyp(rng: np.random.Generator, area_fraction: float, centre: tuple[float, float]) -> _Polyp:
    kind = rng.choice(4, p=[0.45, 0.2, 0.2, 0.15])  # blob, ellipse, sessile, pedunculated
    radius = float(np.sqrt(area_fraction * _FRAME_AREA / np.pi))
    n_harm = 4
    amp = rng.normal(0.0, 1.0, n_harm) * np.array([0.12, 0.08, 0.05, 0.03])
    if kind == 1:  # a clean ellipse
        amp *= 0.15
    harmonics = tuple((float(a), float(p)) for a, p in zip(amp, rng.uniform(0, 2 * np.pi, n_harm)))
    aspect = float(rng.uniform(1.0, 1.4) if kind != 1 else rng.uniform(1.3, 2.0))
    height = float(rng.uniform(0.35, 0.7))
    # Exponents below ~0.9 make the flank vertical at the outline: a drawn-on black contour.
    power = float(rng.uniform(0.9, 1.5))
    if kind == 2:  # sessile: flat, wide, low
        height, power = float(rng.uniform(0.12, 0.25)), float(rng.uniform(0.5, 0.8))
    if kind == 3:
        height = float(rng.uniform(0.6, 0.9))
    stalk = float(rng.uniform(0.8, 1.5)) if kind == 3 else 0.0
    # The tint is small and of random sign so that the polyp is sometimes redder, sometimes paler
    # than its surroundings: hue alone never decides. Shifts run along the mucosa's own
    # red <-> pale axis so that polyps never turn grey or green.
    brightness, redness = rng.normal(0.0, 0.06), rng.normal(0.0, 0.08)
    log_tint = brightness + redness * np.array([0.4, -1.0, -0.8]) + rng.normal(0.0, 0.015, 3)
    tint = tuple(float(t) for t in np.exp(log_tint))
    return _Polyp(
        cy=centre[0],
        cx=centre[1],
        radius=radius,
        aspect=aspect,
        angle=float(rng.uniform(0, np.pi)),
        harmonics=harmonics,
        height=height,
        power=power,
        stalk=stalk,
        stalk_angle=float(rng.uniform(0, 2 * np.pi)),
        tint=tint,
    )


def _blob_q(y, x, cy: float, cx: float, radius: float, aspect: float, angle: float, harmonics):
    """Normalised radial coordinate of a star-shaped blob: q < 1 inside, q = 1 on the outline."""
    dy, dx = y - cy, x - cx
    c, s = math.cos(angle), math.sin(angle)
    su, sv = 1.0 / (radius * math.sqrt(aspect)), math.sqrt(aspect) / radius
    u = (dx * c + dy * s) * su
    v = (dy * c - dx * s) * sv
    d = np.sqrt(u * u + v * v)
    if not harmonics:
        return d
    # cos(k theta), sin(k theta) by the angle-addition recurrence: arctan2 + cos is ~10x slower.
    inv = 1.0 / np.maximum(d, 1e-6)
    c1, s1 = u * inv, v * inv
    ck, sk = c1, s1
    outline = np.ones_like(d)
    for a, p in harmonics:  # k = 2, 3, ...
        ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
        outline += (a * math.cos(p)) * ck - (a * math.sin(p)) * sk
    return d / np.maximum(outline, 0.3)


def _pixel_window(cy: float, cx: float, extent: float, size: int) -> tuple[slice, slice]:
    """Pixel rows and columns that can hold the disc of radius `extent` around (cy, cx)."""

    def span(c):
        lo = math.floor((c - extent + 1.0) / 2.0 * size) - 1
        hi = math.ceil((c + extent + 1.0) / 2.0 * size) + 1
        return slice(min(max(lo, 0), size), max(min(hi, size), 0))

    return span(cy), span(cx)


def _render_polyp(p: _Polyp, size: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """(window, height field, inside mask) of one polyp, in frame units, on its pixel window.

    Only the window around the polyp is evaluated: most polyps cover a small part of the frame.
    """
    extent = p.radius * math.sqrt(p.aspect) * (1.0 + sum(abs(a) for a, _ in p.harmonics))
    extent = max(extent, 1.2 * p.stalk * p.radius)
    win = _pixel_window(p.cy, p.cx, extent, size)
    gy, gx = _grid(size)
    y, x = gy[win], gx[win]
    q = _blob_q(y, x, p.cy, p.cx, p.radius, p.aspect, p.angle, p.harmonics)
    inside = q < 1.0
    # Flat-topped (sessile) domes are low powers of 1 - q^4; rounder ones of 1 - q^2.
    qq = q * q if p.power >= 0.9 else (q * q) ** 2
    h = (p.height * p.radius) * np.clip(1.0 - qq, 0.0, None) ** p.power
    if p.stalk > 0:
        # A narrow, lower ellipse from the head's centre outwards: the head sits on it.
        half = 0.6 * p.stalk * p.radius
        sy = p.cy + math.sin(p.stalk_angle) * half
        sx = p.cx + math.cos(p.stalk_angle) * half
        w = 0.35 * p.radius
        qs = _blob_q(y, x, sy, sx, math.sqrt(w * half), half / w, p.stalk_angle, ())
        hs = (0.35 * p.height * p.radius) * np.sqrt(np.clip(1.0 - qs * qs, 0.0, None))
        h = np.maximum(h, hs)
        inside |= qs < 1.0
    return win, h, inside


def _draw_layout(rng: np.random.Generator, lumen: _Lumen) -> list[_Polyp]:
    """One to three polyps; the first is the main one and sets the area distribution."""
    n = int(rng.choice([1, 2, 3], p=[0.7, 0.22, 0.08]))
    polyps = []
    for i in range(n):
        # Log-uniform areas cover both tiny and frame-filling polyps; extra polyps are smaller.
        hi = 0.42 if i == 0 else 0.06
        frac = math.exp(rng.uniform(math.log(0.02), math.log(hi)))
        # The main polyp's centre stays well inside the narrowest aperture, so every frame has a
        # visible polyp (as in Kvasir); others may be cut by the border or the black corners.
        reach = 0.62 if i == 0 else 0.85
        # Keep polyp centres out of the dark lumen: a polyp there would be invisible.
        for _ in range(8):
            cy, cx = rng.uniform(-reach, reach, 2).tolist()
            if math.hypot(cy - lumen.y, cx - lumen.x) > 1.3 * lumen.radius:
                break
        polyps.append(_draw_polyp(rng, frac, (cy, cx)))
    return polyps


def _polyp_layer(polyps: list[_Polyp], size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(height, mask, [3, S, S] albedo tint) of the union of the polyps."""
    height = np.zeros((size, size), np.float32)
    mask = np.zeros((size, size), bool)
    tint = np.ones((3, size, size), np.float32)
    for p in polyps:
        win, h, inside = _render_polyp(p, size)
        # Blend the tint over a thin band inside the outline: lesion margins are not crisp.
        w = _smoothstep(0.0, 0.15 * p.radius, h)
        tint[(slice(None), *win)] *= 1.0 + w * (_channels(p.tint) - 1.0)
        height[win] = np.maximum(height[win], h)
        mask[win] |= inside
    return height, mask, tint


# ----------------------------------------------------------------------------- rendering


@dataclasses.dataclass(frozen=True)
class _Lumen:
    y: float
    x: float
    radius: float
    aspect: float
    angle: float
    harmonics: tuple[tuple[float, float], ...]  # the opening is a rounded, irregular polygon


def _draw_lumen(rng: np.random.Generator) -> _Lumen:
    # The lumen may lie outside the frame: the camera then looks at the wall, one side darker.
    ang, dist = rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 1.25)
    amp = rng.normal(0.0, 1.0, 3) * np.array([0.15, 0.12, 0.06])
    return _Lumen(
        y=math.sin(ang) * dist,
        x=math.cos(ang) * dist,
        radius=rng.uniform(0.12, 0.3),
        aspect=rng.uniform(1.0, 1.6),
        angle=rng.uniform(0, math.pi),
        harmonics=tuple(zip(amp.tolist(), rng.uniform(0, 2 * math.pi, 3).tolist())),
    )


def _wall_height(rng: np.random.Generator, size: int, lumen: _Lumen) -> tuple[np.ndarray, np.ndarray]:
    """(height of the tube wall, warped distance to the lumen centre)."""
    y, x = _grid(size)
    warp = _field(rng, size, 3)
    dl = np.sqrt((y - lumen.y) ** 2 + (x - lumen.x) ** 2) * (1.0 + 0.12 * warp)
    # The wall is oblique to the camera (a cone around the lumen): facing it head-on would make
    # every flat patch a specular mirror.
    height = -0.45 * dl
    arc = _field(rng, size, 2)
    for _ in range(int(rng.integers(1, 5))):
        # Folds: ridges encircling the lumen, each only along part of the circle.
        r0 = rng.uniform(lumen.radius + 0.1, 1.6)
        width = rng.uniform(0.06, 0.16)
        amp = width * rng.uniform(0.3, 0.7)
        window = _smoothstep(-0.4, 0.6, arc * float(rng.choice([-1.0, 1.0])) + rng.uniform(-0.3, 0.6))
        height += amp * np.exp(-(((dl - r0) / width) ** 2)) * window
    height += 0.025 * _field(rng, size, 4)
    height += 0.0012 * _field(rng, size, 36)
    return height, dl


def _albedo(rng, dom: PhantomDomain, size: int, in_polyp: np.ndarray, tint, polyp_tex) -> np.ndarray:
    """[3, S, S] surface colour: mucosa with slow colour drift and vessels, tinted polyps."""
    colour_var = _field(rng, size, 3)
    albedo = _channels(dom.mucosa_rgb) * (1.0 + 0.07 * colour_var * _channels((0.4, 1.0, 0.9)))
    # Vessels are the zero crossings of smooth fields: thin, winding, branching-looking lines.
    # The polyp surface has few: a (weak) cue shared with real adenomas.
    density = _smoothstep(-0.6, 0.8, _field(rng, size, 2))
    vessels = np.exp(-((_field(rng, size, 9) / 0.12) ** 2))
    fine = np.exp(-((_field(rng, size, 20) / 0.1) ** 2))
    v = (vessels + 0.5 * fine) * density * (1.0 - 0.75 * in_polyp) * dom.vessel_strength
    albedo *= 1.0 - v * _channels(dom.vessel_rgb)
    albedo *= tint
    albedo *= 1.0 + 0.1 * in_polyp * polyp_tex
    return albedo


def _shade(rng, dom: PhantomDomain, height: np.ndarray, albedo: np.ndarray, illum: np.ndarray):
    """Head-light rendering: Lambert + ambient occlusion + wet Blinn-Phong highlights."""
    f32 = np.float32
    size = height.shape[0]
    gy, gx = np.gradient(height, 2.0 / size)
    norm = 1.0 / np.sqrt(gx * gx + gy * gy + 1.0)
    light = np.array([*rng.normal(0.0, 0.15, 2), 1.0])
    light /= np.linalg.norm(light)
    half = light + np.array([0.0, 0.0, 1.0])
    half /= np.linalg.norm(half)
    ly, lx, lz = light.astype(f32)
    hy, hx, hz = half.astype(f32)
    ndotl = np.clip((lz - gx * lx - gy * ly) * norm, 0.0, 1.0)
    ndoth = np.clip((hz - gx * hx - gy * hy) * norm, 0.0, 1.0)
    wet = _smoothstep(-0.8, 0.6, _field(rng, size, 14))
    # x**n as exp(n log x): numpy's float power is several times slower.
    spec = dom.specular * wet * np.exp(dom.shininess * np.log(np.maximum(ndoth, 1e-6)))
    # Ambient occlusion: concave places (a polyp's foot, between folds) see less light.
    occl = np.clip(_low_pass(height, 24) - height, 0.0, None)
    ao = np.exp(-occl / 0.05)
    diffuse = (dom.ambient + (1.0 - dom.ambient) * ndotl) * ao * illum
    return (albedo * diffuse + spec * illum) * _channels(dom.light_rgb)


def _illumination(dom: PhantomDomain, size: int, lumen: _Lumen, dl: np.ndarray, polyp_h: np.ndarray):
    """Light reaching the surface: dark towards the (far) lumen and the frame edges."""
    y, x = _grid(size)
    far = np.exp(-((dl / (2.2 * lumen.radius + 0.25)) ** 2))
    q = _blob_q(y, x, lumen.y, lumen.x, lumen.radius, lumen.aspect, lumen.angle, lumen.harmonics)
    hole = _smoothstep(1.3, 0.3, q)
    # A polyp in front of the lumen is near the camera, not down the dark tube.
    near = 1.0 - 0.7 * _smoothstep(0.0, 0.05, polyp_h)
    lumen_shade = 1.0 - dom.lumen_darkness * near * (0.6 * far + 0.4 * hole)
    vignette = 1.0 - 0.5 * dom.vignette * (x * x + y * y)
    # Polyps stick out towards the light.
    return lumen_shade * vignette * (1.0 + 0.6 * polyp_h)


def _camera(rng, dom: PhantomDomain, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image, field-of-view weight): exposure, white balance, aperture, blur, noise."""
    f32 = np.float32
    size = img.shape[-1]
    y, x = _grid(size)
    gain = dom.exposure * np.exp(rng.normal(0.0, 0.15)) * np.exp(rng.normal(0.0, dom.colour_jitter, 3))
    fov_r = dom.fov_radius * math.exp(rng.normal(0.0, 0.02))
    fov = _smoothstep(fov_r, fov_r - dom.fov_softness, np.sqrt(x * x + y * y))
    img = img * fov * gain.astype(f32)[:, None, None]
    blur = dom.blur * size / 128.0
    if blur > 0.3:
        img = _blur(img, blur)
    # Drawn last and per pixel: the only draw that depends on the size. Uniform, not Gaussian,
    # noise of the same std: it looks the same and costs a third.
    img += (rng.random(img.shape, dtype=f32) - 0.5) * f32(dom.noise * math.sqrt(12.0))
    planes = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.stack(list(planes), axis=-1), fov


def _seed_sequence(seed: int, domain: str, split: str, index: int) -> np.random.SeedSequence:
    # crc32, not hash(): str hashes are salted per process, and frames must be reproducible.
    return np.random.SeedSequence([seed, zlib.crc32(domain.encode()), zlib.crc32(split.encode()), index])


def _render(rng: np.random.Generator, dom: PhantomDomain, size: int) -> tuple[np.ndarray, np.ndarray]:
    lumen = _draw_lumen(rng)
    height, dl = _wall_height(rng, size, lumen)
    polyp_h, mask, tint = _polyp_layer(_draw_layout(rng, lumen), size)
    # Polyp surface: granular (lobulated / pit pattern) relief and albedo; some polyps are smooth,
    # some markedly lobulated.
    polyp_tex = _field(rng, size, 28) * rng.uniform(0.4, 1.2)
    in_polyp = _smoothstep(0.0, 0.02, polyp_h)
    height += polyp_h + in_polyp * 0.006 * polyp_tex
    albedo = _albedo(rng, dom, size, in_polyp, tint, polyp_tex)
    img = _shade(rng, dom, height, albedo, _illumination(dom, size, lumen, dl, polyp_h))
    image, fov = _camera(rng, dom, img)
    # The mask is what is visible: polyp pixels hidden by the black aperture corners are background.
    return image, (mask & (fov > 0.5)).astype(np.uint8)


def _check_domain(domain: str) -> PhantomDomain:
    try:
        return DOMAINS[domain]
    except KeyError:
        known = ", ".join(sorted(DOMAINS))
        raise ValueError(f"unknown phantom domain {domain!r}; known domains: {known}") from None


def make_pair(
    index: int,
    *,
    domain: str = "phantom-a",
    size: int | None = None,
    seed: int = 0,
    split: str = "train",
) -> dict:
    """Render phantom frame `index`: {"image": uint8 [S,S,3], "mask": uint8 [S,S] in {0,1}, "id"}.

    `size` None renders at the domain's native size. The frame depends only on
    (seed, domain, split, index) and, through its sampling resolution, on `size`.
    """
    dom = _check_domain(domain)
    index, seed = int(index), int(seed)
    size = dom.native_size if size is None else int(size)
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE}, got {size}")
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be non-negative, got index={index}, seed={seed}")
    rng = np.random.default_rng(_seed_sequence(seed, domain, split, index))
    image, mask = _render(rng, dom, size)
    return {"image": image, "mask": mask, "id": f"{domain}-{split}-{index:05d}"}


MIN_SIZE = 16  # smallest frame the renderer draws a lumen, folds and a polyp in


class PhantomSource:
    """Random-access pair source: len() and [i] -> dict as `make_pair` returns."""

    def __init__(
        self,
        domain: str = "phantom-a",
        num_examples: int = 1000,
        size: int | None = None,
        seed: int = 0,
        split: str = "train",
    ):
        dom = _check_domain(domain)
        if num_examples < 0:
            raise ValueError(f"num_examples must be >= 0, got {num_examples}")
        self.domain = domain
        self.num_examples = int(num_examples)
        self.size = dom.native_size if size is None else int(size)
        self.seed = int(seed)
        self.split = split
        self.name = f"{domain}/{split}"

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, i: int) -> dict:
        i = int(i)  # also accepts numpy integers from samplers
        if not 0 <= i < self.num_examples:
            raise IndexError(f"index {i} out of range [0, {self.num_examples}) for {self.name}")
        return make_pair(i, domain=self.domain, size=self.size, seed=self.seed, split=self.split)

    def __repr__(self) -> str:
        return (
            f"PhantomSource(domain={self.domain!r}, num_examples={self.num_examples}, "
            f"size={self.size}, seed={self.seed}, split={self.split!r})"
        )
