"""The pipeline's review switch: a blinded page of generated pairs beside real ones, key kept apart."""
import json

import ml_collections

from polypjax import configlib
from polypjax.data import catalog, export
from polypjax.experiments import pipeline


def test_review_page_from_the_generated_set(tmp_path):
    config = configlib.base_config("pipeline")
    config.data.image_size = 32
    config.data.phantom_train_examples = 12
    config.generators = ml_collections.ConfigDict({"joint": {}})
    config.review = ml_collections.ConfigDict({"enabled": True, "n": 8, "seed": 0, "show_masks": True})
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
