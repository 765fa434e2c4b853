"""Tests of the procedural phantom dataset: API, determinism, statistics and learnability."""
import dataclasses
import re

import numpy as np
import pytest
from scipy import ndimage

from polypjax.data import phantom
from polypjax.data.phantom import DOMAINS, PhantomDomain, PhantomSource, make_pair

# Small frames keep the statistical tests fast; the generator renders at any size.
SMALL = 64


def _equal(a: dict, b: dict) -> bool:
    return np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])


def test_domains_registry():
    assert set(DOMAINS) >= {"phantom-a", "phantom-b", "phantom-c"}
    for name, dom in DOMAINS.items():
        assert isinstance(dom, PhantomDomain) and dom.name == name
        with pytest.raises(dataclasses.FrozenInstanceError):
            dom.blur = 0.0  # frozen: domains are shared constants


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_pair_dtype_shape_values(domain):
    native = DOMAINS[domain].native_size
    for size, expected in ((None, native), (40, 40)):
        pair = make_pair(3, domain=domain, size=size, split="test")
        assert pair["image"].shape == (expected, expected, 3) and pair["image"].dtype == np.uint8
        assert pair["mask"].shape == (expected, expected) and pair["mask"].dtype == np.uint8
        assert set(np.unique(pair["mask"])) <= {0, 1}
        assert pair["id"] == f"{domain}-test-00003"
        # The picture uses the tonal range: neither blank nor saturated everywhere.
        assert 20 < pair["image"].mean() < 220 and pair["image"].std() > 10


def test_deterministic_and_distinct():
    ref = make_pair(5, domain="phantom-a", size=SMALL, seed=1, split="train")
    assert _equal(ref, make_pair(5, domain="phantom-a", size=SMALL, seed=1, split="train"))
    others = [
        make_pair(6, domain="phantom-a", size=SMALL, seed=1, split="train"),
        make_pair(5, domain="phantom-a", size=SMALL, seed=2, split="train"),
        make_pair(5, domain="phantom-a", size=SMALL, seed=1, split="test"),
        make_pair(5, domain="phantom-b", size=SMALL, seed=1, split="train"),
    ]
    for other in others:
        assert not np.array_equal(ref["image"], other["image"])
        assert not np.array_equal(ref["mask"], other["mask"])


def test_random_access_does_not_depend_on_order():
    src = PhantomSource("phantom-c", num_examples=20, size=32, seed=3)
    backwards = [src[i] for i in (19, 7, 0)]
    forwards = [make_pair(i, domain="phantom-c", size=32, seed=3) for i in (19, 7, 0)]
    assert all(_equal(a, b) for a, b in zip(backwards, forwards))


def test_size_changes_resolution_not_scene():
    # Rendered at 128 and box-downsampled to 64, a frame matches its 64 px rendering: same scene.
    lo = make_pair(2, size=64)
    hi = make_pair(2, size=128)
    down = hi["image"].astype(np.float32).reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    corr = np.corrcoef(down.ravel(), lo["image"].astype(np.float32).ravel())[0, 1]
    assert corr > 0.9
    hi_mask = hi["mask"].reshape(64, 2, 64, 2).mean(axis=(1, 3)) > 0.5
    inter = (hi_mask & (lo["mask"] > 0)).sum()
    union = (hi_mask | (lo["mask"] > 0)).sum()
    assert inter / union > 0.9
    assert not np.array_equal(hi["image"][::2, ::2], lo["image"])  # rendered, not resized


def test_source_api():
    src = PhantomSource("phantom-b", num_examples=4, seed=0, split="test")
    assert len(src) == 4 and src.name == "phantom-b/test"
    assert src.size == DOMAINS["phantom-b"].native_size
    assert "phantom-b" in repr(src) and "num_examples=4" in repr(src)
    assert src[np.int64(3)]["id"] == "phantom-b-test-00003"
    for bad in (-1, 4):
        with pytest.raises(IndexError):
            src[bad]


def test_unknown_domain_lists_known_ones():
    with pytest.raises(ValueError, match=re.escape("phantom-a")):
        make_pair(0, domain="kvasir")
    with pytest.raises(ValueError, match="phantom-b"):
        PhantomSource("nope")


def test_train_and_test_splits_differ():
    train = [make_pair(i, size=32, split="train")["image"] for i in range(8)]
    test = [make_pair(i, size=32, split="test")["image"] for i in range(8)]
    assert not any(np.array_equal(a, b) for a in train for b in test)


def test_every_mask_non_empty_and_area_spans_small_to_large():
    areas = np.array([make_pair(i, size=SMALL)["mask"].mean() for i in range(150)])
    assert areas.min() > 0.0  # Kvasir has a polyp in every frame
    assert areas.min() < 0.05 and areas.max() > 0.3
    assert 0.05 < np.median(areas) < 0.25
    assert areas.max() < 0.6


def test_domains_differ_in_colour():
    means = {
        d: np.mean([make_pair(i, domain=d, size=32)["image"].reshape(-1, 3).mean(0) for i in range(30)], 0)
        for d in DOMAINS
    }
    names = sorted(means)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.linalg.norm(means[a] - means[b]) > 10.0, (a, b, means[a], means[b])


# ----------------------------------------------------------------------------- learnability


def _colour_features(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / 255.0


def _local_features(img: np.ndarray) -> np.ndarray:
    """Colour plus what a small receptive field sees: smoothed colour, edges, contrast, at 2 scales."""
    x = img.astype(np.float32) / 255.0
    grey = x.mean(-1)
    feats = [x]
    for s in (2.0, 6.0):
        feats.append(ndimage.gaussian_filter(x, (s, s, 0)))
        feats.append(ndimage.gaussian_gradient_magnitude(grey, s / 2)[..., None])
        var = ndimage.gaussian_filter(grey * grey, s) - ndimage.gaussian_filter(grey, s) ** 2
        feats.append(np.sqrt(np.clip(var, 0.0, None))[..., None])
        feats.append((grey - ndimage.gaussian_filter(grey, 2 * s))[..., None])
    return np.concatenate(feats, axis=-1)


def _pixels(featurise, domain, indices, split):
    xs, ys = [], []
    for i in indices:
        pair = make_pair(i, domain=domain, size=SMALL, split=split)
        f = featurise(pair["image"])
        xs.append(f.reshape(-1, f.shape[-1]))
        ys.append(pair["mask"].reshape(-1))
    return np.concatenate(xs), np.concatenate(ys).astype(np.float64)


def _design(x, mu, sd):
    z = (x - mu) / sd
    return np.concatenate([z, z * z, np.ones((len(z), 1))], axis=1)


def _fit_logistic(x, y, iters=12):
    """Class-balanced logistic regression on features and their squares, by Newton steps."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = _design(x, mu, sd)
    w = np.zeros(z.shape[1])
    cw = np.where(y > 0, 0.5 / y.mean(), 0.5 / (1.0 - y.mean()))
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-z @ w))
        grad = z.T @ (cw * (p - y))
        hess = (z * (cw * p * (1.0 - p))[:, None]).T @ z + 1e-3 * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    return lambda x_: _design(x_, mu, sd) @ w


def _dice(pred, y):
    return 2.0 * (pred * y).sum() / (pred.sum() + y.sum())


def _held_out_dice(featurise, domain) -> float:
    """Fit on 50 train frames (pixel sample), pick the best-Dice threshold there, score 30 test frames."""
    x, y = _pixels(featurise, domain, range(50), "train")
    sel = np.random.default_rng(0).choice(len(y), 30_000, replace=False)
    x, y = x[sel], y[sel]
    score = _fit_logistic(x, y)
    s = score(x)
    thresholds = np.quantile(s, np.linspace(0.3, 0.99, 70))
    best = thresholds[np.argmax([_dice(s > t, y) for t in thresholds])]
    xt, yt = _pixels(featurise, domain, range(30), "test")
    return float(_dice(score(xt) > best, yt))


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_colour_alone_is_weak_but_local_features_help(domain):
    colour = _held_out_dice(_colour_features, domain)
    local = _held_out_dice(_local_features, domain)
    print(f"\n{domain} held-out Dice: colour-only {colour:.3f}, local features {local:.3f}")
    assert colour < 0.6
    assert local - colour >= 0.15


def test_module_exports():
    assert set(phantom.__all__) == {"DOMAINS", "PhantomDomain", "PhantomSource", "make_pair"}
