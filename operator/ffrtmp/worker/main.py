"""`ffrtmp worker`: the agent of one worker Pod."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os

from ffrtmp import logs
from ffrtmp.egress.proxy import api_server_addresses
from ffrtmp.kube.client import KubeClient
from ffrtmp.kube.config import add_kubeconfig_arguments, load_config
from ffrtmp.worker.config import WorkerConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_kubeconfig_arguments(parser)
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
