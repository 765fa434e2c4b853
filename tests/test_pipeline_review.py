"""The pipeline's review switch: a blinded page of generated pairs beside real ones, key kept apart."""
import json

import ml_collections

from polypjax import configlib
from polypjax.data import catalog, export
from polypjax.experiments import pipeline


def _config(tmp_path):
    config = configlib.base_config("pipeline")
    config.data.image_size = 32
    config.data.phantom_train_examples = 12
    config.generators = ml_collections.ConfigDict({"joint": {}})
    config.review = ml_collections.ConfigDict({"enabled": True, "n": 8, "seed": 0, "show_masks": True})
    return config


def test_review_page_from_the_generated_set(tmp_path):
    config = _config(tmp_path)
    generated = tmp_path / "generated" / "joint"  # stands in for a generated folder: any Kvasir-style pairs
    export.write_source(catalog.make_source("phantom-b", config.data, default_split="train"), generated)

    real = pipeline._real_folder(tmp_path, config)
    review = pipeline.make_review_page(tmp_path, config, {"joint": generated}, real)
    page = (tmp_path / review["page"]).read_text()
    key = json.loads((tmp_path / review["key"]).read_text())
    assert key["page_id"] == review["page_id"] and review["page_id"] in page
    truths = [item["truth"] for item in key["items"]]
    assert sorted(truths) == ["real"] * 4 + ["synthetic"] * 4
    assert "phantom" not in page and str(generated) not in page  # no path gives the answer away
    assert (tmp_path / "data" / "real" / "images").is_dir()  # phantom training pairs written as a folder
    again = pipeline.make_review_page(tmp_path, config, {"joint": generated}, real)  # unchanged: not rebuilt
    assert again["page_id"] == review["page_id"]


def test_derived_folders_are_written_once_per_key(tmp_path):
    """pipeline._write_once (every derived folder: the real pairs, the validation split, subsets,
    shares, augmented copies): the same key keeps the folder without building its source again,
    also a key holding a tuple (JSON reads it back as a list); another key replaces it."""
    from polypjax.data import sources
    real = sources.FolderSource(pipeline._real_folder(tmp_path, _config(tmp_path)))
    calls = []

    def make(n):
        def source():
            calls.append(n)
            return sources.random_subset(real, n, seed=0)
        return source

    out = tmp_path / "derived"
    key = {"n": 3, "features": (16, 32)}
    pipeline._write_once(out, "key.json", key, make(3), "three pairs")
    first = (out / "key.json").stat().st_mtime_ns
    pipeline._write_once(out, "key.json", dict(key), make(3), "three pairs")
    assert calls == [3] and (out / "key.json").stat().st_mtime_ns == first
    assert len(sources.FolderSource(out)) == 3
    pipeline._write_once(out, "key.json", {**key, "n": 2}, make(2), "two pairs")
    assert calls == [3, 2] and len(sources.FolderSource(out)) == 2
