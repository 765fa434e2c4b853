"""One validator for every data source: decoding rules, the inspector and the pre-run check of tasks."""
import pathlib
import unicodedata

import numpy as np
import pytest
import tifffile
from PIL import Image

from polypjax import configlib, tasks
from polypjax.data import sources
from polypjax.data.inspect import inspect_folder

ROOT = pathlib.Path(__file__).resolve().parent.parent
H, W = 24, 32


def _config(name: str, variant: str | None = None):
    return configlib.load_config(name, *([variant] if variant else []))


def _square(value=255, dtype=np.uint8):
    m = np.zeros((H, W), dtype)
    m[6:18, 8:24] = value
    return m


def folder(root: pathlib.Path, masks: dict, images: dict | None = None, ext=".png") -> pathlib.Path:
    """A Kvasir-layout folder: masks {stem: array or filename->array}, RGB PNG images for each stem."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    given = {pathlib.Path(k).stem for k in images or {}}
    for stem, mask in masks.items():
        name = stem if "." in stem else stem + ext
        _save(root / "masks" / name, mask)
        if pathlib.Path(name).stem not in given:
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
                root / "images" / (pathlib.Path(name).stem + ".png"))
    for stem, image in (images or {}).items():
        _save(root / "images" / (stem if "." in stem else stem + ".png"), image)
    return root


def _save(path, array):
    if path.suffix == ".tif":
        rgb = array.ndim == 3 and array.shape[-1] == 3
        tifffile.imwrite(path, array, photometric="rgb" if rgb else None)
    else:
        Image.fromarray(array).save(path)


def _problems(report):
    return {pathlib.Path(p["path"]).name: (p["severity"], p["message"]) for p in report["problems"]}


# --------------------------------------------------------------------------- mask labels

@pytest.mark.parametrize("label", [2, 100])
def test_non_binary_labels_are_refused_with_the_values(tmp_path, label):
    root = folder(tmp_path / "kv", {"a": _square(label), "b": _square()})
    report = inspect_folder(root)
    severity, message = _problems(report)["a.png"]
    assert severity == "error" and "mask values 0 (" in message and f"{label} (192 px)" in message
    assert "one of 1, 255 or 65535" in message
    with pytest.raises(sources.DataError, match=f"a.png: mask values .*{label} \\(192 px\\)"):
        sources.FolderSource(root)[0]


def test_stray_255_in_a_01_mask_is_refused_not_shrunk(tmp_path):
    mask = _square(1)
    mask[0, 0] = 255
    report = inspect_folder(folder(tmp_path / "kv", {"a": mask}))
    severity, message = _problems(report)["a.png"]
    assert severity == "error" and "1 (192 px), 255 (1 px)" in message


def test_binary_label_pairs_of_every_depth(tmp_path):
    root = folder(tmp_path / "kv", {"u8": _square(255), "zero_one": _square(1),
                                    "u16": _square(65535, np.uint16), "u16_01": _square(1, np.uint16)})
    report = inspect_folder(root)
    assert report["errors"] == 0 and report["num_pairs"] == 4
    src = sources.FolderSource(root)
    for i in range(4):
        assert src[i]["mask"].sum() == 192 and src[i]["mask"].max() == 1


def test_jpeg_mask_threshold_and_its_limit(tmp_path):
    root = folder(tmp_path / "kv", {"ok.jpg": _square(255), "dim.jpg": _square(100)})
    msgs = _problems(inspect_folder(root))
    assert "ok.jpg" not in msgs
    assert msgs["dim.jpg"][0] == "error" and "none above 127" in msgs["dim.jpg"][1]


def test_mask_drawn_in_alpha_channel(tmp_path):
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 3] = _square()
    root = folder(tmp_path / "kv", {"a": rgba})
    assert inspect_folder(root)["mask_coverage"]["empty"] == 0
    assert sources.FolderSource(root)[0]["mask"].sum() == 192


# --------------------------------------------------------------------------- image values and shapes

def test_one_conversion_rule_for_every_depth(tmp_path):
    gray16 = np.full((H, W), 32768, np.uint16)
    dim16 = np.full((H, W, 3), 200, np.uint16)  # max <= 255: still scaled by the 16-bit range
    bright16 = np.full((H, W, 3), 65535, np.uint16)
    bright16[0, 0] = 32768
    f01 = np.full((H, W, 3), 0.5, np.float32)
    root = folder(tmp_path / "kv", {"g16": _square(), "d16": _square(), "b16": _square(), "f01": _square()},
                  images={"g16": gray16, "d16.tif": dim16, "b16.tif": bright16, "f01.tif": f01})
    assert inspect_folder(root)["errors"] == 0
    src = sources.FolderSource(root)
    by_id = {src[i]["id"]: src[i]["image"] for i in range(len(src))}
    assert (by_id["g16"] == 128).all()  # not saturated to 255
    assert (by_id["d16"] == 1).all()  # round(200 * 255 / 65535)
    assert by_id["b16"][0, 0, 0] == 128 and by_id["b16"][1, 1, 0] == 255
    assert (by_id["f01"] == 128).all()  # not black


def test_two_channel_tiff_is_refused_by_the_inspector(tmp_path):
    root = folder(tmp_path / "kv", {"a": _square()}, images={"a.tif": np.zeros((H, W, 2), np.uint8)})
    msgs = _problems(inspect_folder(root))
    assert msgs["a.tif"][0] == "error" and "2 channels" in msgs["a.tif"][1] and "not an image" in msgs["a.tif"][1]
    with pytest.raises(sources.DataError, match="a.tif: .*2 channels"):
        sources.FolderSource(root)[0]


def test_tiff_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    root = folder(tmp_path / "kv", {"a": _square()}, images={"a.tif": np.zeros((H, W, 3), np.uint8)})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", H * W - 1)
    monkeypatch.setattr(tifffile, "imread", lambda *a, **k: pytest.fail("decoded before the size check"))
    msgs = _problems(inspect_folder(root))
    assert msgs["a.tif"][0] == "error" and "MAX_IMAGE_PIXELS" in msgs["a.tif"][1]
    with pytest.raises(sources.DataError, match="a.tif: 32x24 px is more than the limit"):
        sources.FolderSource(root)[0]


# --------------------------------------------------------------------------- names

def test_two_files_with_one_stem_are_an_error(tmp_path):
    root = folder(tmp_path / "kv", {"a": _square(), "b": _square()})
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "images" / "a.jpg")
    report = inspect_folder(root)
    errors = [p for p in report["problems"] if p["severity"] == "error"]
    assert len(errors) == 2  # the name clash, and the mask left without its image
    assert "2 files share the name 'a' (a.jpg, a.png)" in errors[0]["message"]
    with pytest.raises(sources.DataError, match=r"a.jpg, a.png"):
        sources.FolderSource(root)


def test_nfc_and_nfd_spellings_pair_with_a_warning(tmp_path):
    name = "polype_\u00e9"  # é, one code point (NFC)
    root = folder(tmp_path / "kv", {}, images={name: np.zeros((H, W, 3), np.uint8)})
    _save(root / "masks" / (unicodedata.normalize("NFD", name) + ".png"), _square())
    if next((root / "masks").iterdir()).stem == name:
        pytest.skip("this file system normalises names itself")
    report = inspect_folder(root)
    assert report["errors"] == 0 and report["num_pairs"] == 1
    assert report["warnings"] == 1 and "NFC" in report["problems"][0]["message"]
    assert sources.FolderSource(root)[0]["id"] == name


# --------------------------------------------------------------------------- tasks check before work

def test_corrupt_test_image_fails_before_training(tmp_path):
    from polypjax import main
    bad = folder(tmp_path / "kv", {f"p{i}": _square() for i in range(4)})
    (bad / "images" / "p2.png").write_bytes(b"not an image")
    c = _config("segmentation", variant="cpu")
    c.data.update(image_size=32, phantom_train_examples=8, phantom_test_examples=4, test=f"phantom-a,{bad}@all")
    workdir = tmp_path / "run"
    with pytest.raises(sources.DataError, match=r"^config.data.test: .*p2.png: unreadable or corrupt"):
        main.run(c, str(workdir))
    assert not workdir.exists()  # nothing written


def test_training_set_with_non_binary_masks_is_refused(tmp_path):
    bad = folder(tmp_path / "kv", {f"p{i}": _square(2) for i in range(3)})
    c = _config("segmentation", variant="cpu")
    c.data.train = f"{bad}@all"
    with pytest.raises(sources.DataError, match=r"^config.data.train: .*mask values 0 .*2 \(192 px\).*and 2 more"):
        tasks.check_data(c)


def test_every_task_names_its_sources(tmp_path):
    good = folder(tmp_path / "good", {f"p{i}": _square() for i in range(3)})
    bad = folder(tmp_path / "bad", {"p0": _square(), "p1": _square(7)})
    c = _config("evaluate_generation")
    c.evaluate.real, c.evaluate.generated = f"{good}@all", f"{good},{bad}"
    with pytest.raises(sources.DataError, match=r"^config.evaluate.generated: .*p1.png: mask values"):
        tasks.check_data(c)
    c.evaluate.generated = str(good)
    assert [r["num_pairs"] for r in tasks.check_data(c)] == [3]  # one folder, read once
    g = _config("generate")
    g.generate.color_reference = str(bad)
    with pytest.raises(sources.DataError, match=r"^config.generate.color_reference: .*p1.png"):
        tasks.check_data(g)
    s = _config("segmentation", variant="cpu")
    s.data.synthetic, s.regime.kind = str(bad), "mixed"
    with pytest.raises(sources.DataError, match=r"^config.data.synthetic: .*p1.png"):
        tasks.check_data(s)
    q = _config("segmentation", variant="cpu")
    q.data.test = f"{bad}@all"
    with pytest.raises(sources.DataError, match=r"^config.data.test: "):
        tasks.check_data(q)
    d = _config("diffusion")
    d.data.train = f"{bad}@all"
    with pytest.raises(sources.DataError, match=r"^config.data.train: "):
        tasks.check_data(d)


def test_prepare_data_fails_after_writing_its_report(tmp_path):
    from polypjax import main
    bad = folder(tmp_path / "kv", {"p0": _square(), "p1": _square(3)})
    c = _config("prepare_data")
    c.data.update(train=f"{bad}@all", test=f"{bad}@all")
    workdir = tmp_path / "prep"
    with pytest.raises(sources.DataError, match=r"2 data error\(s\) in kv@all.*first: .*p1.png: mask values"):
        main.run(c, str(workdir))
    assert "| kv@all | train |" in (workdir / "data_report.md").read_text()
