"""Builds a polypjax TFDS dataset as ArrayRecord: `python -m polypjax.data.tfds NAME [options]`.

    python -m polypjax.data.tfds kvasir_seg --manual_dir ~/Downloads/kvasir --data_dir ~/tfds
    python -m polypjax.data.tfds cvc_clinicdb --manual_dir ~/Downloads/cvc --data_dir ~/tfds
    python -m polypjax.data.tfds phantom/phantom_a --data_dir ~/tfds

The same as `tfds build NAME --imports polypjax.data.tfds.<module> --file_format array_record`,
which in tensorflow-datasets 4.9.10 cannot start without apache-beam installed.
"""
from __future__ import annotations

import argparse
import sys

from polypjax.data.sources import DataError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m polypjax.data.tfds", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="kvasir_seg, cvc_clinicdb or phantom/<config> "
                                     "(phantom_a, phantom_b, phantom_c, phantom_a_tiny)")
    parser.add_argument("--manual_dir", help="folder with the unpacked download (or its .zip)")
    parser.add_argument("--data_dir", help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    args = parser.parse_args(argv)
    from polypjax.data.tfds import reader
    try:
        builder = reader.prepare(args.name, data_dir=args.data_dir, manual_dir=args.manual_dir)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    splits = ", ".join(f"{k}: {v.num_examples}" for k, v in sorted(builder.info.splits.items()))
    print(f"{args.name} ready in {builder.data_dir} ({splits})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
