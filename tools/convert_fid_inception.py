#!/usr/bin/env python3
"""Convert pytorch-fid's FID Inception weights to the .npz that polypjax loads.

  python tools/convert_fid_inception.py --src pt_inception-2015-12-05-6726825d.pth \
      --dst fid_inception.npz

--src is pytorch-fid's state_dict (`pt_inception-2015-12-05-6726825d.pth`, from
https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/) or any pytorch-fid
FID-Inception state_dict.  Reading a .pth needs PyTorch in the converting environment (CPU build is
enough) alongside this package's own dependencies; a state_dict already saved as a numpy .npz
(same key names) converts without PyTorch.

The output holds flattened flax paths ('params/Mixed_5b/branch1x1/conv/kernel', HWIO kernels,
'batch_stats/.../bn/mean', ...), checked against the model before it is written.
"""
import argparse
import hashlib
import os
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from polypjax.models.inception import convert_state_dict, variables_from_flat  # noqa: E402


def read_state_dict(path):
    """{name: numpy array} from a PyTorch .pth state_dict or a numpy .npz of one."""
    if path.endswith(".npz"):
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    try:
        import torch
    except ImportError as e:
        raise SystemExit(
            f"reading {path} needs PyTorch, which is not installed in this environment "
            f"({e}). Install a CPU build (pip install torch) in a separate environment that also "
            "has this package's dependencies, or pass a numpy .npz of the state_dict.") from e
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and not hasattr(obj["state_dict"], "shape"):
        obj = obj["state_dict"]
    return {k: v.detach().cpu().numpy() for k, v in obj.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="pytorch-fid state_dict (.pth, or .npz)")
    ap.add_argument("--dst", required=True, help="output .npz of flattened flax variables")
    args = ap.parse_args()

    if not os.path.isfile(args.src):
        raise SystemExit(f"--src {args.src!r} does not exist")
    flat = convert_state_dict(read_state_dict(args.src))
    variables_from_flat(flat)  # raises with the mismatching names if this is not FID Inception
    dst = pathlib.Path(args.dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the destination and rename, so a killed run never leaves a truncated file
    # that load_fid_inception would then try to read.
    tmp = dst.with_name(dst.name + ".tmp.npz")
    np.savez(tmp, **flat)
    os.replace(tmp, dst)
    digest = hashlib.sha256(dst.read_bytes()).hexdigest()[:16]
    n = sum(int(np.prod(v.shape)) for v in flat.values())
    print(f"wrote {dst}: {len(flat)} arrays, {n} values, sha256 {digest}...")


if __name__ == "__main__":
    main()
