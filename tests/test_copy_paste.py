"""Copy-paste of real polyps (data/copy_paste.py) and the copy_paste regime: exact labels, untouched
pixels outside the feather, placement away from the target's polyp, determinism, donors only
from the regime's own real source, exact resume of the stream, `regime.augment`."""
import json

import numpy as np
import pytest
from scipy import ndimage

from polypjax import configlib, tasks
from polypjax.data import copy_paste, phantom, pipeline
from polypjax.train import segmentation
from test_seg_task import seg_config

SIZE = 64


@pytest.fixture(scope="module")
def pairs():
    src = phantom.PhantomSource("phantom-a", num_examples=16, size=SIZE, seed=0)
    return [src[i] for i in range(len(src))]


def _cfg(**fields):
    c = configlib.copy_paste_config()
    c.update(fields)
    return c


def _target_donor(pairs):
    """A target with room beside its polyp and a donor with a complete polyp."""
    for t in pairs:
        if t["mask"].mean() < 0.15:
            for d in pairs:
                if d is not t and copy_paste.complete_components(d["image"], d["mask"])[1].size:
                    return t, d
    raise AssertionError("no usable phantom pair")


def test_an_unscaled_paste_is_the_donor_polyp_and_the_label_is_the_union(pairs):
    target, donor = _target_donor(pairs)
    labels, usable = copy_paste.complete_components(donor["image"], donor["mask"])
    cfg = _cfg(scale_min=1.0, scale_max=1.0, rotate_deg=0.0, flip=False)
    for seed in range(5):
        image, mask, placed = copy_paste.paste_one(target["image"], target["mask"], donor["image"], donor["mask"],
                                                   np.random.default_rng(seed), cfg)
        assert placed and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        pasted = (mask == 1) & (target["mask"] == 0)
        # Scale 1 without rotation is a whole-pixel shift: the new label is one donor polyp moved.
        box = ndimage.find_objects(pasted.astype(int))[0]
        shape = pasted[box]
        match = [k for k in usable if np.array_equal((labels == k)[ndimage.find_objects(labels)[k - 1]], shape)]
        assert match, "the pasted label is not one of the donor's polyps"
        np.testing.assert_array_equal(mask, target["mask"] | pasted)  # the union, nothing lost
        # Every labelled pixel of the paste is the donor's polyp (alpha 1 inside the label).
        donor_box = ndimage.find_objects(labels)[match[0] - 1]
        np.testing.assert_array_equal(image[box][shape], donor["image"][donor_box][shape])


@pytest.mark.parametrize("match_colour", [False, True])
def test_pixels_beyond_the_feather_are_the_targets_bit_for_bit(pairs, match_colour):
    target, donor = _target_donor(pairs)
    sigma = 1.5
    cfg = _cfg(feather_sigma=sigma, match_colour=match_colour)
    image, mask, placed = copy_paste.paste_one(target["image"], target["mask"], donor["image"], donor["mask"],
                                               np.random.default_rng(1), cfg)
    assert placed
    pasted = (mask == 1) & (target["mask"] == 0)
    distance = ndimage.distance_transform_edt(~pasted)
    far = distance > 6 * sigma + 1  # the alpha of copy_paste._alpha ends 2 + 4 sigma out
    np.testing.assert_array_equal(image[far], target["image"][far])
    ring = (distance > 0) & (distance <= 2 * sigma)
    changed = np.any(image != target["image"], axis=-1)
    assert changed[ring].mean() > 0.5  # the feather reaches outside the label: no hard cut


def test_the_paste_keeps_min_distance_from_the_targets_polyp():
    """A target whose polyp fills the left 40 columns: an 11-pixel disc fits to its right, at
    least min_distance away, and nowhere once min_distance leaves less room than that."""
    image = np.full((SIZE, SIZE, 3), 150, np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, :40] = 1
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 <= 25).astype(np.uint8)
    donor = np.where(disc[..., None] == 1, 230, 120).astype(np.uint8).repeat(3, -1)
    cfg = _cfg(scale_min=1.0, scale_max=1.0, rotate_deg=0.0, min_distance=4)
    first_columns = set()
    for seed in range(30):
        _, out, placed = copy_paste.paste_one(image, mask, donor, disc, np.random.default_rng(seed), cfg)
        assert placed
        first_columns.add(int(np.nonzero((out == 1) & (mask == 0))[1].min()))
    # Columns 40..43 lie within 4 of the polyp; 44..53 leave room for the disc, each can be drawn.
    assert min(first_columns) == 44 and max(first_columns) == 53
    cfg.min_distance = 14  # leaves columns 54..63: 10, one too few
    assert not copy_paste.paste_one(image, mask, donor, disc, np.random.default_rng(0), cfg)[2]


def test_pastes_avoid_the_targets_polyp_and_the_dark_surround(pairs):
    cfg = _cfg(min_distance=3, max_pastes=3, probability=1.0)
    rng = np.random.default_rng(0)
    placed = 0
    for i, target in enumerate(pairs):
        out, records = copy_paste.paste_random(target, pairs, rng, cfg)
        pasted = (out["mask"] == 1) & (target["mask"] == 0)
        placed += sum(r["placed"] for r in records)
        assert all(r["donor_id"] != target["id"] for r in records)  # another frame's polyp
        if pasted.any() and target["mask"].any():
            assert ndimage.distance_transform_edt(target["mask"] == 0)[pasted].min() > 3
        assert not (pasted & (target["image"].max(axis=-1) < copy_paste.DARK)).any()
    assert placed >= len(pairs)


def test_no_room_or_no_complete_polyp_leaves_the_target_and_says_so(pairs):
    target, donor = _target_donor(pairs)
    full = np.ones_like(target["mask"])
    image, mask, placed = copy_paste.paste_one(target["image"], full, donor["image"], donor["mask"],
                                               np.random.default_rng(0), _cfg())
    assert not placed
    np.testing.assert_array_equal(image, target["image"])
    np.testing.assert_array_equal(mask, full)
    cut = np.zeros_like(donor["mask"])
    cut[:10, :10] = 1  # touches the frame's edge: a cut-off polyp is no donor
    assert copy_paste.complete_components(donor["image"], cut)[1].size == 0
    assert not copy_paste.paste_one(target["image"], target["mask"], donor["image"], cut,
                                    np.random.default_rng(0), _cfg())[2]


def test_deterministic_given_the_rng(pairs):
    cfg = _cfg(probability=1.0, max_pastes=2, match_colour=True)
    runs = [[copy_paste.paste_random(p, pairs, np.random.default_rng(seed), cfg) for p in pairs[:6]]
            for seed in (4, 4, 5)]
    for (a, ra), (b, rb) in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
        assert ra == rb
    assert any(not np.array_equal(a["image"], c["image"]) for (a, _), (c, _) in zip(runs[0], runs[2]))


# --------------------------------------------------------------------------- the regime

def _config(**regime):
    c = seg_config(phantom_train_examples=10)  # each new stream renders its frames again
    c.regime.kind = "copy_paste"
    c.regime.copy_paste.probability = 1.0
    c.regime.update({k: v for k, v in regime.items() if k != "copy_paste"})
    c.regime.copy_paste.update(regime.get("copy_paste", {}))
    return c


def _batches(task, k, state=None):
    """k batches of a new stream of `task` (from `state`) and the state after them."""
    it = iter(task.train_iterator())
    if state is not None:
        it.set_state(state)
    out = [next(it) for _ in range(k)]
    state = it.get_state()
    it.close()  # else its threads keep filling a prefetch buffer of hundreds of batches
    return out, state


def test_the_stream_resumes_bit_exactly_and_pastes_before_augmentation():
    task = segmentation.SegmentationTask(tasks.resolve(_config(augment=True)), "/tmp/unused")
    batches, _ = _batches(task, 3)
    again, state = _batches(task, 2)
    resumed, _ = _batches(task, 1, state=state)
    for x, y in zip(batches, again + resumed):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["mask"], y["mask"])
    plain = segmentation.SegmentationTask(tasks.resolve(_config(copy_paste={"probability": 0.0})), "/tmp/unused")
    pasted = segmentation.SegmentationTask(tasks.resolve(_config()), "/tmp/unused")
    a, b = _batches(plain, 2)[0], _batches(pasted, 2)[0]
    # Pastes add polyp pixels to the same drawn examples (no augmentation in either).
    assert all((y["mask"] >= x["mask"]).all() for x, y in zip(a, b))
    assert sum(int(y["mask"].sum() - x["mask"].sum()) for x, y in zip(a, b)) > 0


def test_regime_augment_is_real_augment_for_the_real_regime():
    real_aug = seg_config()
    real_aug.regime.kind = "real_augment"
    real_plus = seg_config()
    real_plus.regime.augment = True
    x, y = (_batches(segmentation.SegmentationTask(tasks.resolve(c), "/tmp/unused"), 2)[0] for c in (real_aug, real_plus))
    for a, b in zip(x, y):
        np.testing.assert_array_equal(a["image"], b["image"])
    plain = _batches(segmentation.SegmentationTask(tasks.resolve(seg_config()), "/tmp/unused"), 1)[0][0]
    assert not np.array_equal(plain["image"], x[0]["image"])


def test_the_regime_trains_with_donors_only_from_its_real_subset(tmp_path, monkeypatch):
    from polypjax import main
    seen = []
    original = copy_paste.paste_random

    def recording(pair, donors, rng, cfg):
        out, records = original(pair, donors, rng, cfg)
        seen.extend(records)
        return out, records
    monkeypatch.setattr(copy_paste, "paste_random", recording)
    c = _config(real_subset=6)
    c.train.num_steps = 2
    c.train.checkpoint_every = 2
    subset = segmentation.SegmentationTask(tasks.resolve(c), tmp_path / "unused").train_sources[0]
    subset_ids = {subset[i]["id"] for i in range(len(subset))}
    main.run(c, str(tmp_path / "run"))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["test"]) == {"phantom-a@test", "phantom-b@test"}
    placed = [r for r in seen if r["placed"]]
    assert len(placed) >= 8  # 2 steps of 8 examples, each with one paste drawn
    assert {r["donor_id"] for r in seen if r["donor_id"] is not None} <= subset_ids
    assert len(subset_ids) == 6


def test_pipeline_pasted_donors_share_the_streams_cache():
    src = phantom.PhantomSource("phantom-a", num_examples=8, size=32, seed=0)
    ds = pipeline.train_dataset(src, image_size=32, global_batch_size=4, seed=0, process_index=0,
                                process_count=1, paste_from=src, paste=_cfg(probability=1.0))
    batch = next(iter(ds))
    assert batch["image"].shape == (4, 32, 32, 3) and set(np.unique(batch["mask"])) <= {0, 1}


# --------------------------------------------------------------------------- config

def test_configs_without_the_new_fields_keep_their_fingerprints():
    new = json.loads(json.dumps(seg_config().to_dict()))
    old = json.loads(json.dumps(new))
    del old["regime"]["augment"], old["regime"]["copy_paste"]
    assert configlib.what_it_computes(old) == configlib.what_it_computes(new)
    changed = json.loads(json.dumps(new))
    changed["regime"]["copy_paste"]["probability"] = 0.25
    assert configlib.what_it_computes(changed) != configlib.what_it_computes(old)
    changed = json.loads(json.dumps(new))
    changed["regime"]["augment"] = True
    assert configlib.what_it_computes(changed) != configlib.what_it_computes(old)


@pytest.mark.parametrize("field,value,message", [
    ("probability", 1.5, "config.regime.copy_paste.probability must be a probability"),
    ("scale_max", 0.25, "config.regime.copy_paste.scale_max must be >= 0.5"),
    ("scale_min", 0.0, "config.regime.copy_paste.scale_min must be positive"),
    ("rotate_deg", 270.0, "config.regime.copy_paste.rotate_deg must be in \\[0, 180\\]"),
    ("max_pastes", 0, "config.regime.copy_paste.max_pastes must be >= 1"),
    ("feather_sigma", -1.0, "config.regime.copy_paste.feather_sigma must be >= 0"),
])
def test_copy_paste_fields_are_checked(field, value, message):
    c = _config()
    c.regime.copy_paste[field] = value
    with pytest.raises(configlib.ConfigError, match=message):
        tasks.resolve(c)


def test_the_pipeline_accepts_copy_paste_as_a_real_data_regime():
    from polypjax.experiments import pipeline as pipeline_task
    c = configlib.load_config("pipeline", "mini")
    c.segmentation.regimes = ("real", "copy_paste")
    c.segmentation.low_data.regimes = ("real", "copy_paste")
    pipeline_task.validate(c)
    assert "copy_paste" in pipeline_task.REAL_REGIMES
    stage = pipeline_task.segmentation_config(c, next(iter(c.segmentation.models)), "copy_paste", seed=0,
                                              train="/some/subset")
    assert stage.regime.kind == "copy_paste" and stage.data.train == "/some/subset"


