"""`ffrtmp worker`: the agent of one worker Pod."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os

from ffrtmp import heap, logs
from ffrtmp.egress import guard
from ffrtmp.egress.proxy import api_server_addresses
from ffrtmp.kube.client import KubeClient
from ffrtmp.kube.config import add_kubeconfig_arguments, load_config
from ffrtmp.worker.config import WorkerConfig

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_kubeconfig_arguments(parser)
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument("--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_format, args.verbose)
    from ffrtmp.worker.agent import Agent

    kube_config = load_config(args.kubeconfig, args.context)  # a bad kubeconfig fails here, first
    config = WorkerConfig.from_env()

    heap.configure()

    async def main() -> int:
        if config.connect_guard == guard.OFF:
            log.warning("%s=off: ffmpeg runs without the connect guard and can connect past the egress proxy "
                        "(development only)", guard.LIBRARY_ENV)  # fmt: skip
        else:
            problem = await guard.check(config.connect_guard)
            if problem is not None:
                log.error("refusing to start: %s; jobs must not run unguarded (%s names the library)",
                          problem, guard.LIBRARY_ENV)  # fmt: skip
                return 1
        # Jobs may never connect to the API server: its addresses join the egress deny list.
        api = await api_server_addresses(kube_config.server, os.environ.get("KUBERNETES_SERVICE_HOST"))
        worker = dataclasses.replace(config, api_server_addresses=api)
        async with KubeClient(kube_config, component="ffrtmp-worker") as client:
            await Agent(client, worker).run()
        return 0

    return asyncio.run(main())
