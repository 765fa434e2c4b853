"""SSIM and MS-SSIM on NHWC arrays, matching pytorch_msssim, and the MS-SSIM diversity protocol.

Numerics follow pytorch_msssim 1.0 exactly: 1-D Gaussian window (float32, normalised), valid
(unpadded) separable filtering per channel, height first; sigma terms as E[xy] - E[x]E[y];
SSIM/CS maps averaged per channel; MS-SSIM relu's each level's CS and the last level's SSIM per
channel, downsamples with avg_pool2d(kernel 2, padding = size % 2 per axis, zero padding counted),
raises levels to their weights, multiplies, and finally averages over channels.

The filtering is the costly part, and on CPU it is memory-bound, so the layout is chosen for it.
Inside the jitted functions images are planar ([N, C, H, W]: whole rows contiguous), the five
maps the filter needs (x, y, x^2, y^2, xy) are stacked on a new leading axis and blurred together,
one pass per axis, and each pass is a sum of 11 shifted slices times the window weights, which XLA
fuses into one vectorised loop. The alternatives lose on XLA:CPU: a depthwise convolution per
axis takes XLA's slow generic path for grouped convolutions, a banded-matrix matmul does many times
the arithmetic, and the same shifted sum in NHWC strides over 15 interleaved channels (figures:
tools/README.md, "Measurements").
"""
import functools

import numpy as np

import jax
import jax.numpy as jnp

DEFAULT_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_window(win_size=11, win_sigma=1.5):
    """pytorch_msssim's _fspecial_gauss_1d, computed in float32 like torch does."""
    coords = np.arange(win_size, dtype=np.float32) - np.float32(win_size // 2)
    g = np.exp(-(coords ** 2) / np.float32(2 * win_sigma ** 2)).astype(np.float32)
    return (g / g.sum()).astype(np.float32)


def _blur_valid(x, win):
    """Separable valid Gaussian blur over the last two axes (height, then width) of `x`.

    out[i] = sum_k win[k] x[i + k] along each axis, accumulated in window order in float32 (the
    same sum a convolution forms, up to rounding order; agreement is tested to 1e-4).
    """
    win = np.asarray(win, np.float32)
    k = win.shape[0]
    for axis in (x.ndim - 2, x.ndim - 1):
        n = x.shape[axis] - k + 1
        acc = None
        for i in range(k):
            term = jax.lax.slice_in_dim(x, i, i + n, axis=axis) * jnp.asarray(win[i], x.dtype)
            acc = term if acc is None else acc + term
        x = acc
    return x


def _ssim_per_channel(x, y, win, data_range, K):
    """(ssim [N, C], cs [N, C]) of pytorch_msssim's _ssim, for planar [N, C, H, W] inputs."""
    k1, k2 = K
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    mu1, mu2, xx, yy, xy = _blur_valid(jnp.stack([x, y, x * x, y * y, x * y]), win)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = xx - mu1_sq
    sigma2_sq = yy - mu2_sq
    sigma12 = xy - mu1_mu2
    cs_map = (2 * sigma12 + c2) / (sigma1_sq + sigma2_sq + c2)
    ssim_map = ((2 * mu1_mu2 + c1) / (mu1_sq + mu2_sq + c1)) * cs_map
    return ssim_map.mean(axis=(-2, -1)), cs_map.mean(axis=(-2, -1))


def _avg_pool_last2(x):
    """F.avg_pool2d(kernel_size=2, padding=[s % 2 for s in (H, W)]) over the last two axes, divisor 4."""
    h, w = x.shape[-2:]
    ph, pw = h % 2, w % 2
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(ph, ph), (pw, pw)])
    oh, ow = (h + 2 * ph - 2) // 2 + 1, (w + 2 * pw - 2) // 2 + 1
    x = x[..., :2 * oh, :2 * ow]
    return x.reshape(x.shape[:-2] + (oh, 2, ow, 2)).mean(axis=(-3, -1))


def _avg_pool_2x2(x):
    """`_avg_pool_last2` for NHWC input (the layout of the public functions)."""
    return jnp.moveaxis(_avg_pool_last2(jnp.moveaxis(x, -1, 1)), 1, -1)


def _planar(x):
    return jnp.transpose(x, (0, 3, 1, 2))


def _check(x, y, min_side, what):
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape, got {x.shape} and {y.shape}")
    if x.ndim != 4:
        raise ValueError(f"images must be NHWC, got shape {x.shape}")
    if min(x.shape[1:3]) < min_side:
        raise ValueError(f"{what} needs a smaller side of at least {min_side}, got {x.shape}")


def _as_float(x):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("win_size", "win_sigma", "K", "nonnegative"))
def _ssim_jit(x, y, data_range, win_size, win_sigma, K, nonnegative):
    ssim_pc, _ = _ssim_per_channel(_planar(x), _planar(y), gaussian_window(win_size, win_sigma),
                                   data_range, K)
    if nonnegative:
        ssim_pc = jax.nn.relu(ssim_pc)
    return ssim_pc.mean(axis=-1)


def ssim(x, y, data_range=1.0, size_average=False, win_size=11, win_sigma=1.5, K=(0.01, 0.03),
         nonnegative_ssim=False):
    """SSIM of NHWC image batches: [N] per image (mean over channels), or their mean.

    Valid filtering as pytorch_msssim.ssim; the smaller image side must be >= win_size
    (pytorch_msssim would silently skip blurring that axis).
    """
    if win_size % 2 != 1:
        raise ValueError("Window size should be odd.")
    x, y = _as_float(x), _as_float(y)
    _check(x, y, win_size, "SSIM")
    out = _ssim_jit(x, y, data_range, win_size, float(win_sigma), tuple(K),
                    bool(nonnegative_ssim))
    return out.mean() if size_average else out


@functools.partial(jax.jit, static_argnames=("win_size", "win_sigma", "weights", "K"))
def _ms_ssim_jit(x, y, data_range, win_size, win_sigma, weights, K):
    win = gaussian_window(win_size, win_sigma)
    x, y = _planar(x), _planar(y)
    levels = []
    for level in range(len(weights)):
        ssim_pc, cs = _ssim_per_channel(x, y, win, data_range, K)
        if level < len(weights) - 1:
            levels.append(jax.nn.relu(cs))
            x, y = _avg_pool_last2(x), _avg_pool_last2(y)
    levels.append(jax.nn.relu(ssim_pc))
    stacked = jnp.stack(levels)  # [level, N, C]
    w = jnp.asarray(weights, stacked.dtype).reshape(-1, 1, 1)
    return jnp.prod(stacked ** w, axis=0).mean(axis=-1)


def ms_ssim(x, y, data_range=1.0, size_average=False, win_size=11, win_sigma=1.5,
            weights=DEFAULT_WEIGHTS, K=(0.01, 0.03)):
    """MS-SSIM of NHWC image batches: [N] per image, or their mean with size_average=True.

    As pytorch_msssim.ms_ssim (whose size_average defaults to True; here per-image is the
    default because the diversity protocol needs per-pair values).  The smaller side must exceed
    (win_size - 1) * 2^(levels - 1), 160 for the defaults.
    """
    if win_size % 2 != 1:
        raise ValueError("Window size should be odd.")
    weights = tuple(float(w) for w in weights)
    x, y = _as_float(x), _as_float(y)
    _check(x, y, (win_size - 1) * 2 ** (len(weights) - 1) + 1, "MS-SSIM")
    out = _ms_ssim_jit(x, y, data_range, win_size, float(win_sigma), weights, tuple(K))
    return out.mean() if size_average else out


def sample_distinct_pairs(n, num_pairs, seed=0):
    """[P, 2] index pairs (i < j) of different images, no pair twice; all pairs if P >= n(n-1)/2."""
    if n < 2:
        raise ValueError(f"need at least 2 images for pairs, got {n}")
    total = n * (n - 1) // 2
    if num_pairs >= total:
        i, j = np.triu_indices(n, k=1)
        return np.stack([i, j], axis=1)
    rng = np.random.default_rng(seed)
    chosen = {}
    while len(chosen) < num_pairs:
        need = num_pairs - len(chosen)
        i = rng.integers(0, n, size=2 * need)
        j = rng.integers(0, n - 1, size=2 * need)
        j = j + (j >= i)  # uniform over the other n - 1 images
        for a, b in zip(np.minimum(i, j), np.maximum(i, j)):
            chosen.setdefault((int(a), int(b)), None)
            if len(chosen) == num_pairs:
                break
    return np.array(list(chosen), dtype=np.int64)


def msssim_diversity(images, num_pairs=1000, seed=0, batch_size=32, data_range=None, progress=None, **kwargs):
    """Mean MS-SSIM over random pairs of distinct images of one set (lower = more diverse).

    images: an NHWC array, or any sequence (len, [i] -> HWC image) such as a lazily read set, of
    which only the images that occur in a pair are read (a large set costs at most 2 x num_pairs
    reads); `progress` wraps the iteration over those indices (e.g. a tqdm bar). uint8 images are
    scaled to [0, 1]; float ones are used with the given data_range (default 1.0).
    Pairs are evaluated in fixed-size batches (the last one padded) so one compilation serves
    the whole set.  Returns (mean, per-pair values).
    """
    pairs = sample_distinct_pairs(len(images), num_pairs, seed)
    needed = np.unique(pairs)
    if isinstance(images, (np.ndarray, jax.Array)):
        images = images[needed]
    else:
        images = np.stack([np.asarray(images[int(i)]) for i in (needed if progress is None else progress(needed))])
    pairs = np.searchsorted(needed, pairs)
    integer = not jnp.issubdtype(images.dtype, jnp.floating)
    if data_range is None:
        data_range = 1.0
    batch_size = min(batch_size, len(pairs))
    values = []
    for start in range(0, len(pairs), batch_size):
        idx = pairs[start:start + batch_size]
        real = len(idx)
        if real < batch_size:
            idx = np.concatenate([idx, np.repeat(idx[:1], batch_size - real, axis=0)])
        x, y = images[idx[:, 0]], images[idx[:, 1]]
        if integer:
            x = jnp.asarray(x, jnp.float32) / 255.0
            y = jnp.asarray(y, jnp.float32) / 255.0
        values.append(np.asarray(ms_ssim(x, y, data_range=data_range, **kwargs))[:real])
    values = np.concatenate(values)
    return float(values.mean()), values
