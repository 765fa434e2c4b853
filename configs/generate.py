"""Sample labelled pairs from a trained generator into a Kvasir-style folder (the workdir).

    python -m polypjax.main --config=configs/generate.py --workdir=runs/synthetic \
        --config.generate.generator_workdir=runs/diffusion [--config.generate.num_samples=1000] \
        [--config.generate.sampler.kind=dpm++ --config.generate.sampler.steps=20] \
        [--config.generate.color_reference=/path/to/Kvasir-SEG@train]
"""
import ml_collections

from polypjax import configlib


def get_config():
    config = configlib.base_config("generate")
    g = ml_collections.ConfigDict()
    g.generator_workdir = ""  # a train_diffusion workdir (its latest checkpoint is used)
    g.num_samples = 1000
    g.batch_size = 32
    g.seed = 0
    g.use_ema = True
    g.sampler = {"kind": "ddim", "steps": 50, "eta": 0.0, "guidance": 1.0, "clip_x0": True}
    # A source spec (e.g. "phantom-a" or /data/Kvasir-SEG@train): each generated image's colour
    # histograms are matched to one of its frames (skimage match_histograms); "" leaves colours as sampled.
    g.color_reference = ""
    config.generate = g
    return config
