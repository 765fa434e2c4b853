"""The GAN generator family (configs/gan.py): trains on phantom data through the shared loop, resumes
exactly, and its workdir is a generator workdir for the generate task (both variants)."""
import json
import shutil

import jax
import numpy as np
import pytest

from polypjax import main, tasks
from polypjax.configlib import ConfigError
from polypjax.data import export
from polypjax.data.pipeline import resize_pair
from polypjax.data.sources import FolderSource
from polypjax.train import diffusion, loop
from tiny_configs import generate_config, tiny_gan_config

STEPS = 20


def _config(joint=True):
    c = tiny_gan_config(joint)
    c.model.conv = "xla"
    c.train.update(num_steps=STEPS, checkpoint_every=STEPS // 2, log_every=5, ema_decay=0.0)
    # Larger steps than SPADE's defaults so a few dozen steps move the colours.
    c.optim.learning_rate, c.optim_disc.learning_rate = 1e-3, 2e-3
    return tasks.resolve(c)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    wd = tmp_path_factory.mktemp("gan")
    c = _config()
    task = diffusion.DiffusionTask(c, wd)
    return wd, c, task, loop.train(task, c, wd)


def _digest(state):
    return [np.asarray(x).tobytes() for x in jax.tree.leaves(state.params)]


def test_losses_finite_and_colours_approach_the_data(trained):
    wd, c, task, state = trained
    records = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    d = [r["train/d_loss"] for r in records if "train/d_loss" in r]
    g = [r["train/g_loss"] for r in records if "train/g_loss" in r]
    assert len(d) == STEPS // 5 and np.isfinite(d).all() and np.isfinite(g).all()
    assert (wd / "compute.json").exists() and json.loads((wd / "compute.json").read_text())["flops_per_step"] > 0
    src = task.source
    real = np.stack([resize_pair(src[i], c.data.image_size)["image"] for i in range(len(src))])
    real = real.reshape(-1, 3).astype(float).mean(0)

    def colour_error(params):
        images, _ = task.sample_pairs(params, jax.random.PRNGKey(5), 32, None)
        return np.abs(images.reshape(-1, 3).astype(float).mean(0) - real).mean()

    initial, _ = task.generator.init(jax.random.PRNGKey(0), None)
    before, after = colour_error(initial), colour_error(state.params)
    assert after < 0.6 * before, (before, after)


def test_killed_run_resumes_to_the_uninterrupted_state(trained, tmp_path):
    wd, c, _, state = trained
    killed = tmp_path / "killed"
    shutil.copytree(wd, killed)
    shutil.rmtree(killed / "checkpoints" / str(STEPS))  # killed after the step-15 checkpoint
    resumed = loop.train(diffusion.DiffusionTask(c, killed), c, killed)
    assert _digest(resumed) == _digest(state)


def test_generate_writes_pairs_from_a_gan_workdir(trained, tmp_path):
    wd = trained[0]
    (wd / "config.json").write_text(json.dumps(trained[1].to_dict()))  # what main.run records
    summary = main.run(generate_config(wd, num=5, batch=4), str(tmp_path / "out"))
    src = FolderSource(tmp_path / "out")
    assert len(src) == 5 and summary["generator"] == "gan" and summary["unet_calls_per_pair"] == 1
    assert src[0]["image"].shape == (16, 16, 3)


def test_mask_conditioned_gan_generates_for_given_masks(tmp_path):
    c = tiny_gan_config(joint=False)
    c.model.conv = "xla"
    c.train.update(num_steps=2, checkpoint_every=2)
    main.run(c, str(tmp_path / "spade"))
    masks = tmp_path / "masks"
    want = np.zeros((3, 16, 16), np.uint8)
    for i in range(3):
        want[i, 2 + i:9 + i, 3:11] = 1
        export.atomic_write_bytes(masks / f"m{i}.png", export.encode_png(want[i] * 255))
    g = generate_config(tmp_path / "spade", num=3, batch=4)
    with pytest.raises(ConfigError, match="from_masks"):
        main.run(g, str(tmp_path / "refused"))
    g.generate.update(mode="from_masks", masks=str(masks), images_per_mask=1)
    main.run(g, str(tmp_path / "out"))
    src = FolderSource(tmp_path / "out")
    assert len(src) == 3
    np.testing.assert_array_equal(np.stack([src[i]["mask"] for i in range(3)]) > 0, want > 0)


def test_pipeline_takes_a_gan_generator_entry():
    from polypjax import configlib
    from polypjax.experiments import pipeline
    c = configlib.load_config("pipeline", "mini_gan")
    assert list(c.generators) == ["joint", "joint_gan"]
    g = tasks.resolve(pipeline.generator_config(c, "joint_gan"))
    assert g.task == "train_diffusion" and g.generator.kind == "gan" and g.gan.joint
    c.generators.joint_gan.config = "nope"
    with pytest.raises(ConfigError, match="generators.joint_gan.config"):
        pipeline.validate(c)
