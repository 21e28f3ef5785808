"""kopf registration: thin handlers that feed the reconciler's store and start its loops."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

import kopf
from prometheus_client import start_http_server

from ffrtmp.api.constants import GROUP, JOB_PLURAL, LABEL_COMPONENT, POOL_PLURAL, VERSION, WORKER_COMPONENT
from ffrtmp.controller.leader import LeaderElector
from ffrtmp.controller.metrics import OperatorMetrics
from ffrtmp.controller.reconciler import Reconciler
from ffrtmp.controller.settings import OperatorSettings
from ffrtmp.kube.client import KubeClient
from ffrtmp.kube.config import KubeConfig

log = logging.getLogger(__name__)
WORKERS = {LABEL_COMPONENT: WORKER_COMPONENT}
STALE_PASS_SECONDS = 60.0


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    config: KubeConfig = memo.kube_config
    return kopf.ConnectionInfo(
        server=config.server,
        ca_data=config.ca_data,
        certificate_data=config.cert_data,
        private_key_data=config.key_data,
        token=config.bearer_token(),
        insecure=config.insecure,
        default_namespace=config.namespace,
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ours: OperatorSettings = memo.settings
    # kopf's own bookkeeping stays in annotations under our prefix, never in our status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    # No cap on kopf's per-object workers: a burst of new jobs must reach the store at once.
    settings.batching.worker_limit = None
    client = KubeClient(memo.kube_config)
    metrics = OperatorMetrics()
    elector = None
    if memo.leader_election:
        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        elector = LeaderElector(client, memo.leader_election_namespace, "ffmpeg-rtmp-operator", identity)
    reconciler = Reconciler(client, ours, metrics, elector)
    memo.client, memo.reconciler, memo.metrics = client, reconciler, metrics
    if ours.metrics_port:
        start_http_server(ours.metrics_port, registry=metrics.registry)
    tasks = [asyncio.create_task(reconciler.run(), name="reconcile")]
    if elector is not None:
        tasks.append(asyncio.create_task(elector.run(), name="leader-election"))
    memo.tasks = tasks


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for task in memo.get("tasks", []):
        task.cancel()
    await asyncio.gather(*memo.get("tasks", []), return_exceptions=True)
    reconciler: Reconciler | None = memo.get("reconciler")
    if reconciler is not None and reconciler.elector is not None:
        await reconciler.elector.release()
    if "client" in memo:
        await memo.client.close()


@kopf.on.event(GROUP, VERSION, JOB_PLURAL)
async def transcodejob_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.on_job(event["type"], dict(event["object"]))


@kopf.on.event(GROUP, VERSION, POOL_PLURAL)
async def workerpool_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.on_pool(event["type"], dict(event["object"]))


@kopf.on.event("", "v1", "pods", labels=WORKERS)
async def worker_pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.on_pod(event["type"], dict(event["object"]))


@kopf.on.event("coordination.k8s.io", "v1", "leases", labels=WORKERS)
async def worker_lease_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.on_lease(event["type"], dict(event["object"]))


@kopf.on.probe(id="reconcile")
async def reconcile_probe(memo: kopf.Memo, **_: Any) -> float:
    """Seconds since the last pass; the liveness endpoint fails when the loop is stuck."""
    import time

    reconciler: Reconciler | None = memo.get("reconciler")
    if reconciler is None or not reconciler.last_pass:
        return 0.0
    age = time.time() - reconciler.last_pass
    if age > STALE_PASS_SECONDS:
        raise kopf.PermanentError(f"reconcile loop stalled for {age:.0f}s")
    return round(age, 3)
