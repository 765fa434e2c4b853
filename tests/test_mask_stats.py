"""Mask statistics on drawn shapes with known answers, and their distances."""
import numpy as np
import pytest
from skimage.draw import disk, ellipse

from polypjax.metrics import masks as mstats


def _disk(h=64, w=80, center=(30, 40), r=12):
    m = np.zeros((h, w), np.uint8)
    m[disk(center, r, shape=(h, w))] = 1
    return m


def test_disk():
    m = _disk()
    s = mstats.mask_statistics([m])
    assert s["area_fraction"][0] == pytest.approx(m.sum() / (64 * 80))
    assert s["area_fraction"][0] == pytest.approx(np.pi * 12 ** 2 / (64 * 80), rel=0.05)  # raster disk
    assert s["num_components"][0] == 1
    assert s["eccentricity"][0] < 0.1
    assert s["solidity"][0] > 0.95
    assert not s["touches_border"][0]
    assert s["centroid_y"][0] == pytest.approx(30.5 / 64, abs=1e-9)
    assert s["centroid_x"][0] == pytest.approx(40.5 / 80, abs=1e-9)


def test_two_squares_ellipse_and_border():
    squares = np.zeros((50, 50), np.uint8)
    squares[5:15, 5:15] = 255          # {0,255} masks as read from PNG files
    squares[30:45, 30:45] = 255
    ell = np.zeros((60, 60), bool)
    ell[ellipse(30, 30, 8, 24, shape=(60, 60))] = True
    edge = np.zeros((40, 40), np.float32)
    edge[:10, 15:25] = 0.9             # soft mask touching the top border
    empty = np.zeros((32, 32), np.uint8)
    s = mstats.mask_statistics([squares, ell, edge, empty])
    np.testing.assert_array_equal(s["num_components"], [2, 1, 1, 0])
    np.testing.assert_array_equal(s["touches_border"], [False, False, True, False])
    assert s["solidity"][0] == pytest.approx(1.0)          # largest square
    assert s["eccentricity"][0] == pytest.approx(0.0, abs=1e-9)
    assert s["eccentricity"][1] == pytest.approx(np.sqrt(1 - (8 / 24) ** 2), abs=0.02)
    assert s["area_fraction"][0] == pytest.approx((100 + 225) / 2500)
    assert s["area_fraction"][3] == 0
    assert np.isnan(s["eccentricity"][3]) and np.isnan(s["centroid_x"][3])


def test_batched_array_input_and_distances():
    rng = np.random.default_rng(0)
    small = np.stack([_disk(center=(32, 40), r=r) for r in rng.integers(5, 9, 12)])
    large = np.stack([_disk(center=(32, 40), r=r) for r in rng.integers(14, 18, 12)])
    s_small = mstats.mask_statistics(small[..., None])  # [N,H,W,1]
    s_large = mstats.mask_statistics(large)
    assert s_small["area_fraction"].shape == (12,)
    same = mstats.statistic_distances(s_small, s_small)
    assert all(v == 0 for v in same.values())
    d = mstats.statistic_distances(s_small, s_large)
    assert set(d) == set(mstats.STATISTICS)
    expected = abs(s_small["area_fraction"].mean() - s_large["area_fraction"].mean())
    # Every large disk is bigger than every small one: W1 is the difference of means.
    assert d["area_fraction"] == pytest.approx(expected)
    assert d["num_components"] == 0 and d["touches_border"] == 0

    table = mstats.markdown_table({"small": mstats.summarize(s_small),
                                   "large": mstats.summarize(s_large), "W1": d})
    lines = table.strip().splitlines()
    assert lines[0] == "| statistic | small | large | W1 |"
    assert len(lines) == 2 + len(mstats.STATISTICS)
    assert lines[2].startswith("| area_fraction |")
