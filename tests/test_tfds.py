"""TFDS builders (kvasir_seg, cvc_clinicdb, phantom) and the random-access TfdsSource.

Each builder is built once per module from a few tiny fixture pairs into a temporary data_dir
(ArrayRecord) and read back; what comes back must equal what the folder reader (or the phantom
source) gives for the same pairs, pixel for pixel, because images are stored as PNG.
"""
import pathlib
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from polypjax.data import phantom, pipeline, sources
from polypjax.data.tfds import reader
from polypjax.data.tfds import kvasir_seg, cvc_clinicdb


def _pick_ids(candidates, n_train, n_test, test_fraction, seed):
    """Fixture ids with both splits non-empty under the builder's own hash split."""
    test = set(sources.split_ids(candidates, "test", test_fraction, seed)[:n_test])
    train = set(sources.split_ids(candidates, "train", test_fraction, seed)[:n_train])
    return [candidates[i] for i in sorted(test | train)]


def _pair_arrays(rng, i):
    # Sizes vary per pair, as in Kvasir-SEG.
    h, w = 24 + 3 * i, 32 + (i % 3) * 5
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[2:2 + h // 2, 3:3 + w // 3 + i] = 255
    return image, mask


@pytest.fixture(scope="module")
def kvasir_manual(tmp_path_factory):
    # As kvasir-seg.zip unpacks: one wrapping folder, JPEG images and (noisy) JPEG masks.
    root = tmp_path_factory.mktemp("kvasir_manual")
    base = root / "Kvasir-SEG"
    (base / "images").mkdir(parents=True)
    (base / "masks").mkdir()
    ids = _pick_ids([f"cju{i:02d}x" for i in range(40)], 5, 2, kvasir_seg.TEST_FRACTION,
                    kvasir_seg.SPLIT_SEED)
    rng = np.random.default_rng(0)
    for i, stem in enumerate(ids):
        image, mask = _pair_arrays(rng, i)
        Image.fromarray(image).save(base / "images" / f"{stem}.jpg", quality=90)
        Image.fromarray(mask).save(base / "masks" / f"{stem}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def cvc_manual(tmp_path_factory):
    # The original CVC-ClinicDB release: numbered RGB TIFFs, masks in "Ground Truth".
    import tifffile
    root = tmp_path_factory.mktemp("cvc_manual")
    base = root / "CVC-ClinicDB"
    (base / "Original").mkdir(parents=True)
    (base / "Ground Truth").mkdir()
    # Numbers on both sides of a digit boundary check the natural order (2 before 10).
    ids = _pick_ids([str(i) for i in range(1, 60)], 4, 2, cvc_clinicdb.TEST_FRACTION,
                    cvc_clinicdb.SPLIT_SEED) + ["2", "10"]
    ids = sorted(set(ids), key=int)
    rng = np.random.default_rng(1)
    for i, stem in enumerate(ids):
        image, mask = _pair_arrays(rng, i)
        tifffile.imwrite(base / "Original" / f"{stem}.tif", image, photometric="rgb")
        tifffile.imwrite(base / "Ground Truth" / f"{stem}.tif", mask)
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds_data")


@pytest.fixture(scope="module")
def kvasir_built(kvasir_manual, data_dir):
    reader.prepare("kvasir_seg", data_dir=str(data_dir), manual_dir=str(kvasir_manual))
    return data_dir


@pytest.fixture(scope="module")
def cvc_built(cvc_manual, data_dir):
    reader.prepare("cvc_clinicdb", data_dir=str(data_dir), manual_dir=str(cvc_manual))
    return data_dir


@pytest.fixture(scope="module")
def phantom_built(data_dir):
    reader.prepare("phantom/phantom_a_tiny", data_dir=str(data_dir))
    return data_dir


def _check_against_folder(name, data_dir, manual_dir, test_fraction, seed):
    srcs = {s: reader.TfdsSource(name, split=s, data_dir=str(data_dir)) for s in ("train", "test", "all")}
    folders = {s: sources.FolderSource(manual_dir, split=s, test_fraction=test_fraction, split_seed=seed)
               for s in ("train", "test", "all")}
    assert len(srcs["train"]) > 0 and len(srcs["test"]) > 0
    assert len(srcs["train"]) + len(srcs["test"]) == len(srcs["all"]) == len(folders["all"])
    ids = {s: [src[i]["id"] for i in range(len(src))] for s, src in srcs.items()}
    assert not set(ids["train"]) & set(ids["test"])
    assert sorted(ids["all"]) == sorted(ids["train"] + ids["test"])
    for split in ("train", "test"):
        # Same split and same order as the folder reader: record i is FolderSource pair i.
        src, folder = srcs[split], folders[split]
        assert len(src) == len(folder)
        for i in range(len(src)):
            got, want = src[i], folder[i]
            assert got["id"] == want["id"]
            assert got["image"].dtype == np.uint8 and got["image"].shape == want["image"].shape
            np.testing.assert_array_equal(got["image"], want["image"])
            assert got["mask"].dtype == np.uint8 and got["mask"].shape == want["image"].shape[:2]
            assert set(np.unique(got["mask"])) <= {0, 1} and got["mask"].any()
            np.testing.assert_array_equal(got["mask"], want["mask"])
    return srcs


def test_kvasir_seg_matches_folder_reader(kvasir_built, kvasir_manual):
    srcs = _check_against_folder("kvasir_seg", kvasir_built, kvasir_manual,
                                 kvasir_seg.TEST_FRACTION, kvasir_seg.SPLIT_SEED)
    assert srcs["train"].name == "kvasir_seg/train"


def test_cvc_clinicdb_tiff_matches_folder_reader(cvc_built, cvc_manual):
    srcs = _check_against_folder("cvc_clinicdb", cvc_built, cvc_manual,
                                 cvc_clinicdb.TEST_FRACTION, cvc_clinicdb.SPLIT_SEED)
    train_ids = [srcs["train"][i]["id"] for i in range(len(srcs["train"]))]
    assert train_ids == sorted(train_ids, key=int)


def test_kvasir_seg_from_zip(kvasir_manual, tmp_path):
    # The manual_dir may hold just kvasir-seg.zip as downloaded.
    manual = tmp_path / "manual"
    manual.mkdir()
    with zipfile.ZipFile(manual / "kvasir-seg.zip", "w") as z:
        for p in sorted(kvasir_manual.rglob("*")):
            z.write(p, p.relative_to(kvasir_manual))
    reader.prepare("kvasir_seg", data_dir=str(tmp_path / "data"), manual_dir=str(manual))
    src = reader.TfdsSource("kvasir_seg", split="all", data_dir=str(tmp_path / "data"))
    assert len(src) == len(sources.FolderSource(kvasir_manual, split="all"))


def test_phantom_tiny_matches_phantom_source(phantom_built):
    for split, n in (("train", 6), ("test", 3)):
        src = reader.TfdsSource("phantom/phantom_a_tiny", split=split, data_dir=str(phantom_built))
        ref = phantom.PhantomSource("phantom-a", num_examples=n, size=64, split=split)
        assert len(src) == n
        for i in (0, n - 1):
            got, want = src[i], ref[i]
            assert got["id"] == want["id"]
            np.testing.assert_array_equal(got["image"], want["image"])
            np.testing.assert_array_equal(got["mask"], want["mask"])


def test_not_prepared_is_a_clear_data_error(tmp_path):
    with pytest.raises(sources.DataError) as e:
        reader.TfdsSource("kvasir_seg", split="train", data_dir=str(tmp_path))
    message = str(e.value)
    assert "not prepared" in message and str(tmp_path) in message
    assert "python -m polypjax.data.tfds kvasir_seg --manual_dir" in message
    with pytest.raises(sources.DataError, match="phantom/phantom_b"):
        reader.TfdsSource("phantom/phantom_b", data_dir=str(tmp_path))


def test_unknown_name_split_and_manual_dir_are_data_errors(kvasir_built, tmp_path):
    with pytest.raises(sources.DataError, match="not found"):
        reader.TfdsSource("no_such_polyp_set", data_dir=str(kvasir_built))
    with pytest.raises(sources.DataError, match="unknown split"):
        reader.TfdsSource("kvasir_seg", split="validation", data_dir=str(kvasir_built))
    with pytest.raises(sources.DataError, match="manual_dir"):
        reader.prepare("cvc_clinicdb", data_dir=str(tmp_path))
    (tmp_path / "empty" / "junk").mkdir(parents=True)
    with pytest.raises(sources.DataError, match="no known layout"):
        reader.prepare("cvc_clinicdb", data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "empty"))


def test_source_plugs_into_eval_pipeline_and_pickles(kvasir_built):
    src = reader.TfdsSource("kvasir_seg", split="train", data_dir=str(kvasir_built))
    ds = pipeline.eval_dataset(src, image_size=16, global_batch_size=4, process_index=0, process_count=1)
    batch = ds[0]
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.uint8
    assert batch["mask"].shape == (4, 16, 16) and set(np.unique(batch["mask"])) <= {0, 1}
    assert batch["valid"].all()
    # grain's worker processes get the source pickled.
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone[1]["image"], src[1]["image"])


def test_catalog_spec_reads_tfds(phantom_built):
    import ml_collections
    from polypjax.data import catalog
    cfg = ml_collections.ConfigDict({"tfds_data_dir": str(phantom_built)})
    src = catalog.make_source("tfds:phantom/phantom_a_tiny@test", cfg)
    assert isinstance(src, reader.TfdsSource) and len(src) == 3


def test_polypjax_import_does_not_import_tfds():
    code = ("import sys, polypjax, polypjax.data.sources, polypjax.data.catalog, polypjax.data.tfds; "
            "assert 'tensorflow_datasets' not in sys.modules, 'tfds imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=pathlib.Path(__file__).parent.parent)
