"""Task `pipeline`: labelled pairs -> generators -> synthetic pairs -> generation metrics -> segmenters
under every data regime -> one report (report.md, report.html, results.csv).

Every stage runs an existing task through `polypjax.main.run` in its own subfolder, with that task's
config built from its `configs/*.py` plus the pipeline's overrides:

    generators/<g>                      train_diffusion (and generators/<g>-N<n> for the "same data" protocol)
    generated/<set>                     generate: one synthetic set per generator and mode of
                                        `generate.modes`; <set> is <g> for `sample` and <g>-<mode>
                                        otherwise (`inpaint`: RePaint into the real training frames)
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
import pathlib
import shutil
import time

import ml_collections

from polypjax import configlib, tasks
from polypjax.configlib import ConfigError
from polypjax.data import export

REAL_REGIMES = ("real", "real_augment")
SYNTHETIC_REGIMES = ("synthetic", "mixed", "replace")
_ONE_PROCESS = {"coordinator_address": "", "num_processes": 1, "process_id": 0}
# Data fields every stage takes from the pipeline's own `config.data`.
SHARED_DATA = ("train", "test", "image_size", "phantom_train_examples", "phantom_test_examples",
               "test_fraction", "split_seed")


# --------------------------------------------------------------------------- stage configs

def data_sources(config) -> list[tuple[str, str, str]]:
    """The real training set and every test set, checked before the first stage starts."""
    from polypjax.data.catalog import split_specs
    return [("data.train", config.data.train, "train")] + [
        ("data.test", spec, "test") for spec in split_specs(config.data.test)]


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


def synthetic_sets(config) -> list[tuple[str, str, str]]:
    """(set name, generator, mode) for every generator and every mode of `generate.modes` its kind
    supports, in config order; `sample` keeps the generator's own name."""
    out, families = [], _mode_families()
    for g in config.generators:
        kind = _family(generator_config(config, g))
        out += [(g if mode == "sample" else f"{g}-{mode}", g, mode)
                for mode in config.generate.modes if kind in families[mode]]
    return out


def generate_config(config, generator_dir: pathlib.Path, num_samples: int, mode: str,
                    real_masks: pathlib.Path | None = None, real: str | None = None):
    """The generate stage of one mode: `generate.overrides`, then `generate.mode_overrides[mode]`;
    `inpaint` and `sdedit` read the real training frames (`real`, default `data.train`),
    `from_masks` the real training masks."""
    c = merge(_stage_base(config, "generate"), config.generate.overrides, "generate.overrides")
    merge(c, config.generate.get("mode_overrides", {}).get(mode, {}), f"generate.mode_overrides.{mode}")
    c.generate.generator_workdir = str(generator_dir)
    c.generate.num_samples = int(num_samples)
    c.generate.mode = mode
    if mode in ("inpaint", "sdedit"):
        c.generate.source = real or config.data.train
    if mode == "from_masks":
        c.generate.masks = str(real_masks)
    return c


def evaluate_config(config, generated: list[pathlib.Path], segmenter_dir: pathlib.Path | None):
    c = merge(_stage_base(config, "evaluate_generation"), config.evaluate.overrides, "evaluate.overrides")
    c.evaluate.real = config.data.train
    c.evaluate.generated = ",".join(str(p) for p in generated)
    c.evaluate.segmenter_workdir = str(segmenter_dir) if segmenter_dir else ""
    if not c.evaluate.image_size:  # not native: a folder's real frames differ in size
        c.evaluate.image_size = int(config.data.image_size)
    return c


def segmentation_config(config, model: str, regime: str, *, seed: int, train: str | None = None,
                        synthetic: str = "", synthetic_fraction: float | None = None):
    s = config.segmentation
    c = merge(_stage_base(config, "segmentation", s.get("variant", "cpu")), s.overrides, "segmentation.overrides")
    merge(c, s.models[model], f"segmentation.models.{model}")
    c.seed = int(seed)
    c.regime.kind = regime
    c.regime.alpha = float(s.alpha)
    c.regime.synthetic_fraction = float(s.synthetic_fraction if synthetic_fraction is None else synthetic_fraction)
    if train is not None:
        c.data.train = train
    c.data.synthetic = synthetic
    return c


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
        elif "generate" in config:
            c["steps"] = int(config.generate.num_samples) * int(config.generate.sampler.steps)
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


def _real_count(config) -> int:
    from polypjax.data import catalog
    return len(catalog.make_source(config.data.train, config.data, default_split="train", seed=config.seed))


def _subset_folder(workdir: pathlib.Path, config, n: int) -> pathlib.Path:
    """data/subsets/N<n>: one fixed random subset of the real training pairs, written once as a
    folder, so the low-data segmenters and the "same data" generator see exactly these pairs."""
    from polypjax.data import catalog, sources
    out = workdir / "data" / "subsets" / f"N{n}"
    done = out / "subset.json"
    key = {"train": config.data.train, "n": n, "seed": config.seed, "image_size": config.data.image_size}
    real = catalog.make_source(config.data.train, config.data, default_split="train", seed=config.seed)
    if n > len(real):
        raise ConfigError(f"config.segmentation.low_data.sizes: {n} > the {len(real)} real training pairs")

    def write():
        if done.exists() and json.loads(done.read_text()) == key:
            return
        if out.exists():
            shutil.rmtree(out)
        export.write_source(sources.random_subset(real, n, seed=config.seed), out, desc=f"real subset N={n}")
        export.atomic_write_text(done, json.dumps(key) + "\n")
    _on_main(write, f"subset N{n}")
    return out


def _real_folder(workdir: pathlib.Path, config) -> pathlib.Path:
    """The real training pairs as a folder: the configured one, or data/real written once (phantom, TFDS)."""
    from polypjax.data import catalog
    spec = catalog.parse_spec(config.data.train, default_split="train")
    if spec.kind == "folder" and spec.split == "all":
        return pathlib.Path(spec.name)
    out = workdir / "data" / "real"
    done = out / "source.json"
    key = {"train": config.data.train, "seed": config.seed, "image_size": config.data.image_size}

    def write():
        if done.exists() and json.loads(done.read_text()) == key:
            return
        if out.exists():
            shutil.rmtree(out)
        real = catalog.make_source(config.data.train, config.data, default_split="train", seed=config.seed)
        export.write_source(real, out, desc="real training pairs as a folder")
        export.atomic_write_text(done, json.dumps(key) + "\n")
    _on_main(write, "real folder")
    return out


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
        if g.get("config", "diffusion") not in GENERATOR_CONFIGS:
            raise ConfigError(f"config.generators.{name}.config={g.config!r} is unknown; choose one of {GENERATOR_CONFIGS}")
    if not s.models:
        raise ConfigError("config.segmentation.models must name at least one segmenter")
    for regime in s.regimes:
        if regime not in REAL_REGIMES + SYNTHETIC_REGIMES:
            raise ConfigError(f"config.segmentation.regimes: {regime!r} is unknown; choose from "
                              f"{REAL_REGIMES + SYNTHETIC_REGIMES}")
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
    kinds = {g: _family(generator_config(config, g)) for g in config.generators}
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
    from polypjax.experiments import report
    workdir = pathlib.Path(workdir)
    stages = Stages(workdir)
    s = config.segmentation
    models = list(s.models)
    n_real = _real_count(config)
    runs = []  # (stage path, generator, model, regime, N, seed, protocol)

    # 1-2. generators, and their synthetic sets (N x the real count) in every configured mode.
    sets = synthetic_sets(config)
    gdirs, generated = {}, {}
    masks = _masks_folder(_real_folder(workdir, config)) if any(m == "from_masks" for _, _, m in sets) else None
    for g in config.generators:
        gdirs[g] = stages.run(f"generators/{g}", generator_config(config, g), what=f"train generator {g}")
    for name, g, mode in sets:
        generated[name] = stages.run(
            f"generated/{name}", generate_config(config, gdirs[g], config.generate.multiple * n_real, mode, masks),
            upstream=(f"generators/{g}",), what=f"generate {config.generate.multiple:g} x {n_real} pairs with {g} ({mode})")

    def segment(model, regime, n, seed, generator="none", protocol="full", train=None, synthetic=None,
                upstream=(), fraction=None):
        rel = f"segmentation/{generator}/{model}/{regime}/{'all' if n is None else n}/{seed}"
        c = segmentation_config(config, model, regime, seed=seed, train=train,
                                synthetic=str(synthetic) if synthetic else "", synthetic_fraction=fraction)
        stages.run(rel, c, upstream=upstream, what=f"segmenter {model}, {regime}, N={n or n_real}, seed {seed}"
                   + (f", synthetic from {generator}" if generator != "none" else ""))
        runs.append({"stage": rel, "generator": generator, "model": model, "regime": regime,
                     "N": n or n_real, "seed": seed, "protocol": protocol})
        return rel

    # 4a. the real-only segmenter of the first seed doubles as the label-consistency judge.
    judge = segment(models[0], "real", None, s.seeds[0])

    # 3. generation metrics of every synthetic set against the real training set.
    for name in generated:
        stages.run(f"evaluation/{name}", evaluate_config(config, [generated[name]], workdir / judge),
                   upstream=(f"generated/{name}", judge), what=f"generation metrics of {name}")

    # 4b-5. every regime, model and seed at the full real set (each run scores every test set).
    for model in models:
        for seed in s.seeds:
            for regime in s.regimes:
                if regime in REAL_REGIMES:
                    if (model, regime, seed) != (models[0], "real", s.seeds[0]):
                        segment(model, regime, None, seed)
                else:
                    for name in generated:
                        segment(model, regime, None, seed, generator=name, synthetic=generated[name],
                                upstream=(f"generated/{name}",))

    # 4c. the low-data sweep: N real pairs, r synthetic per real pair, under both protocols.
    low = s.low_data
    r = float(low.synthetic_per_real)
    for n in low.sizes:
        if not n or n >= n_real:
            continue  # "all" is the full-set grid above
        subset = _subset_folder(workdir, config, int(n))
        same = {}
        if "same_data" in low.protocols:
            subset_masks = _masks_folder(subset) if masks is not None else None
            for g in config.generators:
                gdir = stages.run(f"generators/{g}-N{n}", generator_config(config, g, train=str(subset)),
                                  what=f"train generator {g} on the N={n} subset (same-data protocol)")
                for name, gen, mode in sets:
                    if gen != g:
                        continue
                    # Only the N pairs this protocol may see, also as the frames to paint into.
                    c = generate_config(config, gdir, max(2, int(round(r * n))), mode, subset_masks, real=str(subset))
                    same[name] = stages.run(f"generated/{name}-N{n}", c, upstream=(f"generators/{g}-N{n}",),
                                            what=f"generate with {g}-N{n} ({mode})")
        for model in models:
            for seed in s.seeds:
                for regime in low.regimes:
                    if regime in REAL_REGIMES:
                        segment(model, regime, n, seed, protocol="low_data", train=str(subset))
                        continue
                    for name in generated:
                        for protocol in low.protocols:
                            source, label = ((generated[name], name) if protocol == "paper"
                                             else (same[name], f"{name}-N{n}"))
                            segment(model, regime, n, seed, generator=label, protocol=protocol, train=str(subset),
                                    synthetic=source, upstream=(f"generated/{label}",), fraction=r / (1.0 + r))

    review = None
    if config.get("review", {}).get("enabled"):
        real = _real_folder(workdir, config)  # on every process: it waits for process 0 to write it
        review = _on_main(lambda: make_review_page(workdir, config, generated, real), "review page")

    # 6. the report (always rebuilt: it is cheap and reads only finished stages), by process 0.
    summary = {"config": config.to_dict(), "num_real_train": n_real, "runs": runs,
               "stages": stages.records, "generators": list(generated), "review": review}

    def write_report():
        print("[pipeline] stage report", flush=True)
        return report.write(workdir, summary)
    return _on_main(write_report, "report") or summary
