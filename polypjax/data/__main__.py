"""`python -m polypjax.data DIR [DIR ...] [--json]`: inspect folders of image/mask pairs.

Exit status 1 when any folder has an error (warnings alone exit 0).
"""
import argparse
import json
import sys

from polypjax import faults
from polypjax.data.inspect import format_report, inspect_folder
from polypjax.data.sources import parse_scaling


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polypjax.data", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="dataset folder(s) (Kvasir-SEG or CVC-ClinicDB layout)")
    parser.add_argument("--json", action="store_true", help="print one JSON report per folder")
    parser.add_argument("--image_scaling", default="full",
                        help="how integer images of more than 8 bits map to 0-255: full, declared or "
                             "N-bit (e.g. 12-bit), as config.data.image_scaling")
    args = parser.parse_args(argv)
    try:
        parse_scaling(args.image_scaling)
    except ValueError as e:
        parser.error(f"--image_scaling: {e}")
    try:
        reports = [inspect_folder(f, image_scaling=args.image_scaling) for f in args.folders]
    except OSError as e:  # a fault of the machine, not of the data: one line (polypjax.faults)
        line = faults.describe(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
    else:
        print("\n".join(format_report(r) for r in reports))
    return 1 if any(r["errors"] for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
