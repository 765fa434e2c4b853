"""Real Kvasir-SEG on a CPU (64 px, about 70 minutes on 2 cores):
    --config=configs/kvasir_cpu.py --config.data.train=/path/to/Kvasir-SEG [--config.data.test=...]
See configs/pipeline.py."""
from polypjax import configlib


def get_config():
    return configlib.load_config("pipeline", "kvasir_cpu")
