"""`ffrtmp worker`: the agent of one worker Pod."""

from __future__ import annotations

import argparse
import asyncio

from ffrtmp import logs
from ffrtmp.kube.client import KubeClient
from ffrtmp.kube.config import load_config
from ffrtmp.worker.config import WorkerConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig (default: in-cluster, $KUBECONFIG)")
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument("--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, args.verbose)
    from ffrtmp.worker.agent import Agent

    config = WorkerConfig.from_env()

    async def main() -> None:
        async with KubeClient(load_config(args.kubeconfig), component="ffrtmp-worker") as client:
            await Agent(client, config).run()

    asyncio.run(main())
    return 0
