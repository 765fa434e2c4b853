"""Scores exported review answers against the page's key.

"Synthetic" is the positive class: sensitivity is the share of synthetic frames called synthetic,
specificity the share of real frames called real. The accuracy's exact two-sided binomial test
against 0.5 asks whether a rater does better (or worse) than a coin; a rater who cannot tell real
from synthetic frames is the outcome a good generator hopes for.
"""
from __future__ import annotations

import itertools
import pathlib

from scipy import stats

from polypjax.review.agreement import cohen_kappa, fleiss_kappa
from polypjax.review.key import LABELS, load_answers, load_key


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def rater_scores(truth: dict[str, str], answers: dict[str, dict]) -> dict:
    """Accuracy, sensitivity/specificity for "synthetic", confusion table, binomial test, confidences."""
    ids = [i for i in truth if i in answers]
    confusion = {t: {a: 0 for a in LABELS} for t in LABELS}
    for i in ids:
        confusion[truth[i]][answers[i]["label"]] += 1
    tp, fn = confusion["synthetic"]["synthetic"], confusion["synthetic"]["real"]
    tn, fp = confusion["real"]["real"], confusion["real"]["synthetic"]
    n, correct = len(ids), tp + tn
    test = stats.binomtest(correct, n, 0.5, alternative="two-sided")
    ci = test.proportion_ci(confidence_level=0.95, method="exact")
    conf = lambda pick: _mean([answers[i]["confidence"] for i in ids if pick(i)])  # noqa: E731
    return {
        "n": n, "correct": correct, "accuracy": correct / n,
        "accuracy_ci95": [float(ci.low), float(ci.high)], "p_value": float(test.pvalue),
        "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
        "confusion": confusion,
        "mean_confidence": {
            "truth_real": conf(lambda i: truth[i] == "real"),
            "truth_synthetic": conf(lambda i: truth[i] == "synthetic"),
            "correct": conf(lambda i: answers[i]["label"] == truth[i]),
            "wrong": conf(lambda i: answers[i]["label"] != truth[i]),
        },
    }


def _agreement(raters: list[dict], order: list[str]) -> dict:
    pairwise = []
    for a, b in itertools.combinations(range(len(raters)), 2):
        common = [i for i in order if i in raters[a]["answers"] and i in raters[b]["answers"]]
        la = [raters[a]["answers"][i]["label"] for i in common]
        lb = [raters[b]["answers"][i]["label"] for i in common]
        pairwise.append({"a": raters[a]["rater"], "b": raters[b]["rater"], "n": len(common),
                         "observed_agreement": _ratio(sum(x == y for x, y in zip(la, lb)), len(common)),
                         "cohen_kappa": cohen_kappa(la, lb) if common else None})
    result = {"pairwise": pairwise}
    if len(raters) > 2:
        common = [i for i in order if all(i in r["answers"] for r in raters)]
        result["fleiss_kappa"] = fleiss_kappa([[r["answers"][i]["label"] for r in raters] for i in common]) \
            if common else None
        result["fleiss_n"] = len(common)
    return result


def _unique_names(raters: list[dict]) -> None:
    # Two files with the same rater name (or none) must still be told apart in the tables.
    names = [r["rater"] for r in raters]
    for r in raters:
        if names.count(r["rater"]) > 1:
            r["rater"] = f"{r['rater']} ({pathlib.Path(r['file']).name})"


def score_review(key_path, answer_paths, *, allow_missing: bool = False) -> dict:
    key = load_key(key_path)
    if not answer_paths:
        raise ValueError("need at least one answers file")
    raters = [load_answers(p, key, allow_missing=allow_missing) for p in answer_paths]
    _unique_names(raters)
    order = [item["id"] for item in key["items"]]
    truth = {item["id"]: item["truth"] for item in key["items"]}
    result = {
        "key": str(key_path), "page_id": key["page_id"], "n_items": len(order),
        "n_real": sum(t == "real" for t in truth.values()),
        "n_synthetic": sum(t == "synthetic" for t in truth.values()),
        "raters": [{"rater": r["rater"], "file": r["file"], **rater_scores(truth, r["answers"])}
                   for r in raters],
    }
    if len(raters) > 1:
        result["agreement"] = _agreement(raters, order)
    return result


def _fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _p(x: float) -> str:
    return f"{x:.2g}" if x < 0.001 else f"{x:.3f}"


def format_markdown(result: dict) -> str:
    lines = [f"# Real-vs-synthetic review: {result['n_items']} frames "
             f"({result['n_real']} real, {result['n_synthetic']} synthetic)", "",
             f"Key `{result['key']}`, page `{result['page_id']}`. Positive class: synthetic. "
             "p: exact two-sided binomial test of the accuracy against 0.5 (chance).", "",
             "| rater | n | correct | accuracy (95% CI) | p | sensitivity | specificity | "
             "mean conf. real / synthetic | mean conf. correct / wrong |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["raters"]:
        c = r["mean_confidence"]
        lo, hi = r["accuracy_ci95"]
        lines.append(f"| {r['rater']} | {r['n']} | {r['correct']} | {_fmt(r['accuracy'])} ({_fmt(lo)}-{_fmt(hi)}) | "
                     f"{_p(r['p_value'])} | {_fmt(r['sensitivity'])} | {_fmt(r['specificity'])} | "
                     f"{_fmt(c['truth_real'], 2)} / {_fmt(c['truth_synthetic'], 2)} | "
                     f"{_fmt(c['correct'], 2)} / {_fmt(c['wrong'], 2)} |")
    for r in result["raters"]:
        t = r["confusion"]
        lines += ["", f"Confusion, {r['rater']} (rows: truth, columns: answer):", "",
                  "| | answered real | answered synthetic |", "|---|---|---|",
                  f"| real | {t['real']['real']} | {t['real']['synthetic']} |",
                  f"| synthetic | {t['synthetic']['real']} | {t['synthetic']['synthetic']} |"]
    if "agreement" in result:
        ag = result["agreement"]
        lines += ["", "Agreement between raters (real/synthetic labels):", "",
                  "| raters | n | observed agreement | Cohen's kappa |", "|---|---|---|---|"]
        for p in ag["pairwise"]:
            lines.append(f"| {p['a']} vs {p['b']} | {p['n']} | {_fmt(p['observed_agreement'])} | "
                         f"{_fmt(p['cohen_kappa'])} |")
        if "fleiss_kappa" in ag:
            lines += ["", f"Fleiss' kappa, all {len(result['raters'])} raters over {ag['fleiss_n']} "
                          f"frames: {_fmt(ag['fleiss_kappa'])}"]
    return "\n".join(lines) + "\n"
