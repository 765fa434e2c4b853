"""The whole pipeline on phantom data at the CPU grid of configs/pipeline.py: the quickstart's
generator with the GAN baseline beside it, pairs from noise and RePaint into the real frames, the
real, augmented, synthetic-only and mixed regimes, two seeds, a low-data sweep at 16 and 64 real
pairs; longer than the quickstart, to show where synthetic pairs help and how the GAN compares."""
from polypjax import configlib


def get_config():
    return configlib.load_config("pipeline", "demo")
