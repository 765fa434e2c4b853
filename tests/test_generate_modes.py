"""The generate task's other modes (sdedit, from_masks), its quality filter and its determinism
across device counts, batch sizes and a kill-and-resume, on the shared tiny generator
(tests/conftest.py) and one tiny two_stage generator trained here."""
import json

import numpy as np
import pytest

from polypjax import main, tasks
from polypjax.data import catalog, export
from polypjax.data.sources import FolderSource
from polypjax.experiments import generate
from tiny_configs import generate_config, tiny_config


def _files(out):
    return {f"{d}/{p.name}": p.read_bytes() for d in ("images", "masks") for p in sorted((out / d).iterdir())}


def _records(out):
    return {r["index"]: r for r in export.read_manifest_records(out)}


def test_sdedit_writes_valid_pairs_of_its_source_frames(trained_generator, tmp_path):
    c = generate_config(trained_generator, num=3, batch=2)
    c.generate.update(mode="sdedit", source="phantom-a")
    c.generate.sdedit.strength = 0.7
    out = tmp_path / "sdedit"
    summary = main.run(c, str(out))
    src = FolderSource(out)
    assert len(src) == 3 and summary["mode"] == "sdedit"
    # strength 0.7 of 3 steps: the real pair is noised to the 2nd step and denoised from there.
    assert summary["unet_calls_per_pair"] == 2
    resolved = tasks.resolve(c)
    resolved.data.image_size = 16
    real = catalog.make_source("phantom-a", resolved.data, default_split="train")
    for i, r in _records(out).items():
        assert r["source_frame"] == generate.source_frame(0, i, len(real))
        assert r["source_id"] == real[r["source_frame"]]["id"]
        pair = src[i]
        assert pair["image"].shape == (16, 16, 3) and set(np.unique(pair["mask"])) <= {0, 1}


@pytest.fixture(scope="module")
def two_stage_generator(tmp_path_factory):
    wd = tmp_path_factory.mktemp("two_stage")
    c = tiny_config("two_stage")
    c.train.num_steps, c.train.checkpoint_every = 2, 2
    main.run(c, str(wd))
    return wd


def test_from_masks_follows_the_given_masks(two_stage_generator, tmp_path):
    from polypjax.data.pipeline import resize_pair
    masks = tmp_path / "masks"
    masks.mkdir()
    given = []
    for k, (y, x) in enumerate([(2, 3), (12, 10)]):  # 24 px masks: resized to the model's 16 px
        m = np.zeros((24, 24), np.uint8)
        m[y:y + 9, x:x + 7] = 255
        export.atomic_write_bytes(masks / f"m{k}.png", export.encode_png(m))
        given.append(resize_pair({"image": np.zeros((24, 24, 3), np.uint8), "mask": m // 255}, 16)["mask"])
    c = generate_config(two_stage_generator, num=1, batch=3)
    c.generate.update(mode="from_masks", masks=str(masks), images_per_mask=2)
    c.generate.sampler.guidance = 2.0
    out = tmp_path / "out"
    summary = main.run(c, str(out))
    src = FolderSource(out)
    assert len(src) == 4 and summary["num_pairs"] == 4  # k=2 images per mask, whatever num_samples says
    assert summary["guidance"] == 2.0 and summary["settings"]["sampler"]["guidance"] == 2.0
    for i, r in _records(out).items():
        assert r["source_mask"] == f"m{i // 2}.png" and r["variant"] == i % 2
        np.testing.assert_array_equal(src[i]["mask"], given[i // 2])
    assert not np.array_equal(src[0]["image"], src[1]["image"])  # two images of one mask differ


def test_filter_accounting(trained_generator, tmp_path):
    """Pair i is the same with or without the filter, so the filtered set is the first N indices
    of the unfiltered run whose masks pass, and every skipped index is in rejected.jsonl."""
    plain = tmp_path / "plain"
    main.run(generate_config(trained_generator, num=16, batch=8), str(plain))
    fractions = np.array([_records(plain)[i]["mask_fraction"] for i in range(16)])
    threshold = float(np.median(fractions))  # about half pass
    passing = [i for i in range(16) if fractions[i] >= threshold and fractions[i] > 0]
    assert 3 <= len(passing) < 16, fractions
    c = generate_config(trained_generator, num=3, batch=8)
    c.generate.filter.update(enabled=True, min_mask_fraction=threshold)
    out = tmp_path / "filtered"
    summary = main.run(c, str(out))
    want = passing[:3]
    assert sorted(_records(out)) == want and len(FolderSource(out)) == 3
    assert _files(out) == {k: v for k, v in _files(plain).items()
                           if int(k.split("_")[1].split(".")[0]) in want}
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    within = {r["index"]: r for r in rejected if r["index"] < want[-1]}
    assert sorted(within) == [i for i in range(want[-1]) if i not in want]
    for i, r in within.items():
        assert r["reasons"] == (["empty mask"] if fractions[i] == 0 else
                                [f"mask fraction {fractions[i]:.4f} < {threshold}"])
    assert summary["rejected"] == len(within)
    assert summary["acceptance_rate"] == pytest.approx(3 / (3 + len(within)))


def test_same_files_on_1_or_8_devices_any_batch_and_after_a_kill(trained_generator, tmp_path):
    ref = tmp_path / "ref"
    main.run(generate_config(trained_generator, num=5, batch=8), str(ref))  # 8 devices, one padded batch
    one = generate_config(trained_generator, num=5, batch=2)
    one.mesh.data = 1
    main.run(one, str(tmp_path / "one"))  # 1 device, batches of 2
    assert _files(tmp_path / "one") == _files(ref)
    # A kill mid-run: one pair lost with its manifest line, another's PNG torn.
    out = tmp_path / "killed"
    main.run(generate_config(trained_generator, num=5, batch=3), str(out))
    lines = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    (out / "images" / f"{json.loads(lines[4])['id']}.png").unlink()
    main.run(generate_config(trained_generator, num=5, batch=3), str(out))
    assert _files(out) == _files(ref)
    ids = sorted(r["id"] for r in export.read_manifest_records(out))
    assert ids == [generate.pair_id(i) for i in range(5)]
    assert json.loads((out / "generation.json").read_text())["status"] == "complete"


class _ProcessView:
    """The batch sharding as one process of a 2-process job sees it: only its 4 of the 8 devices
    are addressable (what `_local_rows` reads)."""

    def __init__(self, sharding, process):
        self.sharding, self.devices = sharding, set(list(sharding.mesh.devices.flat)[4 * process:4 * process + 4])

    def addressable_devices_indices_map(self, shape):
        return {d: i for d, i in self.sharding.devices_indices_map(shape).items() if d in self.devices}


def test_process_shares_of_a_batch_are_disjoint_and_cover_it():
    from polypjax import parallel
    sharding = parallel.batch_sharding(parallel.make_mesh())
    for batch in (8, 16):
        shares = [generate._local_rows(_ProcessView(sharding, p), batch) for p in (0, 1)]
        assert not set(shares[0]) & set(shares[1])
        assert sorted(np.concatenate(shares)) == list(range(batch))


def test_filter_rejects_pairs_the_segmenter_disagrees_with(trained_generator, tmp_path, monkeypatch):
    """min_dice: a pair is rejected when the real-trained segmenter's prediction on its image has
    Dice below the threshold against its own mask (a stand-in segmenter here: bright = polyp)."""
    from polypjax.experiments import segmenter_inference

    def predict(images):
        return np.where(np.asarray(images)[..., :1] > 127, 10.0, -10.0).astype(np.float32)
    predict.image_size = 16
    monkeypatch.setattr(segmenter_inference, "load_segmenter", lambda workdir, **kw: predict)

    plain = tmp_path / "plain"
    main.run(generate_config(trained_generator, num=16, batch=8), str(plain))
    pairs = FolderSource(plain)
    dice = {}
    for i in range(len(pairs)):
        pair = pairs[i]
        p, m = predict(pair["image"][None])[0, ..., 0] > 0, pair["mask"] > 0
        denom = p.sum() + m.sum()
        dice[int(pair["id"].split("_")[1])] = 1.0 if denom == 0 else 2.0 * (p & m).sum() / denom
    threshold = float(np.median(list(dice.values())))
    passing = [i for i in range(16) if dice[i] >= threshold and _records(plain)[i]["mask_fraction"] > 0]
    assert 3 <= len(passing) < 16, dice

    c = generate_config(trained_generator, num=3, batch=8)
    c.generate.filter.update(enabled=True, min_dice=threshold, segmenter_workdir=str(tmp_path / "seg"))
    out = tmp_path / "filtered"
    main.run(c, str(out))
    assert sorted(_records(out)) == passing[:3]
    rejected = {r["index"]: r for r in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}
    for i in range(passing[2]):
        if i not in passing and dice[i] < threshold:
            assert f"label consistency dice {dice[i]:.3f} < {threshold}" in rejected[i]["reasons"], i


@pytest.mark.parametrize("placement", ["away", "replace"])
def test_paint_keeps_the_given_label_and_the_real_frame_outside_its_region(two_stage_generator, tmp_path,
                                                                           placement):
    """Label-exact painting: every pair's mask is the placed label bit for bit (away: the frame's own
    polyp and the placed one; replace: the placed one only, the own polyp painted over), every pixel
    outside the region is the real frame's, the region covers the label and was painted, the donor
    is another frame, and guidance doubles the UNet calls."""
    c = generate_config(two_stage_generator, num=4, batch=3)
    c.generate.update(mode="paint", source="phantom-a")
    c.generate.paint.placement = placement
    c.generate.paint.copy_paste.update(min_distance=1, scale_min=0.6, scale_max=1.0)
    c.generate.inpaint.update(sampler="repaint_ddim", steps=4, jump_length=2, jump_n_sample=2)
    c.generate.sampler.guidance = 1.0
    out = tmp_path / placement
    summary = main.run(c, str(out))
    src = FolderSource(out)
    assert summary["mode"] == "paint" and len(src) == 4 and summary["empty_mask_fraction"] == 0.0
    assert summary["unet_calls_per_pair"] == 2 * int((np.diff(generate.samplers.repaint_times(4, 2, 2)) < 0).sum())
    resolved = tasks.resolve(c)
    resolved.data.image_size = 16
    real = catalog.make_source("phantom-a", resolved.data, default_split="train")
    from polypjax.data.pipeline import resize_pair
    mode = generate.Mode(tasks.resolve(c), generate.load_generator(two_stage_generator)[0], None)
    placed = 0
    for i, r in _records(out).items():
        frame = resize_pair(real[r["source_frame"]], 16)
        own = frame["mask"] > 0
        _, label, region, _ = mode._placed(i)
        pair, region = src[i], region.astype(bool)
        np.testing.assert_array_equal(pair["mask"], label)
        np.testing.assert_array_equal(pair["image"][~region], frame["image"][~region])
        if not r["placed"]:
            continue
        placed += 1
        assert r["donor_id"] != r["source_id"] and r["region"]["kind"] == f"paint_{placement}"
        new = (label > 0) & ~own
        assert new.any() and region[new].all()
        if placement == "away":
            assert (label[own] > 0).all()
        else:
            assert region[own].all()  # the own polyp lies inside the region: painted over
        assert (pair["image"][region] != frame["image"][region]).any()
    assert placed >= 3, placed


@pytest.fixture(scope="module")
def inpainter_generator(tmp_path_factory):
    wd = tmp_path_factory.mktemp("inpainter")
    c = tiny_config("inpainter")
    c.train.update(num_steps=2, checkpoint_every=2, eval_every=2)  # eval: repainted real frames
    c.eval.num_samples = 2
    main.run(c, str(wd))
    assert (wd / "samples" / "step_000002.png").exists()
    return wd


def test_trained_inpainter_paints_in_the_sampler_steps_with_the_label_exact(inpainter_generator, tmp_path):
    """The trained inpainter: mode paint in a plain sampler's steps (no RePaint jumps, no guidance
    pass), the placed label bit for bit and the real frame outside the region."""
    c = generate_config(inpainter_generator, num=3, batch=2)
    c.generate.update(mode="paint", source="phantom-a")
    c.generate.paint.copy_paste.update(min_distance=1, scale_min=0.6, scale_max=1.0)
    c.generate.sampler.update(kind="ddim", steps=5, guidance=1.0)
    summary = main.run(c, str(tmp_path / "out"))
    assert summary["unet_calls_per_pair"] == 5 and summary["empty_mask_fraction"] == 0.0
    src = FolderSource(tmp_path / "out")
    mode = generate.Mode(tasks.resolve(c), generate.load_generator(inpainter_generator)[0], None)
    for i in range(3):
        image, label, region, _ = mode._placed(i)
        region = region.astype(bool)
        np.testing.assert_array_equal(src[i]["mask"], label)
        np.testing.assert_array_equal(src[i]["image"][~region], image[~region])
        assert (src[i]["image"][region] != image[region]).any()


def test_device_dilation_is_the_host_rule():
    """generators.dilate (the inpainter's training regions, on the device) grows a mask exactly as
    generate's regions do on the host (skimage, an ellipse of radius r)."""
    from skimage import morphology

    from polypjax.diffusion import generators
    rng = np.random.default_rng(0)
    masks = (rng.random((3, 20, 20)) > 0.97).astype(np.uint8)
    masks[0, 0, 0] = masks[1, 19, 10] = 1  # at the border too
    for r in (1, 2, 3):
        host = np.stack([morphology.dilation(m.astype(bool), morphology.ellipse(r, r)) for m in masks])
        np.testing.assert_array_equal(np.asarray(generators.dilate(masks.astype(np.float32), r)) > 0, host)
