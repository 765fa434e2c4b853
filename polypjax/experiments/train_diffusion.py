"""Task `train_diffusion`: train a generator (`joint` or `two_stage`) on image/mask pairs."""
from __future__ import annotations

import pathlib

from polypjax.train import diffusion, loop


def validate(config) -> None:
    diffusion.validate(config)


def data_sources(config) -> list[tuple[str, str, str]]:
    return [("data.train", config.data.train, "train")]


def run(config, workdir: pathlib.Path):
    task = diffusion.DiffusionTask(config, workdir)
    return loop.train(task, config, workdir)
