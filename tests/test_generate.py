"""generate task: provenance, resume checks and the inpaint mode on a tiny trained joint model."""
import json

import numpy as np
import pytest

from polypjax import configlib, main
from polypjax.data import catalog
from polypjax.data.pipeline import resize_pair
from polypjax.data.sources import FolderSource
from tiny_configs import generate_config


@pytest.fixture
def trained(trained_generator):
    return trained_generator


def test_provenance_refusals_resume_and_bad_manifest(trained, tmp_path, caplog):
    out = tmp_path / "out"
    main.run(generate_config(trained, num=4), str(out))
    record = json.loads((out / "generation.json").read_text())
    assert record["status"] == "complete" and record["settings"]["seed"] == 0
    first = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    c = generate_config(trained, num=4)
    c.generate.seed = 1
    with pytest.raises(configlib.ConfigError, match=r"seed: 0 -> 1"):
        main.run(c, str(out))
    with pytest.raises(configlib.ConfigError, match="num_samples=2"):
        main.run(generate_config(trained, num=2), str(out))
    # A truncated PNG under its final name and junk manifest lines: found, warned, regenerated.
    img = out / "images" / "gen_000001.png"
    img.write_bytes(img.read_bytes()[:-20])
    with open(out / "manifest.jsonl", "a") as f:
        f.write('[1, 2]\n{"no_id": 1}\n')
    summary = main.run(generate_config(trained, num=6), str(out))  # larger: extends
    assert "not a JSON object with an id" in caplog.text
    assert summary["num_pairs"] == 6 and len(FolderSource(out)) == 6
    assert all((out / "images" / n).read_bytes() == b for n, b in first.items())
    # An incomplete folder is flagged to readers.
    record = json.loads((out / "generation.json").read_text())
    record["status"] = "incomplete"
    (out / "generation.json").write_text(json.dumps(record))
    caplog.clear()
    FolderSource(out)
    assert "incomplete" in caplog.text


def test_inpaint_keeps_every_pixel_outside_the_region(trained, tmp_path):
    c = generate_config(trained, num=4, batch=3)
    c.generate.update(mode="inpaint", source="phantom-a")
    c.generate.inpaint.update(steps=6, jump_length=2, jump_n_sample=2)
    out = tmp_path / "inpaint"
    main.run(c, str(out))
    resolved = configlib.resolve(c)
    resolved.data.image_size = 16
    src = catalog.make_source("phantom-a", resolved.data, default_split="train")
    gen = FolderSource(out)
    records = {json.loads(l)["index"]: json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()}
    for i in range(4):
        r = records[i]
        real = resize_pair(src[r["source_frame"]], 16)
        y0, x0, y1, x1 = r["region"]["bbox"]
        outside = np.ones((16, 16), bool)
        outside[y0:y1, x0:x1] = False
        np.testing.assert_array_equal(gen[i]["image"][outside], real["image"][outside])
        assert not gen[i]["mask"][outside].any()
