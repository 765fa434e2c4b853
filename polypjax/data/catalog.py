"""Source specs from configs -> pair sources.

A spec is a phantom domain name (`phantom-a`), `tfds:NAME` (a prepared TFDS dataset) or a folder
path, optionally followed by `@train`, `@test` or `@all`.
"""
from __future__ import annotations

import dataclasses
import pathlib

SPLITS = ("train", "test", "all")


@dataclasses.dataclass(frozen=True)
class Spec:
    kind: str  # "phantom", "tfds" or "folder"
    name: str  # domain, TFDS name or path
    split: str


def parse_spec(spec: str, default_split: str) -> Spec:
    from polypjax.data import phantom
    text = spec.strip()
    if not text:
        raise ValueError("empty data source spec")
    split = default_split
    # A folder whose own name holds "@" is read as that folder; "@split" is taken only from the end.
    if "@" in text and not pathlib.Path(text).expanduser().is_dir():
        text, split = text.rsplit("@", 1)
        if split not in SPLITS:
            raise ValueError(f"source {spec!r}: split {split!r} is not one of {SPLITS} (a source is "
                             "NAME or NAME@SPLIT; a folder path may contain '@' only if it exists)")
    if text in phantom.DOMAINS:
        if split == "all":
            raise ValueError(f"source {spec!r}: phantom data has 'train' and 'test' splits")
        return Spec("phantom", text, split)
    if text.startswith("phantom-"):
        raise ValueError(f"unknown phantom domain {text!r}; known: {sorted(phantom.DOMAINS)}")
    if text.startswith("tfds:"):
        return Spec("tfds", text[5:], split)
    if not pathlib.Path(text).expanduser().is_dir():
        raise ValueError(f"source {spec!r}: folder {text!r} does not exist (and it is not a phantom "
                         f"domain {sorted(phantom.DOMAINS)} or a tfds: name)")
    return Spec("folder", str(pathlib.Path(text).expanduser()), split)


def data_seed(data_config, run_seed: int) -> int:
    """The seed that decides which data a run reads (phantom frames, subsets): `data.seed`, or the
    run's own seed where it is -1 (configs written before the field). Keeping it apart from the
    run's seed lets seeds vary a segmenter's initialisation without changing its data."""
    seed = int(data_config.get("seed", -1)) if hasattr(data_config, "get") else -1
    return int(run_seed) if seed < 0 else seed


def make_source(spec: str, data_config, *, default_split: str = "train", seed: int = 0):
    """Builds the pair source a spec names, using the data config for sizes and splits; `seed` is
    the run's seed, used for data only where `data.seed` is -1 (`data_seed`)."""
    s = parse_spec(spec, default_split)
    seed = data_seed(data_config, seed)
    if s.kind == "phantom":
        from polypjax.data import phantom
        n = data_config.phantom_train_examples if s.split == "train" else data_config.phantom_test_examples
        return phantom.PhantomSource(s.name, num_examples=n, size=data_config.phantom_size,
                                     seed=seed, split=s.split)
    if s.kind == "tfds":
        from polypjax.data.tfds import reader
        return reader.TfdsSource(s.name, split=s.split, data_dir=data_config.get("tfds_data_dir") or None)
    from polypjax.data import sources
    return sources.FolderSource(s.name, split=s.split, test_fraction=data_config.test_fraction,
                                split_seed=data_config.split_seed, decode_size=data_config.image_size,
                                image_scaling=data_config.get("image_scaling", "full"))


def split_specs(value: str) -> list[str]:
    """A comma-separated source field (e.g. `data.test`) -> its specs."""
    return [s.strip() for s in str(value).split(",") if s.strip()]


def make_sources(specs: str, data_config, *, default_split: str, seed: int = 0) -> dict:
    """Comma-separated specs -> {display name: source}."""
    out = {}
    for spec in split_specs(specs):
        source = make_source(spec, data_config, default_split=default_split, seed=seed)
        out[display_name(spec, default_split)] = source
    return out


def display_name(spec: str, default_split: str) -> str:
    s = parse_spec(spec, default_split)
    base = pathlib.Path(s.name).name if s.kind == "folder" else s.name
    return f"{base}@{s.split}"
