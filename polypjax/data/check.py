"""The check every task runs on the data sources it will read, before its first step.

Each experiment module says which sources it reads with `data_sources(config) -> [(field, spec,
default split)]`; `main.run` calls it (through `tasks.check_data`) right after the config is resolved and
before anything is written to the workdir. Folders are scanned by `inspect.inspect_folder` (the
inspector's own code), so a corrupt test image or a non-binary mask stops the run at once with
one line naming the file, instead of after training.
"""
from __future__ import annotations

import logging

from polypjax.data import catalog, inspect, sources

# A pipeline checks its sources before every stage; a rule's warning is worth one line per process.
_LOGGED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        logging.warning("%s", message)


def check_sources(config, specs, *, progress: bool | None = None) -> list[dict]:
    """Raises `DataError` (one line: field, file, problem) on the first source with an error.

    Phantom sources are generated, so there is nothing to read; a TFDS source is opened (which
    fails when it is not prepared) and was checked by these same rules when it was built.
    Warnings (e.g. empty masks) are logged, one line per source. Returns the folder reports.
    """
    reports, seen = [], set()
    for field, spec, default_split in specs:
        s = catalog.parse_spec(spec, default_split)
        if (s.kind, s.name, s.split) in seen or s.kind == "phantom":
            continue
        seen.add((s.kind, s.name, s.split))
        if s.kind == "tfds":
            catalog.make_source(spec, config.data, default_split=default_split, seed=config.seed)
            continue
        report = inspect.inspect_folder(s.name, progress=progress, split=s.split,
                                        test_fraction=config.data.test_fraction,
                                        split_seed=config.data.split_seed,
                                        image_scaling=config.data.get("image_scaling", "full"))
        reports.append(report)
        problems = [sources.Problem(**p) for p in report["problems"]]
        errors = [p for p in problems if p.severity == "error"]
        if errors:
            more = (f" (and {len(errors) - 1} more error(s); see `python -m polypjax.data {s.name}`)"
                    if len(errors) > 1 else "")
            raise sources.DataError(f"config.{field}: {errors[0].path}: {errors[0].message}{more}")
        if report["num_pairs"] == 0:
            raise sources.DataError(f"config.{field}: {s.name}: no pairs in split {s.split!r}")
        for note in report["rules_applied"]:
            _warn_once(f"config.{field}: {note['path']}: {note['message']}")
        rules = [sources.Problem(**p) for p in report["rules_applied"]]
        warnings = [p for p in problems if p.severity == "warning" and p not in rules]
        if warnings:
            _warn_once(f"config.{field}: {len(warnings)} warning(s) in {s.name}, e.g. {warnings[0]}")
    return reports
