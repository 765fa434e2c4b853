"""FID and KID from Inception pool3 features: streaming moments, Fréchet distance, KID.

Features are produced on device in batches (possibly sharded over a mesh, possibly by several
processes) and reduced here on the host in float64.  Numbers follow pytorch-fid (unbiased
covariance, `mu`/`sigma` .npz statistics, sqrtm-based distance) and torch-fidelity / clean-fid
(unbiased polynomial-kernel MMD for KID), so they can be compared with published values, provided
the features come from the real FID Inception weights.  `fid_unavailable_reason` is the guard that
keeps FID/KID from ever being reported on anything else.
"""
import os

import numpy as np
import scipy.linalg

import jax

from polypjax import parallel


class FeatureMoments:
    """Running n, sum and sum of outer products of feature vectors, in float64 on the host.

    Why float64 on the host: the covariance is (S - n mu mu^T) / (n - 1), a difference of two
    large, nearly equal terms (pool3 features are non-negative with means comparable to their
    spread), and S sums 10^4-10^5 outer products.  In float32 that cancellation and summation
    would cost 3-4 of the 7 significant digits, and the result would depend on batch size and
    device count.  In float64 the error stays ~1e-12 relative, so batches of any size, on any
    number of devices, give the same statistics to well below what FID can resolve; the cost
    (one D x D rank-B update per batch) is small next to running Inception.

    Raw sums (rather than a running mean and centred M2) make `merge` an exact addition.
    """

    def __init__(self, dim=None, keep_features=False):
        self.n = 0
        self.dim = dim
        self.sum = None if dim is None else np.zeros(dim, np.float64)
        self.sum_outer = None if dim is None else np.zeros((dim, dim), np.float64)
        # KID needs the features themselves; kept as float32 (50k x 2048 is 400 MB).
        self.keep_features = keep_features
        self._features = []

    def _init(self, dim):
        if self.dim is None:
            self.dim = dim
            self.sum = np.zeros(dim, np.float64)
            self.sum_outer = np.zeros((dim, dim), np.float64)
        elif dim != self.dim:
            raise ValueError(f"feature dimension {dim} != {self.dim}")

    def update(self, features, valid=None):
        """Add a [B, D] batch (numpy or jax.Array, sharded or not).

        valid: optional [B] bool, False for padding rows that evaluation pipelines add to make
        the last batch full.
        """
        x = parallel.to_host(features)
        if x.ndim != 2:
            raise ValueError(f"features must be [batch, dim], got shape {x.shape}")
        if valid is not None:
            x = x[np.asarray(parallel.to_host(valid), bool)]
        self._init(x.shape[1])
        if self.keep_features:
            self._features.append(x.astype(np.float32))
        x = x.astype(np.float64)
        self.n += x.shape[0]
        self.sum += x.sum(axis=0)
        self.sum_outer += x.T @ x
        return self

    def merge(self, other):
        """New moments of the union of both sets (e.g. shards computed separately)."""
        out = FeatureMoments(keep_features=self.keep_features and other.keep_features)
        for m in (self, other):
            if m.dim is not None:
                out._init(m.dim)
                out.n += m.n
                out.sum += m.sum
                out.sum_outer += m.sum_outer
        out._features = (self._features + other._features) if out.keep_features else []
        return out

    def features(self):
        if not self.keep_features:
            raise ValueError("features were not kept: construct with keep_features=True")
        if not self._features:
            return np.zeros((0, self.dim or 0), np.float32)
        return np.concatenate(self._features, axis=0)

    def mean_cov(self):
        """(mu [D], sigma [D, D]): mean and unbiased covariance, as np.cov in pytorch-fid."""
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, have {self.n}")
        mu = self.sum / self.n
        sigma = (self.sum_outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        # Exact symmetry (rounding of the update leaves it ~1e-16 off), as np.cov gives.
        sigma = (sigma + sigma.T) / 2
        return mu, sigma


def _sqrtm_trace_scipy(sigma1, sigma2, eps):
    """Tr sqrt(sigma1 sigma2) exactly as pytorch-fid's calculate_frechet_distance does it."""
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        # pytorch-fid: "fid calculation produces singular product; adding eps to diagonal".
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return np.trace(covmean)


def _sqrtm_trace_eigh(sigma1, sigma2):
    """Tr sqrt(sigma1 sigma2) = sum sqrt(eig(A sigma2 A)), A = sigma1^(1/2), both symmetric.

    sigma1 sigma2 is similar to the symmetric PSD A sigma2 A, so its eigenvalues are real and
    non-negative: two symmetric eigendecompositions, no complex parts, and rank-deficient
    covariances (fewer samples than dimensions) need no eps offset; tiny negative eigenvalues
    from rounding are clipped to 0.
    """
    w, v = np.linalg.eigh(sigma1)
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = a @ sigma2 @ a
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    return np.sqrt(np.clip(ev, 0, None)).sum()


def frechet_distance(mu1, sigma1, mu2, sigma2, method="eigh", eps=1e-6):
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), in float64.

    method="sqrtm" reproduces pytorch-fid step by step (scipy.linalg.sqrtm, eps offset when the
    product is singular, error on a large imaginary part); "eigh" (default) computes the same
    trace through symmetric eigendecompositions: faster at D=2048 and robust to singular
    covariances.  Both agree to ~1e-8 relative on well-conditioned inputs (tests/test_fid.py).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2,
                                                                                    np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    if method == "sqrtm":
        tr_covmean = _sqrtm_trace_scipy(sigma1, sigma2, eps)
    elif method == "eigh":
        tr_covmean = _sqrtm_trace_eigh(sigma1, sigma2)
    else:
        raise ValueError(f"method must be 'eigh' or 'sqrtm', got {method!r}")
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def fid_from_moments(moments1, moments2, method="eigh"):
    return frechet_distance(*moments1.mean_cov(), *moments2.mean_cov(), method=method)


STATS_ARRAYS = ("mu", "sigma", "features")


def save_stats(file, mu, sigma, features=None, **metadata):
    """FID statistics as an .npz that pytorch-fid reads (keys `mu`, `sigma`), plus, optionally, the
    features they come from (float32; KID needs them) and scalar metadata (what they were made
    from, e.g. real_spec, image_size, num_images, inception_dtype), one 0-d array each.

    file: a path or a binary file object, as for np.savez (a file object lets the caller write
    the bytes atomically). Uncompressed: float covariances barely compress, and zlib on 32 MB
    costs seconds.
    """
    arrays = {"mu": np.asarray(mu), "sigma": np.asarray(sigma)}
    if features is not None:
        arrays["features"] = np.asarray(features, np.float32)
    np.savez(file, **arrays, **{k: np.array(v) for k, v in metadata.items()})


def load_stats(file, arrays=True):
    """{"mu", "sigma", "features" (None when absent), **metadata} of a `save_stats` file or of
    pytorch-fid's --save-stats output (mu and sigma only, no metadata).

    arrays=False reads only the metadata (and checks that mu and sigma are there): a cheap check
    of a cache before a run. ValueError, naming the file, when it is not an .npz or lacks
    mu/sigma.
    """
    try:
        f = np.load(file)
    except FileNotFoundError:
        raise
    except Exception as e:  # np.load raises several types for a file that is not an .npz
        raise ValueError(f"{file} is not a readable .npz ({e})") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{file} is not a readable .npz (it holds a single array)")
    with f:
        keys = set(f.files)
        if not {"mu", "sigma"} <= keys:
            raise ValueError(f"{file} has keys {sorted(keys)}; FID statistics need 'mu' and 'sigma'")
        out = {}
        for k in f.files:
            if k not in STATS_ARRAYS and f[k].ndim == 0:
                out[k] = f[k].item()
        if arrays:
            out.update(mu=f["mu"][:], sigma=f["sigma"][:],
                       features=f["features"][:] if "features" in keys else None)
    return out


def _poly_kernel(x, y):
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kid(feats1, feats2, num_subsets=100, subset_size=1000, seed=0):
    """Kernel Inception Distance: (mean, std) over subsets of the unbiased MMD^2 estimate.

    k(x, y) = (x.y / d + 1)^3, as torch-fidelity and clean-fid.  Each subset draws
    m = min(subset_size, n1, n2) rows of each set without replacement; std is over subsets
    (ddof=0, as torch-fidelity).  Float64 throughout: the estimate is a small difference of
    kernel means that are O(1-10).
    """
    f1 = np.asarray(jax.device_get(feats1), np.float64)
    f2 = np.asarray(jax.device_get(feats2), np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"features must be [n, d] with equal d, got {f1.shape} and {f2.shape}")
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError(f"KID needs at least 2 features per set, got {len(f1)} and {len(f2)}")
    rng = np.random.default_rng(seed)
    mmds = np.empty(num_subsets)
    for i in range(num_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
        # Unbiased: drop the diagonals of the within-set kernels.
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        mmds[i] = within - 2 * kxy.sum() / (m * m)
    return float(mmds.mean()), float(mmds.std())


def fid_unavailable_reason(weights_path):
    """None when FID/KID can be computed, else why not (to report in place of the numbers).

    FID and KID are only meaningful with the real FID Inception weights; with missing weights
    the metrics are reported as unavailable, never computed with random weights.
    """
    how = ("download pytorch-fid's pt_inception-2015-12-05-6726825d.pth and convert it with "
           "tools/convert_fid_inception.py")
    if weights_path is None or str(weights_path) == "":
        return f"no FID Inception weights file given; {how}"
    if not os.path.isfile(weights_path):
        return f"FID Inception weights file {os.fspath(weights_path)!r} not found; {how}"
    return None


def frechet_distance_to_features(mu1, sigma1, features2):
    """FID between (mu1, sigma1) and a set given by its [n, D] features, exact, in float64.

    With n <= D the second covariance is Y^T Y (Y = centred features / sqrt(n - 1)), and the
    non-zero eigenvalues of sigma1 Y^T Y are those of the symmetric PSD n x n matrix Y sigma1 Y^T,
    so Tr sqrt(sigma1 sigma2) = sum sqrt(eig(Y sigma1 Y^T)): one n x n eigendecomposition instead
    of two D x D ones (D = 2048). Generated sets of a few hundred to a couple of thousand images
    are the common case here. Larger sets go through `frechet_distance`.
    """
    x = np.asarray(features2, np.float64)
    n, d = x.shape
    mu2 = x.mean(axis=0)
    if n > d:
        return frechet_distance(mu1, sigma1, mu2, np.cov(x, rowvar=False))
    mu1 = np.asarray(mu1, np.float64)
    sigma1 = np.asarray(sigma1, np.float64)
    y = (x - mu2) / np.sqrt(n - 1)
    g = y @ sigma1 @ y.T
    ev = np.linalg.eigvalsh((g + g.T) / 2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + (y * y).sum() - 2 * np.sqrt(np.clip(ev, 0, None)).sum())
