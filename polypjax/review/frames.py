"""Frames as the review page shows them: one size, one codec, and a mask outline as an overlay.

Real and synthetic frames go through exactly the same path (square resize, JPEG at one quality,
no metadata), so neither file format, size nor aspect ratio tells a rater which is which.
"""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

MAX_SIZE = 384
JPEG_QUALITY = 90
OUTLINE_RGBA = (0, 255, 64, 255)
OUTLINE_SIZE = 640  # the largest size the page draws a frame at


def display_size(pairs: list[dict], requested: int | None = None) -> int:
    """The page's square frame size: `requested`, or the smallest frame side capped at MAX_SIZE.

    Defaulting to the smallest side means no frame is enlarged: a generated 256 px frame blown up
    next to a downscaled 1920 px photograph would look softer and give itself away.
    """
    if requested is not None:
        return int(requested)
    return int(min(MAX_SIZE, *(min(p["image"].shape[:2]) for p in pairs)))


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def encode_frame(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return data_uri(buf.getvalue(), "image/jpeg")


def encode_outline(mask: np.ndarray) -> str:
    """Transparent PNG with the mask's boundary drawn opaque; the page lays it over the frame.

    Drawn at OUTLINE_SIZE px from the display-size mask, smoothly upsampled (bilinear and a light
    blur, then threshold at 0.5), so a small frame shown large gets a thin, smooth line rather than
    enlarged pixel steps; real and synthetic masks go through the same steps.
    """
    from skimage.filters import gaussian
    from skimage.morphology import dilation, disk
    from skimage.segmentation import find_boundaries
    soft = Image.fromarray(mask.astype(np.float32)).resize((OUTLINE_SIZE, OUTLINE_SIZE), Image.BILINEAR)
    # Blurring over about half a source pixel rounds off the staircase the upsampling leaves.
    soft = gaussian(np.asarray(soft), sigma=0.5 * OUTLINE_SIZE / mask.shape[0])
    edge = dilation(find_boundaries(soft > 0.5, mode="inner"), disk(1))
    rgba = np.zeros(edge.shape + (4,), np.uint8)
    rgba[edge] = OUTLINE_RGBA
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", optimize=True)
    return data_uri(buf.getvalue(), "image/png")
