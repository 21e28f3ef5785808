"""Faults reproduced in-process, where timing would make a whole-farm run flaky: a connection the
API server drops mid-request, a stale attempt publishing after its job moved on, a watch that re-lists
after 410 Gone, and an API outage longer than a worker Lease. The real operator and worker classes
run; only the fault is staged.

The first four failed against the code before commit d8d8797 (checked by running this file with the
package of d8d8797^ first on PYTHONPATH), the last one before commit 2925288; they stay as regression
tests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from chaoslib import copy_clip, sim_env

from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.conditions import now_iso
from ffrtmp.controller.leader import LeaderElector
from ffrtmp.controller.metrics import OperatorMetrics
from ffrtmp.controller.reconciler import Reconciler
from ffrtmp.controller.settings import OperatorSettings
from ffrtmp.kube.client import ApiError, KubeClient, resource_path
from ffrtmp.kube.config import KubeConfig, load_config
from ffrtmp.worker.agent import Agent
from ffrtmp.worker.attempt import Attempt
from ffrtmp.worker.config import WorkerConfig
from ffrtmp.worker.fence import FencedStatus
from ffrtmp.worker.metrics import WorkerMetrics
from helpers import TestCluster

pytestmark = pytest.mark.chaos
Obj = dict[str, Any]


async def _hanging_up_server() -> tuple[asyncio.Server, str]:
    """An 'API server' that reads each request and closes the connection without an answer, as a
    restarting or overloaded kube-apiserver (or a load balancer in front of it) can."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _survives(coro: Any, seconds: float = 1.5) -> BaseException | None:
    """Run a forever-loop for a while; the exception it died of, or None if it is still going."""
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(seconds)
    if task.done():
        return task.exception() or RuntimeError("returned")
    task.cancel()
    return None


async def test_leader_election_survives_a_dropped_connection() -> None:
    """A connection closed mid-request raises aiohttp.ServerDisconnectedError, which is no OSError: the
    election loop must treat it as "not renewed this round", not die (then the replica would stop leading
    for good while /healthz stays OK)."""
    server, url = await _hanging_up_server()
    async with server, KubeClient(KubeConfig(server=url)) as client:
        elector = LeaderElector(client, "ns", "ffmpeg-rtmp-operator", "me", renew_seconds=0.2)
        died = await _survives(elector.run())
    assert died is None, f"leader election stopped: {died!r}"


async def test_worker_lease_loop_survives_a_dropped_connection() -> None:
    """The same for a worker's Lease loop: if it died, the worker's Lease would expire, its jobs be
    requeued, and it would never get work again while its process and /healthz look fine."""
    server, url = await _hanging_up_server()
    async with server, KubeClient(KubeConfig(server=url)) as client:
        agent = Agent(client, WorkerConfig(pod_name="w", namespace="ns", pool="p", renew_seconds=0.2))
        died = await _survives(agent._lease_loop())
    assert died is None, f"the Lease loop stopped: {died!r}"


@pytest.fixture
async def admin(cluster: TestCluster) -> AsyncIterator[KubeClient]:
    async with KubeClient(load_config(str(cluster.kubeconfig))) as client:
        yield client


async def test_stale_attempt_publishes_nothing(
    cluster: TestCluster, namespace: str, admin: KubeClient, tmp_path: Path, clips: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A partitioned worker's attempt, reassigned after its last progress write, must not publish: no
    files moved into the job folder, the current attempt's work in progress left alone. (It used to move
    its files first and learn it was superseded only from the status write that followed.)"""
    media, output = tmp_path / "media", tmp_path / "output"
    clip = copy_clip(clips["one"], media)
    # ffmpeg ends its progress, then takes 3 s for its trailer (a large faststart output does).
    tail_mark = tmp_path / "progress-ended"
    for k, v in sim_env(tmp_path / "simbin", clip, steps=2, step=0.1, tail=3, tail_mark=tail_mark).items():
        monkeypatch.setenv(k, v)
    spec = {"input": {"uri": str(clip)}, "outputs": [{"name": "out", "video": {"codec": "h264", "crf": 30}}]}
    doc = {"apiVersion": "ffmpeg-rtmp.io/v1alpha1", "kind": "TranscodeJob", "metadata": {"name": "race"}, "spec": spec}
    cluster.apply(doc, namespace)
    path = resource_path("ffmpeg-rtmp.io", "v1alpha1", "transcodejobs", namespace, "race")
    obj = await admin.merge_patch(path + "/status", {"status": {"phase": "Scheduled", "worker": "w-a", "attempt": 1}})
    config = WorkerConfig(
        pod_name="w-a", namespace=namespace, pool="p", media_roots=(str(media),), output_root=str(output),
        scratch_dir=str(tmp_path / "scratch"), progress_interval=0.1, kill_grace_seconds=2,
    )  # fmt: skip
    attempt = Attempt(
        FencedStatus(admin, obj, "w-a", 1), TranscodeJobSpec.model_validate(obj["spec"]), config, WorkerMetrics(),
        namespace, "race", 1,
    )  # fmt: skip
    running = asyncio.ensure_future(attempt.run())

    deadline = time.monotonic() + 20
    while not tail_mark.exists():
        assert time.monotonic() < deadline and not running.done(), "attempt 1's ffmpeg never ended its progress"
        await asyncio.sleep(0.05)
    phase = ((await admin.get(path)).get("status") or {}).get("phase")
    assert phase in ("Scheduled", "Running"), f"attempt 1 ended before its ffmpeg wrote the trailer: {phase}"
    # The operator requeues (w-a's Lease expired) and w-b starts attempt 2 while w-a writes its trailer.
    await admin.merge_patch(path + "/status", {"status": {"worker": "w-b", "attempt": 2, "phase": "Running"}})
    job_dir = output / namespace / "race"
    successor = job_dir / ".attempt-2-w-b" / "out.mp4"
    successor.parent.mkdir(parents=True)
    successor.write_bytes(b"attempt 2 of w-b, in progress")
    outcome = await running
    assert outcome == "Superseded"
    assert successor.exists(), "the stale attempt deleted the current attempt's work in progress"
    assert not (job_dir / "out.mp4").exists(), "the stale attempt published its output into the job folder"


class _FakeApi:
    """Just enough of KubeClient for the reconciler: what the API server holds right now, the writes it
    was sent, an outage switch (every call then fails as a refused connection does) and a way to end a
    kind's watches with 410 Gone. Its watches send no events."""

    def __init__(self, objects: dict[str, list[Obj]]) -> None:
        self.objects = objects
        self.revision = 100
        self.down = False
        self.expire: set[str] = set()
        self.writes: list[tuple[float, str, Obj]] = []

    def _check(self) -> None:
        if self.down:
            raise ConnectionRefusedError(111, "Connect call failed")

    async def list_all(self, path: str, params: Any = None) -> tuple[list[Obj], str]:
        self._check()
        kind = path.rstrip("/").rsplit("/", 1)[-1]
        return [json.loads(json.dumps(o)) for o in self.objects.get(kind, [])], str(self.revision)

    async def watch(self, path: str, resource_version: str, params: Any = None) -> AsyncIterator[Obj]:
        kind = path.rstrip("/").rsplit("/", 1)[-1]
        while True:
            self._check()
            if kind in self.expire:
                self.expire.discard(kind)
                raise ApiError(410, "Expired", "too old resource version")
            await asyncio.sleep(0.02)
            if False:  # an async generator that never yields: a quiet watch
                yield {}

    async def create(self, path: str, body: Obj) -> Obj:
        self._check()
        return body

    async def merge_patch(self, path: str, body: Obj) -> Obj:
        self._check()
        self.writes.append((time.time(), path, body))
        raise AssertionError(f"unexpected write to {path}")


def _objects(now: float) -> dict[str, Obj]:
    meta = {"namespace": "ns", "resourceVersion": "10", "creationTimestamp": now_iso(now - 60), "uid": "u"}
    spec = {"input": {"uri": "/media/a.mp4"}, "outputs": [{"name": "out"}]}
    running = {"phase": "Running", "worker": "w1", "pool": "p", "attempt": 1, "startTime": now_iso(now - 5),
               "scheduledTime": now_iso(now - 6), "heartbeatTime": now_iso(now - 1)}  # fmt: skip
    return {
        "gone": {"metadata": {**meta, "name": "gone", "uid": "u1"}, "spec": spec, "status": running},
        "stays": {"metadata": {**meta, "name": "stays", "uid": "u2"}, "spec": spec, "status": {"phase": "Succeeded"}},
        "pod": {"metadata": {**meta, "name": "w1", "labels": {"ffmpeg-rtmp.io/pool": "p"}}, "spec": {"nodeName": "n"}},
        "lease": {
            "metadata": {**meta, "name": "ffrtmp-worker-w1"},
            "spec": {"holderIdentity": "w1", "leaseDurationSeconds": 3600, "renewTime": now_iso(now)},
        },
    }


async def test_relist_after_410_forgets_jobs_deleted_in_the_gap() -> None:
    """A watch that ends in 410 Gone is followed by a fresh list, with no DELETED for objects removed
    while the watch was down: the jobs missing from the list must leave the store, or a job deleted in
    the gap keeps its worker slot busy for good."""
    now = time.time()
    o = _objects(now)
    api = _FakeApi({"transcodejobs": [o["gone"], o["stays"]], "pods": [o["pod"]], "leases": [o["lease"]]})
    settings = OperatorSettings(namespaces=("ns",), resync_seconds=0.1, metrics_port=0, health_port=0)
    reconciler = Reconciler(api, settings, OperatorMetrics())  # type: ignore[arg-type]
    task = asyncio.ensure_future(reconciler.run())
    try:
        await asyncio.sleep(0.5)
        assert "ns/gone" in reconciler.store.jobs
        # While the watch was down "gone" was deleted; the watch ends in 410 Gone: only "stays" is listed.
        api.objects["transcodejobs"] = [o["stays"]]
        api.revision += 10
        api.expire.add("transcodejobs")
        await asyncio.sleep(1.0)
        assert not task.done(), task
        assert "ns/gone" not in reconciler.store.jobs, "a job deleted during the watch gap is still in the store"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_api_outage_is_not_taken_for_dead_workers() -> None:
    now = time.time()
    o = _objects(now)
    o["lease"]["spec"]["leaseDurationSeconds"] = 3
    api = _FakeApi({"transcodejobs": [o["gone"]], "pods": [o["pod"]], "leases": [o["lease"]]})
    settings = OperatorSettings(
        namespaces=("ns",), resync_seconds=0.1, lease_grace_seconds=0.5, metrics_port=0, health_port=0
    )
    reconciler = Reconciler(api, settings, OperatorMetrics())  # type: ignore[arg-type]
    task = asyncio.ensure_future(reconciler.run())
    try:
        await asyncio.sleep(0.3)
        assert api.writes == []  # the worker is fine: its Lease is fresh
        api.down = True  # nobody can write now: not the worker's Lease renewals, not the operator
        await asyncio.sleep(4.0)  # longer than the Lease (3 s) and the grace (0.5 s) together
        api.down = False
        back = time.time()
        # The worker renews as soon as it can again (its renew interval is a third of the Lease).
        await asyncio.sleep(1.5)
        renewed = json.loads(json.dumps(o["lease"]))
        t = time.time()
        renewed["spec"]["renewTime"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
        renewed["metadata"]["resourceVersion"] = "11"
        api.objects["leases"] = [renewed]
        reconciler.on_lease("MODIFIED", renewed)
        await asyncio.sleep(1.0)
        lost = [(round(t - back, 2), body["status"].get("reason")) for t, _, body in api.writes]
        assert lost == [], f"requeued right after the outage although the worker was fine: {lost}"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
