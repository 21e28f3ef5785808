"""WorkerPool decisions: how many worker Pods, which ones go, and what the status says."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ffrtmp.conditions import now_iso
from ffrtmp.controller.lifecycle import JobEvent
from ffrtmp.controller.pools import PoolDecision, PoolMemory, decide_pool
from ffrtmp.controller.settings import OperatorSettings
from ffrtmp.controller.state import PoolObj, WorkerLease, WorkerPod, parse_lease, parse_pool, parse_worker_pod

pytestmark = pytest.mark.unit

Obj = dict[str, Any]
NOW = 1_700_000_000.0
NS = "media"
SETTINGS = OperatorSettings()
UNSCHEDULABLE = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."


# --- factories ------------------------------------------------------------------------------------


def pool(name: str = "cpu", accelerator: str = "cpu", *, status: Obj | None = None, **spec: Any) -> PoolObj:
    return parse_pool(
        {
            "apiVersion": "ffmpeg-rtmp.io/v1alpha1",
            "kind": "WorkerPool",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 3, "resourceVersion": "7"},
            "spec": {"accelerator": accelerator, **spec},
            "status": status or {},
        }
    )


def pod(
    name: str,
    pool_name: str = "cpu",
    *,
    node: str | None = "node-1",
    phase: str = "Running",
    created: float = NOW - 3600,
    unschedulable: str | None = None,
    deleting: bool = False,
) -> WorkerPod:
    meta: Obj = {
        "name": name,
        "namespace": NS,
        "uid": f"uid-{name}",
        "resourceVersion": "1",
        "creationTimestamp": now_iso(created),
        "labels": {"app.kubernetes.io/component": "worker", "ffmpeg-rtmp.io/pool": pool_name},
    }
    if deleting:
        meta["deletionTimestamp"] = now_iso(NOW)
    conditions: list[Obj] = []
    if unschedulable is not None:
        conditions.append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable}
        )
    elif node is not None:
        conditions.append({"type": "PodScheduled", "status": "True"})
    spec: Obj = {"nodeName": node} if node else {}
    return parse_worker_pod({"metadata": meta, "spec": spec, "status": {"phase": phase, "conditions": conditions}})


def lease(
    name: str,
    *,
    encoder: str | None = "ok: libx264",
    storage: str | None = None,
    renewed: float = NOW - 2,
    draining: bool = False,
) -> WorkerLease:
    annotations: Obj = {}
    if encoder is not None:
        annotations["ffmpeg-rtmp.io/encoder-self-test"] = encoder
    if storage is not None:
        annotations["ffmpeg-rtmp.io/storage-check"] = storage
    if draining:
        annotations["ffmpeg-rtmp.io/draining"] = "true"
    return parse_lease(
        {
            "metadata": {"name": f"ffrtmp-worker-{name}", "namespace": NS, "annotations": annotations},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 15, "renewTime": now_iso(renewed)},
        }
    )


def ready(*names: str, pool_name: str = "cpu") -> tuple[list[WorkerPod], dict[str, WorkerLease]]:
    return [pod(n, pool_name) for n in names], {f"{NS}/{n}": lease(n) for n in names}


def decide(
    p: PoolObj,
    pods: list[WorkerPod] | None = None,
    leases: dict[str, WorkerLease] | None = None,
    running: dict[str, int] | None = None,
    waiting: int = 0,
    memory: PoolMemory | None = None,
    now: float = NOW,
    pools: int = 1,
) -> PoolDecision:
    return decide_pool(
        p,
        pods or [],
        leases or {},
        {f"{NS}/{k}": v for k, v in (running or {}).items()},
        waiting,
        memory if memory is not None else PoolMemory(),
        now,
        SETTINGS,
        pools=pools,
    )


def conditions(status: Obj) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def with_status(p: PoolObj, status: Obj) -> PoolObj:
    """The pool as the next watch event shows it, after the status write."""
    return pool(p.name, p.spec.accelerator if p.spec else "cpu", status={**p.status, **status}, **_raw_spec(p))


def _raw_spec(p: PoolObj) -> Obj:
    assert p.spec is not None
    raw = p.spec.to_api()
    raw.pop("accelerator")
    return raw


# --- scaling --------------------------------------------------------------------------------------


def test_the_first_waiting_job_scales_a_pool_up_from_zero() -> None:
    p = pool(minWorkers=0, maxWorkers=10, status={"desiredWorkers": 0, "lastScaleReason": "idle"})
    decision = decide(p, waiting=1)
    assert decision.create == 1
    assert decision.delete == []
    reason = "1 job queued, 0 running, 1 slots/worker: need 1 worker; scaling up from 0 to 1"
    assert decision.events == [JobEvent("Normal", "ScaledUp", reason)]
    assert decision.status is not None
    assert decision.status["desiredWorkers"] == 1
    assert decision.status["replicas"] == 0
    assert decision.status["lastScaleReason"] == reason
    assert decision.status["lastScaleTime"] == now_iso(NOW)


def test_a_busy_queue_scales_up_by_at_most_the_step_and_never_above_max_workers() -> None:
    p = pool(maxConcurrentJobs=2, maxWorkers=8, autoscaling={"scaleUpStep": 3})
    first = decide(p, waiting=40)
    assert first.create == 3
    pods, leases = ready("a", "b", "c")
    second = decide(with_status(p, first.status or {}), pods, leases, waiting=40)
    assert second.create == 3
    pods, leases = ready(*"abcdef")
    third = decide(with_status(p, second.status or {}), pods, leases, waiting=40)
    assert third.create == 2
    assert third.status is not None
    assert conditions(third.status)["ScalingLimited"] == (
        "True",
        "MaxWorkers",
        "the queue needs 20 workers but maxWorkers is 8",
    )


@settings(max_examples=60, deadline=None)
@given(
    waiting=st.integers(0, 50),
    running=st.integers(0, 20),
    lo=st.integers(0, 5),
    extra=st.integers(0, 10),
    live=st.integers(0, 12),
    slots=st.integers(1, 4),
)
def test_desired_stays_within_min_and_max_workers(
    waiting: int, running: int, lo: int, extra: int, live: int, slots: int
) -> None:
    p = pool(minWorkers=lo, maxWorkers=lo + extra, maxConcurrentJobs=slots)
    names = [f"w{i}" for i in range(live)]
    pods, leases = ready(*names)
    per_worker = {n: min(slots, max(running - i * slots, 0)) for i, n in enumerate(names)}
    decision = decide(p, pods, leases, per_worker, waiting)
    assert decision.status is not None
    desired = decision.status["desiredWorkers"]
    assert lo <= desired <= lo + extra
    assert decision.create == max(desired - live, 0)
    assert live - len(decision.delete) <= max(desired, live - len([n for n in names if per_worker[n] == 0]))
    assert all(per_worker[n] == 0 for n in decision.delete)


@pytest.mark.parametrize(("spec", "want"), [({"replicas": 3}, 3), ({"minWorkers": 2}, 2), ({}, 0)])
def test_without_autoscaling_the_size_comes_from_replicas_or_min_workers_never_the_queue(spec: Obj, want: int) -> None:
    p = pool(autoscaling={"enabled": False}, maxWorkers=10, **spec)
    for waiting in (0, 100):
        decision = decide(p, waiting=waiting)
        assert decision.create == want
        assert decision.status is not None
        assert decision.status["desiredWorkers"] == want
        source = "spec.replicas" if "replicas" in spec else "minWorkers"
        assert decision.status["lastScaleReason"] == f"autoscaling disabled: {source} asks for {want}"


def test_without_autoscaling_a_smaller_replicas_removes_idle_workers_only() -> None:
    pods, leases = ready(*"abcde")
    p = pool(autoscaling={"enabled": False}, replicas=2, status={"desiredWorkers": 5})
    decision = decide(p, pods, leases, running={"a": 1, "b": 1, "c": 1}, waiting=10)
    assert decision.create == 0
    assert sorted(decision.delete) == ["d", "e"]
    assert decision.events[0].reason == "ScaledDown"


def test_a_failed_worker_pod_is_deleted_and_replaced() -> None:
    p = pool(autoscaling={"enabled": False}, replicas=2, status={"desiredWorkers": 2})
    pods, leases = ready("a", "b")
    pods[1] = pod("b", phase="Failed")
    decision = decide(p, pods, leases)
    assert decision.delete == ["b"]
    assert decision.create == 1
    assert decision.events == [JobEvent("Warning", "WorkerReplaced", "worker Pod b terminated; replacing it")]
    assert decision.status is not None
    assert decision.status["workers"] == 1


def test_a_terminating_pod_is_neither_counted_nor_deleted_again() -> None:
    p = pool(autoscaling={"enabled": False}, replicas=2, status={"desiredWorkers": 2})
    pods, leases = ready("a", "b")
    pods[1] = pod("b", deleting=True)
    decision = decide(p, pods, leases)
    assert decision.delete == []
    assert decision.create == 1


@settings(max_examples=60, deadline=None)
@given(
    busy=st.lists(st.integers(0, 3), min_size=1, max_size=10),
    replicas=st.integers(0, 10),
    autoscaled=st.booleans(),
)
def test_busy_workers_are_never_deleted(busy: list[int], replicas: int, autoscaled: bool) -> None:
    spec: Obj = {"maxConcurrentJobs": 3, "maxWorkers": 10}
    if not autoscaled:
        spec.update(autoscaling={"enabled": False}, replicas=replicas)
    p = pool(status={"desiredWorkers": len(busy)}, **spec)
    names = [f"w{i}" for i in range(len(busy))]
    pods, leases = ready(*names)
    decision = decide(p, pods, leases, running=dict(zip(names, busy, strict=True)))
    assert not {n for n, b in zip(names, busy, strict=True) if b} & set(decision.delete)
    assert decision.create == 0 or not decision.delete


# --- unschedulable and broken workers -------------------------------------------------------------


def test_a_pending_unschedulable_pod_degrades_the_pool_with_the_schedulers_message() -> None:
    p = pool("gpu", "nvenc", status={"desiredWorkers": 2})
    pods, leases = ready("gpu-a", pool_name="gpu")
    pods.append(pod("gpu-b", "gpu", node=None, phase="Pending", created=NOW - 5, unschedulable=UNSCHEDULABLE))
    decision = decide(p, pods, leases, running={"gpu-a": 1}, waiting=1)
    assert decision.status is not None
    assert conditions(decision.status)["Degraded"] == (
        "True",
        "Unschedulable",
        f"1 worker Pod(s) cannot be scheduled: {UNSCHEDULABLE}",
    )
    # Not stuck for pendingTimeoutSeconds yet: nothing is removed or capped.
    assert decision.delete == []
    assert conditions(decision.status)["ScalingLimited"][0] == "False"


def test_pods_stuck_pending_cap_the_pool_at_what_fits_then_it_probes_one_more() -> None:
    memory = PoolMemory()
    p = pool("gpu", "nvenc", maxWorkers=10, autoscaling={"pendingTimeoutSeconds": 30}, status={"desiredWorkers": 3})
    pods, leases = ready("gpu-a", "gpu-b", pool_name="gpu")
    stuck = pod("gpu-c", "gpu", node=None, phase="Pending", created=NOW - 31, unschedulable=UNSCHEDULABLE)
    running = {"gpu-a": 1, "gpu-b": 1}

    first = decide(p, [*pods, stuck], leases, running, waiting=5, memory=memory)
    assert first.delete == ["gpu-c"]
    assert first.create == 0
    assert memory.cap == 2
    assert first.status is not None
    assert first.status["desiredWorkers"] == 2
    message = (
        "capped at 2 worker(s): more stayed Pending unschedulable for 30s "
        "(no node has room or the device they request, e.g. a GPU)"
    )
    assert conditions(first.status)["ScalingLimited"] == ("True", "Unschedulable", message)
    assert conditions(first.status)["Degraded"][:2] == ("True", "Unschedulable")
    assert first.status["lastScaleReason"].endswith(f"; {message}")

    # The stuck Pod is gone; the queue still asks for 7, but the pool stays at what fits.
    p = with_status(p, first.status)
    for later in (NOW + 10, NOW + 150, NOW + 299):
        held = decide(p, pods, leases, running, waiting=5, memory=memory, now=later)
        assert (held.create, held.delete) == (0, [])
        assert held.status is None or held.status["desiredWorkers"] == 2
    # After the cap period: one more worker, to see whether room appeared.
    probe = decide(p, pods, leases, running, waiting=5, memory=memory, now=NOW + 300)
    assert probe.create == 1
    assert memory.cap == 3
    assert probe.status is not None
    assert probe.status["desiredWorkers"] == 3


def test_the_cap_is_dropped_once_the_queue_no_longer_reaches_it() -> None:
    memory = PoolMemory(cap=2, cap_until=NOW + 100)
    p = pool("gpu", "nvenc", minWorkers=0, maxWorkers=10, status={"desiredWorkers": 2})
    pods, leases = ready("gpu-a", "gpu-b", pool_name="gpu")
    decision = decide(p, pods, leases, {"gpu-a": 1}, waiting=0, memory=memory)
    assert memory.cap is None
    assert decision.status is not None
    assert conditions(decision.status)["ScalingLimited"][:2] == ("False", "WithinLimits")


def test_the_stuck_pod_is_the_one_removed_not_a_newer_pending_one() -> None:
    memory = PoolMemory()
    p = pool("gpu", "nvenc", maxWorkers=10, autoscaling={"pendingTimeoutSeconds": 30}, status={"desiredWorkers": 4})
    pods, leases = ready("gpu-a", "gpu-b", pool_name="gpu")
    stuck = pod("gpu-c", "gpu", node=None, phase="Pending", created=NOW - 31, unschedulable=UNSCHEDULABLE)
    fresh = pod("gpu-d", "gpu", node=None, phase="Pending", created=NOW - 1)  # not looked at by the scheduler yet
    decision = decide(p, [*pods, stuck, fresh], leases, {"gpu-a": 1, "gpu-b": 1}, waiting=5, memory=memory)
    assert memory.cap == 3
    assert decision.delete == ["gpu-c"]


def test_a_failed_encoder_self_test_degrades_the_pool_and_the_worker_is_not_ready() -> None:
    p = pool("gpu", "nvenc", status={"desiredWorkers": 2})
    pods, leases = ready("gpu-a", "gpu-b", pool_name="gpu")
    leases["media/gpu-b"] = lease("gpu-b", encoder="failed: h264_nvenc: no CUDA-capable device is detected")
    decision = decide(p, pods, leases, running={"gpu-a": 1}, waiting=1)
    assert decision.status is not None
    assert conditions(decision.status)["Degraded"] == (
        "True",
        "EncoderUnavailable",
        "1 worker(s) failed the encoder self-test; gpu-b: h264_nvenc: no CUDA-capable device is detected",
    )
    assert decision.status["readyWorkers"] == 1
    assert decision.status["workers"] == 2


STORAGE_FAILED = "failed: output root /output is not writable: cannot create a file (Read-only file system)"


def test_a_failed_storage_check_degrades_the_pool_and_its_workers_are_never_ready() -> None:
    p = pool("cpu", "cpu", status={"desiredWorkers": 2})
    pods = [pod("a"), pod("b")]
    leases = {f"{NS}/{n}": lease(n, storage=STORAGE_FAILED) for n in ("a", "b")}
    decision = decide(p, pods, leases, waiting=1)
    assert decision.status is not None
    assert conditions(decision.status)["Degraded"] == (
        "True",
        "StorageUnavailable",
        "2 worker(s) failed the storage check; a: output root /output is not writable: "
        "cannot create a file (Read-only file system)",
    )
    assert conditions(decision.status)["Ready"] == ("False", "NoReadyWorkers", "0 of 1 desired workers are ready")
    assert decision.status["readyWorkers"] == 0
    assert decision.status["freeSlots"] == 0


def test_a_storage_failure_outranks_an_encoder_failure_and_a_pending_check_is_not_ready() -> None:
    p = pool("cpu", "cpu", status={"desiredWorkers": 3})
    pods = [pod("a"), pod("b"), pod("c")]
    leases = {
        f"{NS}/a": lease("a", encoder="failed: libx264: Unknown encoder"),
        f"{NS}/b": lease("b", storage=STORAGE_FAILED),
        f"{NS}/c": lease("c", storage="pending"),
    }
    decision = decide(p, pods, leases, waiting=3)
    assert decision.status is not None
    assert conditions(decision.status)["Degraded"][1] == "StorageUnavailable"
    assert decision.status["readyWorkers"] == 0


def test_a_passed_storage_check_leaves_the_worker_ready() -> None:
    p = pool("cpu", "cpu", status={"desiredWorkers": 1})
    leases = {f"{NS}/a": lease("a", storage="ok: media roots /media readable, output root /output writable")}
    decision = decide(p, [pod("a")], leases, waiting=0)
    assert decision.status is not None
    assert decision.status["readyWorkers"] == 1
    assert conditions(decision.status)["Degraded"][1] == "AsExpected"


def test_a_healthy_pool_is_ready_and_not_degraded() -> None:
    pods, leases = ready("a")
    decision = decide(pool(minWorkers=1), pods, leases)
    assert decision.status is not None
    assert conditions(decision.status) == {
        "Ready": ("True", "WorkersReady", "1 worker(s) ready"),
        "ScalingLimited": ("False", "WithinLimits", "the pool can grow to what its queue needs"),
        "Degraded": ("False", "AsExpected", "all workers schedulable, their storage and encoders work"),
    }
    assert all(c["observedGeneration"] == 3 for c in decision.status["conditions"])


def test_an_idle_pool_at_zero_is_ready_scaled_to_zero() -> None:
    decision = decide(pool(status={"desiredWorkers": 0}))
    assert decision.status is not None
    assert conditions(decision.status)["Ready"][:2] == ("True", "ScaledToZero")
    assert decision.create == 0
    assert decision.events == []


# --- status ---------------------------------------------------------------------------------------


def test_status_counts_workers_slots_jobs_and_capacity() -> None:
    memory = PoolMemory()
    memory.record_duration(NOW - 7200, 10.0)  # outside the one-hour window: ignored
    memory.record_duration(NOW - 30, 60.0)
    memory.record_duration(NOW - 10, 120.0)
    p = pool(maxConcurrentJobs=2, maxWorkers=10)
    pods, leases = ready("a", "b", "c")
    pods.append(pod("d"))  # no Lease yet: exists, not ready
    decision = decide(p, pods, leases, running={"a": 2, "b": 1, "d": 1}, waiting=4, memory=memory)
    status = decision.status
    assert status is not None
    assert {k: v for k, v in status.items() if k not in ("conditions", "lastScaleReason", "lastScaleTime")} == {
        "replicas": 4,
        "selector": "app.kubernetes.io/component=worker,ffmpeg-rtmp.io/pool=cpu",
        "workers": 4,
        "readyWorkers": 3,
        "desiredWorkers": 4,  # ceil((4 queued + 4 running) / 2)
        "busySlots": 3,
        "freeSlots": 3,
        "queuedJobs": 4,
        "encoders": None,  # the test's Leases say nothing of encoders (workers from before the capability test)
        "runningJobs": 4,
        "capacity": {"avgJobSeconds": 90.0, "jobsPerHour": 240.0},  # 3 ready x 2 slots x 3600 / 90
        "observedGeneration": 3,
    }
    assert decision.create == 0


def test_capacity_is_unknown_without_recent_durations() -> None:
    pods, leases = ready("a")
    decision = decide(pool(minWorkers=1), pods, leases)
    assert decision.status is not None
    assert decision.status["capacity"] == {"avgJobSeconds": None, "jobsPerHour": None}


def test_an_unchanged_status_is_not_written_again() -> None:
    memory = PoolMemory()
    memory.record_duration(NOW - 10, 60.0)
    p = pool(maxConcurrentJobs=2, minWorkers=1)
    pods, leases = ready("a", "b")
    first = decide(p, pods, leases, {"a": 1}, waiting=2, memory=memory)
    assert first.status is not None
    p = with_status(p, first.status)
    again = decide(p, pods, leases, {"a": 1}, waiting=2, memory=memory, now=NOW + 5)
    assert again.status is None
    assert again.events == []
    assert (again.create, again.delete) == (first.create, first.delete)
    # A real change is written.
    changed = decide(p, pods, leases, {"a": 2}, waiting=2, memory=memory, now=NOW + 6)
    assert changed.status is not None
    assert changed.status["busySlots"] == 2


def test_status_ignores_pods_of_other_pools_and_namespaces() -> None:
    pods, leases = ready("a")
    other = pod("x", "other")
    decision = decide(pool(minWorkers=1), [*pods, other], {**leases, "media/x": lease("x")}, {"x": 1})
    assert decision.status is not None
    assert (decision.status["workers"], decision.status["runningJobs"]) == (1, 0)


def test_a_pool_with_an_invalid_spec_is_left_alone() -> None:
    bad = parse_pool({"metadata": {"name": "bad", "namespace": NS}, "spec": {"accelerator": "tpu"}})
    assert bad.spec is None
    assert decide(bad, waiting=5) == PoolDecision(0, [], None, [])


def test_counter_changes_alone_are_written_at_most_every_two_seconds() -> None:
    """busySlots and the like move with every job: written at once they cost a pool status write
    per job and pass; a change of what the pool is (here a worker lost) is still written at once."""
    memory = PoolMemory()
    spec: Obj = {"maxConcurrentJobs": 4, "minWorkers": 2, "maxWorkers": 2, "autoscaling": {"enabled": False}}
    pods, leases = ready("a", "b")
    first = decide(pool(**spec), pods, leases, running={"a": 1}, memory=memory)
    assert first.status is not None
    assert first.status["busySlots"] == 1
    written = pool(status=first.status, **spec)
    assert decide(written, pods, leases, running={"a": 2}, memory=memory, now=NOW + 1.9).status is None
    later = decide(written, pods, leases, running={"a": 2}, memory=memory, now=NOW + 2)
    assert later.status is not None
    assert later.status["busySlots"] == 2
    lost = decide(pool(status=later.status, **spec), pods[:1], {f"{NS}/a": leases[f"{NS}/a"]},
                  running={"a": 3}, memory=memory, now=NOW + 2.5)  # fmt: skip
    assert lost.status is not None
    assert (lost.status["readyWorkers"], lost.status["busySlots"]) == (1, 3)


def test_with_a_hundred_pools_counters_alone_are_written_every_twenty_seconds() -> None:
    """A hundred namespaces' pools share the budget's 5 counter writes/s: each pool's every 20 s; a
    change of what the pool is still goes out at once."""
    memory = PoolMemory()
    spec: Obj = {"maxConcurrentJobs": 4, "minWorkers": 2, "maxWorkers": 2, "autoscaling": {"enabled": False}}
    pods, _ = ready("a", "b")
    leases = {f"{NS}/{n}": lease(n, renewed=NOW + 18) for n in ("a", "b")}
    first = decide(pool(**spec), pods, leases, running={"a": 1}, memory=memory, pools=100)
    assert first.status is not None
    written = pool(status=first.status, **spec)
    assert decide(written, pods, leases, running={"a": 2}, memory=memory, now=NOW + 19.9, pools=100).status is None
    later = decide(written, pods, leases, running={"a": 2}, memory=memory, now=NOW + 20, pools=100)
    assert later.status is not None
    assert later.status["busySlots"] == 2
    lost = decide(pool(status=later.status, **spec), pods[:1], {f"{NS}/a": leases[f"{NS}/a"]},
                  running={"a": 3}, memory=memory, now=NOW + 21, pools=100)  # fmt: skip
    assert lost.status is not None
    assert lost.status["readyWorkers"] == 1
