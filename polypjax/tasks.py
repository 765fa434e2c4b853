"""config.task -> the experiment that runs it. Modules are imported only when their task runs."""
from __future__ import annotations

import importlib

# task name -> module under polypjax.experiments with `run(config, workdir)` and optional `validate(config)`.
TASKS = {
    "prepare_data": "polypjax.experiments.prepare_data",
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


def resolve(config):
    """The validation every run goes through: a known task, the shared rules (configlib.resolve)
    and the task's own `validate`; a locked, resolved copy."""
    from polypjax import configlib
    if config.task not in TASKS:
        raise configlib.ConfigError(f"config.task={config.task!r} is unknown; choose one of {sorted(TASKS)}")
    return configlib.resolve(config, validator(config.task))


def data_sources(config) -> list[tuple[str, str, str]]:
    """[(field, spec, default split)] of every data source the task reads (its `data_sources`)."""
    fn = getattr(module(config.task), "data_sources", None)
    return list(fn(config)) if fn is not None else []


def check_data(config, *, progress: bool | None = None) -> list[dict]:
    """The one data check, on every source the task reads, before anything is written."""
    from polypjax.data import check
    return check.check_sources(config, data_sources(config), progress=progress)
