"""`ffrtmp worker`: the agent of one worker Pod."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os

from ffrtmp import logs
from ffrtmp.egress.proxy import api_server_addresses
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
    kube = load_config(args.kubeconfig)

    async def main() -> None:
        api = await api_server_addresses(kube.server, os.environ.get("KUBERNETES_SERVICE_HOST"))
        worker = dataclasses.replace(config, api_server_addresses=api)
        async with KubeClient(kube, component="ffrtmp-worker") as client:
            await Agent(client, worker).run()

    asyncio.run(main())
    return 0
