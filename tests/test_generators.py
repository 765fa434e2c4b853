"""Generator families, the diffusion task through the shared loop, and the generate task
(provenance, resume checks, inpainting) on one shared tiny trained generator (tests/conftest.py)."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polypjax import configlib, main, tasks
from polypjax.data import catalog
from polypjax.data.pipeline import resize_pair
from polypjax.data.sources import FolderSource
from polypjax.diffusion import generators
from tiny_configs import generate_config, tiny_config

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _batch(n=8, s=16):
    rng = np.random.default_rng(0)
    mask = np.zeros((n, s, s), np.uint8)
    mask[:, 4:10, 5:12] = 1
    return {"image": rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8), "mask": mask}


@pytest.mark.parametrize("kind", ["joint", "two_stage"])
def test_generator_loss_and_sample_shapes(kind):
    c = tasks.resolve(tiny_config(kind))
    gen = generators.make_generator(c)
    params, state = gen.init(jax.random.PRNGKey(0), _batch())
    assert set(params) == ({"joint"} if kind == "joint" else {"mask", "image"})
    loss, (metrics, _) = jax.jit(gen.loss)(params, state, _batch(), jax.random.PRNGKey(1))
    assert np.isfinite(float(loss)) and 0.5 < float(loss) < 5.0  # ~1 per model at init
    spec = generators.SamplerSpec(kind="ddim", steps=3)
    sample = jax.jit(lambda p, r, i: gen.sample(p, r, 4, spec, indices=i))
    images, masks = sample(params, jax.random.PRNGKey(2), jnp.arange(4))
    assert images.shape == (4, 16, 16, 3) and masks.shape == (4, 16, 16, 1)
    # Per-sample RNG from global indices: the pair for index i does not depend on where it sits.
    perm = jnp.array([2, 3, 0, 1])
    swapped, _ = sample(params, jax.random.PRNGKey(2), perm)
    np.testing.assert_allclose(np.asarray(swapped), np.asarray(images)[np.asarray(perm)], atol=1e-5)
    u8, m = generators.postprocess_pairs(np.asarray(images), np.asarray(masks), c.postprocess)
    assert u8.dtype == np.uint8 and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}


@pytest.mark.parametrize("kind", ["joint", "two_stage"])
def test_learned_sigma_loss_traces(kind):
    """learn_sigma (the paper config) doubles the UNet outputs once: the hybrid loss accepts them."""
    c = tiny_config(kind)
    c.model.learn_sigma = True
    gen = generators.make_generator(tasks.resolve(c))
    params, state = jax.eval_shape(lambda: gen.init(jax.random.PRNGKey(0), _batch()))
    loss, (metrics, _) = jax.eval_shape(gen.loss, params, state, _batch(), jax.random.PRNGKey(1))
    assert loss.shape == ()
    images, masks = jax.eval_shape(lambda p: gen.sample(p, jax.random.PRNGKey(2), 2,
                                                        generators.SamplerSpec(steps=2)), params)
    assert images.shape == (2, 16, 16, 3) and masks.shape == (2, 16, 16, 1)


def test_joint_inpainting_keeps_the_background():
    c = tasks.resolve(tiny_config("joint"))
    gen = generators.make_generator(c)
    params, _ = gen.init(jax.random.PRNGKey(0), _batch())
    batch = _batch(2)
    region = np.zeros((2, 16, 16), np.float32)
    region[:, 3:11, 3:11] = 1
    images, masks = jax.jit(lambda p, r: gen.inpaint(p, r, jnp.asarray(batch["image"]), jnp.asarray(region),
                                                     jump_length=2, jump_n_sample=2, steps=6))(params, jax.random.PRNGKey(0))
    out = np.asarray(generators.to_uint8_image(images))
    outside = region == 0
    np.testing.assert_allclose(out[outside].astype(int), batch["image"][outside].astype(int), atol=1)
    assert np.all(np.asarray(masks)[outside] == -1.0)


def test_diffusion_task_trains_and_writes_sample_grid(trained_generator, tmp_path):
    wd = trained_generator  # configs/diffusion.py at tiny size through main.run (tests/conftest.py)
    records = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in records)
    assert any("sample/mask_fraction_mean" in r for r in records)
    assert (wd / "samples" / "step_000004.png").exists()
    assert sorted(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
    _generate_from(wd, tmp_path / "generated")


def _generate_from(trained, out):
    """The generate task writes a readable folder, resumes after a partial run, and is deterministic."""
    from polypjax import main
    from polypjax.data.sources import FolderSource
    summary = main.run(generate_config(trained), str(out))  # 6 pairs in batches of 4: last one padded
    src = FolderSource(out)
    assert len(src) == 6 and summary["num_pairs"] == 6 and summary["generator"] == "joint"
    first = {p.name: p.read_bytes() for p in sorted((out / "images").iterdir())}
    assert (out / "preview.png").exists()
    # Simulate a kill after the first batch: the last two pairs and their manifest lines are gone.
    for name in ("gen_000004", "gen_000005"):
        (out / "images" / f"{name}.png").unlink()
    lines = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text("\n".join(lines[:4]) + "\n")
    main.run(generate_config(trained), str(out))
    assert {p.name: p.read_bytes() for p in sorted((out / "images").iterdir())} == first
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 6

    # Colour matching to reference frames: same masks, each image's colours from its reference.
    from polypjax.data import catalog
    from polypjax.diffusion import postprocess
    from polypjax.experiments.generate import reference_index
    c = generate_config(trained)
    c.generate.color_reference = "phantom-a"
    matched_dir = out.parent / (out.name + "_matched")
    main.run(c, str(matched_dir))
    matched = FolderSource(matched_dir)
    ref = catalog.make_source("phantom-a", tasks.resolve(c).data, default_split="train")
    records = [json.loads(line) for line in (matched_dir / "manifest.jsonl").read_text().splitlines()]
    for r in records:
        i = r["index"]
        assert r["color_reference"] == reference_index(0, i, len(ref))
        np.testing.assert_array_equal(matched[i]["mask"], src[i]["mask"])
        # The same sample as the unmatched run, matched to its recorded reference frame.
        want = postprocess.match_colors(src[i]["image"], ref[r["color_reference"]]["image"])
        np.testing.assert_array_equal(matched[i]["image"], want)
        assert not np.array_equal(matched[i]["image"], src[i]["image"])


def test_generate_config_errors(tmp_path):
    from polypjax import main
    with pytest.raises(configlib.ConfigError, match="not a train_diffusion workdir"):
        main.run(generate_config(tmp_path / "nowhere"), str(tmp_path / "out"))
    c = generate_config(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    c.generate.num_samples = 0
    with pytest.raises(configlib.ConfigError, match=r"num_samples must be >= 1, a finite integer"):
        main.run(c, str(tmp_path / "out"))


def test_diffusion_config_errors():
    c = tiny_config()
    c.data.image_size = 17
    with pytest.raises(configlib.ConfigError, match="multiple of 2"):
        tasks.resolve(c)
    c = tiny_config()
    c.generator.kind = "vae"
    with pytest.raises(configlib.ConfigError, match="generator.kind='vae' is unknown"):
        tasks.resolve(c)
    c.generator.kind = "gan"  # a diffusion config has no gan block
    with pytest.raises(configlib.ConfigError, match="needs the config.gan block of configs/gan.py"):
        tasks.resolve(c)
    c = tiny_config()
    c.eval.sampler.kind = "euler"
    with pytest.raises(configlib.ConfigError, match="sampler.kind='euler'"):
        tasks.resolve(c)


# --- the generate task: provenance, resume checks and the inpaint mode on the shared tiny generator

def test_provenance_refusals_resume_and_bad_manifest(trained_generator, tmp_path, caplog):
    out = tmp_path / "out"
    main.run(generate_config(trained_generator, num=4), str(out))
    record = json.loads((out / "generation.json").read_text())
    assert record["status"] == "complete" and record["settings"]["seed"] == 0
    first = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    c = generate_config(trained_generator, num=4)
    c.generate.seed = 1
    with pytest.raises(configlib.ConfigError, match=r"seed: 0 -> 1"):
        main.run(c, str(out))
    with pytest.raises(configlib.ConfigError, match="num_samples=2"):
        main.run(generate_config(trained_generator, num=2), str(out))
    # A truncated PNG under its final name and junk manifest lines: found, warned, regenerated.
    img = out / "images" / "gen_000001.png"
    img.write_bytes(img.read_bytes()[:-20])
    with open(out / "manifest.jsonl", "a") as f:
        f.write('[1, 2]\n{"no_id": 1}\n')
    summary = main.run(generate_config(trained_generator, num=6), str(out))  # larger: extends
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


@pytest.mark.parametrize("sampler", ["repaint", "repaint_ddim"])
def test_inpaint_keeps_every_pixel_outside_the_region(trained_generator, tmp_path, sampler):
    c = generate_config(trained_generator, num=4, batch=3)
    c.generate.update(mode="inpaint", source="phantom-a")
    c.generate.inpaint.update(sampler=sampler, steps=6, jump_length=2, jump_n_sample=2)
    out = tmp_path / "inpaint"
    main.run(c, str(out))
    resolved = tasks.resolve(c)
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
