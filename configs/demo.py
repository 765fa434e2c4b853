"""The whole pipeline on phantom data at the CPU grid of configs/pipeline.py (every regime, two
seeds, a low-data sweep): longer than the quickstart, to show where synthetic pairs help."""
from polypjax import configlib


def get_config():
    return configlib.load_config("pipeline", "demo")
