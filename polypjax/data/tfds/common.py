"""Pieces shared by the polypjax TFDS builders: features, ArrayRecord default, folder splits.

Every builder stores the same features, so one reader (`reader.TfdsSource`) serves them all:

- `image`: uint8 [H, W, 3], PNG (lossless: what is read back equals what the folder reader
  decodes, pixel for pixel, also for JPEG sources);
- `mask`: uint8 [H, W, 1] in {0, 1}, PNG;
- `id`: the file stem (or phantom frame id).

Importing this module imports tensorflow_datasets; only the builders and the reader do.
"""
from __future__ import annotations

import inspect
import pathlib
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from polypjax.data import sources

# The folder builders (kvasir_seg, cvc_clinicdb) split into these; tfds' own `all` split name
# (train + test) gives every pair, without storing the pairs twice.
FOLDER_SPLITS = ("train", "test")


def pair_features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8, encoding_format="png"),
        "mask": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format="png"),
        "id": tfds.features.Text(),
    })


def encode_pair(pair: dict) -> dict:
    """A source pair -> a TFDS example, images as PIL images.

    TFDS encodes a PIL image with PIL but a numpy array with TensorFlow, which would import
    TensorFlow (seconds) just to write PNGs. PIL's PNG is as lossless as TensorFlow's.
    """
    from PIL import Image
    image, mask = pair["image"], pair["mask"]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise sources.DataError(f"{pair['id']}: image must be uint8 [H,W,3], "
                                f"got {image.dtype} {image.shape}")
    if mask.dtype != np.uint8 or mask.shape != image.shape[:2]:
        raise sources.DataError(f"{pair['id']}: mask must be uint8 {image.shape[:2]}, "
                                f"got {mask.dtype} {mask.shape}")
    return {"image": Image.fromarray(image, "RGB"), "mask": Image.fromarray(mask, "L"), "id": pair["id"]}


class ArrayRecordByDefault:
    """Mixin for the builders: write ArrayRecord unless a file format is given.

    grain reads by index, which only ArrayRecord files allow; TFDS' default is TFRecord, and a
    plain `tfds build` or `download_and_prepare()` that forgot `file_format` would produce files
    the reader cannot use. An explicit `file_format` (or a dataset already prepared in another
    format) is left alone.
    """

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format, **kwargs)
        if file_format is None and not self.is_prepared():
            self.info.set_file_format("array_record", override=True)

    # TFDS 4.9's own lookup of a builder's source file imports `importlib_resources`, which its
    # dependencies no longer install (etils dropped it); for a module in a plain package that
    # lookup ends at this file path anyway.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))


def read_folder_pairs(manual_dir: pathlib.Path, dl_manager=None
                      ) -> list[tuple[str, pathlib.Path, pathlib.Path]]:
    """The (stem, image, mask) pairs in a manual_dir, through the folder reader's own rules.

    Accepts the unpacked dataset (also wrapped in one folder, as archives unpack) or, when
    `dl_manager` is given, a manual_dir holding just the downloaded .zip, which is extracted.
    Unpaired files are errors here (a dataset is built once and should be complete).
    """
    manual_dir = pathlib.Path(manual_dir)
    try:
        _, image_dir, mask_dir = sources.detect_layout(manual_dir)
    except sources.DataError:
        archives = sorted(p for p in manual_dir.iterdir() if p.suffix.lower() == ".zip")
        if dl_manager is None or len(archives) != 1:
            raise
        _, image_dir, mask_dir = sources.detect_layout(_extract_zip(archives[0], dl_manager.download_dir))
    pairs, problems = sources.list_pairs(image_dir, mask_dir)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        more = f" (and {len(errors) - 1} more; run `python -m polypjax.data {manual_dir}`)" \
            if len(errors) > 1 else ""
        raise sources.DataError(f"{errors[0]}{more}")
    return pairs


def _extract_zip(archive: pathlib.Path, download_dir) -> pathlib.Path:
    """Unpacks `archive` under download_dir/extracted once; a later build reuses it.

    Python's zipfile, not `dl_manager.extract`: TFDS' extractor goes through tf.io.gfile and so
    imports TensorFlow (many seconds) for a local zip.
    """
    import shutil
    import zipfile
    target = pathlib.Path(download_dir) / "extracted" / f"{archive.stem}.manual"
    if not target.is_dir():
        # Unpack next to the target and rename: an interrupted build leaves no half folder.
        partial = target.with_name(target.name + ".incomplete")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(partial)
        except (OSError, zipfile.BadZipFile) as e:
            raise sources.DataError(f"{archive}: cannot unpack ({type(e).__name__}: {e})") from e
        partial.rename(target)
    return target


def split_pairs(pairs, *, test_fraction: float, seed: int) -> dict[str, list]:
    """{split: pairs} for FOLDER_SPLITS, by `sources.split_ids` (the folder reader's split)."""
    ids = [stem for stem, _, _ in pairs]
    return {split: [pairs[i] for i in sources.split_ids(ids, split, test_fraction, seed)]
            for split in FOLDER_SPLITS}


def generate_folder_examples(pairs) -> Iterator[tuple[int, dict]]:
    # Integer keys: with shuffling disabled TFDS writes records sorted by key, so the position
    # keeps the folder reader's natural order (a stem key would sort "10" before "2").
    for key, (stem, image_path, mask_path) in enumerate(pairs):
        yield key, encode_pair(sources.load_pair(stem, image_path, mask_path))


def build_command(name: str, *, manual: bool, data_dir: str | None = None) -> str:
    """The command line that prepares `name` (`dataset` or `dataset/config`) as ArrayRecord."""
    parts = ["python -m polypjax.data.tfds", name]
    if manual:
        parts.append("--manual_dir <folder with the unpacked download>")
    parts.append(f"--data_dir {data_dir}" if data_dir else "[--data_dir <dir>]")
    return " ".join(parts)


class FolderPairsBuilder:
    """Mixin for builders of a manually downloaded folder of pairs (Kvasir-SEG, CVC-ClinicDB).

    A builder sets DESCRIPTION, HOMEPAGE, CITATION, TEST_FRACTION and SPLIT_SEED. Records keep
    the folder reader's (natural) order, so index i here is index i of `FolderSource(split=...)`;
    training shuffles in grain anyway.
    """

    DESCRIPTION = HOMEPAGE = CITATION = ""
    TEST_FRACTION = 0.1
    SPLIT_SEED = 0

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION, features=pair_features(), supervised_keys=("image", "mask"),
            homepage=self.HOMEPAGE, citation=self.CITATION, disable_shuffling=True)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        pairs = read_folder_pairs(dl_manager.manual_dir, dl_manager)
        splits = split_pairs(pairs, test_fraction=self.TEST_FRACTION, seed=self.SPLIT_SEED)
        return {name: self._generate_examples(split) for name, split in splits.items()}

    def _generate_examples(self, pairs):
        yield from generate_folder_examples(pairs)
