"""The reconciler's intake of watch events: what a (re)list replaces, which Lease changes wake the
decision loop, and which job Events each `--job-events` mode posts. No API server is involved: these
methods only touch the in-memory store."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from ffrtmp.api.constants import ANNOTATION_ENCODER
from ffrtmp.controller.lifecycle import JobEvent
from ffrtmp.controller.metrics import OperatorMetrics
from ffrtmp.controller.reconciler import Reconciler
from ffrtmp.controller.settings import OperatorSettings

pytestmark = pytest.mark.unit
Obj = dict[str, Any]
SPEC = {"input": {"uri": "/media/a.mp4"}, "outputs": [{"name": "out"}]}


def job(name: str, rv: int, namespace: str = "ns") -> Obj:
    meta = {"name": name, "namespace": namespace, "uid": f"u-{name}", "resourceVersion": str(rv)}
    return {"metadata": {**meta, "creationTimestamp": "2026-11-28T10:00:00Z"}, "spec": SPEC}


def lease(holder: str, rv: int, renew: str = "2026-11-28T10:00:00.000000Z", **annotations: str) -> Obj:
    meta = {
        "name": f"ffrtmp-worker-{holder}",
        "namespace": "ns",
        "resourceVersion": str(rv),
        "annotations": annotations,
    }
    return {"metadata": meta, "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renew}}


@pytest.fixture
def reconciler(request: pytest.FixtureRequest) -> Reconciler:
    namespaces = getattr(request, "param", ())
    settings = OperatorSettings(namespaces=namespaces, metrics_port=0, health_port=0)
    return Reconciler(None, settings, OperatorMetrics())  # type: ignore[arg-type]


def test_sync_drops_what_the_list_no_longer_has(reconciler: Reconciler) -> None:
    reconciler.on_sync("jobs", "", [job("a", 10), job("b", 11)], "20")
    reconciler.on_event("jobs", "ADDED", job("late", 30))  # created after the next list was taken
    reconciler.on_sync("jobs", "", [job("a", 10)], "25")
    assert sorted(reconciler.store.jobs) == ["ns/a", "ns/late"]


@pytest.mark.parametrize("reconciler", [("ns", "other")], indirect=True)
def test_sync_of_one_namespace_leaves_the_others_alone(reconciler: Reconciler) -> None:
    reconciler.on_sync("jobs", "ns", [job("a", 10)], "20")
    reconciler.on_sync("jobs", "other", [job("b", 11, "other")], "20")
    assert "jobs" in reconciler.store.synced
    reconciler.on_sync("jobs", "ns", [], "30")
    assert sorted(reconciler.store.jobs) == ["other/b"]


@pytest.mark.parametrize("reconciler", [("ns", "other")], indirect=True)
def test_a_kind_is_synced_once_every_namespace_was_listed(reconciler: Reconciler) -> None:
    reconciler.on_sync("pods", "ns", [], "1")
    assert "pods" not in reconciler.store.synced
    reconciler.on_sync("pods", "other", [], "1")
    assert "pods" in reconciler.store.synced


def test_a_plain_lease_renewal_does_not_wake_the_loop(reconciler: Reconciler) -> None:
    reconciler.on_event("leases", "ADDED", lease("w1", 1))
    assert reconciler.trigger.is_set(), "a new worker changes decisions"
    reconciler.trigger.clear()
    reconciler.on_event("leases", "MODIFIED", lease("w1", 2, renew="2026-11-28T10:00:05.000000Z"))
    assert not reconciler.trigger.is_set()
    assert reconciler.store.leases["ns/w1"].renew_time is not None
    assert reconciler.store.leases["ns/w1"].resource_version == "2", "the renewal still reaches the store"
    reconciler.on_event("leases", "MODIFIED", lease("w1", 3, **{ANNOTATION_ENCODER: "ok: libx264"}))
    assert reconciler.trigger.is_set(), "a finished self-test changes decisions"
    reconciler.trigger.clear()
    reconciler.on_event("leases", "DELETED", lease("w1", 4))
    assert reconciler.trigger.is_set() and "ns/w1" not in reconciler.store.leases


@pytest.mark.parametrize(
    ("mode", "posted"),
    [
        ("decisions", {"Scheduled", "Requeued", "Failed"}),
        ("all", {"Scheduled", "Requeued", "Failed", "Started", "Completed"}),
        ("failures", {"Requeued", "Failed"}),
        ("none", set()),
    ],
)
def test_job_event_modes(mode: str, posted: set[str]) -> None:
    reconciler = Reconciler(None, OperatorSettings(job_events=mode), OperatorMetrics())  # type: ignore[arg-type]
    events = [
        (JobEvent("Normal", "Scheduled", "attempt 1 on w1"), False),
        (JobEvent("Warning", "Requeued", "worker lost"), False),
        (JobEvent("Warning", "Failed", "ffmpeg exited 1"), False),
        (JobEvent("Normal", "Started", "ffmpeg started"), True),
        (JobEvent("Normal", "Completed", "done"), True),
    ]
    assert {e.reason for e, observed in events if reconciler._post_job_event(e, observed)} == posted


def test_a_late_create_response_does_not_roll_a_pod_back(reconciler: Reconciler) -> None:
    """The operator creates a worker Pod; the watch delivers it bound to a node before the create's
    own response is handled. The response (no node yet) must not replace the newer view."""
    meta = {"name": "w1", "namespace": "ns", "uid": "p1", "labels": {"ffmpeg-rtmp.io/pool": "cpu"}}
    created = {"metadata": {**meta, "resourceVersion": "5"}, "spec": {}}
    bound = {"metadata": {**meta, "resourceVersion": "7"}, "spec": {"nodeName": "cpu-1"}}
    reconciler.on_event("pods", "MODIFIED", bound)
    reconciler.store.put_pod(created)
    assert reconciler.store.pods["ns/w1"].node == "cpu-1"


class _QuietApi:
    """Lists return nothing, watches stay quiet: just enough for `Reconciler.run`."""

    async def list_all(
        self, path: str, params: Any = None, *, not_older_than: str | None = None
    ) -> tuple[list[Obj], str]:
        return [], "1"

    async def watch(self, path: str, resource_version: str, params: Any = None) -> Any:
        await asyncio.Event().wait()
        yield {}


async def test_the_first_pass_follows_the_initial_lists_not_the_resync_period() -> None:
    """After a (re)start the operator decides as soon as every kind is listed: a restarted operator
    used to sit out one resync period (2 s by default) before its first assignment."""
    settings = OperatorSettings(resync_seconds=3600, metrics_port=0, health_port=0)
    reconciler = Reconciler(_QuietApi(), settings, OperatorMetrics())  # type: ignore[arg-type]
    passes: list[float] = []

    async def record_pass() -> None:
        passes.append(time.monotonic())

    reconciler.pass_once = record_pass  # type: ignore[method-assign]
    task = asyncio.ensure_future(reconciler.run())
    try:
        for _ in range(200):
            if passes:
                break
            await asyncio.sleep(0.01)
        assert passes, "no decision pass within 2 s of the initial lists (resync period: 1 h)"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_on_synced_runs_once_every_kind_is_listed_before_the_first_pass() -> None:
    """The operator settles its heap (`ffrtmp.heap.settle`) here: after the lists, before deciding."""
    settings = OperatorSettings(resync_seconds=0.01, metrics_port=0, health_port=0)
    order: list[str] = []
    reconciler = Reconciler(
        _QuietApi(),  # type: ignore[arg-type]
        settings,
        OperatorMetrics(),
        on_synced=lambda: order.append(f"synced: {sorted(reconciler.store.synced)}"),
    )

    async def record_pass() -> None:
        order.append("pass")

    reconciler.pass_once = record_pass  # type: ignore[method-assign]
    task = asyncio.ensure_future(reconciler.run())
    try:
        for _ in range(200):
            if order.count("pass") >= 3:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert order[0] == "synced: ['jobs', 'leases', 'pods', 'pools']", order
    assert order.count(order[0]) == 1 and order[1:4] == ["pass"] * 3, order
