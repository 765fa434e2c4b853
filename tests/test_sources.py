"""Folder readers and the inspection command on fixture folders of each layout."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from polypjax.data import sources
from polypjax.data.inspect import inspect_folder


def _pair(rng, h=40, w=56):
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: h // 2, w // 4: w // 2] = 255
    return image, mask


def make_kvasir(root: pathlib.Path, n=4, ext=".jpg", rgb_masks=False, seed=0):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image, mask = _pair(rng, 40 + 8 * i, 56)
        Image.fromarray(image).save(root / "images" / f"cju{i:03d}{ext}", quality=95)
        m = np.repeat(mask[..., None], 3, -1) if rgb_masks else mask
        Image.fromarray(m).save(root / "masks" / f"cju{i:03d}{ext}", quality=95)
    return root


def make_cvc_tif(root: pathlib.Path, n=3):
    rng = np.random.default_rng(1)
    (root / "Original").mkdir(parents=True)
    (root / "Ground Truth").mkdir()
    for i in range(1, n + 1):
        image, mask = _pair(rng, 48, 64)
        tifffile.imwrite(root / "Original" / f"{i}.tif", image, photometric="rgb")
        tifffile.imwrite(root / "Ground Truth" / f"{i}.tif", np.repeat(mask[..., None], 3, -1), photometric="rgb")
    return root


def test_kvasir_jpeg_layout(tmp_path):
    src = sources.FolderSource(make_kvasir(tmp_path / "kv", rgb_masks=True))
    assert src.layout == "kvasir" and len(src) == 4
    pair = src[1]
    assert pair["image"].dtype == np.uint8 and pair["image"].shape == (48, 56, 3)
    assert pair["mask"].shape == (48, 56) and set(np.unique(pair["mask"])) == {0, 1}
    # JPEG noise around the square edge is thresholded away: the square's area survives.
    assert abs(int(pair["mask"].sum()) - 12 * 14) <= 14
    assert pair["id"] == "cju001"


def test_cvc_tif_layout_natural_order(tmp_path):
    root = make_cvc_tif(tmp_path / "CVC-ClinicDB", n=11)
    src = sources.FolderSource(root)
    assert src.layout == "cvc-clinicdb"
    assert [src[i]["id"] for i in range(len(src))][:3] == ["1", "2", "3"]
    assert src[10]["id"] == "11"
    pair = src[0]
    assert pair["image"].shape == (48, 64, 3) and pair["mask"].sum() == 12 * 16


def test_png_layout_binary_01_masks_and_wrapping_folder(tmp_path):
    root = tmp_path / "download" / "PraNet-CVC"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    image, mask = _pair(np.random.default_rng(0))
    Image.fromarray(image).save(root / "images" / "a.png")
    Image.fromarray((mask > 0).astype(np.uint8)).save(root / "masks" / "a.png")  # 0/1 values
    src = sources.FolderSource(tmp_path / "download")  # one level above the dataset
    assert len(src) == 1 and src[0]["mask"].sum() == 10 * 14
    np.testing.assert_array_equal(src[0]["image"], image)


def test_problems_are_named(tmp_path):
    root = make_kvasir(tmp_path / "kv", ext=".png")
    (root / "images" / "orphan.png").write_bytes((root / "images" / "cju000.png").read_bytes())
    (root / "masks" / "lonely.png").write_bytes((root / "masks" / "cju000.png").read_bytes())
    (root / "images" / "cju001.png").write_bytes(b"not an image at all")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "cju002.png")  # wrong size
    Image.fromarray(np.zeros((64, 56), np.uint8)).save(root / "masks" / "cju003.png")  # all zero
    report = inspect_folder(root, progress=False)
    msgs = {pathlib.Path(p["path"]).name: (p["severity"], p["message"]) for p in report["problems"]}
    assert msgs["orphan.png"][0] == "error" and "no mask" in msgs["orphan.png"][1]
    assert msgs["lonely.png"][0] == "error" and "no image" in msgs["lonely.png"][1]
    assert "corrupt" in msgs["cju001.png"][1]
    assert "differs from image size" in msgs["cju002.png"][1]
    assert msgs["cju003.png"] == ("warning", "mask is empty (all zero)")
    assert report["errors"] == 4 and report["warnings"] == 1 and report["num_pairs"] == 2
    with pytest.raises(sources.DataError, match="orphan.png: image has no mask"):
        sources.FolderSource(root)
    src = sources.FolderSource(root, allow_unpaired=True)
    with pytest.raises(sources.DataError, match=r"cju001.png: unreadable or corrupt"):
        src[1]
    with pytest.raises(sources.DataError, match=r"cju002.png: mask size 10x10 differs"):
        src[2]


def test_empty_and_unknown_folders(tmp_path):
    (tmp_path / "e" / "images").mkdir(parents=True)
    (tmp_path / "e" / "masks").mkdir()
    with pytest.raises(sources.DataError, match="empty dataset"):
        sources.FolderSource(tmp_path / "e")
    (tmp_path / "x").mkdir()
    with pytest.raises(sources.DataError, match="no known layout"):
        sources.FolderSource(tmp_path / "x")
    with pytest.raises(sources.DataError, match="does not exist"):
        sources.FolderSource(tmp_path / "missing")


def test_split_is_deterministic_disjoint_and_stable(tmp_path):
    root = make_kvasir(tmp_path / "kv", n=30, ext=".png")
    train = sources.FolderSource(root, split="train", test_fraction=0.3)
    test = sources.FolderSource(root, split="test", test_fraction=0.3)
    ids_train = {train[i]["id"] for i in range(len(train))}
    ids_test = {test[i]["id"] for i in range(len(test))}
    assert not ids_train & ids_test and len(ids_train | ids_test) == 30 and 3 <= len(ids_test) <= 18
    # Removing a training file leaves the test split unchanged (hash split, not positional).
    victim = sorted(ids_train)[0]
    (root / "images" / f"{victim}.png").unlink()
    (root / "masks" / f"{victim}.png").unlink()
    test2 = sources.FolderSource(root, split="test", test_fraction=0.3)
    assert {test2[i]["id"] for i in range(len(test2))} == ids_test


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "polypjax.data", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_inspection_cli(tmp_path):
    root = make_kvasir(tmp_path / "kv")
    ok = _cli(root)
    assert ok.returncode == 0, ok.stderr
    assert "layout kvasir, 4 readable pairs" in ok.stdout and "width 56-56 px" in ok.stdout
    report = json.loads(_cli(root, "--json").stdout)
    assert report["num_pairs"] == 4 and report["image_size"]["height"] == [40, 64]
    assert 0.0 < report["mask_coverage"]["mean"] < 0.2
    (root / "masks" / "cju000.jpg").unlink()
    bad = _cli(root)
    assert bad.returncode == 1 and "cju000.jpg: image has no mask" in bad.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    out = _cli(empty)
    assert out.returncode == 1 and "no known layout" in out.stdout


def test_real_kvasir_pairs(kvasir_dir):
    src = sources.FolderSource(kvasir_dir)
    assert src.layout == "kvasir" and len(src) == 900
    pair = src[0]
    assert pair["image"].shape[:2] == pair["mask"].shape and pair["mask"].max() == 1


def test_decode_size_drafts_jpegs_and_keeps_pairs_aligned(tmp_path):
    root = tmp_path / "big"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (400, 600, 3), dtype=np.uint8)
    mask = np.zeros((400, 600), np.uint8)
    mask[100:300, 200:500] = 255
    Image.fromarray(image).save(root / "images" / "a.jpg")
    Image.fromarray(mask).save(root / "masks" / "a.jpg")
    Image.fromarray(image).save(root / "images" / "b.jpg")
    Image.fromarray(mask).save(root / "masks" / "b.png")  # mixed formats fall back to full decode
    full = sources.FolderSource(root)
    small = sources.FolderSource(root, decode_size=64)
    a = small[0]
    assert a["image"].shape == (100, 150, 3) and a["mask"].shape == (100, 150)  # 1/4 scale, >= 64
    assert abs(a["mask"].mean() - full[0]["mask"].mean()) < 0.01
    assert small[1]["image"].shape == (400, 600, 3) and small[1]["mask"].shape == (400, 600)
