"""Shared config blocks, validation and the resolve step run before any work.

Derived fields are ml_collections FieldReferences (e.g. `data.eval_batch_size` follows
`data.batch_size` until it is overridden itself), so command-line overrides propagate. `resolve`
then checks every value and raises one `ConfigError` naming the field, before anything is written.
"""
from __future__ import annotations

import math
import pathlib

import ml_collections

from polypjax.data.catalog import split_specs


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
    # A derived reference (x * 1), not the field itself: it follows batch_size until it is set, and
    # setting it does not write through to batch_size (a plain get_ref would).
    d.eval_batch_size = d.get_ref("batch_size") * 1
    d.phantom_size = d.get_ref("image_size") * 1  # phantom frames are rendered at this size
    d.phantom_train_examples = 1000
    d.phantom_test_examples = 200
    d.test_fraction = 0.1  # folder datasets without an official split: seeded hash split
    d.split_seed = 0
    # What data a run reads (phantom frames, subsets); -1: the run's `seed`, which then also varies
    # the data. The pipeline sets it once, so that its seeds vary initialisation only.
    d.seed = -1
    d.worker_count = 0  # grain worker processes (0: in the main process)
    # How integer images of more than 8 bits map to 0-255 (data/sources.py, SCALINGS): "full" (the
    # type's range), "declared" (the range the file declares) or "N-bit", e.g. "12-bit".
    d.image_scaling = "full"
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


def copy_paste_config() -> ml_collections.ConfigDict:
    """`config.regime.copy_paste`: the copy-paste regime's draws (polypjax/data/copy_paste.py);
    lengths are pixels at `data.image_size`."""
    c = ml_collections.ConfigDict()
    c.probability = 0.5  # of pasting into a drawn example
    c.max_pastes = 1  # polyps pasted into one example: 1 to this many
    c.scale_min = 0.5  # log-uniform scale of the donor polyp
    c.scale_max = 1.5
    c.rotate_deg = 180.0  # uniform in +-
    c.flip = True  # each axis with probability 1/2
    c.feather_sigma = 1.5  # Gaussian of the alpha edge; 0: a hard cut
    c.min_distance = 4  # between the pasted mask and the target's polyp
    c.tries = 10  # transforms drawn before a paste is given up (the example stays as it was)
    c.match_colour = False  # shift the donor patch to the target's mean mucosa colour
    return c


def model_config(**fields) -> ml_collections.ConfigDict:
    """A `config.model` block: the task's own fields, plus `conv`, how the model's convolutions run
    on the CPU (auto | onednn | taps | xla, polypjax/models/conv.py): speed only, never results."""
    return ml_collections.ConfigDict({"conv": "auto", **fields})


# Fields that choose how a result is computed, never what it is: resuming may change them
# (workdir.MAY_CHANGE) and fingerprints of what a run computed leave them out.
HOW_FIELDS = ("model.conv",)


# Fields added after runs were written, with the value that computes what a config without the
# field computed. Fingerprints and resume checks leave such a field out while it holds that value,
# so a run recorded before the field existed still matches (its stored fingerprint lacks it).
# The copy_paste block is read by the copy_paste regime only, which no earlier run used.
ADDED_FIELDS = {"diffusion.min_snr_gamma": 0.0, "diffusion.timestep_sampling": "uniform",
                "data.image_scaling": "full", "data.seed": -1, "regime.augment": False,
                "regime.copy_paste": copy_paste_config().to_dict(),
                "generate.paint": {"placement": "away", "copy_paste": copy_paste_config().to_dict()}}


def _parent(out: dict, dotted: str) -> tuple[dict | None, str]:
    """The dict that holds a dotted field (None when a block on the way is absent), and its key."""
    *parents, leaf = dotted.split(".")
    node = out
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), leaf


def without_neutral_fields(config: dict) -> dict:
    """A copy of a config dict without the `ADDED_FIELDS` that hold their neutral value."""
    import copy
    out = copy.deepcopy(dict(config))
    for dotted, value in ADDED_FIELDS.items():
        node, leaf = _parent(out, dotted)
        if node is not None and leaf in node and node[leaf] == value:
            del node[leaf]
    return out


# Where a process sits in its job (its coordinator's address, with a free port picked per launch,
# and its own id), never what the job computes. Fingerprints read them at their one-process value,
# which every run recorded without a job holds, so its fingerprint is the one it always had.
PLACEMENT_FIELDS = {"distributed.coordinator_address": "", "distributed.process_id": 0}


def what_it_computes(config: dict) -> dict:
    """A copy of a config dict for fingerprints: without `HOW_FIELDS`, nor `ADDED_FIELDS` at their
    neutral value, with `PLACEMENT_FIELDS` at their one-process value; equal for configs that differ
    only there, and for configs written before such a field existed."""
    out = without_neutral_fields(config)
    for dotted in HOW_FIELDS:
        node, leaf = _parent(out, dotted)
        if node is not None:
            node.pop(leaf, None)
    for dotted, value in PLACEMENT_FIELDS.items():
        node, leaf = _parent(out, dotted)
        if node is not None and leaf in node:
            node[leaf] = value
    return out


def check_conv(config) -> None:
    """`config.model.conv`, when the config has it, names a convolution path."""
    if "model" not in config or "conv" not in config.model:
        return
    from polypjax.models.conv import IMPLS
    value = config.model.conv
    if value not in IMPLS:
        raise ConfigError(f"config.model.conv={value!r} is unknown; choose one of {', '.join(IMPLS)}")


def mesh_config() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.data = -1  # -1: all devices not used by fsdp
    m.fsdp = 1
    return m


CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def load_config(name: str, *args) -> ml_collections.ConfigDict:
    """`get_config(*args)` of configs/<name>.py (what `--config=configs/<name>.py[:arg]` gives)."""
    import importlib.util
    path = CONFIGS / f"{name}.py"
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    spec = importlib.util.spec_from_file_location(f"polypjax_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)


def train_config():
    """Defaults of `config.train` and `config.optim` shared by the training tasks."""
    t = ml_collections.ConfigDict()
    t.num_steps = 1000
    t.log_every = 50
    t.eval_every = 0  # 0: evaluate at the end only
    t.checkpoint_every = 500
    t.keep_checkpoints = 3
    t.ema_decay = 0.0
    o = ml_collections.ConfigDict()
    o.name = "adam"
    o.learning_rate = 1e-3
    o.b1 = 0.9
    o.b2 = 0.999
    o.weight_decay = 0.0
    o.schedule = "cosine"
    o.warmup_steps = 50
    o.end_factor = 0.01
    o.grad_clip = 1.0
    return t, o


def base_config(task: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = task
    c.seed = 0
    c.data = data_config()
    c.mesh = mesh_config()
    c.distributed = ml_collections.ConfigDict({"coordinator_address": "", "num_processes": 1, "process_id": 0})
    return c


def check_number(config, name: str, low=None, high=None, *, low_open: bool = False,
                 high_open: bool = False, integer: bool = False, prefix: str = "") -> None:
    """The one numeric check: config.`name` is a finite number (an integer if `integer`) in
    [low, high] (open ends with `low_open` / `high_open`). NaN fails every comparison, so range
    checks written as `value < 0` let it through; this one does not. `prefix` is the dotted path
    of `config` itself when it is a sub-block."""
    value = _get(config, name)
    name = f"{prefix}.{name}" if prefix else name
    ok = (isinstance(value, int) if integer else isinstance(value, (int, float))) and not isinstance(value, bool)
    if ok and not integer:
        ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is not None and high is not None:
            bounds = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            if (low, high, low_open, high_open) == (0, 1, False, False):
                bounds = "a probability in [0, 1]"
        elif low is not None:
            bounds = "positive" if (low, low_open) == (0, True) else f"{'>' if low_open else '>='} {low}"
        else:
            bounds = f"{'<' if high_open else '<='} {high}" if high is not None else "given"
        rule = f"must be {bounds}, a finite {'integer' if integer else 'number'}"
        raise ConfigError(f"config.{name} {rule}, got {value!r}")


def _positive(config, *names):
    for name in names:
        check_number(config, name, 0, low_open=True)


def check_finite_numbers(config, prefix: str = "config") -> None:
    """No float anywhere in a config may be NaN or infinite: no field means either."""
    for key, value in config.items():
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            check_finite_numbers(value, f"{prefix}.{key}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError(f"{prefix}.{key}[{i}] must be finite, got {v!r}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}.{key} must be finite, got {value!r}")


def _kind(like) -> str:
    if isinstance(like, bool):
        return "true or false"
    if isinstance(like, int):
        return "an integer"
    if isinstance(like, float):
        return "a number"
    if isinstance(like, str):
        return "a string"
    if isinstance(like, (tuple, list)):
        return "a list"
    return "a block of fields"


def _fits(value, like) -> bool:
    if isinstance(like, bool):
        return isinstance(value, bool)
    if isinstance(like, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(like, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(like, str):
        return isinstance(value, str)
    if isinstance(like, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, (dict, ml_collections.ConfigDict))


def check_type(value, like, field: str) -> None:
    """`value` of the dotted `field` (e.g. "config.data.train") has the type of `like`, the field's
    value in the task's own config file: an integer for an integer, a number for a float (an
    integer too), a string for a string, a list of such items for a list, and a block holding
    fields of those types for a block; a field without a value there (None) takes any."""
    if like is None:
        return
    if not _fits(value, like):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        hint = ""
        if isinstance(like, str) and isinstance(value, (tuple, list)):
            hint = "; a field of several sources or names takes them in one string, separated by commas"
        raise ConfigError(f"{field} must be {_kind(like)}, got {type(value).__name__} {shown}{hint}")
    if isinstance(like, (tuple, list)):
        kinds = [item for item in like if item is not None]
        for i, item in enumerate(value):
            if kinds and not any(_fits(item, k) for k in kinds):
                check_type(item, kinds[0], f"{field}[{i}]")
    elif isinstance(like, (dict, ml_collections.ConfigDict)):
        for key in value.keys():
            if key in like:
                check_type(value[key], like[key], f"{field}.{key}")


def check_types(config, reference) -> None:
    """Every field of `config` that `reference` (the task's config file, as loaded) holds too has its
    type (`check_type`). ml_collections checks a type only when a field of a typed config is set, so
    None, a config built from a dict and the pipeline's stage overrides pass it by; the wrong type
    would otherwise fail deep in the run, with a traceback instead of the field's name."""
    check_type(config, reference, "config")


def _get(config, dotted):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def check_source_spec(spec: str, field: str) -> None:
    """`spec` names one data source (a comma lists several, unless it is part of a folder's path)."""
    from polypjax.data import catalog
    if len(split_specs(spec)) > 1 and not pathlib.Path(str(spec).rsplit("@", 1)[0]).expanduser().is_dir() \
            and not pathlib.Path(str(spec)).expanduser().is_dir():
        raise ConfigError(f"config.{field} must name one data source, got {len(split_specs(spec))}: {spec!r}")
    try:
        catalog.parse_spec(spec, default_split="train")
    except ValueError as e:
        raise ConfigError(f"config.{field}: {e}") from None


def check_no_comma_folder(value: str, field: str) -> None:
    """A comma separates the sources of a list field, so a folder whose path holds one cannot be named
    there: say so instead of reporting two folders that do not exist."""
    import pathlib
    pieces = [p.strip() for p in str(value).split(",")]
    for i in range(len(pieces)):
        for j in range(i + 2, len(pieces) + 1):
            joined = ",".join(pieces[i:j]).rsplit("@", 1)
            if any(pathlib.Path(c).expanduser().is_dir() for c in {",".join(pieces[i:j]), joined[0]}):
                raise ConfigError(f"config.{field}: folder {','.join(pieces[i:j])!r} has a ',' in its path, but "
                                  "',' separates sources in this field; rename it or give a symlink without one")


def resolve(config: ml_collections.ConfigDict, task_check=None, reference=None) -> ml_collections.ConfigDict:
    """Validates the config (after overrides): the types of the fields `reference` holds (the task's
    config file), the shared rules, then `task_check(config)` (the task's own rules); returns a
    locked copy with references resolved. Runs go through `tasks.resolve`, which supplies the task's
    check and config file."""
    if reference is not None:
        check_types(config, reference)
    check_finite_numbers(config)
    if "seed" in config:
        check_number(config, "seed", 0, integer=True)
    if "data" in config:
        d = config.data
        _positive(config, "data.image_size", "data.batch_size", "data.eval_batch_size", "data.phantom_size",
                  "data.phantom_train_examples", "data.phantom_test_examples")
        for name in ("image_size", "batch_size", "eval_batch_size", "phantom_size"):
            check_number(config, f"data.{name}", 1, integer=True)
        check_number(config, "data.test_fraction", 0, 1, low_open=True, high_open=True)
        check_number(config, "data.split_seed", 0, integer=True)
        if "seed" in d:
            check_number(config, "data.seed", -1, integer=True)
        check_number(config, "data.worker_count", 0, integer=True)
        if len(split_specs(d.train)) != 1:
            several = " (several test sets go in config.data.test)" if split_specs(d.train) else ""
            raise ConfigError(f"config.data.train must name one data source, got {len(split_specs(d.train))}: "
                              f"{d.train!r}{several}")
        if "image_scaling" in d:
            from polypjax.data import sources
            try:
                sources.parse_scaling(d.image_scaling)
            except ValueError as e:
                raise ConfigError(f"config.data.image_scaling: {e}") from None
        for field in ("train", "test"):
            check_no_comma_folder(d[field], f"data.{field}")
            for spec in split_specs(d[field]):
                check_source_spec(spec, f"data.{field}")
        if any(s.startswith("phantom-") for f in ("train", "test") for s in split_specs(d[f])):
            from polypjax.data import phantom
            check_number(config, "data.phantom_size", phantom.MIN_SIZE, integer=True)
        for name in ("hflip", "vflip"):
            check_number(config, f"data.augment.{name}", 0, 1)
        for name in ("rotate_deg", "scale", "shift", "brightness", "contrast", "hue"):
            check_number(config, f"data.augment.{name}", 0)
    check_conv(config)
    if "mesh" in config:
        check_number(config, "mesh.fsdp", 1, integer=True)
        if config.mesh.data != -1:
            check_number(config, "mesh.data", 1, integer=True)
        _check_mesh_fits(config.mesh)
    if task_check is not None:
        task_check(config)
    resolved = ml_collections.ConfigDict(config.to_dict())  # references become plain values
    resolved.lock()
    return resolved


def _check_mesh_fits(mesh) -> None:
    """A mesh needs that many devices; asked before any work (jax is imported by then anyway)."""
    import jax
    n = jax.device_count()
    need = mesh.fsdp * (1 if mesh.data == -1 else mesh.data)
    if n % mesh.fsdp or need > n:
        raise ConfigError(f"config.mesh data={mesh.data} x fsdp={mesh.fsdp} needs {need} devices "
                          f"(fsdp a divisor of the device count); this process sees {n}")


def write_config(workdir, config, **overrides) -> None:
    """Writes the run's config (a ConfigDict or dict, with `overrides` applied) to workdir/config.json,
    atomically; `loop.restore_run` and the tasks that reuse a trained run read it back."""
    import json
    from polypjax.data import export
    d = dict(config.to_dict() if hasattr(config, "to_dict") else config, **overrides)
    export.atomic_write_text(pathlib.Path(workdir) / "config.json", json.dumps(d, indent=2, sort_keys=True) + "\n")
