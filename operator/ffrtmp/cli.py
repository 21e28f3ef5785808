"""The `ffrtmp` command: operator, worker, crds and dev subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _crds(args: argparse.Namespace) -> int:
    from ffrtmp.api.crd import write_crds

    folders = [Path(f) for f in args.output]
    for path in write_crds(*folders):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ffrtmp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    crds = sub.add_parser("crds", help="write the CRD YAML generated from the models")
    crds.add_argument(
        "-o", "--output", action="append", default=None,
        help="folder to write into (repeatable; default: crds/ and charts/ffmpeg-rtmp/crds/)",
    )  # fmt: skip
    crds.set_defaults(func=_crds)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "crds" and args.output is None:
        args.output = ["crds", "charts/ffmpeg-rtmp/crds"]
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
