"""TFDS builder `kvasir_seg`: Kvasir-SEG polyp images and masks from a manual download.

Build (writes ArrayRecord, which grain reads by index):

    python -m polypjax.data.tfds kvasir_seg --manual_dir ~/Downloads/kvasir \
        --data_dir ~/tensorflow_datasets

the same as `tfds build kvasir_seg --imports polypjax.data.tfds.kvasir_seg --file_format array_record
--manual_dir ... --data_dir ...` (tensorflow-datasets 4.9.10's `tfds` CLI needs apache-beam to
start), or from Python:

    from polypjax.data.tfds import kvasir_seg
    builder = kvasir_seg.KvasirSeg(data_dir=...)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=...), file_format="array_record")

Read with `polypjax.data.tfds.reader.TfdsSource("kvasir_seg", split=...)` (spec `tfds:kvasir_seg`).

Pairs are found by the folder reader's own rules (`sources.detect_layout` + `list_pairs` +
`load_pair`), so the dataset holds exactly what `sources.FolderSource` reads from the same folder.
Splits: `train` / `test` by a seeded hash of the file stem (`sources.split_ids`, test fraction 0.1,
seed 0; about 900 / 100 pairs). This is NOT PraNet's 900/100 split: a paper comparison on PraNet's
test list needs that list as a folder. tfds' `all` split (train + test) gives every pair.
Images are stored as PNG (lossless re-encoding of the JPEGs, several times their size) so that
the pixels read back are those of the JPEG decoder, not of a second lossy round trip.
"""
from __future__ import annotations

import tensorflow_datasets as tfds

from polypjax.data.tfds import common

TEST_FRACTION = 0.1
SPLIT_SEED = 0

_CITATION = """\
@inproceedings{jha2020kvasir,
  title={Kvasir-SEG: A Segmented Polyp Dataset},
  author={Jha, Debesh and Smedsrud, Pia H and Riegler, Michael A and Halvorsen, P{\\aa}l and
          de Lange, Thomas and Johansen, Dag and Johansen, H{\\aa}vard D},
  booktitle={MultiMedia Modeling (MMM)},
  pages={451--462},
  year={2020}
}
"""


class KvasirSeg(common.FolderPairsBuilder, common.ArrayRecordByDefault,
                tfds.core.GeneratorBasedBuilder):
    """Kvasir-SEG: 1000 colonoscopy frames with polyp masks (Simula, CC BY 4.0)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: PNG image + binary mask + id; seeded hash train/test split "
                 f"(test_fraction={TEST_FRACTION}, seed={SPLIT_SEED}).",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download kvasir-seg.zip from https://datasets.simula.no/kvasir-seg/ (direct link:
    https://datasets.simula.no/downloads/kvasir-seg.zip) and either unpack it into manual_dir
    (giving `Kvasir-SEG/images/*.jpg` and `Kvasir-SEG/masks/*.jpg`) or put the .zip itself there.
    HyperKvasir's `segmented-images` folder has the same layout and works too.
    """

    DESCRIPTION = ("Kvasir-SEG colonoscopy frames with binary polyp masks; seeded hash "
                   "train/test split of the file stems (not PraNet's split).")
    HOMEPAGE = "https://datasets.simula.no/kvasir-seg/"
    CITATION = _CITATION
    TEST_FRACTION = TEST_FRACTION
    SPLIT_SEED = SPLIT_SEED
