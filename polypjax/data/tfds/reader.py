"""Random-access pair source over a prepared TFDS dataset (ArrayRecord files).

`TfdsSource("kvasir_seg", split="train", data_dir=...)` has the interface of every polypjax pair
source: `len()` and `[i] -> {"image": uint8 [H,W,3], "mask": uint8 [H,W] in {0,1}, "id": str}`.
It wraps TFDS' ArrayRecord data source (`builder.as_data_source`, what `tfds.data_source` returns)
and decodes with OpenCV or PIL, no TensorFlow involved.

Names are TFDS names: `kvasir_seg`, `cvc_clinicdb`, `phantom/phantom_a` (dataset/config, optionally
`:version`); config specs spell them `tfds:kvasir_seg`, `tfds:phantom/phantom_a`. Splits: `train`,
`test`, `all` (TFDS' union of the splits: train then test), or any TFDS split expression such
as `train[:50]`.

The dataset must have been prepared: `python -m polypjax.data.tfds NAME [--manual_dir ...]
[--data_dir ...]` or `prepare(NAME, ...)` below (the builder modules say more);
`tfds.data_source` itself is not called because it would try to build a missing dataset in place,
in TFRecord format and, for the manual-download datasets, fail with a less helpful message.
TensorFlow Datasets is imported only when a TfdsSource is made, never at polypjax import time.
"""
from __future__ import annotations

import numpy as np

from polypjax.data.sources import DataError

# builder name -> (module that registers it, whether it needs a manual download)
BUILDERS = {
    "kvasir_seg": ("polypjax.data.tfds.kvasir_seg", True),
    "cvc_clinicdb": ("polypjax.data.tfds.cvc_clinicdb", True),
    "phantom": ("polypjax.data.tfds.phantom", False),
}


def _tfds():
    """Imports tensorflow_datasets and registers the polypjax builders with it."""
    import importlib

    try:
        import tensorflow_datasets as tfds
    except ImportError:
        from polypjax.data.sources import DataError
        raise DataError("tfds: sources need tensorflow-datasets, which is not installed: "
                        "pip install -e '.[tf]' (or read the folder layout instead)") from None
    for module, _ in BUILDERS.values():
        # tfds.builder finds a dataset by its registered class, which exists once imported.
        importlib.import_module(module)
    return tfds


def build_hint(name: str, data_dir: str | None) -> str:
    """How to prepare dataset `name` (the build command, or a pointer for foreign datasets)."""
    from polypjax.data.tfds import common
    base = name.split("/")[0].split(":")[0]
    if base not in BUILDERS:
        return f"prepare it with `tfds build {name}{f' --data_dir {data_dir}' if data_dir else ''}`"
    command = common.build_command(name.split(":")[0], manual=BUILDERS[base][1], data_dir=data_dir)
    return f"build it with `{command}`"


def prepare(name: str, *, data_dir: str | None = None, manual_dir: str | None = None):
    """Builds dataset `name` (`kvasir_seg`, `phantom/phantom_a`, ...) as ArrayRecord; returns the builder.

    A dataset already prepared in `data_dir` is left as it is.
    """
    import pathlib
    tfds = _tfds()
    base = name.split("/")[0].split(":")[0]
    if base in BUILDERS and BUILDERS[base][1] and manual_dir is None:
        raise DataError(f"{name} is built from a manual download: pass manual_dir "
                        f"({_manual_instructions(tfds, name)})")
    if manual_dir is not None and not pathlib.Path(manual_dir).expanduser().is_dir():
        raise DataError(f"{manual_dir}: manual_dir does not exist or is not a folder")
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
    except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
        raise DataError(f"TFDS dataset {name!r}: {_first_line(e)}") from e
    config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else str(pathlib.Path(manual_dir).expanduser()))
    try:
        builder.download_and_prepare(download_config=config, file_format="array_record")
    except AssertionError as e:  # TFDS' way of saying the manual_dir is empty
        raise DataError(f"TFDS dataset {name!r}: {e}") from e
    return builder


def _manual_instructions(tfds, name: str) -> str:
    text = tfds.builder_cls(name.split("/")[0].split(":")[0]).MANUAL_DOWNLOAD_INSTRUCTIONS or ""
    return " ".join(text.split())


class TfdsSource:
    """Pairs from a prepared TFDS dataset, by index (see module docstring)."""

    def __init__(self, name: str, split: str = "train", data_dir: str | None = None):
        self.tfds_name = name
        self.split = split
        self.data_dir = None if data_dir is None else str(data_dir)
        self.name = f"{name}/{split}"
        self._open()

    def _open(self):
        tfds = _tfds()
        try:
            builder = tfds.builder(self.tfds_name, data_dir=self.data_dir)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise DataError(f"TFDS dataset {self.tfds_name!r} not found (polypjax builders: "
                            f"{', '.join(sorted(BUILDERS))}; phantom configs are "
                            f"'phantom/<config>'): {_first_line(e)}") from e
        except ValueError as e:  # unknown config or version
            raise DataError(f"TFDS dataset {self.tfds_name!r}: {_first_line(e)}") from e
        if not builder.is_prepared():
            where = self.data_dir or "the default: $TFDS_DATA_DIR or ~/tensorflow_datasets"
            raise DataError(f"TFDS dataset {self.tfds_name!r} is not prepared in {builder.data_dir} "
                            f"(data_dir {where}); {build_hint(self.tfds_name, self.data_dir)}")
        known = sorted(builder.info.splits.keys())
        try:
            data = builder.as_data_source(split=self.split)
        except NotImplementedError as e:  # prepared as TFRecord: no random access
            raise DataError(f"TFDS dataset {self.tfds_name!r} in {builder.data_dir} is stored as "
                            f"{builder.info.file_format.value}, which cannot be read by index; delete it "
                            f"and {build_hint(self.tfds_name, self.data_dir)}") from e
        except (KeyError, ValueError) as e:
            raise DataError(f"TFDS dataset {self.tfds_name!r}: unknown split {self.split!r} "
                            f"(splits: {', '.join(known)} and 'all'): {_first_line(e)}") from e
        self._data = data
        self.data_path = str(builder.data_dir)

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index: int) -> dict:
        index = int(index)  # numpy integers from samplers
        if not 0 <= index < len(self._data):
            raise IndexError(f"index {index} out of range for {self.name} ({len(self)} pairs)")
        ex = self._data[index]
        mask = ex["mask"]
        if mask.ndim == 3:
            mask = mask[..., 0]
        ident = ex["id"]
        return {
            "image": np.ascontiguousarray(ex["image"]),
            # Stored as {0,1}; the comparison only guards datasets written by other tools.
            "mask": (mask > 0).astype(np.uint8),
            "id": ident.decode() if isinstance(ident, bytes) else str(ident),
        }

    # grain's worker processes receive the source pickled: ship the arguments and reopen there
    # rather than rely on the ArrayRecord readers being picklable.
    def __getstate__(self):
        return {"tfds_name": self.tfds_name, "split": self.split, "data_dir": self.data_dir,
                "name": self.name}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def __repr__(self) -> str:
        return (f"TfdsSource({self.tfds_name!r}, split={self.split!r}, data_dir={self.data_dir!r}, "
                f"n={len(self)})")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
