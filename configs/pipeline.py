"""The whole pipeline on the embedded phantom data (train on domain A, test on A and B), on a CPU:

    python -m polypjax.main --config=configs/pipeline.py --workdir=runs/pipeline
    python -m polypjax.main --config=configs/pipeline.py:mini --workdir=runs/mini   # every stage at toy
                                                    size (a smoke run: its numbers mean nothing)

Each stage's config is its task's own configs/*.py plus the overrides below (see
polypjax/experiments/pipeline.py); the report is runs/pipeline/report/report.html.
"""
import ml_collections

from polypjax import configlib


def get_config(variant: str = "cpu"):
    config = configlib.base_config("pipeline")
    config.data.image_size = 32
    config.data.phantom_train_examples = 200
    config.data.phantom_test_examples = 50
    config.generators = ml_collections.ConfigDict({"joint": {"variant": "cpu", "overrides": {
        "data": {"batch_size": 16},
        "model": {"channels": 32, "channel_mult": (1, 2, 2)},
        "train": {"num_steps": 600, "checkpoint_every": 200, "eval_every": 0, "log_every": 50},
        "eval": {"num_samples": 8, "sampler": {"steps": 20}}}},
        # The GAN baseline (configs/gan.py, image + mask from noise) beside it, the paper's comparison;
        # "mode": its own generate mode (a GAN cannot inpaint), else config.generate.mode.
        "joint_gan": {"config": "gan", "variant": "joint", "mode": "sample", "overrides": {
            "data": {"batch_size": 16}, "train": {"num_steps": 600, "checkpoint_every": 200, "log_every": 50}}}})
    config.generate = ml_collections.ConfigDict({
        "multiple": 1,  # synthetic pairs = multiple x the real training pairs (the paper's 1x/2x/3x)
        "mode": "sample",  # sample | inpaint (RePaint into real frames) once the generate task has modes
        "overrides": {"generate": {"batch_size": 50, "sampler": {"kind": "ddim", "steps": 20}}}})
    config.evaluate = ml_collections.ConfigDict({"overrides": {"evaluate": {
        "image_size": 0, "batch_size": 50, "msssim_pairs": 200, "msssim_size": 176}}})
    config.segmentation = ml_collections.ConfigDict({
        "variant": "cpu",
        "models": {"unet": {"model": {"kwargs": {"features": (16, 32, 64)}}}},
        "regimes": ("real", "real_augment", "synthetic", "mixed", "replace"),
        "alpha": 0.5, "synthetic_fraction": 0.5,
        "seeds": (0, 1),
        "low_data": {"sizes": (16, 64), "synthetic_per_real": 1.0, "regimes": ("real", "mixed"),
                     "protocols": ("paper",)},
        "overrides": {"data": {"batch_size": 16}, "train": {"num_steps": 200, "checkpoint_every": 100,
                                                            "log_every": 25}}})
    # A blinded real-vs-synthetic page of the first generator's pairs (polypjax.review), linked from the report.
    config.review = ml_collections.ConfigDict({"enabled": True, "n": 20, "seed": 0, "show_masks": True})
    if variant == "mini":
        _miniature(config)
    elif variant == "mini_gan":  # mini with the GAN baseline beside the joint diffusion model
        gan = config.generators.joint_gan
        _miniature(config)
        gan.overrides.model = {"gen_channels": 8, "num_up": 2, "disc_channels": 8}
        gan.overrides.train.update({"num_steps": 4, "checkpoint_every": 2, "log_every": 2})
        config.generators.joint_gan = gan
    elif variant != "cpu":
        raise ValueError(f"unknown variant {variant!r}: use cpu, mini or mini_gan")
    return config


def _miniature(config):
    """Every stage, every kind of segmentation run and the report, at toy size (tests, smoke runs)."""
    del config.generators["joint_gan"]  # `mini_gan` has both families
    config.data.phantom_train_examples = 12
    config.data.phantom_test_examples = 4
    g = config.generators.joint.overrides
    g.data.batch_size = 4
    g.model.update({"channels": 8, "channel_mult": (1, 2), "attention_resolutions": (), "num_heads": 1})
    g.train.update({"num_steps": 4, "checkpoint_every": 2, "log_every": 2})
    g.eval.update({"num_samples": 2, "sampler": {"steps": 2}})
    config.generate.overrides.generate.update({"batch_size": 4, "sampler": {"kind": "ddim", "steps": 2}})
    config.evaluate.overrides.evaluate.update({"batch_size": 4, "msssim_pairs": 4, "kid_subsets": 2,
                                               "kid_subset_size": 4})
    s = config.segmentation
    s.models.unet.model.kwargs.features = (4, 8)
    s.regimes = ("real", "mixed")
    s.seeds = (0,)
    s.low_data.update({"sizes": (6,), "regimes": ("real", "mixed")})
    s.overrides.data.update({"batch_size": 4})
    s.overrides.train.update({"num_steps": 4, "checkpoint_every": 2, "log_every": 2})
    config.review.enabled = False
