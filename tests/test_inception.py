"""FID Inception port against pytorch-fid features (fixture) and the PyTorch resize formula."""
import json
import pathlib

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from fid_inception_recipe import random_fid_inception_state_dict
from polypjax.models import inception

FIXTURE = pathlib.Path(__file__).resolve().parent / "fixtures" / "inception_fixture.npz"


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def torch_state_dict(fixture):
    shapes = json.loads(str(fixture["shapes_json"]))
    return random_fid_inception_state_dict(shapes, int(fixture["seed"]))


@pytest.fixture(scope="module")
def weights_file(torch_state_dict, tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "fid_inception.npz"
    np.savez(path, **inception.convert_state_dict(torch_state_dict))
    return path


def test_state_dict_names_and_shapes_match_pytorch_fid(fixture):
    # The fixture's table is torchvision/pytorch-fid's own state_dict (less fc and counters).
    expected = {k: tuple(v) for k, v in json.loads(str(fixture["shapes_json"])).items()}
    assert inception.torch_state_dict_shapes() == expected


def test_features_match_pytorch_fid(fixture, weights_file):
    extract = inception.load_fid_inception(weights_file)
    for group in ("small", "299", "large"):
        images, ref = fixture[f"images_{group}"], fixture[f"features_{group}"]
        got = np.asarray(extract(images))
        assert got.shape == (len(images), inception.FEATURE_DIM) and got.dtype == np.float32
        err = np.abs(got - ref).max()
        # Relative to the largest feature: measured ~5e-7 on CPU float32.
        assert err <= 1e-4 * np.abs(ref).max(), (group, err, np.abs(ref).max())


def test_loads_share_one_jitted_function_and_place_weights(weights_file):
    # evaluate_generation loads once per run, replicated over its mesh; runs in one process reuse
    # the compiled programs.
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    first = inception.load_fid_inception(weights_file)
    second = inception.load_fid_inception(weights_file, "float32", sharding=replicated)
    assert first.func is second.func
    assert inception.load_fid_inception(weights_file, jnp.bfloat16).func is not first.func
    kernel = second.args[0]["params"]["Conv2d_1a_3x3"]["conv"]["kernel"]
    assert kernel.sharding.is_equivalent_to(replicated, kernel.ndim)


def test_bfloat16_features_close(fixture, torch_state_dict):
    variables = inception.variables_from_flat(inception.convert_state_dict(torch_state_dict))
    model = inception.FIDInceptionV3(dtype=jnp.bfloat16)
    # One image, jitted: bf16 convolutions are emulated (slow) on CPU.
    ref = fixture["features_299"][:1]
    got = np.asarray(jax.jit(model.apply)(variables, fixture["images_299"][:1]))
    assert got.dtype == np.float32
    # bf16 keeps 8 mantissa bits through ~95 layers: measured ~5e-3 of the largest feature.
    assert np.abs(got - ref).max() <= 2e-2 * np.abs(ref).max()


def _torch_bilinear_reference(x, out_h, out_w):
    """Direct per-pixel transcription of ATen's bilinear, align_corners=False, in float64."""
    n, h, w, c = x.shape
    out = np.zeros((n, out_h, out_w, c))

    def src(dst, in_size, out_size):
        s = max((dst + 0.5) * in_size / out_size - 0.5, 0.0)
        i0 = min(int(np.floor(s)), in_size - 1)
        return i0, min(i0 + 1, in_size - 1), s - i0

    for oy in range(out_h):
        y0, y1, ly = src(oy, h, out_h)
        for ox in range(out_w):
            x0, x1, lx = src(ox, w, out_w)
            out[:, oy, ox] = ((1 - ly) * ((1 - lx) * x[:, y0, x0] + lx * x[:, y0, x1])
                              + ly * ((1 - lx) * x[:, y1, x0] + lx * x[:, y1, x1]))
    return out


@pytest.mark.parametrize("in_hw,out_hw", [((5, 7), (13, 17)),      # upsampling
                                          ((40, 33), (11, 9)),      # downsampling, no antialias
                                          ((23, 6), (8, 19)),       # mixed
                                          ((12, 10), (12, 10))])    # identity
def test_resize_matches_torch_formula(in_hw, out_hw):
    x = np.random.default_rng(0).uniform(0, 1, (2, *in_hw, 3)).astype(np.float32)
    got = np.asarray(inception.resize_bilinear(jnp.asarray(x), out_hw))
    ref = _torch_bilinear_reference(x.astype(np.float64), *out_hw)
    np.testing.assert_allclose(got, ref, atol=2e-6)
    if in_hw == out_hw:
        np.testing.assert_array_equal(got, x)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="convert_fid_inception"):
        inception.load_fid_inception(missing)
    with pytest.raises(FileNotFoundError, match=str(missing)):
        inception.load_fid_inception(missing)


def test_conversion_layout_and_unknown_keys(torch_state_dict):
    flat = inception.convert_state_dict(
        {**torch_state_dict, "fc.weight": np.zeros((1008, 2048), np.float32),
         "Mixed_5b.branch1x1.bn.num_batches_tracked": np.array(3)})
    w = torch_state_dict["Mixed_6b.branch7x7_2.conv.weight"]  # OIHW, 1x7
    np.testing.assert_array_equal(flat["params/Mixed_6b/branch7x7_2/conv/kernel"],
                                  w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(flat["batch_stats/Mixed_7c/branch_pool/bn/var"],
                                  torch_state_dict["Mixed_7c.branch_pool.bn.running_var"])
    assert set(flat) == set(inception.variable_shapes())
    with pytest.raises(ValueError, match="unexpected key"):
        inception.convert_state_dict({"AuxLogits.conv0.conv.bias": np.zeros(3)})
    del flat["params/Mixed_5b/branch1x1/conv/kernel"]
    with pytest.raises(ValueError, match="missing"):
        inception.variables_from_flat(flat)
