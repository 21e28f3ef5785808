"""Faults reproduced in-process, where timing would make a whole-farm run flaky: a connection the
API server drops mid-request, a stale attempt publishing after its job moved on, a watch that re-lists
after 410 Gone, and an API outage longer than a worker Lease. The real operator and worker classes
run; only the fault is staged.

The first four failed against the code before commit d8d8797 (checked by running this file with the
package of d8d8797^ first on PYTHONPATH), the last one before commit 2925288; they stay as regression
tests."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from chaoslib import copy_clip, sim_env

from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.conditions import now_iso
from ffrtmp.controller.leader import ElectionTiming, LeaderElector
from ffrtmp.controller.metrics import OperatorMetrics
from ffrtmp.controller.reconciler import Reconciler
from ffrtmp.controller.settings import OperatorSettings
from ffrtmp.controller.watches import WATCHED
from ffrtmp.kube.client import ApiError, KubeClient, resource_path
from ffrtmp.kube.config import KubeConfig, load_config
from ffrtmp.worker.agent import Agent
from ffrtmp.worker.attempt import Attempt
from ffrtmp.worker.config import WorkerConfig
from ffrtmp.worker.fence import FencedStatus
from ffrtmp.worker.metrics import WorkerMetrics
from helpers import TestCluster, connect_guard

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
        timing = ElectionTiming(lease_duration=1, renew_deadline=0.5, retry_period=0.2)
        elector = LeaderElector(client, "ns", "ffmpeg-rtmp-operator", "me", timing)
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


async def _slow_server(delay: float | None) -> tuple[asyncio.Server, str, list[float]]:
    """An 'API server' that answers every request with an empty object after `delay` seconds, or never
    (None), as a loaded kube-apiserver or a dead connection behind a load balancer would. Records when
    each request arrived."""
    arrivals: list[float] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # the client gave up on this connection
            length = next(
                (int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")), 0
            )
            await reader.readexactly(length)
            arrivals.append(time.monotonic())
            if delay is None:
                await asyncio.sleep(3600)
            await asyncio.sleep(delay)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", arrivals


def _sample(metrics: WorkerMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


async def test_a_slow_lease_renewal_is_measured_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 19: the worker's renewals must not stall silently. A renewal answered after 1.5 s with a 4 s
    Lease (slower than its quarter) is logged as a warning and lands in the latency histogram."""
    server, url, arrivals = await _slow_server(1.5)
    async with server, KubeClient(KubeConfig(server=url)) as client:
        metrics = WorkerMetrics()
        config = WorkerConfig(pod_name="w", namespace="ns", pool="p", lease_seconds=4, renew_seconds=1.3)
        agent = Agent(client, config, metrics)
        with caplog.at_level("WARNING", logger="ffrtmp.worker.agent"):
            died = await _survives(agent._lease_loop(), seconds=2.5)
    assert died is None, died
    assert arrivals and _sample(metrics, "ffrtmp_worker_lease_renew_seconds_count") >= 1
    assert _sample(metrics, "ffrtmp_worker_lease_renew_seconds_sum") >= 1.5
    slow = [r.getMessage() for r in caplog.records if r.getMessage().startswith("renewing the Lease took")]
    assert slow and "(Lease 4s;" in slow[0] and float(slow[0].split()[4][:-1]) >= 1.5, caplog.text


async def test_a_stuck_lease_renewal_is_given_up_and_sent_again() -> None:
    """A renewal that is never answered is given up after half the Lease and sent again at once, so that
    one dead connection cannot let the Lease expire (the client's own timeout is 30 s)."""
    server, url, arrivals = await _slow_server(None)
    async with server, KubeClient(KubeConfig(server=url)) as client:
        metrics = WorkerMetrics()
        config = WorkerConfig(pod_name="w", namespace="ns", pool="p", lease_seconds=2, renew_seconds=0.7)
        agent = Agent(client, config, metrics)
        task = asyncio.ensure_future(agent._lease_loop())
        try:
            deadline = time.monotonic() + 20
            while len(arrivals) < 3 and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a plain list
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert len(arrivals) >= 3, arrivals
    # Each was given up after half the 2 s Lease, and the next one went out at once.
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(0.9 <= g < 1.9 for g in gaps), gaps
    assert _sample(metrics, "ffrtmp_worker_lease_renew_failures_total") >= 2


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
    guard_library = connect_guard()  # before sim_env turns the guard off for the worker processes it is for
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
        connect_guard=guard_library,
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
        self.stalled = False
        self.expire: set[str] = set()
        self.writes: list[tuple[float, str, Obj]] = []

    def _check(self) -> None:
        if self.down:
            raise ConnectionRefusedError(111, "Connect call failed")

    async def request(self, method: str, path: str, **_: Any) -> Obj:
        """The operator's readiness check (GET /readyz): held while the server is stalled."""
        self._check()
        while self.stalled:  # noqa: ASYNC110 - a flag the test flips
            await asyncio.sleep(0.02)
        return {}

    async def get(self, path: str) -> Obj:
        self._check()
        kind, name = path.rstrip("/").rsplit("/", 2)[-2:]
        found = [o for o in self.objects.get(kind, []) if o["metadata"]["name"] == name]
        if not found:
            raise ApiError(404, "NotFound", f"{kind} {name} not found")
        return json.loads(json.dumps(found[0]))

    async def list_all(
        self, path: str, params: Any = None, *, not_older_than: str | None = None
    ) -> tuple[list[Obj], str]:
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


def _renewed(lease: Obj, revision: int) -> Obj:
    renewed = json.loads(json.dumps(lease))
    renewed["spec"]["renewTime"] = _micro(time.time())
    renewed["metadata"]["resourceVersion"] = str(revision)
    return renewed


async def _no_loss_after(fault: str) -> None:
    """A worker with a 3 s Lease (operator grace 0.5 s) cannot renew during an API `fault` ("down": every
    call refused; "stalled": the readiness check is answered only after 4 s) longer than the two together;
    it renews 1.5 s after the API is back. Its job must not be requeued. Then it really stops renewing:
    now the job is requeued (the operator decides again after the fault, so no-loss is no accident)."""
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
        setattr(api, fault, True)  # nobody can write now: not the worker's Lease renewals, not the operator
        await asyncio.sleep(4.0)  # longer than the Lease (3 s) and the grace (0.5 s) together
        setattr(api, fault, False)
        back = time.time()
        # The worker renews as soon as it can again (its renew interval is a third of the Lease).
        await asyncio.sleep(1.5)
        renewed = _renewed(o["lease"], 11)
        api.objects["leases"] = [renewed]
        reconciler.on_lease("MODIFIED", renewed)
        await asyncio.sleep(1.0)
        lost = [(round(t - back, 2), body["status"].get("reason")) for t, _, body in api.writes]
        assert lost == [], f"requeued right after the {fault} API although the worker was fine: {lost}"
        # The worker stops renewing for real: 3.5 s later its job is requeued.
        await asyncio.sleep(4.0)
        reasons = [body["status"].get("reason") for _, _, body in api.writes]
        assert reasons[:1] == ["WorkerLost"], reasons
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_api_outage_is_not_taken_for_dead_workers() -> None:
    await _no_loss_after("down")


async def test_a_stalled_api_server_is_not_taken_for_dead_workers() -> None:
    """Issue 19: an API server that answers the readiness check only after 4 s stalled the workers'
    renewals just as long. The operator took the time of its question for the time of the answer, saw no
    outage, and requeued the job of a worker that was fine (the check failed against the code before)."""
    await _no_loss_after("stalled")


def _micro(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


async def test_a_renewal_the_lease_watch_has_not_delivered_loses_no_worker(
    cluster: TestCluster, namespace: str, admin: KubeClient
) -> None:
    """Issue 19's false WorkerLost: a worker renews its Lease on time, but the operator's view of it lags
    (a watch delivers late on a loaded API server), so the Lease looks expired. Before the attempt is given
    away the operator reads the Lease again: renewed, the job stays with its worker. A Lease that really
    expired is still lost at once. (Against the code before this test, the first pass requeued the job.)"""
    now = time.time()
    pod = {
        "metadata": {"name": "w-a", "labels": {"app.kubernetes.io/component": "worker", "ffmpeg-rtmp.io/pool": "p"}},
        "spec": {
            "containers": [{
                "name": "worker", "image": "worker",
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
        },
    }  # fmt: skip
    await admin.create(resource_path("", "v1", "pods", namespace), pod)
    leases = resource_path("coordination.k8s.io", "v1", "leases", namespace)
    lease = {
        "metadata": {"name": "ffrtmp-worker-w-a", "labels": {"app.kubernetes.io/component": "worker"}},
        "spec": {"holderIdentity": "w-a", "leaseDurationSeconds": 5, "renewTime": _micro(now - 30)},
    }
    await admin.create(leases, lease)
    cluster.apply(
        {"apiVersion": "ffmpeg-rtmp.io/v1alpha1", "kind": "TranscodeJob", "metadata": {"name": "busy"},
         "spec": {"input": {"uri": "/media/a.mp4"}, "outputs": [{"name": "out"}]}},
        namespace,
    )  # fmt: skip
    job = resource_path("ffmpeg-rtmp.io", "v1alpha1", "transcodejobs", namespace, "busy")
    running = {"phase": "Running", "worker": "w-a", "pool": "p", "attempt": 1, "startTime": now_iso(now - 10),
               "scheduledTime": now_iso(now - 11), "heartbeatTime": now_iso(now - 1)}  # fmt: skip
    await admin.merge_patch(job + "/status", {"status": running})
    settings = OperatorSettings(namespaces=(namespace,), lease_grace_seconds=2, metrics_port=0, health_port=0)
    metrics = OperatorMetrics()
    reconciler = Reconciler(admin, settings, metrics)
    # The operator's view, listed while the Lease was 30 s old; its watches are not running, as if lagging.
    for watched in WATCHED:
        items, rv = await admin.list_all(watched.path(namespace), watched.params)
        reconciler.on_sync(watched.kind, namespace, items, rv)
    renewed = await admin.merge_patch(f"{leases}/ffrtmp-worker-w-a", {"spec": {"renewTime": _micro(time.time())}})

    await reconciler.pass_once()
    s = (await admin.get(job))["status"]
    assert (s["phase"], s["attempt"], s.get("reason")) == ("Running", 1, None), s
    assert metrics.lease_confirmations.labels("renewed")._value.get() == 1
    assert reconciler.store.leases[f"{namespace}/w-a"].resource_version == renewed["metadata"]["resourceVersion"]

    # The worker stops for real: the fresh read agrees, and the job is requeued.
    expired = await admin.merge_patch(f"{leases}/ffrtmp-worker-w-a", {"spec": {"renewTime": _micro(time.time() - 30)}})
    reconciler.on_lease("MODIFIED", expired)
    await reconciler.pass_once()
    s = (await admin.get(job))["status"]
    assert (s["phase"], s.get("reason")) == ("Queued", "WorkerLost"), s
    assert "stopped renewing its Lease 30s ago" in s["message"], s["message"]
    assert metrics.lease_confirmations.labels("expired")._value.get() == 1


async def _switchable_server() -> tuple[asyncio.Server, str, dict[str, bool]]:
    """An 'API server' that answers `{}` while state["up"], and hangs up on every request while not."""
    state = {"up": True}

    async def serve_or_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            length = next(
                (int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")), 0
            )
            await reader.readexactly(length)
            if not state["up"]:
                writer.close()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()

    server = await asyncio.start_server(serve_or_hang_up, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", state


async def _probe(session: Any, url: str) -> int:
    async with session.get(url) as response:
        return int(response.status)


async def _until(check: Any, want: tuple[int, int], limit: float = 60.0) -> None:
    """Poll (healthz, readyz) until it equals `want`; a state, not a duration, ends the wait."""
    deadline = time.monotonic() + limit
    while (got := await check()) != want:
        assert time.monotonic() < deadline, f"(healthz, readyz) stayed {got}, wanted {want}"
        await asyncio.sleep(0.1)


async def test_liveness_survives_an_api_outage_longer_than_the_staleness_limit() -> None:
    """Before issue 16, /healthz failed after 60 s without a Lease renewal or watch event, so a control-plane
    outage of a few minutes made the kubelet restart every worker and kill every running ffmpeg. Now
    /healthz depends only on the event loop (and supervised encodes); the outage shows as /readyz 503 and
    ffrtmp_worker_api_reachable 0, and both recover. The staleness limit is 1 s here instead of 60 s."""
    import aiohttp

    from ffrtmp.dev.cluster import free_port
    from ffrtmp.worker.metrics import serve
    from ffrtmp.worker.selftest import SelfTestResult
    from ffrtmp.worker.storage import StorageCheck

    server, url, state = await _switchable_server()
    port = free_port()
    config = WorkerConfig(
        pod_name="w", namespace="ns", pool="p", lease_seconds=2, renew_seconds=0.2, api_stale_seconds=1.0
    )
    async with server, KubeClient(KubeConfig(server=url)) as client, aiohttp.ClientSession() as session:
        agent = Agent(client, config)
        agent.self_test = SelfTestResult(ok=True, encoder="libx264", message="", seconds=0.1)
        agent.storage = StorageCheck(ok=True, message="test")
        tasks = [asyncio.ensure_future(agent.metrics.loop_lag.run()), asyncio.ensure_future(agent._lease_loop())]
        runner = await serve(agent.metrics, port, agent.healthy, agent.probe_ready)
        base = f"http://127.0.0.1:{port}"

        async def check() -> tuple[int, int]:
            return await _probe(session, f"{base}/healthz"), await _probe(session, f"{base}/readyz")

        try:
            await _until(check, (200, 200))
            state["up"] = False
            await _until(check, (200, 503))
            assert _sample(agent.metrics, "ffrtmp_worker_api_reachable") == 0
            outage_began = agent._api_ok
            # Stay down past three staleness limits: liveness must hold the whole time.
            while time.monotonic() - outage_began < 3 * config.api_stale_seconds:
                assert await _probe(session, f"{base}/healthz") == 200
                await asyncio.sleep(0.1)
            assert _sample(agent.metrics, "ffrtmp_worker_api_last_success_age_seconds") >= 3 * config.api_stale_seconds
            state["up"] = True
            await _until(check, (200, 200))
            assert _sample(agent.metrics, "ffrtmp_worker_api_reachable") == 1
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runner.cleanup()
