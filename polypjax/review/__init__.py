"""Blinded real-vs-synthetic review: a self-contained HTML page for clinicians, and its scorer.

`python -m polypjax.review make ...` writes the page and its key; `python -m polypjax.review
score ...` scores the answers the page exports. From Python: `make_review` and `score_review`.
"""
from polypjax.review.page import make_review
from polypjax.review.score import format_markdown, score_review

__all__ = ["make_review", "score_review", "format_markdown"]
