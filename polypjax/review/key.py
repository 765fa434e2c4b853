"""The review key (which item is real, which synthetic) and the answers file: formats and readers.

The key never travels with the page: the page holds only opaque item ids, the key maps them to
the truth and to the source files. Both files carry the page id, so answers are scored only
against the key of the page they were given on.
"""
from __future__ import annotations

import json
import pathlib

from polypjax.data.sources import DataError

KEY_FORMAT = "polypjax-review-key"
ANSWERS_FORMAT = "polypjax-review-answers"
VERSION = 1
LABELS = ("real", "synthetic")


def _read_json(path: pathlib.Path, what: str) -> dict:
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} file does not exist")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a JSON {what} file ({e})") from e
    return data


def load_key(path: str | pathlib.Path) -> dict:
    path = pathlib.Path(path)
    key = _read_json(path, "key")
    if not isinstance(key, dict) or key.get("format") != KEY_FORMAT:
        raise DataError(f"{path}: not a review key (expected \"format\": \"{KEY_FORMAT}\"; "
                        "`python -m polypjax.review make` writes review_key.json)")
    items = key.get("items")
    if not isinstance(items, list) or not items or \
            not all(isinstance(i, dict) and i.get("truth") in LABELS and isinstance(i.get("id"), str)
                    for i in items):
        raise DataError(f"{path}: key has no valid items (each needs an \"id\" and a \"truth\" in {LABELS})")
    return key


def load_answers(path: str | pathlib.Path, key: dict, *, allow_missing: bool = False) -> dict:
    """Reads one rater's exported answers, checked against `key`.

    Returns {"rater", "file", "answers": {item id: {"label", "confidence"}}}; raises DataError for
    answers given on another page, ids the key does not know, bad labels or confidences, and (unless
    `allow_missing`) items left unanswered, naming how many and which.
    """
    path = pathlib.Path(path)
    data = _read_json(path, "answers")
    if not isinstance(data, dict) or data.get("format") != ANSWERS_FORMAT:
        raise DataError(f"{path}: not a review answers file (expected \"format\": \"{ANSWERS_FORMAT}\", "
                        "as the page's Export button writes)")
    if data.get("page_id") != key["page_id"]:
        raise DataError(f"{path}: answers are for review page {data.get('page_id')!r}, but the key is for "
                        f"page {key['page_id']!r}; use the key written with that page")
    entries = data.get("answers")
    if not isinstance(entries, list):
        raise DataError(f"{path}: \"answers\" must be a list")
    known = {item["id"] for item in key["items"]}
    answers = {}
    for e in entries:
        item_id = e.get("id") if isinstance(e, dict) else None
        if item_id not in known:
            raise DataError(f"{path}: answer for item {item_id!r}, which the key does not have")
        label, conf = e.get("label"), e.get("confidence")
        if label is None:
            continue  # exported before this item was answered
        if label not in LABELS:
            raise DataError(f"{path}: item {item_id}: label {label!r} is not one of {LABELS}")
        if conf is not None and (not isinstance(conf, int) or isinstance(conf, bool) or not 1 <= conf <= 5):
            raise DataError(f"{path}: item {item_id}: confidence {conf!r} is not an integer 1-5")
        answers[item_id] = {"label": label, "confidence": conf}
    missing = [item["id"] for item in key["items"] if item["id"] not in answers]
    if missing and not allow_missing:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        raise DataError(f"{path}: {len(missing)} of {len(key['items'])} items unanswered ({shown}); "
                        "finish them on the page and export again, or pass --allow-missing")
    if not answers:
        raise DataError(f"{path}: no item is answered")
    rater = str(data.get("rater") or "").strip() or path.stem
    return {"rater": rater, "file": str(path), "answers": answers}
