"""`ffrtmp worker`: the agent of one worker Pod."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os

from ffrtmp import logs
from ffrtmp.egress.proxy import api_server_addresses
from ffrtmp.kube.client import KubeClient
from ffrtmp.kube.config import CONTEXT_ENV, load_config
from ffrtmp.worker.config import WorkerConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig", default=None,
        help="kubeconfig file (default: $KUBECONFIG's files merged, else in-cluster, else ~/.kube/config)",
    )  # fmt: skip
    parser.add_argument(
        "--context", default=None,
        help=f"kubeconfig context to use (default: ${CONTEXT_ENV}, else the current-context)",
    )  # fmt: skip
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument("--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, args.verbose)
    from ffrtmp.worker.agent import Agent

    kube_config = load_config(args.kubeconfig, args.context)  # a bad kubeconfig fails here, first
    config = WorkerConfig.from_env()

    async def main() -> None:
        # Jobs may never connect to the API server: its addresses join the egress deny list.
        api = await api_server_addresses(kube_config.server, os.environ.get("KUBERNETES_SERVICE_HOST"))
        worker = dataclasses.replace(config, api_server_addresses=api)
        async with KubeClient(kube_config, component="ffrtmp-worker") as client:
            await Agent(client, worker).run()

    asyncio.run(main())
    return 0
