"""Seeded random weights for the FID Inception, shared by the fixture maker and the test.

The reference fixture was made with PyTorch (tools/make_inception_fixture.py) and the test runs
without it, so the ~22M weights are not stored: both sides rebuild them here from a seed.  This file
is numpy-only on purpose: the fixture maker imports it from a PyTorch environment without JAX.

PyTorch's default layer init shrinks activations layer after layer (kaiming_uniform with a=sqrt(5)
has a standard deviation of 1/sqrt(3 fan_in)), so after ~90 conv layers pool3 would be almost
constant and a port could "agree" while being wrong.  He-normal conv weights keep the second moment
roughly constant through conv+ReLU, and random BatchNorm statistics and affine parameters make
every normalisation do real work, so a wrong key mapping or transpose shows up in the features.
"""
import numpy as np


def random_fid_inception_state_dict(shapes, seed):
    """PyTorch-named state_dict of float32 arrays for `shapes` ({name: shape}), from `seed`.

    Keys are visited in sorted order so the draw depends only on the set of names and shapes,
    not on how a framework happens to order its state_dict.
    """
    # float64 draws (numpy's native precision) rounded to float32 once: the same bits on any
    # platform numpy supports.
    rng = np.random.default_rng(seed)
    out = {}
    for key in sorted(shapes):
        shape = tuple(int(s) for s in shapes[key])
        if key.endswith("conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif key.endswith("bn.weight"):
            value = rng.uniform(0.6, 1.4, shape)
        elif key.endswith("bn.bias"):
            value = rng.normal(0.0, 0.2, shape)
        elif key.endswith("bn.running_mean"):
            value = rng.normal(0.0, 0.2, shape)
        elif key.endswith("bn.running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            raise ValueError(f"no recipe for state_dict key {key!r}")
        out[key] = value.astype(np.float32)
    return out
