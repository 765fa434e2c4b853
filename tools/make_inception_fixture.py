#!/usr/bin/env python3
"""Make tests/fixtures/inception_fixture.npz: pytorch-fid pool3 features for seeded weights.

Run with a PyTorch environment (not the project venv), e.g.:
  /tmp/torchenv/bin/python tools/make_inception_fixture.py

pytorch-fid's `fid_inception_v3()` is built as-is, but its weight download is replaced by a
state_dict whose conv/BN tensors come from tests/fid_inception_recipe.py (numpy, seeded); the fc
layer and BN step counters keep the freshly built model's values, as they do not affect pool3.
The images run through pytorch-fid's own `InceptionV3([3], resize_input=True,
normalize_input=True)`, so its resize and normalisation are part of the reference.

The ~90 MB of weights are not stored: the fixture keeps the seed, the name->shape table the recipe
consumed, the uint8 images and their 2048-d features.  The JAX test rebuilds the weights from the
seed, converts them with polypjax.models.inception.convert_state_dict and compares.
"""
import argparse
import json
import pathlib
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from fid_inception_recipe import random_fid_inception_state_dict  # noqa: E402

import pytorch_fid  # noqa: E402
import pytorch_fid.inception as pfi  # noqa: E402

SEED = 20151205


def feature_state_dict_shapes(state_dict):
    """Names and shapes of the tensors pool3 depends on (drops the fc and BN step counters)."""
    return {k: tuple(v.shape) for k, v in state_dict.items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def build_model(seed):
    """pytorch-fid's InceptionV3([3]) whose FID weights are the recipe's, not the download."""
    orig = pfi.load_state_dict_from_url
    used = {}

    def seeded_state_dict(url, *args, **kwargs):
        # Called inside fid_inception_v3() with `inception` (the torchvision Inception3 with the
        # FID blocks patched in) as a local: take its names, shapes, fc and counters from there.
        caller = sys._getframe(1)
        assert caller.f_code.co_name == "fid_inception_v3", caller.f_code.co_name
        own = caller.f_locals["inception"].state_dict()
        shapes = feature_state_dict_shapes(own)
        weights = random_fid_inception_state_dict(shapes, seed)
        used["shapes"] = shapes
        return {k: (torch.from_numpy(weights[k]) if k in weights else v) for k, v in own.items()}

    torch.manual_seed(0)
    pfi.load_state_dict_from_url = seeded_state_dict
    try:
        model = pfi.InceptionV3([3], resize_input=True, normalize_input=True,
                                use_fid_inception=True)
    finally:
        pfi.load_state_dict_from_url = orig
    return model.eval(), used["shapes"]


def make_images(rng, n, h, w):
    """uint8 [n,h,w,3]: smooth colour blobs and gradients plus noise, so pool3 differs per image."""
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = []
    for _ in range(n):
        img = np.zeros((h, w, 3))
        img += rng.uniform(0.1, 0.6, 3) * (1 + np.sin(rng.uniform(2, 12) * (yy * rng.uniform(-1, 1)
                                                                            + xx)))[..., None] / 2
        for _ in range(rng.integers(3, 7)):
            cy, cx = rng.uniform(0, 1, 2)
            r = rng.uniform(0.05, 0.3)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img += blob[..., None] * rng.uniform(-0.5, 0.8, 3)
        img += rng.normal(0, 0.08, img.shape)
        out.append(np.clip(img * 255, 0, 255).round().astype(np.uint8))
    return np.stack(out)


def features(model, images_u8):
    # pytorch-fid's data loader gives float [0,1] NCHW (ToTensor divides by 255).
    x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        f = model(x)[0]
    return f.squeeze(-1).squeeze(-1).numpy().astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "inception_fixture.npz"))
    args = ap.parse_args()

    torch.set_num_threads(2)
    model, shapes = build_model(SEED)
    rng = np.random.default_rng(SEED + 1)
    # Upsampling (64x80), identity-size (299), and downsampling with odd sizes (331x403).
    groups = {"small": make_images(rng, 2, 64, 80), "299": make_images(rng, 2, 299, 299),
              "large": make_images(rng, 1, 331, 403)}
    payload = {"seed": np.int64(SEED),
               "shapes_json": np.array(json.dumps({k: list(v) for k, v in sorted(shapes.items())})),
               "versions": np.array(json.dumps({"torch": torch.__version__,
                                                "pytorch_fid": pytorch_fid.__version__}))}
    for name, imgs in groups.items():
        feats = features(model, imgs)
        payload[f"images_{name}"] = imgs
        payload[f"features_{name}"] = feats
        spread = np.abs(feats - feats.mean(0)).max() if len(feats) > 1 else float("nan")
        print(f"{name}: images {imgs.shape}, features mean {feats.mean():.4f} "
              f"std {feats.std():.4f} max {feats.max():.4f} zeros {np.mean(feats == 0):.3f} "
              f"between-image max dev {spread:.4f}")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **payload)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
