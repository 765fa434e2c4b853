"""TFDS builder `phantom`: the procedural phantom domains as prepared ArrayRecord datasets.

Rendering a phantom frame costs about 0.2 s of CPU at 128 px; a prepared dataset turns that into a
PNG decode, which matters when a run reads the same frames for many epochs. One config per domain
of `polypjax.data.phantom.DOMAINS` (TFDS config names are identifiers: `phantom-a` -> `phantom_a`),
plus `phantom_a_tiny` for tests and smoke runs.

Build (no download; ArrayRecord so that grain reads by index):

    python -m polypjax.data.tfds phantom/phantom_a --data_dir ~/tensorflow_datasets

the same as `tfds build phantom/phantom_a --imports polypjax.data.tfds.phantom --file_format
array_record --data_dir ...` (tensorflow-datasets 4.9.10's `tfds` CLI needs apache-beam to start),
or from Python:

    from polypjax.data.tfds import phantom
    phantom.Phantom(config="phantom_a", data_dir=...).download_and_prepare(file_format="array_record")

Other sizes or counts: `phantom.Phantom(config=phantom.PhantomConfig(name="phantom_a_256",
domain="phantom-a", size=256), data_dir=...)`. Read with
`polypjax.data.tfds.reader.TfdsSource("phantom/phantom_a", split="train")` (spec
`tfds:phantom/phantom_a`). Record i of a split is frame i of `PhantomSource(domain, split=split,
size=config.size, seed=config.seed)`, pixel for pixel.
"""
from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from polypjax.data import phantom
from polypjax.data.tfds import common


@dataclasses.dataclass(eq=False)
class PhantomConfig(tfds.core.BuilderConfig):
    """One phantom dataset: domain, examples per split, frame size (None: native) and seed."""

    domain: str = "phantom-a"
    num_train: int = 1000
    num_test: int = 200
    size: int | None = None
    seed: int = 0


def _config_name(domain: str) -> str:
    return domain.replace("-", "_")


def _configs() -> list[PhantomConfig]:
    configs = [PhantomConfig(name=_config_name(d.name), domain=d.name,
                             description=f"{d.description}; 1000 train / 200 test at {d.native_size} px")
               for d in phantom.DOMAINS.values()]
    # Small enough to build in a test (a few seconds) while still being real phantom frames.
    configs.append(PhantomConfig(name="phantom_a_tiny", domain="phantom-a", num_train=6, num_test=3,
                                 size=64, description="phantom-a, 6 train / 3 test at 64 px (tests)"))
    return configs


class Phantom(common.ArrayRecordByDefault, tfds.core.GeneratorBasedBuilder):
    """Procedural endoscopy-like frames with exact polyp masks (see polypjax.data.phantom)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: PNG image + binary mask + id, train/test per domain."}
    BUILDER_CONFIGS = _configs()

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="Procedural endoscopy-like phantom frames with exact polyp masks "
                        "(polypjax.data.phantom), one config per rendering domain.",
            features=common.pair_features(),
            supervised_keys=("image", "mask"),
            # Record i is frame i, as in PhantomSource.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # rendered, nothing to download
        cfg = self.builder_config
        return {"train": self._generate_examples("train", cfg.num_train),
                "test": self._generate_examples("test", cfg.num_test)}

    def _generate_examples(self, split: str, num_examples: int):
        cfg = self.builder_config
        source = phantom.PhantomSource(cfg.domain, num_examples=num_examples, size=cfg.size,
                                       seed=cfg.seed, split=split)
        for i in range(len(source)):
            yield i, common.encode_pair(source[i])
