"""Generator quality at CI size (issue 14): the shipped recipe of configs/diffusion.py (v-prediction,
cosine schedule), trained for 300 steps at 16 px on phantom-a, must bring its samples' colours to the
real frames' and give pairs whose masks a real-trained segmenter agrees with better than chance
(evaluate_generation's colour statistics and label consistency). A 4-step generator of the same
family is the before. Everything runs on one device: these models are too small to split."""
import json

import pytest

from polypjax import configlib, main
from tiny_configs import generate_config

SIZE = 16


def _sized(c):
    c.data.image_size = SIZE
    c.data.phantom_train_examples = 256
    c.data.phantom_test_examples = 16
    c.mesh.data = 1
    return c


def _metrics(tmp, name, generator_workdir, judge):
    folder = tmp / f"gen_{name}"
    g = _sized(generate_config(generator_workdir, num=48, batch=48))
    g.generate.sampler.steps = 20
    main.run(g, str(folder))
    e = _sized(configlib.load_config("evaluate_generation"))
    e.evaluate.update(real="phantom-a", generated=str(folder), segmenter_workdir=str(judge), image_size=0,
                      batch_size=48, msssim_pairs=4, msssim_size=176, kid_subsets=2, kid_subset_size=16)
    main.run(e, str(tmp / f"eval_{name}"))
    return json.loads((tmp / f"eval_{name}" / "generation_metrics.json").read_text())["generated"][0]


@pytest.fixture(scope="module")
def quality(tmp_path_factory, trained_generator):
    tmp = tmp_path_factory.mktemp("quality")
    judge = tmp / "judge"
    s = _sized(configlib.load_config("segmentation", "cpu"))
    s.model.kwargs = {"features": (8, 16)}
    s.train.update(num_steps=120, checkpoint_every=120, log_every=40)
    main.run(s, str(judge))
    d = _sized(configlib.load_config("diffusion", "cpu"))  # the shipped recipe, at CI size
    d.data.batch_size = 16
    d.model.update(channels=16, channel_mult=(1, 2), attention_resolutions=(), num_heads=1)
    d.train.update(num_steps=300, checkpoint_every=300, log_every=100, eval_every=0)
    d.optim.warmup_steps = 20
    d.eval.update(num_samples=4)
    main.run(d, str(tmp / "generator"))
    return {"before": _metrics(tmp, "before", trained_generator, judge),
            "after": _metrics(tmp, "after", tmp / "generator", judge)}


def _colour_error(m):
    return max(m["segmenter_features"]["colour"]["mean_abs_error"])


def test_training_moves_sample_colours_toward_the_real_frames(quality):
    before, after = _colour_error(quality["before"]), _colour_error(quality["after"])
    print(f"colour error (max over RGB of |mean - real mean|, 0-255): 4 steps {before:.1f}, 300 steps {after:.1f}")
    assert after < 0.5 * before and after < 10.0


def test_trained_pairs_are_label_consistent_beyond_chance(quality):
    lc = quality["after"]["label_consistency"]
    print(f"label mDice {lc['mDice']:.3f}, chance {lc['chance_mDice']:.3f}")
    assert lc["mDice"] > 1.3 * lc["chance_mDice"] and lc["mDice"] > lc["chance_mDice"] + 0.05
