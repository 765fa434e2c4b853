"""Real Kvasir-SEG at 128 px on one H100/H200-class GPU (a few minutes; tools/device_run.sh runs it):
    --config=configs/kvasir_gpu.py --config.data.train=/path/to/Kvasir-SEG
See configs/pipeline.py (_kvasir_gpu)."""
from polypjax import configlib


def get_config():
    return configlib.load_config("pipeline", "kvasir_gpu")
