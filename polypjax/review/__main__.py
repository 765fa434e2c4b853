"""`python -m polypjax.review make|score`: the blinded review page and its scorer.

make:  --real DIR --synthetic DIR --n 30 --out DIR [--seed S] [--show-masks]
score: --key review_key.json --answers A.json [A2.json ...] [--out scores.json]
"""
import argparse
import json
import pathlib
import sys

from polypjax import faults
from polypjax.data.sources import DataError


def _make(args) -> None:
    from polypjax.review.page import make_review
    review = make_review(args.real, args.synthetic, args.out, n=args.n, seed=args.seed,
                         show_masks=args.show_masks, size=args.size, n_synthetic=args.n_synthetic,
                         title=args.title, force=args.force, progress=True)
    kib = review.page.stat().st_size / 1024
    print(f"page: {review.page} ({review.n_real} real + {review.n_synthetic} synthetic frames at "
          f"{review.size} px, {kib:.0f} KiB)\nkey:  {review.key}  <- keep this away from the raters; "
          "score with `python -m polypjax.review score --key KEY --answers FILE...`")


def _score(args) -> None:
    from polypjax.data.export import atomic_write_text
    from polypjax.review.score import format_markdown, score_review
    result = score_review(args.key, args.answers, allow_missing=args.allow_missing)
    markdown = format_markdown(result)
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.key).with_name("review_scores.json")
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown)
    print(markdown + f"\nwritten: {out}, {out.with_suffix('.md')}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polypjax.review", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make", help="write a blinded review page and its key")
    make.add_argument("--real", required=True, help="folder of real pairs (Kvasir-SEG or CVC-ClinicDB layout)")
    make.add_argument("--synthetic", required=True, help="folder of synthetic pairs (e.g. a polypjax generate output)")
    make.add_argument("--n", type=int, default=30, help="frames on the page (default 30: n//2 real, the rest synthetic)")
    make.add_argument("--n-synthetic", type=int, default=None, help="how many of the n frames are synthetic")
    make.add_argument("--out", required=True, help="output folder for review.html and review_key.json")
    make.add_argument("--seed", type=int, default=0, help="selects and orders the frames")
    make.add_argument("--show-masks", action="store_true", help="overlay each frame's mask outline (toggle with M)")
    make.add_argument("--size", type=int, default=None,
                      help="frame size in px (default: the smallest frame side, at most 384)")
    make.add_argument("--title", default=None, help="page heading")
    make.add_argument("--force", action="store_true", help="overwrite an existing review_key.json")
    score = sub.add_parser("score", help="score exported answers against the key")
    score.add_argument("--key", required=True, help="review_key.json written with the page")
    score.add_argument("--answers", required=True, nargs="+", help="answers JSON file(s), one per rater")
    score.add_argument("--out", default=None, help="JSON output (default: review_scores.json beside the key; "
                                                   "Markdown goes beside it as .md)")
    score.add_argument("--allow-missing", action="store_true", help="score answered frames only")
    args = parser.parse_args(argv)
    try:
        (_make if args.command == "make" else _score)(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # an output folder closed to this user, a full disk: one line (polypjax.faults)
        line = faults.describe(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
