"""Shared config blocks, validation and the resolve step run before any work.

Derived fields are ml_collections FieldReferences (e.g. `data.eval_batch_size` follows
`data.batch_size` until it is overridden itself), so command-line overrides propagate. `resolve`
then checks every value and raises one `ConfigError` naming the field, before anything is written.
"""
from __future__ import annotations

import pathlib

import ml_collections


class ConfigError(ValueError):
    """A bad config value; the message names the field."""


def data_config(image_size: int = 128, batch_size: int = 16) -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    # Source specs: a phantom domain ("phantom-a"), a folder path, or "tfds:NAME"; an optional
    # "@split" suffix picks train/test/all (default: train for `train`, test for `test`).
    d.train = "phantom-a"
    d.test = "phantom-a,phantom-b"  # comma-separated: in-domain and external test sets
    d.image_size = image_size
    d.batch_size = batch_size  # global, over all devices and processes
    d.eval_batch_size = d.get_ref("batch_size")
    d.phantom_size = d.get_ref("image_size")  # phantom frames are rendered at this size
    d.phantom_train_examples = 1000
    d.phantom_test_examples = 200
    d.test_fraction = 0.1  # folder datasets without an official split: seeded hash split
    d.split_seed = 0
    d.worker_count = 0  # grain worker processes (0: in the main process)
    d.augment = augment_config()
    return d


def augment_config() -> ml_collections.ConfigDict:
    a = ml_collections.ConfigDict()
    a.enabled = False
    a.hflip = 0.5
    a.vflip = 0.5
    a.rot90 = True
    a.rotate_deg = 0.0
    a.scale = 0.0  # +- log-range, e.g. 0.1
    a.shift = 0.0  # fraction of the frame
    a.brightness = 0.0
    a.contrast = 0.0
    a.hue = 0.0  # fraction of a full hue turn
    return a


def mesh_config() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.data = -1  # -1: all devices not used by fsdp
    m.fsdp = 1
    return m


def base_config(task: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = task
    c.seed = 0
    c.data = data_config()
    c.mesh = mesh_config()
    c.distributed = ml_collections.ConfigDict({"coordinator_address": "", "num_processes": 1, "process_id": 0})
    return c


def _positive(config, *names):
    for name in names:
        value = _get(config, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"config.{name} must be positive, got {value!r}")


def _get(config, dotted):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def check_source_spec(spec: str, field: str) -> None:
    from polypjax.data import catalog
    try:
        catalog.parse_spec(spec, default_split="train")
    except ValueError as e:
        raise ConfigError(f"config.{field}: {e}") from None


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Validates the config (after overrides) and returns a locked copy with references resolved."""
    from polypjax import tasks
    if config.task not in tasks.TASKS:
        raise ConfigError(f"config.task={config.task!r} is unknown; choose one of {sorted(tasks.TASKS)}")
    if "data" in config:
        d = config.data
        _positive(config, "data.image_size", "data.batch_size", "data.eval_batch_size", "data.phantom_size",
                  "data.phantom_train_examples", "data.phantom_test_examples")
        if not 0 < d.test_fraction < 1:
            raise ConfigError(f"config.data.test_fraction must be in (0, 1), got {d.test_fraction}")
        if d.worker_count < 0:
            raise ConfigError(f"config.data.worker_count must be >= 0, got {d.worker_count}")
        for field in ("train", "test"):
            for spec in split_specs(d[field]):
                check_source_spec(spec, f"data.{field}")
        a = d.augment
        for name in ("hflip", "vflip"):
            if not 0 <= a[name] <= 1:
                raise ConfigError(f"config.data.augment.{name} is a probability, got {a[name]}")
        for name in ("rotate_deg", "scale", "shift", "brightness", "contrast", "hue"):
            if a[name] < 0:
                raise ConfigError(f"config.data.augment.{name} must be >= 0, got {a[name]}")
    if "mesh" in config:
        if config.mesh.fsdp < 1 or (config.mesh.data < 1 and config.mesh.data != -1):
            raise ConfigError(f"config.mesh must have fsdp >= 1 and data >= 1 or -1, got {config.mesh}")
    task_check = tasks.validator(config.task)
    if task_check is not None:
        task_check(config)
    resolved = ml_collections.ConfigDict(config.to_dict())  # references become plain values
    resolved.lock()
    return resolved


def split_specs(value: str) -> list[str]:
    return [s.strip() for s in str(value).split(",") if s.strip()]


def check_path(value: str, field: str, *, must_exist: bool = True) -> pathlib.Path:
    path = pathlib.Path(value).expanduser()
    if must_exist and not path.exists():
        raise ConfigError(f"config.{field}: path {value!r} does not exist")
    return path


def write_config(workdir, config, **overrides) -> None:
    """Writes the run's config (a ConfigDict or dict, with `overrides` applied) to workdir/config.json,
    atomically; `loop.restore_run` and the tasks that reuse a trained run read it back."""
    import json
    from polypjax.data import export
    d = dict(config.to_dict() if hasattr(config, "to_dict") else config, **overrides)
    export.atomic_write_text(pathlib.Path(workdir) / "config.json", json.dumps(d, indent=2, sort_keys=True) + "\n")
