"""Data as it is found in public releases (fixtures from tools/make_wild_data.py): the nearly-binary
mask rule on both sides of its limits, low-range 16-bit frames and their scaling, odd files and
names, and a CVC-ClinicDB-like folder of noisy TIFF masks that trains and evaluates."""
import importlib.util
import json
import logging
import pathlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from polypjax import configlib, tasks
from polypjax.data import check, sources
from polypjax.data.inspect import format_report, inspect_folder

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAIRS = 8


def _tool():
    spec = importlib.util.spec_from_file_location("make_wild_data", ROOT / "tools" / "make_wild_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wild_tool = _tool()


@pytest.fixture(scope="module")
def wild(tmp_path_factory):
    return wild_tool.write_all(tmp_path_factory.mktemp("wild"), pairs=PAIRS)


# --------------------------------------------------------------------------- the CVC-ClinicDB release

def test_cvc_original_release_loads_with_one_warning_counting_the_thresholded_masks(wild):
    report = inspect_folder(wild / "cvc-original")
    assert report["layout"] == "cvc-clinicdb" and report["errors"] == 0 and report["num_pairs"] == PAIRS
    (note,) = report["rules_applied"]
    thresholded = PAIRS - wild_tool.EXPECTED["cvc-original"]["clean"]
    assert note["severity"] == "warning" and note["message"].startswith(f"{thresholded} mask(s) hold values")
    assert "pixels >= 128 are polyp" in note["message"] and "(1.tif)" in note["message"]  # the largest share
    text = format_report(report)
    assert text.count("thresholded") == 1 and "1 warning(s)" in text
    src = sources.FolderSource(wild / "cvc-original")
    for i in range(len(src)):
        raw = tifffile.imread(src.pair_paths(i)[1])
        np.testing.assert_array_equal(src[i]["mask"], (raw >= 128).astype(np.uint8))


def test_run_check_logs_the_rule_once(wild, caplog):
    c = configlib.load_config("segmentation", "cpu")
    c.data.train = f"{wild / 'cvc-original'}@all"
    c.data.test = f"{wild / 'cvc-original'}@all"
    check._LOGGED.clear()
    with caplog.at_level(logging.WARNING):
        tasks.check_data(c)
        tasks.check_data(c)  # a pipeline checks before every stage
    lines = [r.getMessage() for r in caplog.records if "thresholded" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("config.data.train: ")


@pytest.mark.parametrize("case", ["stray-255", "two", "hundred", "class-map", "soft", "faint-ring"])
def test_ambiguous_masks_stay_errors_with_their_values(wild, case):
    report = inspect_folder(wild / "refused" / case)
    (problem,) = report["problems"]
    assert problem["severity"] == "error" and "are not binary labels" in problem["message"]
    assert "mask values 0 (" in problem["message"]
    with pytest.raises(sources.DataError, match="a.png: mask values"):
        sources.FolderSource(wild / "refused" / case)[0]


# --------------------------------------------------------------------------- the rule's limits

def _mask(high: int, faint: int, middle: int, top: int = 255, dtype=np.uint8, faint_value: int = 20):
    """A flat mask with `high` pixels at top, `faint` at faint_value and `middle` at the middle of the range."""
    values = [top] * high + [faint_value] * faint + [(top + 1) // 2 - 1] * middle
    out = np.zeros(4000, dtype)
    out[: len(values)] = values
    return out.reshape(40, 100)


@pytest.mark.parametrize("top,dtype,faint_value", [(255, np.uint8, 20), (65535, np.uint16, 20 * 257)])
def test_faint_pixels_may_equal_the_label_pixels_not_outnumber_them(top, dtype, faint_value):
    ok = sources.read_mask_values(_mask(500, 500, 0, top, dtype, faint_value))
    assert ok.thresholded and ok.faint_share == 1.0 and ok.mask.sum() == 500
    with pytest.raises(sources.DataError, match="not binary labels"):
        sources.read_mask_values(_mask(500, 501, 0, top, dtype, faint_value))


@pytest.mark.parametrize("top,dtype", [(255, np.uint8), (65535, np.uint16)])
def test_middle_band_may_hold_one_percent_of_the_nonzero_pixels(top, dtype):
    # 990 label + 10 middle: 10 of 1000 non-zero pixels (1 %); the middle value counts as faint
    ok = sources.read_mask_values(_mask(990, 0, 10, top, dtype))
    assert ok.thresholded and ok.middle_px == 10 and ok.mask.sum() == 990
    with pytest.raises(sources.DataError, match="not binary labels"):
        sources.read_mask_values(_mask(990, 0, 11, top, dtype))


def test_band_edges_are_64_and_191_on_eight_bits():
    edge = _mask(900, 0, 0)
    edge.flat[900:1000] = 63  # below the band: faint, not middle
    assert sources.read_mask_values(edge).middle_px == 0
    edge.flat[900:1000] = 192  # above the band: polyp
    reading = sources.read_mask_values(edge)
    assert reading.middle_px == 0 and reading.mask.sum() == 1000
    edge.flat[900:1000] = 64
    with pytest.raises(sources.DataError):
        sources.read_mask_values(edge)


def test_clean_masks_are_read_as_before():
    for value, dtype in ((1, np.uint8), (255, np.uint8), (65535, np.uint16), (1, np.uint16)):
        reading = sources.read_mask_values(_mask(300, 0, 0, value, dtype))
        assert not reading.thresholded and reading.mask.sum() == 300


# --------------------------------------------------------------------------- odd files and names

def test_jpeg_palette_alpha_rgb_masks_and_odd_names(wild):
    report = inspect_folder(wild / "kvasir-wild")
    assert report["errors"] == 0 and report["num_pairs"] == wild_tool.EXPECTED["kvasir-wild"]["pairs"]
    (note,) = report["rules_applied"]
    assert "of them JPEG" in note["message"]
    src = sources.FolderSource(wild / "kvasir-wild")
    square = wild_tool.square(48, 64) > 0
    for i in range(len(src)):
        pair = src[i]
        lossy = src.pair_paths(i)[1].suffix.lower() == ".jpg"
        agree = (pair["mask"] == square).mean()
        assert agree > (0.98 if lossy else 0.9999), (pair["id"], agree)
    assert {src[i]["id"] for i in range(len(src))} >= {"cju0 jpeg mask", "PAL", "alpha"}


# --------------------------------------------------------------------------- low-range 16-bit frames

def test_low_range_frames_are_named_with_their_range_and_the_field_that_scales_them(wild):
    report = inspect_folder(wild / "deep")
    assert report["errors"] == 0 and report["num_pairs"] == 3
    (note,) = report["rules_applied"]
    assert note["message"].startswith("3 image(s) of 16-bit use only values ")
    assert "image_scaling='12-bit'" in note["message"] and "2 of 3 declare one" in note["message"]
    declared = inspect_folder(wild / "deep", image_scaling="declared")["rules_applied"]
    assert len(declared) == 1 and "undeclared.tif" in declared[0]["message"]
    assert inspect_folder(wild / "deep", image_scaling="12-bit")["rules_applied"] == []


@pytest.mark.parametrize("scaling,tops", [("full", {"declared": 65535, "sbit": 65535, "undeclared": 65535}),
                                          ("declared", {"declared": 4095, "sbit": 4095, "undeclared": 65535}),
                                          ("12-bit", {"declared": 4095, "sbit": 4095, "undeclared": 4095})])
def test_image_scaling_full_declared_or_bits(wild, scaling, tops):
    src = sources.FolderSource(wild / "deep", image_scaling=scaling)
    for i in range(len(src)):
        raw, _ = sources.read_array(src.pair_paths(i)[0])
        want = np.round(raw.astype(np.float64) * 255 / tops[src[i]["id"]]).astype(np.uint8)
        np.testing.assert_array_equal(src[i]["image"], sources.to_rgb(want))


def test_scaling_clips_values_above_the_declared_top(tmp_path):
    a = np.full((8, 8), 5000, np.uint16)
    a[0, 0] = 4095
    assert (sources.to_uint8(a, sources.scaling_top(a.dtype, None, "12-bit")) == 255).all()


def test_image_scaling_field_is_checked():
    c = configlib.load_config("segmentation", "cpu")
    c.data.image_scaling = "banana"
    with pytest.raises(configlib.ConfigError, match=r"^config.data.image_scaling: 'banana' is not an image scaling"):
        configlib.resolve(c)
    c.data.image_scaling = "12-bit"
    assert configlib.resolve(c).data.image_scaling == "12-bit"


def test_neutral_scaling_leaves_fingerprints_of_older_runs_unchanged():
    c = json.loads(json.dumps(configlib.load_config("segmentation", "cpu").to_dict()))
    older = json.loads(json.dumps(c))
    del older["data"]["image_scaling"]
    assert configlib.what_it_computes(c) == configlib.what_it_computes(older)


# --------------------------------------------------------------------------- it trains and evaluates

def test_cvc_like_folder_trains_and_evaluates(wild, tmp_path):
    from polypjax import main
    folder = wild / "cvc-original"
    c = configlib.load_config("segmentation", "cpu")
    c.data.update(image_size=32, batch_size=8, train=f"{folder}@all", test=f"{folder}@all")
    c.model.kwargs = {"features": (8, 16)}
    c.train.update(num_steps=3, checkpoint_every=3, log_every=3)
    c.optim.warmup_steps = 1
    main.run(c, str(tmp_path / "run"))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    scores = results["test"]["cvc-original@all"]
    assert scores["num_images"] == PAIRS and 0.0 <= scores["mDice"] <= 1.0 and results["num_steps"] == 3


def test_png_sbit_chunk_is_read(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(path)
    assert sources.read_header(path).declared_max is None
    wild_tool._png_with_sbit(path, 10)
    assert sources.read_header(path).declared_max == 1023
    assert Image.open(path).size == (4, 4)  # still a valid PNG
