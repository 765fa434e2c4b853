"""Blinded review page and scorer: blinding, errors, hand-computed scores, and the page in Chromium."""
import json
import time
import math
import pathlib
import re

import pytest
from scipy import stats

from polypjax.data.export import write_source
from polypjax.data.phantom import PhantomSource
from polypjax.data.sources import DataError
from polypjax.review import format_markdown, make_review, score_review
from polypjax.review.__main__ import main as review_main
from polypjax.review.agreement import cohen_kappa, fleiss_kappa


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("review_data")
    write_source(PhantomSource("phantom-a", 8, size=32), root / "real", progress=False)
    write_source(PhantomSource("phantom-b", 8, size=32, seed=5), root / "synthetic", progress=False)
    return root / "real", root / "synthetic"


def _page_data(html: str) -> dict:
    blob = re.search(r'<script type="application/json" id="review-data">(.*?)</script>', html, re.S).group(1)
    return json.loads(blob)


def test_page_is_blind_and_self_contained(folders, tmp_path):
    real, synthetic = folders
    review = make_review(real, synthetic, tmp_path / "a", n=7, seed=1, show_masks=True)
    key = json.loads(review.key.read_text())
    html = review.page.read_text()
    data = _page_data(html)
    assert (review.n_real, review.n_synthetic) == (3, 4)
    assert [i["truth"] for i in key["items"]].count("real") == 3
    assert [i["id"] for i in data["items"]] == [i["id"] for i in key["items"]]
    assert data["page_id"] == key["page_id"] and len(set(i["id"] for i in data["items"])) == 7
    # Nothing in the page names a file, a folder or the truth.
    for item in key["items"]:
        assert pathlib.Path(item["image"]).stem not in html
    for leak in ("phantom", str(real), str(synthetic), "truth", ".png"):
        assert leak not in html, leak
    assert all(set(i) == {"id", "src", "outline"} for i in data["items"])
    assert not re.search(r'(src|href)="(https?:|//)', html)
    assert all(i["src"].startswith("data:image/jpeg;base64,") and i["outline"].startswith("data:image/png;base64,")
               for i in data["items"])
    # The seed fixes selection and order; the ids are new for every page.
    again = make_review(real, synthetic, tmp_path / "b", n=7, seed=1)
    key2 = json.loads(again.key.read_text())
    assert [(i["truth"], i["image"]) for i in key2["items"]] == [(i["truth"], i["image"]) for i in key["items"]]
    assert key2["page_id"] != key["page_id"]
    assert _page_data(again.page.read_text())["items"][0]["outline"] is None


def test_make_errors(folders, tmp_path, capsys):
    real, synthetic = folders
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(DataError, match="empty dataset"):
        make_review(tmp_path / "empty", synthetic, tmp_path / "o1", n=4)
    with pytest.raises(DataError, match=r"n=20 needs 10 real pairs but the folder has only 8"):
        make_review(real, synthetic, tmp_path / "o2", n=20)
    make_review(real, synthetic, tmp_path / "o3", n=4)
    with pytest.raises(DataError, match="review key already exists"):
        make_review(real, synthetic, tmp_path / "o3", n=4)
    assert review_main(["make", "--real", str(real), "--synthetic", str(synthetic), "--n", "40",
                        "--out", str(tmp_path / "o4")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "n=40" in err
    assert not (tmp_path / "o4" / "review_key.json").exists()


TRUTH = ["real"] * 5 + ["synthetic"] * 5
R, S = "real", "synthetic"
RATER_A = [R, R, R, S, S, S, S, S, S, R]
RATER_B = [R, R, S, S, R, S, S, R, R, R]
RATER_C = list(TRUTH)
CONF_A = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5]


def _write_key(path, ids, page_id="page-1"):
    items = [{"id": i, "truth": t, "image": f"/x/{i}.png", "mask": f"/x/m{i}.png"} for i, t in zip(ids, TRUTH)]
    path.write_text(json.dumps({"format": "polypjax-review-key", "version": 1, "page_id": page_id, "items": items}))
    return path


def _write_answers(path, ids, labels, rater, confs=None, page_id="page-1"):
    confs = confs or [3] * len(ids)
    path.write_text(json.dumps({"format": "polypjax-review-answers", "version": 1, "page_id": page_id,
                                "rater": rater, "answers": [{"id": i, "label": l, "confidence": c}
                                                            for i, l, c in zip(ids, labels, confs)]}))
    return path


def test_score_hand_computed(tmp_path):
    ids = [f"id{k}" for k in range(10)]
    key = _write_key(tmp_path / "key.json", ids)
    files = [_write_answers(tmp_path / "a.json", ids, RATER_A, "A", CONF_A),
             _write_answers(tmp_path / "b.json", ids, RATER_B, "B"),
             _write_answers(tmp_path / "c.json", ids, RATER_C, "C")]
    result = score_review(key, files)
    a, b, c = result["raters"]
    # A: 3 of 5 real called real, 4 of 5 synthetic called synthetic.
    assert a["confusion"] == {"real": {"real": 3, "synthetic": 2}, "synthetic": {"real": 1, "synthetic": 4}}
    assert (a["correct"], a["accuracy"], a["sensitivity"], a["specificity"]) == (7, 0.7, 0.8, 0.6)
    # Two-sided exact binomial p for 7 of 10: 2 * (C(10,7)+C(10,8)+C(10,9)+C(10,10)) / 2^10.
    assert a["p_value"] == pytest.approx(2 * (120 + 45 + 10 + 1) / 1024)
    assert a["accuracy_ci95"] == pytest.approx([stats.beta.ppf(0.025, 7, 4), stats.beta.ppf(0.975, 8, 3)])
    assert a["mean_confidence"] == pytest.approx({"truth_real": 3.0, "truth_synthetic": 3.0,
                                                  "correct": 16 / 7, "wrong": 14 / 3})
    assert (b["correct"], b["sensitivity"], b["specificity"], b["p_value"]) == (5, 0.4, 0.6, pytest.approx(1.0))
    assert (c["accuracy"], c["p_value"]) == (1.0, pytest.approx(2 / 1024))
    # Cohen's kappa by hand: A vs B agree on 6 of 10; p_e = 0.6*0.4 + 0.4*0.6 = 0.48.
    pairs = {(p["a"], p["b"]): p for p in result["agreement"]["pairwise"]}
    assert pairs["A", "B"]["observed_agreement"] == pytest.approx(0.6)
    assert pairs["A", "B"]["cohen_kappa"] == pytest.approx(0.12 / 0.52)
    assert pairs["A", "C"]["cohen_kappa"] == pytest.approx((0.7 - 0.5) / 0.5)
    assert pairs["B", "C"]["cohen_kappa"] == pytest.approx(0.0)
    # Fleiss: 4 unanimous items (P_i = 1), 6 split 2:1 (P_i = 1/3) -> P = 0.6; p_e = 0.5^2 + 0.5^2.
    assert result["agreement"]["fleiss_kappa"] == pytest.approx((0.6 - 0.5) / 0.5)
    md = format_markdown(result)
    assert "| A | 10 | 7 | 0.700 (0.348-0.933) | 0.344 | 0.800 | 0.600 |" in md
    assert "| A vs B | 10 | 0.600 | 0.231 |" in md and "Fleiss' kappa, all 3 raters over 10 frames: 0.200" in md


def test_kappa_against_sklearn_when_present():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn not installed; kappa checked by hand above")
    assert cohen_kappa(RATER_A, RATER_B) == pytest.approx(metrics.cohen_kappa_score(RATER_A, RATER_B))


def test_kappa_undefined_and_fleiss_two_raters():
    assert cohen_kappa([R, R, R], [R, R, R]) is None  # chance agreement is 1
    # Fleiss with two raters, hand-computed: 6 of 10 items agree -> P = 0.6; pooled p_S = 0.5.
    assert fleiss_kappa([[x, y] for x, y in zip(RATER_A, RATER_B)]) == pytest.approx((0.6 - 0.5) / 0.5)


def test_score_errors(tmp_path, capsys):
    ids = [f"id{k}" for k in range(10)]
    key = _write_key(tmp_path / "key.json", ids)
    other = _write_answers(tmp_path / "other.json", ids, RATER_A, "A", page_id="page-2")
    with pytest.raises(DataError, match=r"other.json: answers are for review page 'page-2', but the key is for page 'page-1'"):
        score_review(key, [other])
    partial = _write_answers(tmp_path / "partial.json", ids, RATER_A[:8] + [None, None], "P")
    with pytest.raises(DataError, match=r"partial.json: 2 of 10 items unanswered \(id8, id9\)"):
        score_review(key, [partial])
    assert score_review(key, [partial], allow_missing=True)["raters"][0]["n"] == 8
    unknown = _write_answers(tmp_path / "unknown.json", ids[:9] + ["zzz"], RATER_A, "U")
    with pytest.raises(DataError, match="item 'zzz', which the key does not have"):
        score_review(key, [unknown])
    bad = _write_answers(tmp_path / "bad.json", ids, RATER_A[:9] + ["maybe"], "B")
    with pytest.raises(DataError, match="label 'maybe'"):
        score_review(key, [bad])
    (tmp_path / "garbage.json").write_text("{not json")
    with pytest.raises(DataError, match="garbage.json: not a JSON answers file"):
        score_review(key, [tmp_path / "garbage.json"])
    with pytest.raises(DataError, match="other.json: not a review key"):
        score_review(other, [partial])
    assert review_main(["score", "--key", str(key), "--answers", str(partial)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    good = _write_answers(tmp_path / "good.json", ids, RATER_A, "A")
    assert review_main(["score", "--key", str(key), "--answers", str(good), "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["raters"][0]["correct"] == 7
    assert "| A | 10 | 7 |" in (tmp_path / "s.md").read_text() and "| A | 10 | 7 |" in capsys.readouterr().out


def test_page_in_headless_chromium(folders, tmp_path):
    """Loads the page, types a rater name, answers every frame by keyboard, exports, reloads, scores."""
    from chromium_cdp import Browser, find_chromium
    executable = find_chromium()
    if executable is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it when it can)")
    real, synthetic = folders
    review = make_review(real, synthetic, tmp_path / "page", n=6, seed=2, show_masks=True)
    truth = [i["truth"] for i in json.loads(review.key.read_text())["items"]]
    # Frames 0 and 1 are answered wrongly, the rest rightly; confidence cycles 1..5.
    flip = {"real": "synthetic", "synthetic": "real"}
    labels = [flip[t] if k < 2 else t for k, t in enumerate(truth)]
    confs = [k % 5 + 1 for k in range(len(truth))]
    downloads = tmp_path / "downloads"
    browser = Browser(executable, str(tmp_path / "profile"))
    try:
        page = browser.open_page()
        browser.call("Page.enable", page)
        browser.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads), eventsEnabled=True)
        browser.call("Page.navigate", page, url=review.page.resolve().as_uri())
        browser.wait_event("Page.loadEventFired")
        text = lambda element_id: browser.evaluate(page, f"document.getElementById('{element_id}').textContent")  # noqa: E731
        assert text("progress") == f"0 of {len(truth)} answered"
        browser.evaluate(page, "document.getElementById('rater').focus()")
        browser.call("Input.insertText", page, text="Dr Test")
        browser.press(page, "Enter")  # leaves the name field, so the next keys answer frames
        for k, (label, conf) in enumerate(zip(labels, confs)):
            assert text("counter") == f"Frame {k + 1} of {len(truth)}"
            browser.press(page, label[0])
            browser.press(page, str(conf))  # a completed frame moves on to the next
        assert text("progress").startswith(f"{len(truth)} of {len(truth)} answered")
        browser.press(page, "ArrowLeft")
        assert text("counter") == f"Frame {len(truth) - 1} of {len(truth)}"
        browser.press(page, "g")
        assert browser.evaluate(page, "[...document.querySelectorAll('.tile .badge')].map(b => b.textContent)") == \
            [f"{lab[0].upper()} {c}" for lab, c in zip(labels, confs)]
        browser.press(page, "g")

        browser.evaluate(page, "document.getElementById('export').click()", userGesture=True)
        done = browser.wait_event("Browser.downloadProgress", lambda p: p["state"] in ("completed", "canceled"))
        assert done["state"] == "completed"
        exported = pathlib.Path(done["filePath"])
        answers = json.loads(exported.read_text())
        assert answers["rater"] == "Dr Test" and answers["page_id"] == review.page_id

        browser.call("Page.reload", page)
        browser.wait_event("Page.loadEventFired")
        # A load event of the first navigation may still be queued: wait for the reloaded page itself.
        deadline = time.monotonic() + 20
        while not text("progress").startswith(f"{len(truth)} of {len(truth)} answered") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert text("progress").startswith(f"{len(truth)} of {len(truth)} answered")
        assert browser.evaluate(page, "document.getElementById('rater').value") == "Dr Test"
        stored = browser.evaluate(page, f"JSON.parse(localStorage.getItem('polypjax-review/{review.page_id}'))")
        assert [stored["answers"][a["id"]]["label"] for a in answers["answers"]] == labels

        shot = browser.call("Page.captureScreenshot", page, format="png")["data"]
        assert shot.startswith("iVBORw0KGgo")  # base64 of the PNG signature
    finally:
        browser.close()

    result = score_review(review.key, [exported])["raters"][0]
    n_syn = truth.count("synthetic")
    wrong_syn = sum(t == "synthetic" for t in truth[:2])
    assert result["rater"] == "Dr Test"
    assert (result["n"], result["correct"]) == (len(truth), len(truth) - 2)
    assert result["confusion"]["synthetic"]["real"] == wrong_syn
    assert result["sensitivity"] == pytest.approx((n_syn - wrong_syn) / n_syn)
    # Two-sided exact binomial p at 0.5, by counting: twice the upper tail from the number correct.
    n, k = len(truth), len(truth) - 2
    assert result["p_value"] == pytest.approx(min(1.0, 2 * sum(math.comb(n, j) for j in range(k, n + 1)) / 2**n))
