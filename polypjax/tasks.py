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


# task name -> its config file (configs/<name>.py): the types of its fields are the task's
# (configlib.check_types). A GAN generator is trained by train_diffusion from configs/gan.py.
CONFIG_FILES = {
    "prepare_data": "prepare_data",
    "pipeline": "pipeline",
    "evaluate_generation": "evaluate_generation",
    "train_segmentation": "segmentation",
    "train_diffusion": "diffusion",
    "generate": "generate",
}


def module(task: str):
    return importlib.import_module(TASKS[task])


def validator(task: str):
    return getattr(module(task), "validate", None)


def resolve(config):
    """The validation every run goes through: a known task, the shared rules (configlib.resolve)
    and the task's own `validate`; a locked, resolved copy."""
    from polypjax import configlib
    check_task(config)
    return configlib.resolve(config, validator(config.task), reference_config(config))


def check_task(config) -> None:
    from polypjax import configlib
    if "task" not in config or not isinstance(config.task, str) or config.task not in TASKS:
        raise configlib.ConfigError(f"config.task={config.get('task')!r} is unknown; choose one of {sorted(TASKS)}")


def reference_config(config):
    """The task's config file as loaded, without overrides: what `configlib.check_types` compares with."""
    from polypjax import configlib
    name = CONFIG_FILES[config.task]
    generator = config.get("generator")
    if name == "diffusion" and hasattr(generator, "get") and generator.get("kind") == "gan":
        name = "gan"
    return configlib.load_config(name)


def check_types(config) -> None:
    """The task is known and every field has its type (before anything else reads the config)."""
    from polypjax import configlib
    check_task(config)
    configlib.check_types(config, reference_config(config))


def data_sources(config) -> list[tuple[str, str, str]]:
    """[(field, spec, default split)] of every data source the task reads (its `data_sources`)."""
    fn = getattr(module(config.task), "data_sources", None)
    return list(fn(config)) if fn is not None else []


def check_data(config, *, progress: bool | None = None) -> list[dict]:
    """The one data check, on every source the task reads, before anything is written."""
    from polypjax.data import check
    return check.check_sources(config, data_sources(config), progress=progress)
