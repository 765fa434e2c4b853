"""The reports: the pipeline's (`write`: results.csv, one row per generator, model, regime, N, seed,
test set; paired.csv, one row per synthetic set, test set and baseline (`paired_rows`); results.json,
report.md and a self-contained report.html with figures embedded as PNG data URIs) and
evaluate_generation's generation_metrics.md (`generation_markdown`)."""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import pathlib

import numpy as np

from polypjax.data import export
from polypjax.metrics import masks as mask_metrics
from polypjax.metrics import paired

METRICS = ("mDice", "mIoU", "dice", "iou")
CSV_FIELDS = ("generator", "model", "regime", "protocol", "N", "seed", "test_set", *METRICS, "num_images")
GROUP = ("generator", "regime", "protocol", "model", "N")  # one synthetic candidate, all its seeds
PAIRED_FIELDS = (*GROUP, "test_set", "baseline", "seeds", "num_images", "num_empty_excluded", "mean", "std",
                 "ci_low", "ci_high", "verdict", "per_seed", "note")
REAL_BASELINES = ("real", "real_augment")


def rows(workdir: pathlib.Path, runs: list[dict]) -> list[dict]:
    out = []
    for run in runs:
        results = json.loads((workdir / run["stage"] / "results.json").read_text())
        for test_set, r in results["test"].items():
            out.append({**{k: run[k] for k in ("generator", "model", "regime", "protocol", "N", "seed")},
                        "test_set": test_set, **{m: float(r[m]) for m in METRICS}, "num_images": r["num_images"]})
    return out


def aggregate(table: list[dict]) -> list[dict]:
    """Mean and (sample) std over seeds per (generator, model, regime, protocol, N, test set)."""
    groups: dict[tuple, list[dict]] = {}
    for r in table:
        groups.setdefault(tuple(r[k] for k in ("generator", "model", "regime", "protocol", "N", "test_set")),
                          []).append(r)
    out = []
    for key, members in groups.items():
        g = dict(zip(("generator", "model", "regime", "protocol", "N", "test_set"), key), seeds=len(members))
        for m in METRICS:
            v = np.array([r[m] for r in members])
            g[m], g[f"{m}_std"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
        out.append(g)
    return out


def _pm(mean, std, digits=3) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _md_table(header: list[str], body: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def segmentation_table(agg: list[dict], n_all: int) -> tuple[list[str], list[list]]:
    full = [a for a in agg if a["N"] == n_all]
    base = {(a["model"], a["regime"], a["test_set"]): a for a in full if a["generator"] == "none"}
    header = ["model", "regime", "synthetic from", "test set", "seeds", "mDice", "mIoU", "Dice", "IoU",
              "ΔmDice vs real", "ΔmDice vs real+aug"]
    body = []
    for a in sorted(full, key=lambda a: (a["model"], a["test_set"], a["generator"] != "none", a["regime"])):
        gains = []
        for ref in ("real", "real_augment"):
            b = base.get((a["model"], ref, a["test_set"]))
            gains.append("–" if b is None or (a["regime"] == ref and a["generator"] == "none")
                         else f"{a['mDice'] - b['mDice']:+.3f}")
        body.append([a["model"], a["regime"], a["generator"], a["test_set"], a["seeds"],
                     *[_pm(a[m], a[f"{m}_std"]) for m in METRICS], *gains])
    return header, body


def low_data_table(agg: list[dict]) -> tuple[list[str], list[list]]:
    """One row per (model, N, regime, protocol, synthetic set, test set), with the mDice gain over
    the real-only run of the same model, N and test set."""
    header = ["model", "N real", "regime", "protocol", "synthetic from", "test set", "seeds", "mDice", "mIoU",
              "ΔmDice vs real"]
    base = {(a["model"], a["N"], a["test_set"]): a for a in agg if a["regime"] == "real" and a["generator"] == "none"}
    body = []
    for a in sorted(agg, key=lambda a: (a["model"], a["test_set"], a["N"], a["regime"], a["protocol"])):
        b = base.get((a["model"], a["N"], a["test_set"]))
        gain = "–" if b is None or b is a else f"{a['mDice'] - b['mDice']:+.3f}"
        body.append([a["model"], a["N"], a["regime"], a["protocol"], a["generator"], a["test_set"], a["seeds"],
                     _pm(a["mDice"], a["mDice_std"]), _pm(a["mIoU"], a["mIoU_std"]), gain])
    return header, body


def _set_folder(workdir: pathlib.Path, name: str, folders: dict | None) -> pathlib.Path:
    """Where a synthetic set's pairs are: its generation stage, or a folder made elsewhere."""
    return pathlib.Path((folders or {}).get(name) or workdir / "generated" / name)


def _judge_heldout(rep: dict) -> str:
    """The label-consistency judge's mDice on real frames it did not train on (its first test set):
    the reference a generated set's label mDice is read against."""
    wd = (rep.get("settings") or {}).get("segmenter_workdir")
    path = pathlib.Path(wd) / "results.json" if wd else None
    if path is None or not path.exists():
        return "–"
    test = json.loads(path.read_text()).get("test") or {}
    name, r = next(iter(test.items()), (None, None))
    return "–" if r is None else f"{r['mDice']:.3f} ({name})"


def _painted_area(folder: pathlib.Path) -> str:
    """Mean share of each frame the generator painted: inpainted frames are real outside it, so
    their whole-frame colour error and segFD sit near real by construction (the painted-region
    columns score the painting alone)."""
    fractions = [json.loads(line)["region"]["fraction"] for m in sorted(folder.glob("manifest*.jsonl"))
                 for line in m.read_text().splitlines() if '"region"' in line]
    return "whole frame" if not fractions else f"{np.mean(fractions):.0%} (rest real)"


def is_baseline(regime: str) -> bool:
    """Regimes a synthetic set must beat: real pairs only (copy-paste and its augmented variants
    paste real polyps into real frames)."""
    return regime in REAL_BASELINES or regime.startswith("copy_paste")


def baseline_name(run: dict) -> str | None:
    """The baseline a run is (its regime, or `augmented_copies` for the mixed run on augmented
    copies of the real pairs), None for a candidate or another run."""
    if run["generator"].startswith("augmented_copies"):  # beside mixed, or mixed+aug (like for like)
        from polypjax.train.seg_regimes import AUGMENTED
        return "augmented_copies" + (AUGMENTED if run["regime"].endswith(AUGMENTED) else "")
    return run["regime"] if is_baseline(run["regime"]) else None


def paired_rows(workdir: pathlib.Path, summary: dict) -> list[dict]:
    """Every synthetic candidate (its runs over seeds) against every baseline regime in the runs, on
    every test set: mDice differences paired by model, N, seed and real training pairs, and image by
    image (metrics/paired.py); one dict per (candidate, test set, baseline) with PAIRED_FIELDS."""
    from polypjax.train.seg_eval import per_image_path
    stages = summary.get("stages") or {}

    def train_of(run):  # the real pairs it trained on: a low-data run's subset
        return ((stages.get(run["stage"]) or {}).get("config") or {}).get("data", {}).get("train")

    baselines, candidates = {}, {}
    for run in summary["runs"]:
        name = baseline_name(run)
        if name is not None:
            baselines[(run["model"], run["N"], run["seed"], name, train_of(run))] = run
        elif run["generator"] != "none":
            candidates.setdefault(tuple(run[k] for k in GROUP), {})[run["seed"]] = run
    regimes = sorted({k[3] for k in baselines}, key=lambda r: (r not in REAL_BASELINES, REAL_BASELINES.index(r)
                                                               if r in REAL_BASELINES else 0, r))
    cache: dict[pathlib.Path, dict | None] = {}

    def per_image(run, test_set):
        path = per_image_path(workdir / run["stage"] / "eval", test_set)
        if path not in cache:
            cache[path] = json.loads(path.read_text()) if path.exists() else None
        return cache[path]

    out = []
    for key, by_seed in candidates.items():
        group = dict(zip(GROUP, key))
        first = by_seed[min(by_seed)]
        test_sets = json.loads((workdir / first["stage"] / "results.json").read_text())["test"]
        for test_set in test_sets:
            for regime in regimes:
                pairs = {s: (run, baselines.get((group["model"], group["N"], s, regime, train_of(run))))
                         for s, run in sorted(by_seed.items())}
                pairs = {s: p for s, p in pairs.items() if p[1] is not None}
                if not pairs:
                    continue
                row = {**group, "test_set": test_set, "baseline": regime, "seeds": len(pairs), "note": ""}
                records = {s: (per_image(c, test_set), per_image(b, test_set)) for s, (c, b) in pairs.items()}
                missing = sorted({r["stage"] for s, p in pairs.items() for r, rec in zip(p, records[s]) if rec is None})
                if missing:
                    row["note"] = (f"no per-image scores in {missing[0]}: it ran before they were written; "
                                   "delete that stage folder to rerun it")
                    out.append(row)
                    continue
                try:
                    r = paired.paired_difference({s: c for s, (c, _) in records.items()},
                                                 {s: b for s, (_, b) in records.items()})
                except paired.PairingError as e:
                    row["note"] = f"not comparable: {e}"
                    out.append(row)
                    continue
                row.update(num_images=r["num_images"], num_empty_excluded=r["num_empty_excluded"], mean=r["mean"],
                           std=r["std"], ci_low=r["ci"][0], ci_high=r["ci"][1], verdict=r["verdict"],
                           per_seed=json.dumps(dict(zip(map(str, r["seeds"]), r["per_seed"]))),
                           cell=paired.format_difference(r))
                out.append(row)
    return out


def paired_table(prows: list[dict], n_all: int) -> tuple[list[str], list[list]]:
    """One row per synthetic candidate and test set, one column per baseline regime present."""
    regimes = list(dict.fromkeys(r["baseline"] for r in prows))
    cells: dict[tuple, dict] = {}
    for r in prows:
        cells.setdefault(tuple(r[k] for k in (*GROUP, "test_set")), {})[r["baseline"]] = r
    header = ["synthetic set", "regime", "protocol", "N real", "model", "test set", "seeds",
              "images (empty masks left out)", *[f"ΔmDice vs {b}" for b in regimes]]
    body = []
    for key in sorted(cells, key=lambda k: (k[4] != n_all, k[4], k[2], k[5], k[0], k[1], k[3])):
        row = cells[key]
        seeds = max(r["seeds"] for r in row.values())
        counted = next((r for r in row.values() if "num_images" in r), None)
        images = "–" if counted is None else f"{counted['num_images']} ({counted['num_empty_excluded']})"
        out = []
        for b in regimes:
            r = row.get(b)
            if r is None:
                out.append("–")
            elif r["note"]:
                out.append(f"n/a: {r['note']}")
            else:
                out.append(r["cell"] + (f" ({r['seeds']} seeds)" if r["seeds"] < seeds else ""))
        body.append([_set_of(key[0]), key[1], key[2], "all" if key[4] == n_all else key[4], key[3], key[5], seeds,
                     images, *out])
    return header, body


def generation_table(workdir: pathlib.Path, generators: list[str], folders: dict | None = None
                     ) -> tuple[list[str], list[list], dict]:
    header = ["generator", "pairs", "FID", "KID", "MS-SSIM (real)", "MS-SSIM (generated)",
              "mask area (real / gen)", "W1 area", "W1 components",
              "label mDice (chance)", "judge on held-out real", "painted area", "segFD (real vs real / noise)",
              "colour error", "segFD, painted regions (real vs real / noise)", "colour error, painted regions"]
    body, reports = [], {}
    for g in generators:
        path = workdir / "evaluation" / g / "generation_metrics.json"
        if not path.exists():
            continue
        rep = json.loads(path.read_text())
        reports[g] = rep
        real = rep["real"]
        bounds = rep.get("segmenter_feature_baselines") or {}
        for r in rep["generated"]:
            seg = r.get("segmenter_features") or {}
            lc = r.get("label_consistency") or {}
            kid = r.get("kid")
            ms_r, ms_g = real.get("mask_statistics") or {}, r.get("mask_statistics") or {}
            w1 = r.get("mask_distances") or {}
            region, region_bounds = seg.get("regions"), bounds.get("regions") or {}
            body.append([g, r["num_images"], "n/a" if r.get("fid") is None else f"{r['fid']:.2f}",
                         "n/a" if not kid else _pm(kid["mean"], kid["std"], 4),
                         _num(real["msssim_diversity"]["mean"]), _num(r["msssim_diversity"]["mean"]),
                         f"{_num(ms_r.get('area_fraction'))} / {_num(ms_g.get('area_fraction'))}",
                         _num(w1.get("area_fraction")), _num(w1.get("num_components")),
                         f"{_num(lc.get('mDice'))} ({_num(lc.get('chance_mDice'))})",
                         _judge_heldout(rep), _painted_area(_set_folder(workdir, g, folders)),
                         _seg_fd(seg, bounds), _colour_error(seg),
                         _seg_fd(region, region_bounds) if region else "–", _colour_error(region)])
    return header, body, reports


def _seg_fd(result: dict, bounds: dict) -> str:
    """A set's segFD beside the real-vs-real and noise bounds computed on the same kind of images."""
    return (f"{_num(result.get('fd'))} ({_num((bounds.get('real_vs_real') or {}).get('fd'))} / "
            f"{_num((bounds.get('noise') or {}).get('fd'))})")


def _colour_error(result: dict | None) -> str:
    return _num(max(result["colour"]["mean_abs_error"]), 1) if result else "–"


def _num(v, digits=3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def compute_table(stages: dict) -> tuple[list[str], list[list]]:
    header = ["stage", "task", "wall s", "CPU s", "steps (generate: UNet calls)", "devices", "train GFLOP", "runs"]
    body = []
    for rel, rec in stages.items():
        c = rec.get("compute") or {}
        body.append([rel, rec.get("task"), _num(c.get("wall_s"), 1), _num(c.get("cpu_s"), 1), c.get("steps", "–"),
                     c.get("devices", "–"), "–" if not c.get("train_flops") else f"{c['train_flops'] / 1e9:.1f}",
                     rec.get("runs", 1)])
    return header, body


# --------------------------------------------------------------------------- figures

def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return buf.getvalue()


def figures(workdir: pathlib.Path, summary: dict, agg: list[dict]) -> dict[str, bytes]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = {}
    out.update(_sample_grids(workdir, summary))
    n_all = summary["num_real_train"]
    full = [a for a in agg if a["N"] == n_all]
    tests = sorted({a["test_set"] for a in full})
    if full:
        fig, axes = plt.subplots(1, len(tests), figsize=(5 * len(tests), 3.8), squeeze=False)
        for ax, t in zip(axes[0], tests):
            items = sorted([a for a in full if a["test_set"] == t], key=lambda a: (a["model"], a["generator"] != "none", a["regime"]))
            labels = [f"{a['regime']}" + (f"\n({a['generator']})" if a["generator"] != "none" else "")
                      + (f"\n{a['model']}" if len(summary["config"]["segmentation"]["models"]) > 1 else "") for a in items]
            ax.bar(range(len(items)), [a["mDice"] for a in items], yerr=[a["mDice_std"] for a in items], capsize=4,
                   color=["#888" if a["generator"] == "none" else "#3a7" for a in items])
            ax.set_xticks(range(len(items)), labels, fontsize=8)
            ax.set_title(f"test: {t}")
            ax.set_ylabel("mDice (mean ± std over seeds)")
            ax.set_ylim(0, 1)
        out["dice_bars.png"] = _png(fig)
    low = [a for a in agg if a["protocol"] in ("low_data", "paper", "same_data") or a["N"] != n_all]
    if low:
        fig, axes = plt.subplots(1, len(tests), figsize=(5 * len(tests), 3.8), squeeze=False)
        for ax, t in zip(axes[0], tests):
            curves: dict[tuple, list] = {}
            for a in agg:
                if a["test_set"] == t and (a["regime"] in summary["config"]["segmentation"]["low_data"]["regimes"]):
                    label = a["regime"] if a["generator"] == "none" else \
                        f"{a['regime']} ({a['protocol']}, {_set_of(a['generator'])})"
                    if a["N"] == n_all and a["generator"] != "none":
                        label = f"{a['regime']} (paper, {a['generator']})"
                    curves.setdefault((a["model"], label), []).append(a)
            for (model, label), pts in sorted(curves.items()):
                pts = sorted(pts, key=lambda a: a["N"])
                ax.errorbar([p["N"] for p in pts], [p["mDice"] for p in pts], yerr=[p["mDice_std"] for p in pts],
                            marker="o", capsize=3, label=label if len(summary["config"]["segmentation"]["models"]) == 1
                            else f"{model}: {label}")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("real training pairs N")
            ax.set_ylabel("mDice")
            ax.set_title(f"low-data sweep, test: {t}")
            ax.legend(fontsize=7)
        out["low_data.png"] = _png(fig)
    loss = _loss_curves(workdir, summary)
    if loss is not None:
        out["training_loss.png"] = loss
    if summary.get("plateaus"):
        out["plateau.png"] = _plateau_figure(summary["plateaus"], plt)
    return out


def _set_of(label: str) -> str:
    """The synthetic set a low-data label was made from (`joint-inpaint-N50-paper` -> `joint-inpaint`),
    so one curve joins its points over N."""
    import re
    return re.sub(r"-N\d+(-paper)?$", "", label)


def _plateau_figure(plateaus: list[dict], plt) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for p in plateaus:
        steps, values = zip(*p["curve"]) if p["curve"] else ((), ())
        line, = ax.plot(steps, values, marker=".", label=f"{p['model']}, N={p['N']}")
        ax.axvline(p["steps"], color=line.get_color(), ls="--", lw=1)
    ax.set_xlabel("training steps (real only)")
    ax.set_ylabel("validation mDice")
    ax.set_title("real-only validation curves; dashed: the step count chosen")
    ax.legend(fontsize=7)
    return _png(fig)


def plateau_table(plateaus: list[dict]) -> tuple[list[str], list[list]]:
    header = ["model", "N real", "steps chosen", "validation mDice there", "best (at step)", "at the last step"]
    body = []
    for p in plateaus:
        curve = dict(p["curve"])
        best = max(p["curve"], key=lambda c: c[1])
        last = p["curve"][-1]
        body.append([p["model"], p["N"], p["steps"], _num(curve[p["steps"]]), f"{_num(best[1])} ({best[0]})",
                     f"{_num(last[1])} ({last[0]})"])
    return header, body


def _sample_grids(workdir: pathlib.Path, summary: dict) -> dict[str, bytes]:
    from polypjax.data import catalog, visualize
    from polypjax.data.sources import FolderSource
    import ml_collections
    c = ml_collections.ConfigDict(summary["config"])
    real = catalog.make_source(c.data.train, c.data, default_split="train", seed=c.seed)
    out = {}
    k = 8
    real_pairs = [real[i] for i in range(min(k, len(real)))]
    for g in summary["generators"]:
        folder = _set_folder(workdir, g, summary.get("generated_folders"))
        if not (folder / "generation.json").exists() and g not in (summary.get("generated_folders") or {}):
            continue
        gen = FolderSource(folder)
        left = visualize.pair_grid(real_pairs, size=96)
        right = visualize.pair_grid([gen[i] for i in range(min(k, len(gen)))], size=96)
        h = max(left.shape[0], right.shape[0])
        left, right = (np.pad(a, ((0, h - a.shape[0]), (0, 0), (0, 0)), constant_values=255) for a in (left, right))
        # Left: real pairs, right: generated pairs; each row is frame | mask | overlay.
        gap = np.full((h, 24, 3), 255, np.uint8)
        out[f"samples_{g}.png"] = export.encode_png(np.concatenate([left, gap, right], axis=1))
    return out


def _loss_curves(workdir: pathlib.Path, summary: dict) -> bytes | None:
    import matplotlib.pyplot as plt
    series = {}
    for rel in summary["stages"]:
        path = workdir / rel / "metrics.jsonl"
        if not path.exists() or not (rel.startswith("generators/") or rel.endswith(f"/all/{summary['config']['segmentation']['seeds'][0]}")):
            continue
        steps, losses = [], []
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            value = rec.get("train/loss")
            if value is not None:
                steps.append(rec.get("step"))
                losses.append(value)
        if steps:
            series[rel] = (steps, losses)
    if not series:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for rel, (steps, losses) in series.items():
        ax = axes[0] if rel.startswith("generators/") else axes[1]
        ax.plot(steps, losses, label=rel.split("/", 1)[1], lw=1.2)
    for ax, title in zip(axes, ("generators (diffusion loss)", "segmenters, N=all, first seed (BCE + Dice)")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
        ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize=7)
    return _png(fig)


# --------------------------------------------------------------------------- writers

def _html_table(header, body) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    rows_ = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows_}</tbody></table>"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%;border:1px solid #ddd;margin:.5em 0}pre{background:#f6f6f6;padding:1em;"
        "font-size:11px;overflow:auto;max-height:30em}")


def write(workdir: pathlib.Path, summary: dict) -> dict:
    out = workdir / "report"
    out.mkdir(parents=True, exist_ok=True)
    table = rows(workdir, summary["runs"])
    agg = aggregate(table)
    n_all = summary["num_real_train"]
    sections = []  # (title, text, (header, body) or None, figure names)
    prows = paired_rows(workdir, summary)
    sections.append(("Did the synthetic pairs help? (paired differences in mDice)",
                     "Candidate minus baseline, each candidate run paired with the baseline run of the same "
                     "model, N, seed and real training pairs, image by image: mean ± std over seeds of the "
                     f"per-seed differences, [95 % percentile bootstrap interval over test images "
                     f"({paired.NUM_RESAMPLES} resamples; each image's difference averaged over seeds first)] and "
                     "the verdict: gain or loss when the interval excludes 0, otherwise no significant difference. "
                     "The interval covers the choice of test images; the ± the seed-to-seed spread. Images whose "
                     "ground-truth mask is empty are left out (their count in brackets): a model that predicts "
                     "nothing scores 1 there under the mDice convention, so on sets with such images the "
                     "differences here are over the others and can differ from the Δ columns below. Every cell "
                     "with its per-seed differences: paired.csv.",
                     paired_table(prows, n_all) if prows else None, []))
    gen_header, gen_body, gen_reports = generation_table(workdir, summary["generators"],
                                                         summary.get("generated_folders"))
    seg = segmentation_table(agg, n_all)
    low = low_data_table([a for a in agg if a["N"] != n_all or a["protocol"] != "full"])
    figs = figures(workdir, summary, agg)
    sections.append(("Generation metrics (against the real training set)",
                     "Per generator; sample grids: real pairs left, generated right (frame | mask | overlay). FID/KID need the FID Inception weights. MS-SSIM: lower = more diverse; "
                     "compare with the real set's own. Label mDice: a segmenter trained on real data scored "
                     "against the generated masks (chance: against another pair's mask; a pair with an empty "
                     "mask scores 0), beside what that segmenter scores on held-out real frames. segFD: "
                     "Fréchet distance in that segmenter's pooled encoder features to half the real set, "
                     "beside the other half (real vs real) and colour-matched noise; colour error: max over "
                     "RGB of |mean − real mean|, 0-255 levels. Both on whole frames: right for sets drawn "
                     "from noise, but an inpainted set is real outside its painted area, so there they sit "
                     "near real by construction. The painted-region columns score only the painting: square "
                     "crops around each painted region against the same crops of real frames around their "
                     "polyps (mask box grown by the paper's dilation; frames without a polyp left out), the "
                     "two bounds recomputed on such crops; – for sets without painted regions.",
                     (gen_header, gen_body), [f for f in figs if f.startswith("samples_")]))
    if summary.get("plateaus"):
        sections.append(("Step counts from the real-only validation curve",
                         "One real-only run per model and N, scored on the validation pairs (set aside from "
                         "every training set; the test sets are read once, at the end). The step count at each N "
                         f"is the first evaluated step within {summary['plateaus'][0]['tolerance']:g} mDice of "
                         "the curve's best; mixed runs train longer so they see as many real images "
                         "(exposure-matched), and the baselines beside them as long.",
                         plateau_table(summary["plateaus"]), ["plateau.png"]))
    sections.append((f"Segmentation, all {n_all} real training pairs",
                     "mean ± std over seeds; Δ: mDice gain over the real-only and real + augmentation runs "
                     "of the same model and test set.", seg, ["dice_bars.png"]))
    if low[1]:
        sections.append(("Low-data sweep",
                         "N real pairs (one fixed subset per N), r synthetic per real. Protocol *paper*: the "
                         "generator was trained on the full set; *same_data*: on the same N pairs. Δ: mDice gain over "
                         "real-only at the same N.",
                         low, ["low_data.png"]))
    sections.append(("Compute per stage", "Wall and process CPU time of the last run of each stage (runs > 1: "
                     "it was stopped and resumed, and the earlier runs' time is not counted); train "
                     "GFLOP = XLA cost analysis of one step × steps.", compute_table(summary["stages"]),
                     ["training_loss.png"]))

    review = summary.get("review")
    if review:
        sections.append(("Blinded review page",
                         f"../{review['page']}: {review['n']} shuffled real and {review['generator']} frames "
                         f"for a clinician to rate (open it in a browser; answers are exported as JSON). The key "
                         f"is ../{review['key']}, kept out of the page; score with `python -m polypjax.review "
                         f"score --key {review['key']} --answers ANSWERS.json`.", None, []))

    for name, data in figs.items():
        export.atomic_write_bytes(out / "figures" / name, data)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(table)
    export.atomic_write_text(out / "results.csv", buf.getvalue())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PAIRED_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(prows)
    export.atomic_write_text(out / "paired.csv", buf.getvalue())
    result = {"rows": table, "aggregate": agg, "paired": prows, "generation": gen_reports}
    export.atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")

    config_json = json.dumps(summary["config"], indent=2, default=str)
    md = ["# polypjax pipeline report", ""]
    hp = ["<!doctype html><html><head><meta charset='utf-8'><title>polypjax pipeline report</title>"
          f"<style>{_CSS}</style></head><body><h1>polypjax pipeline report</h1>"]
    for title, text, tab, fig_names in sections:
        md += [f"## {title}", "", text, ""]
        hp.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>")
        if tab is not None:
            md += [_md_table(*tab), ""]
            hp.append(_html_table(*tab))
        for f in fig_names:
            if f in figs:
                md += [f"![{f}](figures/{f})", ""]
                hp.append(f"<p><img alt='{f}' src='data:image/png;base64,{base64.b64encode(figs[f]).decode()}'></p>")
    md += ["## Configuration", "", "```json", config_json, "```", ""]
    hp.append(f"<h2>Configuration</h2><pre>{html.escape(config_json)}</pre></body></html>")
    export.atomic_write_text(out / "report.md", "\n".join(md))
    export.atomic_write_text(out / "report.html", "".join(hp))
    print("\n".join(md[: md.index("## Configuration")]))
    return result


# --------------------------------------------------------------------------- evaluate_generation

REAL_ROW = "real (reference)"


def _rgb(v, digits: int = 1) -> str:
    return "/".join(f"{x:.{digits}f}" for x in v)


def _segmenter_feature_lines(report: dict) -> list[str]:
    b = report.get("segmenter_feature_baselines")
    if not b:
        return []
    lines = ["", "## Segmenter features and colour", "",
             f"Features: {b['features']}. Fréchet distance (FD) and KID to that reference, beside two "
             "baselines that give them a scale: the other half of the real set (real vs real) and Gaussian "
             "noise with the real per-channel colour mean/std. A good generator is near the first, far "
             "from the second. Colour: per-channel RGB mean and std in 0-255 levels over all pixels.", "",
             "| set | images | segmenter FD | segmenter KID (mean ± std) | RGB mean | RGB std | mean error |",
             "|---|---|---|---|---|---|---|"]
    rc = b["real_colour"]
    for name, r in (("real vs real (baseline)", b["real_vs_real"]), ("colour-matched noise (baseline)", b["noise"])):
        lines.append(f"| {name} | {r['num_images']} | {_num(r['fd'], 3)} | {r['kid']['mean']:.4f} ± "
                     f"{r['kid']['std']:.4f} | – | – | – |")
    lines.append(f"| {REAL_ROW} | {report['real']['num_images']} | – | – | {_rgb(rc['mean'])} | {_rgb(rc['std'])} | – |")
    for r in report["generated"]:
        f = r.get("segmenter_features")
        if f:
            c = f["colour"]
            lines.append(f"| {r['name']} | {f.get('num_images', r['num_images'])} | {_num(f['fd'], 3)} | {f['kid']['mean']:.4f} ± "
                         f"{f['kid']['std']:.4f} | {_rgb(c['mean'])} | {_rgb(c['std'])} | {_rgb(c['mean_abs_error'])} |")
    return lines + _region_lines(report)


def _region_lines(report: dict) -> list[str]:
    """The same table on painted regions, for the sets that have them (inpainted sets)."""
    b = (report.get("segmenter_feature_baselines") or {}).get("regions")
    if not b:
        return []
    lines = ["", "### On painted regions", ""]
    if "unavailable" in b:
        return lines + [f"Not measured: {b['unavailable']}."]
    lines += [f"An inpainted frame is real outside its painted region, so the whole-frame values above sit "
              f"near real whatever was painted. Here only the painting is scored: {b['crops']}. The "
              "baselines are recomputed on such crops. Sets without painted regions are left out.", "",
              "| set | crops | segmenter FD | segmenter KID (mean ± std) | RGB mean | RGB std | mean error |",
              "|---|---|---|---|---|---|---|"]
    for name, r in (("real vs real (baseline)", b["real_vs_real"]), ("colour-matched noise (baseline)", b["noise"])):
        lines.append(f"| {name} | {r['num_images']} | {_num(r['fd'], 3)} | {r['kid']['mean']:.4f} ± "
                     f"{r['kid']['std']:.4f} | – | – | – |")
    rc = b["real_colour"]
    lines.append(f"| real polyps (reference) | – | – | – | {_rgb(rc['mean'])} | {_rgb(rc['std'])} | – |")
    for r in report["generated"]:
        f = (r.get("segmenter_features") or {}).get("regions")
        if f:
            c = f["colour"]
            lines.append(f"| {r['name']} | {f['num_images']} | {_num(f['fd'], 3)} | {f['kid']['mean']:.4f} ± "
                         f"{f['kid']['std']:.4f} | {_rgb(c['mean'])} | {_rgb(c['std'])} | {_rgb(c['mean_abs_error'])} |")
    return lines


def generation_markdown(report: dict) -> str:
    """generation_metrics.md of an evaluate_generation report (its generation_metrics.json)."""
    real, s = report["real"], report["settings"]
    size = f"{s['image_size']} px" if s["image_size"] else "native size"
    lines = ["# Generation metrics", "",
             f"Real reference: `{real['name']}` ({real['num_images']} images). Inception input: {size} "
             f"(resized to 299 inside the model). MS-SSIM: {s['msssim_size']} px, up to {s['msssim_pairs']} "
             f"random distinct pairs per set (seed {s['seed']}); lower = more diverse, compare with the "
             "real value.", "",
             "| set | images | FID | KID (mean ± std) | MS-SSIM diversity | label mDice | label mIoU "
             "| label mDice, chance |",
             "|---|---|---|---|---|---|---|---|"]

    def row(name, r, fid_cell, kid_cell):
        lc = r.get("label_consistency") or {}
        return (f"| {name} | {r['num_images']} | {fid_cell} | {kid_cell} | "
                f"{_num(r['msssim_diversity']['mean'], 4)} | {_num(lc.get('mDice'), 4)} | "
                f"{_num(lc.get('mIoU'), 4)} | {_num(lc.get('chance_mDice'), 4)} |")

    lines.append(row(REAL_ROW, real, "–", "–"))
    for r in report["generated"]:
        fid_cell = _num(r["fid"], 2) if r["fid"] is not None else "n/a"
        kid_cell = f"{r['kid']['mean']:.4f} ± {r['kid']['std']:.4f}" if r["kid"] else "n/a"
        lines.append(row(r["name"], r, fid_cell, kid_cell))
    lines += ["", "Label consistency: a segmenter trained on real data, scored against each set's own masks; "
              "chance: the same predictions against the mask of another pair of the set.", ""]
    for key, what in (("fid_unavailable_reason", "FID/KID unavailable"),
                      ("label_consistency_unavailable_reason", "Label consistency not measured")):
        if report.get(key):
            lines.append(f"{what}: {report[key]}.")
    if report.get("kid_unavailable_reason") and not report.get("fid_unavailable_reason"):
        lines.append(f"KID unavailable: {report['kid_unavailable_reason']}.")
    lines += _segmenter_feature_lines(report)
    columns = {"real mean": real["mask_statistics"]}
    for r in report["generated"]:
        columns[f"{r['name']} mean"] = r["mask_statistics"]
        columns[f"{r['name']} W1"] = r["mask_distances"]
    lines += ["", "## Mask statistics", "",
              "Mean per set, and the Wasserstein-1 distance of each generated set's distribution to the "
              "real one (in the statistic's units; 0 = same distribution).", "",
              mask_metrics.markdown_table(columns)]
    return "\n".join(lines)
