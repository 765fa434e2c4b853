"""Checks the import rule of ARCHITECTURE.md: imports run one way, from the entry point down.

    python tools/check_imports.py        # exit 1 and one line per violation

Every `import` counts, also those inside functions (a function-local import must not hide a cycle).
A module may import its own package and any package of a lower layer; packages of one layer do not
import each other. Config files (configs/*.py) import only ml_collections and polypjax.configlib.
"""
from __future__ import annotations

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Higher layers may import lower ones. Keys are the first component below `polypjax`.
LAYERS = {
    "main": 8,
    "pipeline": 7,
    "tasks": 6, "workdir": 6,
    "experiments": 5, "review": 5,
    "train": 4,
    "configlib": 3,
    "data": 2, "diffusion": 2, "metrics": 2,
    "models": 1, "parallel": 1,
    "native": 0, "hostenv": 0, "compile_cache": 0,
    "cache_dirs": -1, "faults": -1,
}
# Modules that are a unit of their own. The pipeline task resolves, checks and runs other tasks
# (each stage through main.run, looked up at run time), so it sits above tasks, not with the
# experiments it drives.
OWN_UNITS = {"polypjax.experiments.pipeline": "pipeline"}
CONFIG_ALLOWED = ("ml_collections", "polypjax.configlib")


def _unit(module: str) -> str | None:
    for prefix, unit in OWN_UNITS.items():
        if module == prefix or module.startswith(prefix + "."):
            return unit
    parts = module.split(".")
    if parts[0] != "polypjax":
        return None
    return parts[1] if len(parts) > 1 else "polypjax"


def _imports(path: pathlib.Path, package: str):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [f"{module}.{a.name}" for a in node.names] if module == "polypjax" else [module]
            for name in names:
                yield node.lineno, name


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def check() -> list[str]:
    problems = []
    for path in sorted((ROOT / "polypjax").rglob("*.py")):
        name = _module_name(path)
        unit = _unit(name)
        if unit == "polypjax":  # the package marker itself
            continue
        if unit not in LAYERS:
            problems.append(f"{path.relative_to(ROOT)}: package {unit!r} has no layer in tools/check_imports.py")
            continue
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for line, target in _imports(path, package):
            other = _unit(target)
            if other is None or other == unit or other == "polypjax":
                continue
            if other not in LAYERS:
                problems.append(f"{path.relative_to(ROOT)}:{line}: imports {target} (no layer)")
            elif LAYERS[other] >= LAYERS[unit]:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {unit} (layer {LAYERS[unit]}) imports "
                                f"{target} (layer {LAYERS[other]}); imports must go to a lower layer")
    for path in sorted((ROOT / "configs").glob("*.py")):
        for line, target in _imports(path, "configs"):
            if not target.startswith(CONFIG_ALLOWED) and target.split(".")[0] not in ("__future__",):
                problems.append(f"{path.relative_to(ROOT)}:{line}: config file imports {target}; "
                                f"config files import only {', '.join(CONFIG_ALLOWED)}")
    return problems


def main() -> int:
    problems = check()
    for p in problems:
        print(p)
    print(f"import rule: {len(problems)} violation(s)" if problems else "import rule: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
