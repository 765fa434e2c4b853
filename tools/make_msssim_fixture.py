#!/usr/bin/env python3
"""Make tests/fixtures/msssim_fixture.npz: pytorch_msssim SSIM/MS-SSIM on seeded image pairs.

Run with a PyTorch environment (not the project venv), e.g.:
  /tmp/torchenv/bin/python tools/make_msssim_fixture.py

Inputs are stored as uint8 NHWC (small file); both sides convert with /255 and data_range=1.
Pairs range from near-identical to unrelated, so per-level CS values span (0, 1) and the relu on
them is exercised; the 200x180 pair has odd sizes at several levels, which exercises
avg_pool2d's padding.  (pytorch_msssim needs a smaller side > (11 - 1) * 2^4 = 160.)
"""
import argparse
import json
import pathlib

import numpy as np
import torch

import pytorch_msssim
from pytorch_msssim import ms_ssim, ssim

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEED = 1234


def smooth_image(rng, h, w):
    """Float [h, w, 3] in [0, 1]: colour gradients and blobs, like an endoscopy frame, plus noise."""
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    img = 0.3 + 0.3 * rng.uniform(0, 1, 3) * (1 + np.sin(rng.uniform(3, 15) * (xx + yy
                                                  * rng.uniform(-1, 1))))[..., None]
    for _ in range(rng.integers(3, 8)):
        cy, cx = rng.uniform(0, 1, 2)
        r = rng.uniform(0.04, 0.25)
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None] \
            * rng.uniform(-0.4, 0.4, 3)
    return np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)


def make_pairs(rng, n, h, w, noise_levels):
    xs, ys = [], []
    for k in range(n):
        x = smooth_image(rng, h, w)
        level = noise_levels[k % len(noise_levels)]
        y = smooth_image(rng, h, w) if level is None else np.clip(
            x + rng.normal(0, level, x.shape), 0, 1)
        xs.append(x)
        ys.append(y)
    to_u8 = lambda a: np.round(np.stack(a) * 255).astype(np.uint8)  # noqa: E731
    return to_u8(xs), to_u8(ys)


def torch_values(x_u8, y_u8):
    x = torch.from_numpy(x_u8).permute(0, 3, 1, 2).float() / 255.0
    y = torch.from_numpy(y_u8).permute(0, 3, 1, 2).float() / 255.0
    return {"ms_ssim": ms_ssim(x, y, data_range=1.0, size_average=False).numpy(),
            "ssim": ssim(x, y, data_range=1.0, size_average=False).numpy()}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "msssim_fixture.npz"))
    args = ap.parse_args()

    torch.set_num_threads(2)
    rng = np.random.default_rng(SEED)
    groups = {"square": make_pairs(rng, 4, 256, 256, [0.02, 0.1, 0.3, None]),
              "odd": make_pairs(rng, 1, 200, 180, [0.15])}
    payload = {"seed": np.int64(SEED),
               "versions": np.array(json.dumps({"torch": torch.__version__,
                                                "pytorch_msssim": pytorch_msssim.__version__
                                                if hasattr(pytorch_msssim, "__version__")
                                                else "unknown"}))}
    for name, (x, y) in groups.items():
        vals = torch_values(x, y)
        payload[f"x_{name}"], payload[f"y_{name}"] = x, y
        for k, v in vals.items():
            payload[f"{k}_{name}"] = v.astype(np.float32)
        print(name, x.shape, {k: np.round(v, 5).tolist() for k, v in vals.items()})
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **payload)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
