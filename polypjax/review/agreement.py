"""Chance-corrected agreement between raters: Cohen's kappa (two raters) and Fleiss' kappa (any number).

Both return None where kappa is undefined: when chance agreement is already 1 (every rating in
one category), 0/0 says nothing about the raters.
"""
from __future__ import annotations

from typing import Sequence


def cohen_kappa(a: Sequence, b: Sequence) -> float | None:
    """(p_o - p_e) / (1 - p_e) with p_e from each rater's own marginals (Cohen 1960)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long, non-empty rating lists, got {len(a)} and {len(b)}")
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    categories = set(a) | set(b)
    expected = sum((list(a).count(c) / n) * (list(b).count(c) / n) for c in categories)
    return None if expected >= 1.0 else (observed - expected) / (1.0 - expected)


def fleiss_kappa(ratings: Sequence[Sequence]) -> float | None:
    """Fleiss (1971) for `ratings[item][rater]`, every item rated by the same number (>= 2) of raters."""
    if not ratings:
        raise ValueError("need at least one rated item")
    m = len(ratings[0])
    if m < 2 or any(len(r) != m for r in ratings):
        raise ValueError("every item needs the same number (>= 2) of ratings")
    categories = sorted({c for r in ratings for c in r}, key=str)
    counts = [[list(r).count(c) for c in categories] for r in ratings]
    n_items = len(ratings)
    p_bar = sum((sum(k * k for k in row) - m) / (m * (m - 1)) for row in counts) / n_items
    p_cat = [sum(row[j] for row in counts) / (n_items * m) for j in range(len(categories))]
    p_e = sum(p * p for p in p_cat)
    return None if p_e >= 1.0 else (p_bar - p_e) / (1.0 - p_e)
