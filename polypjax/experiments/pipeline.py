"""Task `pipeline`: labelled pairs -> generators -> synthetic pairs -> generation metrics -> segmenters
under every data regime -> one report (report.md, report.html, results.csv).

Every stage runs an existing task through `polypjax.main.run` in its own subfolder, with that task's
config built from its `configs/*.py` plus the pipeline's overrides:

    generators/<g>                      train_diffusion (and generators/<g>-N<n> for the "same data" protocol)
    generated/<set>                     generate: one synthetic set per generator and mode of
                                        `generate.modes`; <set> is <g> for `sample` and <g>-<mode>
                                        otherwise (`inpaint`: RePaint into the real training frames)
    generated/<set>-N<n>[-paper]        r x N pairs for the low-data runs at N (same_data / paper
                                        protocol), painted into frames of the N subset only
    evaluation/<set>                    evaluate_generation against the real training set
    segmentation/<g|none>/<model>/<regime>/<N|all>/<seed>   train_segmentation, scored on every test set
    data/subsets/N<n>                   the real pairs of the low-data sweep (one fixed subset per N)
    report/                             report.md, report.html, results.csv, figures/*.png

`<stage>/stage.json` records the stage's config, the records of the stages it reads from, and its
status. A stage is skipped when it is `done` with the same record (left out: fields that change only
how it is computed, `configlib.HOW_FIELDS`); a different record deletes the stage folder and reruns
it (and, since records chain, every stage downstream); a stage left `running` by a stopped pipeline
is run again in place, so training resumes from its orbax checkpoint and generation from the pairs
already on disk.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import pathlib
import shutil
import time

import ml_collections
import numpy as np

from polypjax import configlib, tasks
from polypjax.configlib import ConfigError
from polypjax.data import export
from polypjax.train.seg_regimes import AUGMENTED  # a regime name's suffix for augmentation on

REAL_REGIMES = ("real", "real_augment", "copy_paste")


def regime_kind(regime: str) -> str:
    """`mixed+aug` -> `mixed`: augmentation is orthogonal to the data source."""
    return regime.removesuffix(AUGMENTED)
SYNTHETIC_REGIMES = ("synthetic", "mixed", "replace")
_ONE_PROCESS = {"coordinator_address": "", "num_processes": 1, "process_id": 0}
# Data fields every stage takes from the pipeline's own `config.data`.
SHARED_DATA = ("train", "test", "image_size", "phantom_train_examples", "phantom_test_examples",
               "test_fraction", "split_seed")


# --------------------------------------------------------------------------- stage configs

def data_sources(config) -> list[tuple[str, str, str]]:
    """The real training set, every test set and every folder entry, checked before the first stage."""
    from polypjax.data.catalog import split_specs
    return [("data.train", config.data.train, "train")] + [
        ("data.test", spec, "test") for spec in split_specs(config.data.test)] + [
        (f"generators.{g}.folder", spec, "all") for g, spec in folder_entries(config).items()]


def merge(base: ml_collections.ConfigDict, overrides, where: str) -> ml_collections.ConfigDict:
    """`overrides` (nested dict) written into `base`; a key `base` lacks, or a value of another type
    than the stage's field, is a ConfigError naming the pipeline's field."""
    if not isinstance(overrides, (dict, ml_collections.ConfigDict)):
        raise ConfigError(f"config.{where} must be a block of fields, got {type(overrides).__name__} {overrides!r}")
    for key, value in dict(overrides).items():
        if key not in base:
            raise ConfigError(f"config.{where}.{key}: the stage config has no field {key!r}")
        if isinstance(value, (dict, ml_collections.ConfigDict)) and isinstance(base[key], ml_collections.ConfigDict):
            merge(base[key], value, f"{where}.{key}")
        else:
            configlib.check_type(value, base[key], f"config.{where}.{key}")
            base[key] = value
    return base


def _stage_base(config, name: str, *args) -> ml_collections.ConfigDict:
    c = configlib.load_config(name, *args)
    c.seed = config.seed
    c.mesh = copy.deepcopy(config.mesh)
    c.distributed = copy.deepcopy(config.distributed)  # the stage's workdir checks the process count
    for field in SHARED_DATA:
        c.data[field] = config.data[field]
    return c


def _fix_data_seed(config, c: ml_collections.ConfigDict) -> None:
    """Every stage reads the pipeline's data (phantom frames, subsets) whatever its own seed: the
    segmenters' seeds vary initialisation only. Left at -1 where it equals the stage's seed, so
    such stages keep the fingerprints they had before `data.seed` existed."""
    from polypjax.data.catalog import data_seed
    seed = data_seed(config.data, config.seed)
    c.data.seed = -1 if seed == c.seed else seed


GENERATOR_CONFIGS = ("diffusion", "gan")  # configs/<name>.py of a generators.<g> entry


def generator_config(config, name: str, train: str | None = None):
    g = config.generators[name]
    # `config`: the generator's config file (diffusion, or gan for the GAN baseline).
    base = g.get("config", "diffusion")
    c = merge(_stage_base(config, base, g.get("variant", "cpu" if base == "diffusion" else "joint")),
              g.get("overrides", {}),
              f"generators.{name}.overrides")
    if train is not None:
        c.data.train = train
    _fix_data_seed(config, c)
    return c


def _mode_families() -> dict:
    """generate.MODE_FAMILIES, imported when needed: the generate task pulls in jax (seconds), and
    checking a pipeline config should not."""
    from polypjax.experiments.generate import MODE_FAMILIES
    return MODE_FAMILIES


def _family(generator_config) -> str:
    from polypjax.experiments.generate import family
    kind = generator_config.generator.kind
    return family(kind, kind != "gan" or bool(generator_config.gan.joint))


def folder_entries(config) -> dict[str, str]:
    """{name: source spec} of the generator entries that name a folder made elsewhere
    (`generators.<name>.folder`): another model's, a ControlNet's, a hand-made set. Such a set is
    checked, measured and compared under the same rules as the sets trained here."""
    return {g: str(e.folder) for g, e in config.generators.items() if e.get("folder")}


def synthetic_sets(config) -> list[tuple[str, str, str]]:
    """(set name, generator, mode) for every generator and every mode of `generate.modes` its kind
    supports, in config order; `sample` keeps the generator's own name; a folder entry is one set
    of mode "folder"."""
    out, families, folders = [], _mode_families(), folder_entries(config)
    for g in config.generators:
        if g in folders:
            out.append((g, g, "folder"))
            continue
        kind = _family(generator_config(config, g))
        out += [(g if mode == "sample" else f"{g}-{mode}", g, mode)
                for mode in config.generate.modes if kind in families[mode]]
    return out


def generate_config(config, generator_dir: pathlib.Path, num_samples: int, mode: str,
                    real_masks: pathlib.Path | None = None, real: str | None = None):
    """The generate stage of one mode: `generate.overrides`, then `generate.mode_overrides[mode]`;
    `inpaint`, `paint` and `sdedit` read the real training frames (`real`, default `data.train`),
    `from_masks` the real training masks."""
    c = merge(_stage_base(config, "generate"), config.generate.overrides, "generate.overrides")
    merge(c, config.generate.get("mode_overrides", {}).get(mode, {}), f"generate.mode_overrides.{mode}")
    c.generate.generator_workdir = str(generator_dir)
    c.generate.num_samples = int(num_samples)
    c.generate.mode = mode
    if mode in ("inpaint", "paint", "sdedit"):
        c.generate.source = real or config.data.train
    if mode == "from_masks":
        c.generate.masks = str(real_masks)
    _fix_data_seed(config, c)
    return c


def evaluate_config(config, generated: list[pathlib.Path], segmenter_dir: pathlib.Path | None):
    c = merge(_stage_base(config, "evaluate_generation"), config.evaluate.overrides, "evaluate.overrides")
    c.evaluate.real = config.data.train
    c.evaluate.generated = ",".join(str(p) for p in generated)
    c.evaluate.segmenter_workdir = str(segmenter_dir) if segmenter_dir else ""
    if not c.evaluate.image_size:  # not native: a folder's real frames differ in size
        c.evaluate.image_size = int(config.data.image_size)
    _fix_data_seed(config, c)
    return c


def segmentation_config(config, model: str, regime: str, *, seed: int, train: str | None = None,
                        synthetic: str = "", synthetic_fraction: float | None = None, steps: int | None = None):
    s = config.segmentation
    c = merge(_stage_base(config, "segmentation", s.get("variant", "cpu")), s.overrides, "segmentation.overrides")
    merge(c, s.models[model], f"segmentation.models.{model}")
    c.seed = int(seed)
    c.regime.kind = regime_kind(regime)
    if regime.endswith(AUGMENTED):
        c.regime.augment = True
    c.regime.alpha = float(s.alpha)
    c.regime.synthetic_fraction = float(s.synthetic_fraction if synthetic_fraction is None else synthetic_fraction)
    if train is not None:
        c.data.train = train
    c.data.synthetic = synthetic
    if steps is not None:
        c.train.num_steps = int(steps)
    _fix_data_seed(config, c)
    return c


EXPOSURES = ("matched", "same_steps")


def exposure_steps(base_steps: int, synthetic_fraction: float, exposure: str) -> int:
    """Steps of a run whose batches are `synthetic_fraction` synthetic. "matched": it sees as many real
    images as the real-only run of `base_steps` (the count grows by 1 / (1 - f)), so a synthetic set
    is judged on what it adds, not on real images it displaced; "same_steps": the old rule."""
    f = float(synthetic_fraction)
    if exposure == "same_steps" or f <= 0.0 or f >= 1.0:
        return int(base_steps)
    return int(math.ceil(base_steps / (1.0 - f)))


# --------------------------------------------------------------------------- stages

def _fingerprint(record) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Stages:
    """Runs stages under a workdir; the skip / rerun / resume rule of the module docstring."""

    def __init__(self, workdir: pathlib.Path):
        self.workdir = workdir
        self.records: dict[str, dict] = {}  # stage path -> stage.json, in the order they ran

    def run(self, rel: str, config, upstream: tuple[str, ...] = (), what: str = "") -> pathlib.Path:
        main = _main_module()
        out = self.workdir / rel
        resolved = tasks.resolve(config)
        key = {"config": resolved.to_dict(),
               "upstream": {u: self.records[u]["fingerprint"] for u in upstream}}
        computes = configlib.what_it_computes(key["config"])
        # Where the processes meet and how many there are is not what a stage computes (and the id
        # differs per process): the one-process values, so that every process, and a run resumed
        # with another process count, agrees. An interrupted training stage resumed with another
        # count is refused by its workdir (the data state is saved per process).
        computes["distributed"] = _ONE_PROCESS
        fingerprint = _fingerprint(dict(key, config=computes))
        path = out / "stage.json"
        # Every process decides from the record as it was before this stage (process 0 rewrites it).
        old = _on_every_process(lambda: json.loads(path.read_text()) if path.exists() else None, f"read {rel}")
        if old is not None and old.get("fingerprint") == fingerprint and old.get("status") == "done":
            logging.info("stage %s: done, skipped", rel)
            self.records[rel] = old
            return out
        if old is not None and old.get("fingerprint") != fingerprint:
            logging.info("stage %s: its config changed, rerunning it from scratch", rel)
        elif old is not None:
            logging.info("stage %s: resuming an interrupted run", rel)
        if _is_main():
            print(f"[pipeline] stage {rel}: {what or resolved.task}", flush=True)
        record = {"stage": rel, "task": resolved.task, "fingerprint": fingerprint, "status": "running",
                  "runs": (old or {}).get("runs", 0) + 1 if old and old.get("fingerprint") == fingerprint else 1,
                  **key}

        def start():
            if old is not None and old.get("fingerprint") != fingerprint:
                shutil.rmtree(out)
            out.mkdir(parents=True, exist_ok=True)
            export.atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")
        _on_main(start, f"start {rel}")
        wall, cpu = time.monotonic(), time.process_time()
        main.run(resolved, str(out))
        record.update(status="done", compute=self._compute(out, resolved, time.monotonic() - wall,
                                                           time.process_time() - cpu))
        _on_main(lambda: export.atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n"),
                 f"finish {rel}")
        self.records[rel] = record
        return out

    @staticmethod
    def _compute(out: pathlib.Path, config, wall_s: float, cpu_s: float) -> dict:
        import jax
        c = {"wall_s": wall_s, "cpu_s": cpu_s, "devices": jax.device_count(), "steps": None,
             "flops_per_step": None, "train_flops": None}
        if "train" in config and "num_steps" in config.train:
            c["steps"] = int(config.train.num_steps)
        elif "generate" in config and (out / "generation.json").exists():
            # UNet calls, from what the stage did: RePaint's jumps and two-stage's second network
            # make it differ from pairs x sampler steps; rejected pairs were sampled too.
            g = json.loads((out / "generation.json").read_text())
            c["steps"] = (int(g.get("num_pairs", 0)) + int(g.get("rejected", 0))) * int(g.get("unet_calls_per_pair", 0))
        if (out / "compute.json").exists():
            flops = json.loads((out / "compute.json").read_text()).get("flops_per_step")
            c["flops_per_step"] = flops
            c["train_flops"] = flops * c["steps"] if flops and c["steps"] else None
        return c


def _is_main() -> bool:
    import jax
    return jax.process_index() == 0


def _sync(name: str) -> None:
    import jax
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"pipeline: {name}")


def _on_main(fn, name: str):
    """`fn` on process 0 only (the pipeline's own files have one writer); every process continues
    once it is done, so the others read what it wrote."""
    result = fn() if _is_main() else None
    _sync(name)
    return result


def _on_every_process(fn, name: str):
    """`fn` on every process, all reading before any process goes on to change what they read."""
    result = fn()
    _sync(name)
    return result


def _main_module():
    """polypjax.main; when it runs as `python -m polypjax.main` it is __main__, and importing it a
    second time would define its flags twice."""
    import sys
    top = sys.modules.get("__main__")
    if getattr(getattr(top, "__spec__", None), "name", None) == "polypjax.main":
        return top
    import importlib
    return importlib.import_module("polypjax.main")


def _write_once(out: pathlib.Path, marker: str, key: dict, make_source, desc: str) -> pathlib.Path:
    """Writes the pairs of `make_source()` to the folder `out` once, on process 0 (the others wait):
    `out/<marker>` records the key they were written under, and a folder written under another key
    (another seed, size or source) is replaced. The key is compared as JSON reads it back (tuples
    as lists), or a key holding a tuple would never match and rewrite the folder on every run."""
    done = out / marker
    text = json.dumps(key, sort_keys=True, default=str)

    def write():
        if done.exists() and json.loads(done.read_text()) == json.loads(text):
            return
        if out.exists():
            shutil.rmtree(out)
        export.write_source(make_source(), out, desc=desc)
        export.atomic_write_text(done, text + "\n")
    _on_main(write, desc)
    return out


def _folder_share(workdir: pathlib.Path, config, name: str, spec: str, count: int) -> pathlib.Path:
    """data/folder_shares/<name>-<count>: a seeded share of `count` pairs of a folder entry, written
    once, so a low-data run gets r x N of its pairs like the sets made here."""
    from polypjax.data import catalog, sources
    key = {"folder": spec, "count": count, "seed": catalog.data_seed(config.data, config.seed)}
    pairs = catalog.make_source(spec, config.data, default_split="all", seed=config.seed)
    if count > len(pairs):
        raise ConfigError(f"config.generators.{name}.folder: {len(pairs)} pairs, fewer than the {count} a "
                          "low-data run needs")
    return _write_once(workdir / "data" / "folder_shares" / f"{name}-{count}", "share.json", key,
                       lambda: sources.random_subset(pairs, count, seed=key["seed"]), f"{name}: {count} pairs")


def _augmented_copies(workdir: pathlib.Path, config, train: str, count: int, tag: str) -> pathlib.Path:
    """data/augmented_copies/<tag>: `count` classically augmented copies of the real pairs of
    `train` (the N subset at N), written once: a mixed run on them has the synthetic runs' count
    and exposure, so a synthetic set that beats real-only but not them added more data, not better."""
    from polypjax.data import augment, catalog
    from polypjax.train.seg_regimes import classic_augmentation
    seed = catalog.data_seed(config.data, config.seed)
    cfg = classic_augmentation(config.data.augment)
    key = {"train": train, "count": count, "seed": seed, "image_size": config.data.image_size,
           "augment": cfg.to_dict()}

    def copies():
        real = catalog.make_source(train, config.data, default_split="train", seed=config.seed)
        return augment.AugmentedCopies(real, count, seed, cfg, config.data.image_size)
    return _write_once(workdir / "data" / "augmented_copies" / tag, "copies.json", key, copies,
                       f"{count} augmented copies ({tag})")


def _real_count(config) -> int:
    from polypjax.data import catalog
    return len(catalog.make_source(config.data.train, config.data, default_split="train", seed=config.seed))


def _subset_folder(workdir: pathlib.Path, config, n: int, train: str | None = None) -> pathlib.Path:
    """data/subsets/N<n>: one fixed random subset of the real training pairs (of `train`, the pool
    outside the validation pairs when there are some), written once as a folder, so the low-data
    segmenters and the "same data" generator see exactly these pairs."""
    from polypjax.data import catalog, sources
    train = train or config.data.train
    key = {"train": train, "n": n, "seed": config.seed, "image_size": config.data.image_size}
    real = catalog.make_source(train, config.data, default_split="train", seed=config.seed)
    if n > len(real):
        raise ConfigError(f"config.segmentation.low_data.sizes: {n} > the {len(real)} real training pairs")
    return _write_once(workdir / "data" / "subsets" / f"N{n}", "subset.json", key,
                       lambda: sources.random_subset(real, n, seed=catalog.data_seed(config.data, config.seed)),
                       f"real subset N={n}")


def _validation_split(workdir: pathlib.Path, config, fraction: float) -> tuple[pathlib.Path, pathlib.Path]:
    """data/pool and data/validation: one fixed seeded split of the real training pairs. The
    validation pairs are outside every segmenter's training data and every low-data subset; they
    serve only to choose step counts (the plateau), so the test sets are read once, at the end."""
    from polypjax.data import catalog, sources
    real = catalog.make_source(config.data.train, config.data, default_split="train", seed=config.seed)
    n_val = max(2, int(round(fraction * len(real))))
    if n_val >= len(real) - 1:
        raise ConfigError(f"config.segmentation.validation.fraction={fraction}: {n_val} of {len(real)} real "
                          "training pairs would leave too few to train on")
    seed = catalog.data_seed(config.data, config.seed)
    order = np.random.default_rng([seed, 4241]).permutation(len(real))
    folders = {"validation": np.sort(order[:n_val]), "pool": np.sort(order[n_val:])}
    made = {}
    for name, idx in folders.items():
        key = {"train": config.data.train, "fraction": fraction, "seed": seed, "image_size": config.data.image_size,
               "part": name}
        made[name] = _write_once(workdir / "data" / name, "split.json", key,
                                 lambda idx=idx: sources.SubsetSource(real, idx), f"real {name} pairs")
    return made["pool"], made["validation"]


def validation_curve(stage_dir: pathlib.Path, test_name: str) -> list[tuple[int, float]]:
    """(step, validation mDice) of a plateau run, from its metrics.jsonl (last value per step: a
    resumed run appends again)."""
    key, curve = f"eval/{test_name}/mDice", {}
    path = pathlib.Path(stage_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        if key in record:
            curve[int(record["step"])] = float(record[key])
    return sorted(curve.items())


def plateau_step(curve: list[tuple[int, float]], tolerance: float) -> int:
    """The first evaluated step whose validation mDice is within `tolerance` of the curve's best:
    more steps than this would not help the real-only run by more than that."""
    if not curve:
        raise ValueError("the plateau run recorded no validation scores")
    best = max(v for _, v in curve)
    return next(step for step, v in curve if v >= best - tolerance)


def _real_folder(workdir: pathlib.Path, config) -> pathlib.Path:
    """The real training pairs as a folder: the configured one, or data/real written once (phantom, TFDS)."""
    from polypjax.data import catalog
    spec = catalog.parse_spec(config.data.train, default_split="train")
    if spec.kind == "folder" and spec.split == "all":
        return pathlib.Path(spec.name)
    key = {"train": config.data.train, "seed": config.seed, "image_size": config.data.image_size}
    return _write_once(workdir / "data" / "real", "source.json", key,
                       lambda: catalog.make_source(config.data.train, config.data, default_split="train",
                                                   seed=config.seed),
                       "real training pairs as a folder")


def _masks_folder(folder: pathlib.Path) -> pathlib.Path:
    """The mask folder of a pair folder (any layout sources.detect_layout knows): from_masks' input."""
    from polypjax.data import sources
    return sources.detect_layout(folder)[2]


def make_review_page(workdir: pathlib.Path, config, generated: dict, real: pathlib.Path) -> dict:
    """review/: the blinded real-vs-synthetic page of the first generator's pairs (polypjax.review);
    its key stays beside it, outside the page. Rebuilt only when its settings changed."""
    from polypjax.review.page import make_review
    r = config.review
    g = next(iter(generated))  # the first synthetic set
    out = workdir / "review"
    settings = {"generator": g, "n": int(r.n), "seed": int(r.seed), "show_masks": bool(r.show_masks),
                "generated": stages_fingerprint(generated[g])}
    record = out / "review_settings.json"
    if not (record.exists() and json.loads(record.read_text()) == settings):
        print("[pipeline] stage review: blinded real-vs-synthetic page", flush=True)
        page = make_review(real, generated[g], out, n=int(r.n), seed=int(r.seed),
                           show_masks=bool(r.show_masks), force=True)
        export.atomic_write_text(record, json.dumps(settings) + "\n")
        page_id = page.page_id
    else:
        page_id = json.loads((out / "review_key.json").read_text()).get("page_id")
    return {"page": "review/review.html", "key": "review/review_key.json", "generator": g,
            "n": int(r.n), "page_id": page_id}


def stages_fingerprint(stage_dir: pathlib.Path) -> str | None:
    path = pathlib.Path(stage_dir) / "stage.json"
    return json.loads(path.read_text()).get("fingerprint") if path.exists() else None


def validate(config) -> None:
    s = config.segmentation
    if not config.generators:
        raise ConfigError("config.generators must name at least one generator (e.g. joint)")
    for name, g in config.generators.items():
        if g.get("folder"):
            configlib.check_source_spec(str(g.folder), f"generators.{name}.folder")
            from polypjax.data.catalog import parse_spec
            if parse_spec(str(g.folder), "all").kind != "folder":
                raise ConfigError(f"config.generators.{name}.folder={g.folder!r} must be a folder of pairs")
            continue
        if g.get("config", "diffusion") not in GENERATOR_CONFIGS:
            raise ConfigError(f"config.generators.{name}.config={g.config!r} is unknown; choose one of {GENERATOR_CONFIGS}")
    if not s.models:
        raise ConfigError("config.segmentation.models must name at least one segmenter")
    for field in ("regimes", "low_data.regimes"):
        for regime in s.regimes if field == "regimes" else s.low_data.regimes:
            if regime_kind(regime) not in REAL_REGIMES + SYNTHETIC_REGIMES or regime in ("real+aug", "real_augment+aug"):
                raise ConfigError(f"config.segmentation.{field}: {regime!r} is unknown; choose from "
                                  f"{REAL_REGIMES + SYNTHETIC_REGIMES}, each but real and real_augment also with "
                                  f"'{AUGMENTED}' (classic augmentation on)")
    if s.get("validation"):
        v = s.validation
        configlib.check_number(config, "segmentation.validation.fraction", 0, 0.5, high_open=True)
        configlib.check_number(config, "segmentation.validation.eval_every", 1, integer=True)
        configlib.check_number(config, "segmentation.validation.max_steps", int(v.eval_every), integer=True)
        configlib.check_number(config, "segmentation.validation.tolerance", 0)
    if s.get("exposure", "matched") not in EXPOSURES:
        raise ConfigError(f"config.segmentation.exposure={s.exposure!r}; choose one of {EXPOSURES}")
    for p in s.low_data.protocols:
        if p not in ("paper", "same_data"):
            raise ConfigError(f"config.segmentation.low_data.protocols: {p!r}; choose paper or same_data")
    if not s.seeds:
        raise ConfigError("config.segmentation.seeds must list at least one seed")
    if config.generate.multiple <= 0:
        raise ConfigError(f"config.generate.multiple must be positive, got {config.generate.multiple}")
    modes, families = tuple(config.generate.modes), _mode_families()
    if not modes:
        raise ConfigError("config.generate.modes must list at least one of " + ", ".join(families))
    for mode in modes:
        if mode not in families:
            raise ConfigError(f"config.generate.modes: {mode!r} is unknown; choose from {tuple(families)}")
    kinds = {g: _family(generator_config(config, g)) for g in config.generators if g not in folder_entries(config)}
    if not kinds:
        return  # only folders made elsewhere: nothing is generated here
    for mode in modes:
        if not any(k in families[mode] for k in kinds.values()):
            raise ConfigError(f"config.generate.modes: {mode!r} needs a {' or '.join(families[mode])} generator; "
                              f"the generators are {kinds}")
    for mode in config.generate.get("mode_overrides", {}):
        # Settings of a known mode that is not listed wait for --config.generate.modes to name it.
        if mode not in families:
            raise ConfigError(f"config.generate.mode_overrides.{mode}: {mode!r} is not a generation mode; "
                              f"choose from {tuple(families)}")
    # Every stage's overrides merge (a missing field, a value of the wrong type) before the first
    # stage runs; the stages' own values are checked when each is resolved.
    for mode in set(modes) | set(config.generate.get("mode_overrides", {})):
        generate_config(config, pathlib.Path("generators"), 1, mode, pathlib.Path("masks"))
    evaluate_config(config, [], None)
    for model in s.models:
        segmentation_config(config, model, "real", seed=0)


def run(config, workdir: pathlib.Path) -> dict:
    from polypjax.data import sources
    from polypjax.experiments import report
    workdir = pathlib.Path(workdir)
    stages = Stages(workdir)
    s = config.segmentation
    models = list(s.models)
    val = s.get("validation") or {}
    validating = float(val.get("fraction", 0.0)) > 0
    train_spec = validation_spec = None  # None: config.data.train, as it is
    if validating:  # segmenters train on the pool; the validation pairs only choose step counts
        pool, validation = _validation_split(workdir, config, float(val.fraction))
        train_spec, validation_spec = f"{pool}@all", f"{validation}@all"
    n_real = _real_count(config) if not validating else len(sources.FolderSource(pool))
    runs = []  # (stage path, generator, model, regime, N, seed, protocol)

    # 1-2. generators, and their synthetic sets (N x the real count) in every configured mode.
    sets = synthetic_sets(config)
    gdirs, generated = {}, {}
    masks = (_masks_folder(pool if validating else _real_folder(workdir, config))
             if any(m == "from_masks" for _, _, m in sets) else None)
    folders = folder_entries(config)
    for g in config.generators:
        if g not in folders:
            gdirs[g] = stages.run(f"generators/{g}", generator_config(config, g), what=f"train generator {g}")
    for name, g, mode in sets:
        if mode == "folder":
            generated[name] = folders[g]
            continue
        generated[name] = stages.run(
            f"generated/{name}", generate_config(config, gdirs[g], config.generate.multiple * n_real, mode, masks,
                                                 real=train_spec),
            upstream=(f"generators/{g}",), what=f"generate {config.generate.multiple:g} x {n_real} pairs with {g} ({mode})")

    # The real-only step count at each N: one run per model and N on the validation pairs, read once.
    plateaus = {}

    def base_for(model, n, train):
        if not validating:
            return base_steps[model]
        if (model, n) not in plateaus:
            rel = f"segmentation/plateau/{model}/{'all' if n is None else n}"
            c = segmentation_config(config, model, "real", seed=s.seeds[0], train=train, steps=int(val.max_steps))
            c.data.test = validation_spec
            c.train.eval_every = int(val.eval_every)
            stages.run(rel, c, what=f"real-only {model} at N={n or n_real} to {val.max_steps} steps, "
                                    "scored on the validation pairs (plateau)")
            from polypjax.data.catalog import display_name
            curve = validation_curve(workdir / rel, display_name(validation_spec, "test"))
            plateaus[model, n] = {"model": model, "N": n or n_real, "stage": rel, "curve": curve,
                                  "tolerance": float(val.tolerance),
                                  "steps": plateau_step(curve, float(val.tolerance))}
        return plateaus[model, n]["steps"]

    exposure = s.get("exposure", "matched")
    base_steps = {m: int(segmentation_config(config, m, "real", seed=s.seeds[0]).train.num_steps) for m in models}

    def steps_for(base, regime, regimes, fraction):
        """Real-only runs at the base count; a mixed run at the count that shows it as many real
        images, and the baselines it is compared with at that same total (exposure-matched); the
        synthetic-only and the paper's replace regime at the base count."""
        if regime == "real" or regime_kind(regime) in ("synthetic", "replace") or \
                "mixed" not in {regime_kind(r) for r in regimes}:
            return base
        return exposure_steps(base, fraction, exposure)

    def segment(model, regime, n, seed, generator="none", protocol="full", train=None, synthetic=None,
                upstream=(), fraction=None, regimes=s.regimes):
        rel = f"segmentation/{generator}/{model}/{regime}/{'all' if n is None else n}/{seed}"
        f = float(s.synthetic_fraction if fraction is None else fraction)
        train = train or train_spec
        base = base_for(model, n, train)
        upstream = tuple(upstream) + ((plateaus[model, n]["stage"],) if validating else ())
        steps = steps_for(base, regime, regimes, f)
        c = segmentation_config(config, model, regime, seed=seed, train=train,
                                synthetic=str(synthetic) if synthetic else "", synthetic_fraction=fraction,
                                steps=steps)
        stages.run(rel, c, upstream=upstream, what=f"segmenter {model}, {regime}, N={n or n_real}, seed {seed}, "
                   f"{steps} steps" + (f", synthetic from {generator}" if generator != "none" else ""))
        runs.append({"stage": rel, "generator": generator, "model": model, "regime": regime,
                     "N": n or n_real, "seed": seed, "protocol": protocol, "steps": steps,
                     "exposure": "paper replace" if regime_kind(regime) == "replace" else
                     exposure if steps != base else "base"})
        return rel

    # 4a. the real-only segmenter of the first seed doubles as the label-consistency judge.
    judge = segment(models[0], "real", None, s.seeds[0])

    def made(name):  # the stage that made a set; none for a folder made elsewhere
        return () if name in folders else (f"generated/{name}",)

    # 3. generation metrics of every synthetic set against the real training set.
    for name in generated:
        stages.run(f"evaluation/{name}", evaluate_config(config, [generated[name]], workdir / judge),
                   upstream=made(name) + (judge,), what=f"generation metrics of {name}")

    # 4b-5. every regime, model and seed at the full real set (each run scores every test set).
    for model in models:
        for seed in s.seeds:
            for regime in s.regimes:
                if regime_kind(regime) in REAL_REGIMES:
                    if (model, regime, seed) != (models[0], "real", s.seeds[0]):
                        segment(model, regime, None, seed)
                else:
                    for name in generated:
                        segment(model, regime, None, seed, generator=name, synthetic=generated[name],
                                upstream=made(name))

    copies = bool(s.get("augmented_copies", False))

    def mixed_regimes(regimes):  # the copies run beside each mixed regime, with its augmentation
        return [r for r in regimes if regime_kind(r) == "mixed"]
    if copies and mixed_regimes(s.regimes):  # "more data" at the synthetic sets' count, not "better data"
        folder = _augmented_copies(workdir, config, train_spec or config.data.train,
                                   int(config.generate.multiple * n_real), "all")
        for model in models:
            for seed in s.seeds:
                for regime in mixed_regimes(s.regimes):
                    segment(model, regime, None, seed, generator="augmented_copies", protocol="baseline",
                            synthetic=f"{folder}@all")

    # 4c. the low-data sweep at N real pairs. What each protocol may use: only the generator's
    # weights may have seen more than the N (paper: all training pairs; same_data: the N); frames
    # painted into and source masks come from the N; both get r x N synthetic pairs.
    low = s.low_data
    r = float(low.synthetic_per_real)
    for n in low.sizes:
        if not n or n >= n_real:
            continue  # "all" is the full-set grid above
        subset = _subset_folder(workdir, config, int(n), train=train_spec)
        subset_spec = f"{subset}@all"  # the folder as it is: a bare path would be hash-split again
        subset_masks = _masks_folder(subset) if masks is not None else None
        count = max(2, int(round(r * n)))
        at_n = {}  # (protocol, set name) -> (label, folder)
        for g, spec in folders.items():  # a folder made elsewhere: a seeded r x N share of it
            label = f"{g}-N{n}-paper"
            at_n["paper", g] = (label, f"{_folder_share(workdir, config, g, spec, count)}@all")
        for protocol in low.protocols:
            for g in config.generators:
                if g in folders:
                    continue
                if protocol == "paper":
                    gdir, gstage = gdirs[g], f"generators/{g}"
                else:
                    gstage = f"generators/{g}-N{n}"
                    gdir = stages.run(gstage, generator_config(config, g, train=subset_spec),
                                      what=f"train generator {g} on the N={n} subset (same-data protocol)")
                for name, gen, mode in sets:
                    if gen != g:
                        continue
                    label = f"{name}-N{n}" if protocol == "same_data" else f"{name}-N{n}-paper"
                    c = generate_config(config, gdir, count, mode, subset_masks, real=subset_spec)
                    at_n[protocol, name] = (label, stages.run(
                        f"generated/{label}", c, upstream=(gstage,),
                        what=f"generate {count} pairs with {gen}{'' if protocol == 'paper' else f'-N{n}'} ({mode}), "
                             f"frames and masks from the N={n} subset"))
        copies_n = (_augmented_copies(workdir, config, subset_spec, count, f"N{n}")
                    if copies and mixed_regimes(low.regimes) else None)
        for model in models:
            for seed in s.seeds:
                for regime in low.regimes:
                    if regime_kind(regime) in REAL_REGIMES:
                        segment(model, regime, n, seed, protocol="low_data", train=subset_spec,
                                fraction=r / (1.0 + r), regimes=low.regimes)
                        continue
                    if copies_n is not None and regime_kind(regime) == "mixed":
                        segment(model, regime, n, seed, generator=f"augmented_copies-N{n}", protocol="baseline",
                                train=subset_spec, synthetic=f"{copies_n}@all", fraction=r / (1.0 + r),
                                regimes=low.regimes)
                    for name in generated:
                        for protocol in low.protocols:
                            if (protocol, name) not in at_n:
                                continue  # a folder made elsewhere enters under the paper protocol only
                            label, source = at_n[protocol, name]
                            segment(model, regime, n, seed, generator=label, protocol=protocol, train=subset_spec,
                                    synthetic=source, upstream=() if name in folders else (f"generated/{label}",),
                                    fraction=r / (1.0 + r), regimes=low.regimes)

    review = None
    if config.get("review", {}).get("enabled"):
        real = _real_folder(workdir, config)  # on every process: it waits for process 0 to write it
        review = _on_main(lambda: make_review_page(workdir, config, generated, real), "review page")

    # 6. the report (always rebuilt: it is cheap and reads only finished stages), by process 0.
    summary = {"config": config.to_dict(), "num_real_train": n_real, "runs": runs,
               "stages": stages.records, "generators": list(generated), "review": review,
               "generated_folders": {k: str(v) for k, v in generated.items()},
               "plateaus": list(plateaus.values())}

    def write_report():
        print("[pipeline] stage report", flush=True)
        return report.write(workdir, summary)
    return _on_main(write_report, "report") or summary
