"""Task evaluate_generation on tiny data: reports, FID plumbing, stats cache, label consistency, errors.

The real set is 6 phantom-a frames; the generated folders are an exact copy of them (written with
PairWriter, so FID ~ 0 and mask distances 0) and 6 noise images with rectangle masks. FID runs on
random Inception weights here: a test of the plumbing only (user runs refuse random weights).
"""
import json
import pathlib

import numpy as np
import pytest

from polypjax import configlib, main
from polypjax.data import catalog, export, sources
from polypjax.experiments import evaluate, generation_metrics
from polypjax.metrics import fid

ROOT = pathlib.Path(__file__).resolve().parent.parent
N = 6


def _config(**overrides):
    c = configlib.load_config("evaluate_generation")
    c.data.image_size = 48
    c.data.phantom_train_examples = N
    e = c.evaluate
    e.image_size = 48
    e.batch_size = 8  # one batch per set on the 8 simulated devices
    e.msssim_size = 161
    e.msssim_pairs = 8
    e.kid_subsets = 4
    for key, value in overrides.items():
        e[key] = value
    return c


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    real = catalog.make_source("phantom-a", _config().data, default_split="train")
    export.write_source(real, root / "copy", progress=False)
    rng = np.random.default_rng(0)
    noise = export.PairWriter(root / "noise")
    for i in range(N):
        mask = np.zeros((48, 48), np.uint8)
        y, x = rng.integers(0, 30, 2)
        mask[y:y + rng.integers(4, 18), x:x + rng.integers(4, 18)] = 1
        noise.write(f"n{i}", rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), mask)
    return {"copy": str(root / "copy"), "noise": str(root / "noise")}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from fid_inception_recipe import random_fid_inception_state_dict
    from polypjax.models import inception
    path = tmp_path_factory.mktemp("inception") / "random_fid_inception.npz"
    state_dict = random_fid_inception_state_dict(inception.torch_state_dict_shapes(), seed=0)
    np.savez(path, **inception.convert_state_dict(state_dict))
    return str(path)


def _threshold_predictor(image_size, invert=False):
    # A stand-in segmenter: the "polyp" is wherever the image is bright.
    def predict(images):
        bright = np.asarray(images)[..., :1] > 127
        return np.where(bright != invert, 10.0, -10.0).astype(np.float32)

    def features(images):  # stand-in encoder features: per-image RGB mean and std
        x = np.asarray(images, np.float32) / 255.0
        return np.concatenate([x.mean((1, 2)), x.std((1, 2))], axis=-1)
    predict.features = features
    predict.image_size = image_size
    return predict


def _run(config, workdir):
    main.run(config, str(workdir))
    report = json.loads((workdir / "generation_metrics.json").read_text())
    return report, (workdir / "generation_metrics.md").read_text()


def test_without_weights_fid_unavailable_other_metrics_present(folders, tmp_path, monkeypatch):
    seg_wd = tmp_path / "seg"
    seg_wd.mkdir()
    (seg_wd / "config.json").write_text("{}")
    monkeypatch.setattr(evaluate, "load_segmenter", lambda wd: _threshold_predictor(32))
    config = _config(generated=f"{folders['copy']},{folders['noise']}", segmenter_workdir=str(seg_wd))
    report, md = _run(config, tmp_path / "wd")

    assert report["fid_unavailable_reason"].startswith("no FID Inception weights file given")
    assert (tmp_path / "wd" / "config.json").exists()
    copy, noise = report["generated"]
    assert [copy["name"], noise["name"]] == ["copy@all", "noise@all"]
    for r in (report["real"], copy, noise):
        assert r["num_images"] == N
        assert 0.0 <= r["msssim_diversity"]["mean"] <= 1.0 and r["msssim_diversity"]["num_pairs"] == 8
    for r in (copy, noise):
        assert r["fid"] is None and r["kid"] is None
        lc = r["label_consistency"]
        assert lc["num_images"] == N and 0.0 <= lc["mDice"] <= 1.0 and 0.0 <= lc["mIoU"] <= 1.0
    # A set compared with itself: identical masks and images, same pairs.
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in copy["mask_distances"].values() if v is not None)
    assert copy["msssim_diversity"]["mean"] == pytest.approx(report["real"]["msssim_diversity"]["mean"], abs=1e-6)
    assert noise["mask_distances"]["area_fraction"] > 0.01
    assert "| real (reference) | 6 | – | – |" in md
    assert "| copy@all | 6 | n/a | n/a |" in md
    assert "FID/KID unavailable: no FID Inception weights file given" in md
    assert "| area_fraction |" in md and "noise@all W1" in md
    # Segmenter-feature FD/KID with its two baselines, and colour statistics.
    b = report["segmenter_feature_baselines"]
    assert "encoder features (6-d)" in b["features"] and b["real_vs_real"]["num_images"] == N // 2
    assert b["noise"]["fd"] > b["real_vs_real"]["fd"] >= 0
    assert copy["segmenter_features"]["colour"]["mean_abs_error"] == pytest.approx([0, 0, 0], abs=1e-9)
    assert max(noise["segmenter_features"]["colour"]["mean_abs_error"]) > 20
    assert noise["segmenter_features"]["fd"] > copy["segmenter_features"]["fd"]
    # Scored with as many images as the real-vs-real bound, not all N: FD falls with the count.
    assert copy["segmenter_features"]["num_images"] == noise["segmenter_features"]["num_images"] == N // 2
    assert "| real vs real (baseline) | 3 |" in md and "| colour-matched noise (baseline) | 3 |" in md
    assert md.count("| centroid_y |") == 1 and md.count("| centroid_x |") == 1


def test_fid_kid_with_weights_and_real_stats_cache(folders, weights, tmp_path):
    stats = tmp_path / "cache" / "real_stats.npz"
    stats.parent.mkdir()
    config = _config(generated=f"{folders['copy']},{folders['noise']}", inception_weights=weights,
                     real_stats=str(stats))
    first, md = _run(config, tmp_path / "wd1")
    copy, noise = first["generated"]
    assert first["fid_unavailable_reason"] is None and first["real"]["fid_statistics"].startswith("computed, saved")
    assert noise["fid"] > 0 and abs(copy["fid"]) < 1e-3 * noise["fid"]
    assert noise["kid"]["mean"] > copy["kid"]["mean"] and noise["kid"]["std"] >= 0
    assert f"| noise@all | 6 | {noise['fid']:.2f} |" in md
    with np.load(stats) as f:  # pytorch-fid reads mu and sigma
        assert f["mu"].shape == (2048,) and f["sigma"].shape == (2048, 2048) and f["features"].shape == (N, 2048)
    mtime = stats.stat().st_mtime_ns

    config.evaluate.generated = folders["noise"]  # one set is enough to see the cache used
    second, _ = _run(config, tmp_path / "wd2")
    assert second["real"]["fid_statistics"] == f"loaded from {stats}" and stats.stat().st_mtime_ns == mtime
    assert second["generated"][0]["fid"] == pytest.approx(noise["fid"], rel=1e-6)
    assert second["generated"][0]["kid"]["mean"] == pytest.approx(noise["kid"]["mean"], rel=1e-6)

    # A plain pytorch-fid file (mu/sigma only): FID from it, KID unavailable.
    plain = tmp_path / "plain.npz"
    with np.load(stats) as f:
        np.savez(plain, mu=f["mu"], sigma=f["sigma"])
    third, md3 = _run(_config(generated=folders["noise"], inception_weights=weights, real_stats=str(plain)),
                      tmp_path / "wd3")
    assert third["generated"][0]["fid"] == pytest.approx(noise["fid"], rel=1e-6)
    assert third["generated"][0]["kid"] is None and "no features" in third["kid_unavailable_reason"]
    assert "KID unavailable" in md3


@pytest.mark.parametrize("n", [12, 40])
def test_frechet_distance_to_features_matches_full_computation(n):
    from polypjax.metrics import fid
    rng = np.random.default_rng(n)
    real = rng.gamma(2.0, size=(50, 32)) @ rng.normal(size=(32, 32))
    gen = rng.gamma(2.0, size=(n, 32)) @ rng.normal(size=(32, 32)) + 0.3
    mu1, sigma1 = real.mean(0), np.cov(real, rowvar=False)
    got = fid.frechet_distance_to_features(mu1, sigma1, gen.astype(np.float32))
    ref = fid.frechet_distance(mu1, sigma1, gen.astype(np.float32).mean(0),
                               np.cov(gen.astype(np.float32).astype(np.float64), rowvar=False))
    assert got == pytest.approx(ref, rel=1e-8)


def test_feature_distances_match_scipy_sqrtm_reference():
    import scipy.linalg
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(40, 5)) @ rng.normal(size=(5, 5))
    gen = rng.normal(0.5, 1.5, size=(30, 5))
    mu1, mu2 = ref.mean(0), gen.mean(0)
    s1, s2 = np.cov(ref, rowvar=False), np.cov(gen, rowvar=False)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    got = generation_metrics.feature_distances(ref, gen, kid_subsets=5, kid_subset_size=20, seed=0)
    assert got["fd"] == pytest.approx(expected, rel=1e-8)
    same = generation_metrics.feature_distances(ref, ref, kid_subsets=5, kid_subset_size=20, seed=0)
    assert same["fd"] == pytest.approx(0.0, abs=1e-8)
    assert got["kid"]["mean"] == pytest.approx(fid.kid(ref, gen, num_subsets=5, subset_size=20, seed=0)[0])


def test_label_consistency_with_stand_in_segmenter():
    rng = np.random.default_rng(1)
    pairs = []
    for i in range(5):  # images that show their mask, so thresholding recovers it exactly
        mask = np.zeros((32, 32), np.uint8)
        mask[rng.integers(0, 16):, rng.integers(0, 16):rng.integers(17, 32)] = 1
        pairs.append({"image": np.repeat(mask[..., None] * 255, 3, axis=-1), "mask": mask, "id": str(i)})
    same = generation_metrics.label_consistency(pairs, _threshold_predictor(32), 32, batch_size=4)
    assert same["mDice"] == pytest.approx(1.0) and same["mIoU"] == pytest.approx(1.0) and same["num_images"] == 5
    # Chance: predictions against a neighbour's mask, only where both are real (not padding).
    assert same["chance_num_images"] == 4 and same["chance_mDice"] < 0.8
    inverse = generation_metrics.label_consistency(pairs, _threshold_predictor(32, invert=True), 32, batch_size=4)
    assert inverse["mDice"] == pytest.approx(0.0) and inverse["num_images"] == 5
    resized = generation_metrics.label_consistency(pairs, _threshold_predictor(16), 16, batch_size=8)
    assert resized["mDice"] > 0.9


def test_label_consistency_never_scores_an_empty_mask_as_consistent():
    """A generator that paints no polyp (empty mask, plain frame) and a segmenter that sees none
    agree pixel for pixel; such a pair must still count as a failure, not Dice 1."""
    full = np.zeros((32, 32), np.uint8)
    full[8:24, 8:24] = 1
    pairs = [{"image": np.repeat(m[..., None] * 255, 3, axis=-1), "mask": m, "id": str(i)}
             for i, m in enumerate([full, np.zeros_like(full), np.zeros_like(full), full])]
    got = generation_metrics.label_consistency(pairs, _threshold_predictor(32), 32, batch_size=4)
    assert got["num_images"] == 4 and got["mDice"] == pytest.approx(0.5) and got["mIoU"] == pytest.approx(0.5)


def test_square_box_centres_on_the_region_and_stays_inside_the_frame():
    box = generation_metrics.square_box
    assert box((10, 20, 30, 60), 100) == (0, 20, 40, 60)  # as wide as the longer side, centred
    assert box((40, 40, 50, 60), 100) == (35, 40, 55, 60)
    # Near the border the square is shifted inside the frame, not cut: it stays 30 px wide.
    assert box((80, 70, 100, 100), 100) == (70, 70, 100, 100)
    assert box((0, 0, 10, 40), 100) == (0, 0, 40, 40)
    assert box((50, 50, 51, 51), 64) == (46, 46, 54, 54)  # a speck: at least an eighth of the frame
    assert box((0, 10, 64, 20), 64) == (0, 0, 64, 64)  # never larger than the frame
    # region_crop: box fractions of the frame, the square frame's pixels unchanged at the crop's size.
    yy, xx = np.mgrid[:64, :64]
    image = np.stack([yy, xx, np.zeros_like(yy)], -1).astype(np.uint8)
    crop = generation_metrics.region_crop({"image": image, "mask": (yy > 20).astype(np.uint8), "id": "a"},
                                          (0.25, 0.25, 0.5, 0.5), 16)
    assert np.array_equal(crop["image"], image[16:32, 16:32]) and crop["id"] == "a"
    assert np.array_equal(crop["mask"], (yy > 20)[16:32, 16:32])
    # A frame that is not square is squared first, as the generator and the whole-frame metrics see it.
    wide = generation_metrics.region_crop({"image": np.zeros((32, 64, 3), np.uint8),
                                           "mask": np.zeros((32, 64), np.uint8)}, (0.5, 0.5, 1.0, 1.0), 24)
    assert wide["image"].shape == (24, 24, 3) and wide["mask"].shape == (24, 24)


def _frame_with_polyp(rng, size=64):
    """A smooth pinkish frame with a small bright disc (the polyp, about 4 % of the frame)."""
    yy, xx = np.mgrid[:size, :size]
    base = np.array([170, 90, 80]) + rng.normal(0, 10, 3)
    image = base + 20 * np.sin(yy[..., None] / 9 + rng.uniform(0, 6)) + rng.normal(0, 6, (size, size, 3))
    r = rng.uniform(5, 7)
    cy, cx = rng.uniform(r + 3, size - r - 3, 2)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
    image = np.where(mask[..., None] > 0, np.array([215, 150, 120]) + rng.normal(0, 6, (size, size, 3)), image)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def painted(tmp_path_factory):
    """A real folder of 12 frames, an exact copy of it (no regions, like a sampled set) and the same
    frames with uniform noise painted into the polyp's dilated region (inpainted-style records), run
    through evaluate_generation with the stand-in segmenter: (report, md, folders, workdir)."""
    from skimage import morphology
    root = tmp_path_factory.mktemp("painted")
    rng = np.random.default_rng(3)
    real, copy, paint = (export.PairWriter(root / n) for n in ("real", "copy", "painted"))
    for i in range(12):
        image, mask = _frame_with_polyp(rng)
        real.write(f"r{i}", image, mask)
        copy.write(f"r{i}", image, mask)
        region = morphology.dilation(mask.astype(bool), morphology.ellipse(2, 2))
        ys, xs = np.nonzero(region)
        noisy = np.where(region[..., None], rng.integers(0, 256, image.shape), image).astype(np.uint8)
        paint.write(f"p{i}", noisy, mask, source_frame=i, source_id=f"r{i}",
                    region={"kind": "dilated_mask", "fraction": float(region.mean()),
                            "bbox": [int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1]})
    seg_wd = root / "seg"
    seg_wd.mkdir()
    (seg_wd / "config.json").write_text("{}")
    folders = {n: str(root / n) for n in ("real", "copy", "painted")}
    c = _config(real=f"{folders['real']}@all", generated=f"{folders['copy']},{folders['painted']}",
                segmenter_workdir=str(seg_wd))
    c.data.image_size = 64
    with pytest.MonkeyPatch.context() as m:
        m.setattr(evaluate, "load_segmenter", lambda wd: _threshold_predictor(32))
        report, md = _run(c, root / "wd")
    return report, md, folders, root / "wd"


def test_painted_regions_expose_a_painting_that_whole_frames_hide(painted):
    """Noise painted into a real frame's polyp region: the whole frames are 95 % real and score
    near real; the crops around the painted regions are mostly noise and must score far from real."""
    report, md, _, _ = painted
    copy, paint = report["generated"]
    whole, region = paint["segmenter_features"], paint["segmenter_features"]["regions"]
    b, rb = report["segmenter_feature_baselines"], report["segmenter_feature_baselines"]["regions"]
    assert copy["segmenter_features"]["regions"] is None  # no region records: nothing to crop
    assert rb["real_vs_real"]["num_images"] == 6 and region["num_images"] == 6  # all 12 real frames have a polyp
    whole_error, region_error = max(whole["colour"]["mean_abs_error"]), max(region["colour"]["mean_abs_error"])
    assert whole_error < 6 and region_error > 40 and region_error > 10 * whole_error
    # Whole frames: as near as the other half of the real set. Regions: beyond even the noise bound.
    assert whole["fd"] < 1.5 * b["real_vs_real"]["fd"]
    assert region["fd"] > 10 * rb["real_vs_real"]["fd"] and region["fd"] > 10 * whole["fd"]
    assert region["fd"] > rb["noise"]["fd"]
    assert "### On painted regions" in md and f"| painted@all | 6 | {region['fd']:.3f} |" in md
    assert "| real vs real (baseline) | 6 |" in md


def test_report_shows_painted_region_columns_for_inpainted_sets_only(painted, tmp_path):
    from polypjax.experiments import report as report_lib
    rep, _, folders, _ = painted
    for g, r in (("sampled", rep["generated"][0]), ("inpainted", rep["generated"][1])):
        out = tmp_path / "evaluation" / g / "generation_metrics.json"
        out.parent.mkdir(parents=True)
        out.write_text(json.dumps({**rep, "generated": [r]}))
    header, body, _ = report_lib.generation_table(tmp_path, ["sampled", "inpainted"],
                                                  {"sampled": folders["copy"], "inpainted": folders["painted"]})
    rows = {row[0]: dict(zip(header, row)) for row in body}
    region, rb = rep["generated"][1]["segmenter_features"]["regions"], rep["segmenter_feature_baselines"]["regions"]
    assert rows["inpainted"]["segFD, painted regions (real vs real / noise)"] == (
        f"{region['fd']:.3f} ({rb['real_vs_real']['fd']:.3f} / {rb['noise']['fd']:.3f})")
    assert rows["inpainted"]["colour error, painted regions"] == f"{max(region['colour']['mean_abs_error']):.1f}"
    assert rows["inpainted"]["painted area"].endswith("(rest real)")
    assert rows["sampled"]["segFD, painted regions (real vs real / noise)"] == "–"
    assert rows["sampled"]["colour error, painted regions"] == "–"
    assert rows["sampled"]["painted area"] == "whole frame"
    for row in rows.values():  # the whole-frame columns stay for both
        assert row["segFD (real vs real / noise)"] != "–" and row["colour error"] != "–"


def test_native_size_needs_one_size_per_set():
    pairs = [{"image": np.zeros((20, 30, 3), np.uint8), "mask": np.zeros((20, 30), np.uint8), "id": "a"},
             {"image": np.zeros((20, 20, 3), np.uint8), "mask": np.zeros((20, 20), np.uint8), "id": "b"}]
    source = generation_metrics.SameSizeSource(pairs, "mixed")
    assert source[0]["id"] == "a"
    with pytest.raises(sources.DataError, match="b is 20x20 px but the first image is 30x20.*image_size"):
        source[1]


@pytest.mark.parametrize("overrides,message", [
    ({"generated": ""}, "--config.evaluate.generated=/path/to/generated"),
    ({"generated": "/no/such/generated"}, "folder '/no/such/generated' does not exist"),
    ({"generated": "EMPTY_DIR"}, "config.evaluate.generated: .*no known layout"),
    ({"real": "phantom-a,phantom-b"}, "must name one data source"),
    ({"image_size": -1}, "image_size must be an integer >= 0"),
    ({"msssim_size": 128}, "msssim_size must be an integer >= 161"),
    ({"msssim_pairs": 0}, "msssim_pairs must be an integer >= 1"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"inception_dtype": "float16"}, "inception_dtype must be one of"),
    ({"inception_weights": "/no/such/weights.npz"}, "inception_weights: FID Inception weights file '/no/such"),
    ({"segmenter_workdir": "/no/such/run"}, "segmenter_workdir: '/no/such/run' is not a train_segmentation"),
    ({"real_stats": "STALE"}, "computed with real_spec 'phantom-b' \\(now 'phantom-a'\\)"),
    ({"real_stats": "NO_SIGMA"}, "real_stats: .*has keys \\['mu'\\]; FID statistics need 'mu' and 'sigma'"),
    ({"real_stats": "NOT_NPZ"}, "real_stats: .*is not a readable .npz"),
])
def test_bad_config_values_raise_before_work(folders, tmp_path, overrides, message):
    overrides = {"generated": folders["copy"], **overrides}
    if overrides["generated"] == "EMPTY_DIR":
        overrides["generated"] = str(tmp_path)
    stats = tmp_path / "stats.npz"
    if overrides.get("real_stats") == "STALE":
        fid.save_stats(stats, np.zeros(3), np.eye(3), real_spec="phantom-b", image_size=48, inception_dtype="float32")
    elif overrides.get("real_stats") == "NO_SIGMA":
        np.savez(stats, mu=np.zeros(3))
    elif overrides.get("real_stats") == "NOT_NPZ":
        stats.write_text("mu, sigma")
    if "real_stats" in overrides:
        overrides["real_stats"] = str(stats)
    with pytest.raises(configlib.ConfigError, match=message):
        main.run(_config(**overrides), str(tmp_path / "wd"))
    assert not (tmp_path / "wd" / "config.json").exists()
