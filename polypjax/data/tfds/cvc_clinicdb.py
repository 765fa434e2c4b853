"""TFDS builder `cvc_clinicdb`: CVC-ClinicDB polyp frames and masks from a manual download.

Build (writes ArrayRecord, which grain reads by index):

    python -m polypjax.data.tfds cvc_clinicdb --manual_dir ~/Downloads/cvc \
        --data_dir ~/tensorflow_datasets

the same as `tfds build cvc_clinicdb --imports polypjax.data.tfds.cvc_clinicdb --file_format
array_record --manual_dir ... --data_dir ...` (tensorflow-datasets 4.9.10's `tfds` CLI needs
apache-beam to start), or from Python:

    from polypjax.data.tfds import cvc_clinicdb
    builder = cvc_clinicdb.CvcClinicdb(data_dir=...)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=...), file_format="array_record")

Read with `polypjax.data.tfds.reader.TfdsSource("cvc_clinicdb", split=...)` (spec `tfds:cvc_clinicdb`).

Pairs are found by the folder reader's own rules (`sources.detect_layout` + `list_pairs` +
`load_pair`), so the dataset holds exactly what `sources.FolderSource` reads from the same folder.
Splits: `train` / `test` by a seeded hash of the file stem (`sources.split_ids`, test fraction 0.1,
seed 0; about 550 / 60 of the 612 frames). This is NOT PraNet's split (its CVC test set is 62 frames
picked by a list): a comparison on that list needs it as a folder. tfds' `all` split (train + test)
gives every pair. Frames of one video sequence can fall on both sides of a per-frame split, so the
test split measures in-distribution fit, not generalisation to new patients.
Both layouts work: the original release (`Original/*.tif` + `Ground Truth/*.tif`, RGB TIFFs read
with tifffile) and PNG copies in the Kvasir layout (`images/*.png` + `masks/*.png`). Images are
stored as PNG.
"""
from __future__ import annotations

import tensorflow_datasets as tfds

from polypjax.data.tfds import common

TEST_FRACTION = 0.1
SPLIT_SEED = 0

_CITATION = """\
@article{bernal2015wm,
  title={WM-DOVA maps for accurate polyp highlighting in colonoscopy: Validation vs. saliency
         maps from physicians},
  author={Bernal, Jorge and S{\\'a}nchez, F Javier and Fern{\\'a}ndez-Esparrach, Gloria and
          Gil, Debora and Rodr{\\'i}guez, Cristina and Vilari{\\~n}o, Fernando},
  journal={Computerized Medical Imaging and Graphics},
  volume={43},
  pages={99--111},
  year={2015}
}
"""


class CvcClinicdb(common.FolderPairsBuilder, common.ArrayRecordByDefault,
                tfds.core.GeneratorBasedBuilder):
    """CVC-ClinicDB: 612 frames from 31 colonoscopy sequences with polyp masks (384x288)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: PNG image + binary mask + id; seeded hash train/test split "
                 f"(test_fraction={TEST_FRACTION}, seed={SPLIT_SEED}).",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    CVC-ClinicDB is distributed on request by its authors (https://polyp.grand-challenge.org/CVCClinicDB/;
    the data is free for research). Unpack the archive into manual_dir, giving
    `CVC-ClinicDB/Original/*.tif` + `CVC-ClinicDB/Ground Truth/*.tif`, or put the .zip itself there.
    A complete PNG copy in the Kvasir-SEG layout (`images/*.png` + `masks/*.png`) works as well
    (PraNet's TestDataset/CVC-ClinicDB is only its 62-frame test subset).
    """

    DESCRIPTION = ("CVC-ClinicDB colonoscopy frames with binary polyp masks; seeded hash "
                   "train/test split of the frame ids (not PraNet's split).")
    HOMEPAGE = "https://polyp.grand-challenge.org/CVCClinicDB/"
    CITATION = _CITATION
    TEST_FRACTION = TEST_FRACTION
    SPLIT_SEED = SPLIT_SEED
