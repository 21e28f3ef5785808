"""kopf registration: start and stop the reconciler (whose own watches feed its store), log in,
and answer the liveness probe (kopf's /healthz). Readiness is /readyz on its own port: kopf's
probes have one endpoint, and a watch that cannot list (RBAC, a missing CRD) must take the
operator out of service without the liveness probe restarting it over and over."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import start_http_server

from ffrtmp import heap
from ffrtmp.controller.leader import CLOCK_SKEW_ENV, LeaderElector
from ffrtmp.controller.metrics import OperatorMetrics
from ffrtmp.controller.reconciler import Reconciler
from ffrtmp.controller.settings import OperatorSettings
from ffrtmp.kube.auth import Credentials
from ffrtmp.kube.client import KubeClient
from ffrtmp.kube.config import KubeConfig

log = logging.getLogger(__name__)
STALE_PASS_SECONDS = 60.0


@kopf.on.login()
async def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """kopf's own credentials: ours, exec plugin included (kopf logs in again when they expire)."""
    config: KubeConfig = memo.kube_config
    credentials: Credentials = memo.credentials
    cred = await credentials.current()
    return kopf.ConnectionInfo(
        server=config.server,
        ca_data=config.ca_data,
        certificate_data=cred.cert_data,
        private_key_data=cred.key_data,
        token=cred.token,
        insecure=config.insecure,
        default_namespace=config.namespace,
        expiration=datetime.fromtimestamp(cred.expires, UTC) if cred.expires else None,
        proxy_url=config.proxy,
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ours: OperatorSettings = memo.settings
    # kopf serves no resource here (controller/watches.py does): it need not watch CRDs and
    # namespaces, nor hold the cluster-wide permissions to.
    settings.scanning.disabled = True
    # Connections for the writes, the Events' own slots and the leader Lease (watches have their own).
    client = KubeClient(
        memo.kube_config,
        max_connections=ours.max_parallel_writes * 2 + 16,
        component="ffrtmp-operator",
        credentials=memo.credentials,
    )
    metrics = OperatorMetrics()
    elector = None
    if memo.leader_election:
        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        skew = float(os.environ.get(CLOCK_SKEW_ENV) or 0.0)
        elector = LeaderElector(
            client, memo.leader_election_namespace, "ffmpeg-rtmp-operator", identity, memo.election_timing,
            wall_clock=(lambda: time.time() + skew) if skew else time.time,
        )  # fmt: skip
        metrics.leading = lambda: elector.is_leader
    reconciler = Reconciler(client, ours, metrics, elector, on_synced=heap.settle)
    memo.client, memo.reconciler, memo.metrics = client, reconciler, metrics
    if ours.metrics_port:
        start_http_server(ours.metrics_port, registry=metrics.registry)
    tasks = [
        asyncio.create_task(reconciler.run(), name="reconcile"),
        asyncio.create_task(metrics.loop_lag.run(), name="loop-lag"),
    ]
    if elector is not None:
        tasks.append(asyncio.create_task(elector.run(), name="leader-election"))
    memo.tasks = tasks
    if ours.ready_port:
        memo.ready_runner = await serve_readiness(reconciler, ours.ready_port)


async def serve_readiness(reconciler: Reconciler, port: int) -> web.AppRunner:
    async def readyz(_: web.Request) -> web.Response:
        reasons = reconciler.not_ready()
        if reasons:
            return web.Response(status=503, text="not ready:\n" + "\n".join(reasons) + "\n")
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for task in memo.get("tasks", []):
        task.cancel()
    await asyncio.gather(*memo.get("tasks", []), return_exceptions=True)
    reconciler: Reconciler | None = memo.get("reconciler")
    if reconciler is not None and reconciler.elector is not None:
        await reconciler.elector.release()
    if "ready_runner" in memo:
        await memo.ready_runner.cleanup()
    if "client" in memo:
        await memo.client.close()


@kopf.on.probe(id="reconcile")
async def reconcile_probe(memo: kopf.Memo, **_: Any) -> float:
    """Seconds since the last pass; the liveness endpoint fails when the loop is stuck."""
    reconciler: Reconciler | None = memo.get("reconciler")
    if reconciler is None or not reconciler.last_pass:
        return 0.0
    age = time.time() - reconciler.last_pass
    if age > STALE_PASS_SECONDS:
        raise kopf.PermanentError(f"reconcile loop stalled for {age:.0f}s")
    return round(age, 3)
