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


def _demo(args: argparse.Namespace) -> int:
    from ffrtmp.dev.demo import Demo

    return Demo(args.dir, stop_at_end=args.stop).run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ffrtmp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    crds = sub.add_parser("crds", help="write the CRD YAML generated from the models")
    crds.add_argument(
        "-o", "--output", action="append", default=None,
        help="folder to write into (repeatable; default: crds/ and charts/ffmpeg-rtmp/crds/)",
    )  # fmt: skip
    crds.set_defaults(func=_crds)

    import ffrtmp.controller.main as operator_main

    op = sub.add_parser("operator", help="run the operator (kopf)")
    operator_main.add_arguments(op)
    op.set_defaults(func=operator_main.run)

    import ffrtmp.worker.main as worker_main

    worker = sub.add_parser("worker", help="run a worker agent (inside a worker Pod, or standing in for one)")
    worker_main.add_arguments(worker)
    worker.set_defaults(func=worker_main.run)

    import ffrtmp.dev.main as dev_main

    dev = sub.add_parser("dev", help="local control plane and stand-in workers for tests and the demo")
    dev_main.add_arguments(dev)

    demo = sub.add_parser("demo", help="run the whole system locally: cluster, chart, operator, workers, two jobs")
    demo.add_argument("--dir", type=Path, default=Path(".demo"), help="where the cluster, media and outputs go")
    demo.add_argument("--stop", action="store_true", help="stop the control plane at the end")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "crds" and args.output is None:
        args.output = ["crds", "charts/ffmpeg-rtmp/crds"]
    from ffrtmp.kube.auth import CredentialError
    from ffrtmp.kube.config import KubeConfigError

    try:
        code: int = args.func(args)
    except (KubeConfigError, CredentialError) as e:
        print(f"ffrtmp {args.command}: {e}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
