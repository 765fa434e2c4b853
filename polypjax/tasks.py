"""config.task -> the experiment that runs it. Modules are imported only when their task runs."""
from __future__ import annotations

import importlib

# task name -> module under polypjax.experiments with `run(config, workdir)` and optional `validate(config)`.
TASKS = {
    "prepare_data": "polypjax.experiments.prepare_data",
    "quickstart": "polypjax.experiments.quickstart",
    "pipeline": "polypjax.experiments.pipeline",
    "evaluate_generation": "polypjax.experiments.evaluate",
    "train_segmentation": "polypjax.experiments.train_segmentation",
    "train_diffusion": "polypjax.experiments.train_diffusion",
    "generate": "polypjax.experiments.generate",
}


def module(task: str):
    return importlib.import_module(TASKS[task])


def validator(task: str):
    return getattr(module(task), "validate", None)
