"""SSIM / MS-SSIM against pytorch_msssim (fixture) and scikit-image; the diversity protocol."""
import pathlib

import numpy as np
import pytest
from skimage.metrics import structural_similarity

import jax
from polypjax.metrics import msssim

FIXTURE = pathlib.Path(__file__).resolve().parent / "fixtures" / "msssim_fixture.npz"


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def _f(u8):
    return u8.astype(np.float32) / 255.0


@pytest.mark.parametrize("group", ["square", "odd"])
def test_ms_ssim_matches_pytorch_msssim(fixture, group):
    x, y = _f(fixture[f"x_{group}"]), _f(fixture[f"y_{group}"])
    got = np.asarray(msssim.ms_ssim(x, y, data_range=1.0))
    np.testing.assert_allclose(got, fixture[f"ms_ssim_{group}"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(float(msssim.ms_ssim(x, y, size_average=True)),
                               fixture[f"ms_ssim_{group}"].mean(), atol=1e-4)


@pytest.mark.parametrize("group", ["square", "odd"])
def test_ssim_matches_pytorch_msssim(fixture, group):
    x, y = _f(fixture[f"x_{group}"]), _f(fixture[f"y_{group}"])
    got = np.asarray(msssim.ssim(x, y, data_range=1.0))
    np.testing.assert_allclose(got, fixture[f"ssim_{group}"], atol=1e-4, rtol=0)


def test_ssim_matches_skimage_on_interior(fixture):
    # skimage filters with reflect padding and then drops (win-1)/2 border pixels: what remains
    # is exactly the valid convolution pytorch_msssim (and we) average over.
    x, y = _f(fixture["x_odd"])[:, :60, :70], _f(fixture["y_odd"])[:, :60, :70]
    x = np.concatenate([x, _f(fixture["x_square"])[:2, 100:160, 30:100]])
    y = np.concatenate([y, _f(fixture["y_square"])[:2, 100:160, 30:100]])
    got = np.asarray(msssim.ssim(x, y, data_range=1.0))
    ref = [structural_similarity(a.astype(np.float64), b.astype(np.float64), gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False, data_range=1,
                                 channel_axis=-1) for a, b in zip(x, y)]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_identical_images_score_one(fixture):
    x = _f(fixture["x_odd"])
    np.testing.assert_allclose(np.asarray(msssim.ms_ssim(x, x)), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(msssim.ssim(x, x)), 1.0, atol=1e-6)


def test_jit_and_input_checks(fixture):
    x, y = _f(fixture["x_odd"]), _f(fixture["y_odd"])
    jitted = jax.jit(lambda a, b: msssim.ms_ssim(a, b, size_average=True))
    np.testing.assert_allclose(float(jitted(x, y)), fixture["ms_ssim_odd"].mean(), atol=1e-4)
    with pytest.raises(ValueError, match="same shape"):
        msssim.ms_ssim(x, y[:, :-1])
    with pytest.raises(ValueError, match="at least 161"):
        msssim.ms_ssim(x[:, :160], y[:, :160])


def test_pool_matches_torch_avg_pool_padding():
    # F.avg_pool2d(kernel_size=2, padding=s % 2): zero pad on both sides, divisor 4, floor mode.
    x = np.arange(5 * 4, dtype=np.float32).reshape(1, 5, 4, 1)
    got = np.asarray(msssim._avg_pool_2x2(x))[0, ..., 0]
    padded = np.pad(x[0, ..., 0], ((1, 1), (0, 0)))
    ref = np.array([[padded[2 * i:2 * i + 2, 2 * j:2 * j + 2].sum() / 4 for j in range(2)]
                    for i in range(3)])
    np.testing.assert_array_equal(got, ref)


def test_distinct_pairs():
    pairs = msssim.sample_distinct_pairs(10, 30, seed=0)
    assert pairs.shape == (30, 2)
    assert np.all(pairs[:, 0] < pairs[:, 1])
    assert len({tuple(p) for p in pairs}) == 30
    assert len(msssim.sample_distinct_pairs(5, 100)) == 10  # all pairs when asked for more
    np.testing.assert_array_equal(pairs, msssim.sample_distinct_pairs(10, 30, seed=0))


def test_msssim_diversity(fixture):
    # A set of near-copies is less diverse (higher MS-SSIM) than a set of unrelated images.
    base = fixture["x_square"][:1]
    rng = np.random.default_rng(0)
    copies = np.clip(base.astype(np.int16) + rng.integers(-3, 4, (4,) + base.shape[1:]),
                     0, 255).astype(np.uint8)
    varied = np.concatenate([fixture["x_square"], fixture["y_square"][3:]])
    mean_copies, vals = msssim.msssim_diversity(copies, num_pairs=6, batch_size=4)
    mean_varied, _ = msssim.msssim_diversity(varied, num_pairs=5, batch_size=4, seed=1)
    assert vals.shape == (6,)
    assert mean_copies > 0.9 > mean_varied
    pairs = msssim.sample_distinct_pairs(len(varied), 5, seed=1)
    direct = np.asarray(msssim.ms_ssim(_f(varied[pairs[:, 0]]), _f(varied[pairs[:, 1]])))
    np.testing.assert_allclose(mean_varied, direct.mean(), atol=1e-6)


def test_msssim_diversity_of_a_lazy_set_reads_only_paired_images(fixture):
    # What evaluate_generation gives it: a set read one image at a time (here 8 images, 3 pairs).
    varied = np.concatenate([fixture["x_square"], fixture["y_square"]])[:8]

    class Lazy:
        read = []

        def __len__(self):
            return len(varied)

        def __getitem__(self, i):
            self.read.append(i)
            return varied[i]

    seen = []
    mean, vals = msssim.msssim_diversity(Lazy(), num_pairs=3, batch_size=2, seed=2,
                                         progress=lambda idx: seen.append(len(idx)) or idx)
    pairs = msssim.sample_distinct_pairs(len(varied), 3, seed=2)
    assert sorted(Lazy.read) == sorted(set(pairs.ravel().tolist())) and seen == [len(Lazy.read)]
    mean_array, vals_array = msssim.msssim_diversity(varied, num_pairs=3, batch_size=2, seed=2)
    np.testing.assert_array_equal(vals, vals_array)
    assert mean == mean_array and vals.shape == (3,)
