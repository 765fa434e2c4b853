"""The paper's setting (Saragih et al. 2024) for GPUs/TPUs: 256 px, guided-diffusion-sized joint
model, RePaint at the paper's schedule, UNet++, CVC-ClinicDB as an external test set.
    --config=configs/paper.py --config.data.train=/data/Kvasir-SEG \
        --config.data.test=/data/Kvasir-SEG@test,/data/CVC-ClinicDB@all
See configs/pipeline.py (the `paper` variant) for its expected compute."""
from polypjax import configlib


def get_config():
    return configlib.load_config("pipeline", "paper")
