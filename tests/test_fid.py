"""Streaming feature moments, Fréchet distance and KID against numpy/scipy references."""
import numpy as np
import pytest
import scipy.linalg

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from polypjax.metrics import fid


def _gaussian(rng, n, d, shift=0.0):
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)) @ a + 0.5 + shift).astype(np.float32)


def _pytorch_fid_reference(mu1, sigma1, mu2, sigma2):
    # pytorch-fid's calculate_frechet_distance on a well-conditioned product (no eps branch).
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def test_moments_match_np_cov_for_any_batch_size():
    x = _gaussian(np.random.default_rng(0), 1000, 48)
    results = []
    for batch in (7, 1000, 333):
        m = fid.FeatureMoments()
        for i in range(0, len(x), batch):
            m.update(x[i:i + batch])
        assert m.n == 1000
        results.append(m.mean_cov())
    mu_ref, sigma_ref = x.astype(np.float64).mean(0), np.cov(x.astype(np.float64), rowvar=False)
    for mu, sigma in results:
        np.testing.assert_allclose(mu, results[0][0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(sigma, results[0][1], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(mu, mu_ref, rtol=1e-12)
        np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-10, atol=1e-13)
        np.testing.assert_array_equal(sigma, sigma.T)


def test_moments_identical_for_sharded_features():
    assert jax.device_count() == 8
    x = _gaussian(np.random.default_rng(1), 1000, 32)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    assert len(sharded.sharding.device_set) == 8
    one = fid.FeatureMoments().update(jax.device_put(x, jax.devices()[0]))
    eight = fid.FeatureMoments().update(sharded)
    for a, b in zip(one.mean_cov(), eight.mean_cov()):
        np.testing.assert_array_equal(a, b)


def test_merge_and_padding_rows():
    x = _gaussian(np.random.default_rng(2), 300, 16)
    whole = fid.FeatureMoments(keep_features=True).update(x)
    a = fid.FeatureMoments(keep_features=True).update(x[:120])
    # Second half arrives in a padded batch, as an evaluation pipeline produces it.
    padded = np.concatenate([x[120:], np.full((20, 16), 1e6, np.float32)])
    valid = np.arange(len(padded)) < 180
    b = fid.FeatureMoments(keep_features=True).update(padded, valid=valid)
    merged = a.merge(b)
    assert merged.n == 300
    for u, v in zip(merged.mean_cov(), whole.mean_cov()):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(merged.features(), x)
    with pytest.raises(ValueError, match="at least 2"):
        fid.FeatureMoments().update(x[:1]).mean_cov()


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_distance_matches_scipy_reference(method):
    rng = np.random.default_rng(3)
    mu1, s1 = fid.FeatureMoments().update(_gaussian(rng, 400, 64)).mean_cov()
    mu2, s2 = fid.FeatureMoments().update(_gaussian(rng, 400, 64, shift=0.1)).mean_cov()
    ref = _pytorch_fid_reference(mu1, s1, mu2, s2)
    got = fid.frechet_distance(mu1, s1, mu2, s2, method=method)
    assert ref > 0.1
    np.testing.assert_allclose(got, ref, rtol=1e-8)


def test_fid_zero_for_same_set_and_grows_with_mean_shift():
    rng = np.random.default_rng(4)
    x = _gaussian(rng, 500, 32)
    direction = rng.normal(size=32)
    base = fid.FeatureMoments().update(x)
    mu, sigma = base.mean_cov()
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)
    assert abs(fid.fid_from_moments(base, base)) < 1e-9 * np.trace(sigma)
    # Shifting every feature leaves the covariance unchanged, so FD = ||shift||^2 exactly.
    values = []
    for t in (0.0, 0.25, 0.5, 1.0, 2.0):
        shifted = fid.FeatureMoments().update(x + t * direction)
        values.append(fid.fid_from_moments(base, shifted))
        np.testing.assert_allclose(values[-1], t * t * direction.dot(direction), rtol=1e-6,
                                   atol=1e-8)
    assert all(b > a for a, b in zip(values, values[1:]))


def test_frechet_distance_of_gaussians_with_equal_covariance():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(16, 16))
    sigma = a @ a.T + np.eye(16)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    for method in ("eigh", "sqrtm"):
        np.testing.assert_allclose(fid.frechet_distance(mu1, sigma, mu2, sigma, method=method),
                                   np.sum((mu1 - mu2) ** 2), rtol=1e-9)


def test_rank_deficient_covariances_are_finite():
    # Fewer samples than dimensions, as for FID on a few hundred images at D=2048.
    rng = np.random.default_rng(6)
    m1 = fid.FeatureMoments().update(_gaussian(rng, 20, 64))
    m2 = fid.FeatureMoments().update(_gaussian(rng, 20, 64, shift=0.2))
    d = fid.fid_from_moments(m1, m2)
    assert np.isfinite(d) and d > 0


def test_kid_same_vs_shifted():
    rng = np.random.default_rng(7)
    x, y = _gaussian(rng, 600, 64), _gaussian(np.random.default_rng(7), 600, 64)
    z = _gaussian(rng, 600, 64, shift=0.5)
    same_mean, same_std = fid.kid(x[:300], x[300:], num_subsets=20, subset_size=200, seed=0)
    shift_mean, shift_std = fid.kid(x, z, num_subsets=20, subset_size=200, seed=0)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert shift_mean > 10 * (abs(same_mean) + same_std)
    assert fid.kid(x, y, num_subsets=3, subset_size=200, seed=1) == \
        fid.kid(x, y, num_subsets=3, subset_size=200, seed=1)


def test_kid_matches_direct_formula():
    rng = np.random.default_rng(8)
    x, y = _gaussian(rng, 50, 8), _gaussian(rng, 50, 8, shift=0.3)
    # One subset of everything: the plain unbiased MMD^2 with the cubic polynomial kernel.
    mean, std = fid.kid(x, y, num_subsets=1, subset_size=50, seed=0)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    k = lambda a, b: (a @ b.T / 8 + 1) ** 3  # noqa: E731
    m = 50
    ref = ((k(x64, x64).sum() - np.trace(k(x64, x64))) / (m * (m - 1))
           + (k(y64, y64).sum() - np.trace(k(y64, y64))) / (m * (m - 1))
           - 2 * k(x64, y64).mean())
    np.testing.assert_allclose(mean, ref, rtol=1e-10)
    assert std == 0.0


def test_stats_files_compatible_with_pytorch_fid(tmp_path):
    import io
    rng = np.random.default_rng(9)
    mu, sigma, feats = rng.normal(size=8), rng.normal(size=(8, 8)), rng.normal(size=(5, 8))
    ours = tmp_path / "ours.npz"
    fid.save_stats(ours, mu, sigma, feats, real_spec="phantom-a", image_size=0, num_images=5,
                   inception_dtype="float32")
    with np.load(ours) as f:  # what pytorch-fid's compute_statistics_of_path reads
        np.testing.assert_array_equal(f["mu"][:], mu)
        np.testing.assert_array_equal(f["sigma"][:], sigma)
    got = fid.load_stats(ours)
    np.testing.assert_array_equal(got.pop("mu"), mu)
    np.testing.assert_array_equal(got.pop("sigma"), sigma)
    assert got.pop("features").dtype == np.float32
    assert got == {"real_spec": "phantom-a", "image_size": 0, "num_images": 5, "inception_dtype": "float32"}
    assert fid.load_stats(ours, arrays=False) == got
    buf = io.BytesIO()  # a file object (evaluate_generation writes its bytes atomically)
    fid.save_stats(buf, mu, sigma)
    assert fid.load_stats(io.BytesIO(buf.getvalue()))["features"] is None

    theirs = tmp_path / "theirs.npz"
    np.savez_compressed(theirs, mu=mu, sigma=sigma)  # pytorch-fid --save-stats
    got = fid.load_stats(theirs)
    np.testing.assert_array_equal(got["mu"], mu)
    np.testing.assert_array_equal(got["sigma"], sigma)
    assert got["features"] is None and set(got) == {"mu", "sigma", "features"}
    bad = tmp_path / "bad.npz"
    np.savez(bad, mean=mu)
    with pytest.raises(ValueError, match="has keys \\['mean'\\]; FID statistics need 'mu'"):
        fid.load_stats(bad, arrays=False)
    text = tmp_path / "text.npz"
    text.write_text("not an npz")
    with pytest.raises(ValueError, match="text.npz is not a readable .npz"):
        fid.load_stats(text)


def test_fid_unavailable_reason(tmp_path):
    assert "no FID Inception weights" in fid.fid_unavailable_reason(None)
    missing = tmp_path / "w.npz"
    assert "not found" in fid.fid_unavailable_reason(missing)
    missing.write_bytes(b"x")
    assert fid.fid_unavailable_reason(missing) is None
