"""WorkerPool decisions (pure): how many worker Pods, which to remove, what the status says."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ffrtmp.conditions import now_iso, set_conditions
from ffrtmp.controller.autoscaling import ScaleInput, WorkerLoad, choose_removals, jobs_per_hour, recommend
from ffrtmp.controller.cadence import counter_write_seconds
from ffrtmp.controller.lifecycle import JobEvent, lease_fresh
from ffrtmp.controller.pods import worker_selector
from ffrtmp.controller.policy import pool_policy_violations
from ffrtmp.controller.settings import OperatorSettings
from ffrtmp.controller.state import PoolObj, WorkerLease, WorkerPod

Obj = dict[str, Any]
DURATION_WINDOW_SECONDS = 3600.0
CAP_SECONDS = 300.0


# The status fields that move with every job (what dashboards and `kubectl get` show): a change of
# these alone is written at most every counter_write_seconds (cadence.py) per pool. Written on every
# change, a pool's status cost as many API writes as its jobs' own at 100 namespaces (BENCHMARKS.md,
# figure 8).
COUNTERS = frozenset({"busySlots", "freeSlots", "queuedJobs", "runningJobs", "capacity"})


@dataclass
class PoolMemory:
    """What the autoscaler remembers between passes (lost on restart; it then starts afresh)."""

    history: tuple[tuple[float, int], ...] = ()
    last_active: float | None = None
    last_desired: int | None = None
    durations: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=500))
    # Most workers that could be scheduled, learnt from Pods that stayed Pending.
    cap: int | None = None
    cap_until: float = 0.0
    status_written: float | None = None  # when decide_pool last returned a status to write

    def record_duration(self, finished: float, seconds: float) -> None:
        self.durations.append((finished, seconds))

    def average_duration(self, now: float) -> float | None:
        recent = [s for t, s in self.durations if now - t <= DURATION_WINDOW_SECONDS]
        return sum(recent) / len(recent) if recent else None


def _cap_unschedulable(
    desired: int,
    reason: str,
    limited: str | None,
    limited_message: str | None,
    current: int,
    stuck: int,
    min_workers: int,
    memory: PoolMemory,
    now: float,
    pending_timeout: int,
) -> tuple[int, str, str | None, str | None]:
    """Workers that stay unschedulable are removed and the pool is capped at what fits, for a
    while; then it tries one more worker (capacity may have appeared), instead of piling up or
    flapping between adding and removing Pending Pods."""
    if stuck:
        fits = current - stuck
        memory.cap = fits
        memory.cap_until = now + max(CAP_SECONDS, 10 * pending_timeout)
    elif memory.cap is not None and now >= memory.cap_until:
        memory.cap += 1  # probe: one more worker, then cap again if it does not fit
        memory.cap_until = now + max(CAP_SECONDS, 10 * pending_timeout)
    if memory.cap is None or desired <= memory.cap:
        if memory.cap is not None and desired < memory.cap and not stuck:
            memory.cap = None  # the queue no longer reaches the cap
        return desired, reason, limited, limited_message
    capped = max(memory.cap, min_workers)
    message = (
        f"capped at {memory.cap} worker(s): more stayed Pending unschedulable for {pending_timeout}s "
        "(no node has room or the device they request, e.g. a GPU)"
    )
    return capped, f"{reason}; {message}", "Unschedulable", message


@dataclass(frozen=True)
class PoolDecision:
    create: int
    delete: list[str]
    status: Obj | None  # None: status unchanged
    events: list[JobEvent]


def _desired_without_autoscaling(pool: PoolObj) -> tuple[int, str]:
    spec = pool.spec
    assert spec is not None
    want = spec.replicas if spec.replicas is not None else spec.min_workers
    desired = min(max(want, spec.min_workers), spec.max_workers)
    source = "spec.replicas" if spec.replicas is not None else "minWorkers"
    return desired, f"autoscaling disabled: {source} asks for {desired}"


def decide_pool(
    pool: PoolObj,
    pods: Iterable[WorkerPod],
    leases: dict[str, WorkerLease],
    running_by_worker: dict[str, int],
    waiting: int,
    memory: PoolMemory,
    now: float,
    settings: OperatorSettings,
    api_ok_since: float = 0.0,
    pools: int = 1,
) -> PoolDecision:
    """`pools`: how many pools the operator manages (their counter writes share one allowance)."""
    spec = pool.spec
    if spec is None:
        return PoolDecision(0, [], None, [])
    mine = [p for p in pods if p.pool == pool.name and p.namespace == pool.namespace]
    failed = [p for p in mine if p.failed and not p.deleting]
    live = [p for p in mine if not p.failed and not p.deleting]
    running = sum(running_by_worker.get(p.key, 0) for p in mine)
    ready, encoder_failures, storage_failures = [], [], []
    for p in live:
        lease = leases.get(p.key)
        if lease is not None and lease.storage_ok is False:
            storage_failures.append((p, lease.storage_message))
        elif lease is not None and lease.encoder_ok is False:
            encoder_failures.append((p, lease.encoder_message))
        elif (
            lease is not None
            and lease.encoder_ok
            and lease.storage_ok
            and p.node
            and lease_fresh(lease, now, settings, api_ok_since)
            and not lease.draining
        ):
            ready.append(p)
    pending_timeout = spec.autoscaling.pending_timeout_seconds
    unschedulable = [p for p in live if p.unschedulable is not None]
    stuck = [p for p in unschedulable if now - p.created >= pending_timeout]

    if waiting + running > 0:
        memory.last_active = now
    limited: str | None = None
    limited_message: str | None = None
    if spec.autoscaling.enabled:
        decision = recommend(
            ScaleInput(
                now=now, queued=waiting, running=running, slots_per_worker=spec.worker_slots(),
                target_utilization=spec.autoscaling.target_utilization, current=len(live),
                unschedulable=len(stuck), min_workers=spec.min_workers, max_workers=spec.max_workers,
                scale_up_step=spec.autoscaling.scale_up_step,
                stabilization_seconds=spec.autoscaling.scale_down_stabilization_seconds,
                idle_timeout_seconds=spec.autoscaling.idle_timeout_seconds,
                last_active=memory.last_active, history=memory.history,
            )
        )  # fmt: skip
        memory.history = decision.history
        desired, reason = decision.desired, decision.reason
        limited, limited_message = decision.limited, decision.limited_message
    else:
        desired, reason = _desired_without_autoscaling(pool)

    if spec.autoscaling.enabled:
        desired, reason, limited, limited_message = _cap_unschedulable(
            desired, reason, limited, limited_message, len(live), len(stuck), spec.min_workers, memory, now,
            pending_timeout,
        )  # fmt: skip

    violations = pool_policy_violations(spec, settings.pool_policy)
    create = 0 if violations else max(desired - len(live), 0)
    delete = [p.name for p in failed]
    if len(live) > desired:
        surplus = len(live) - desired
        # Pods stuck unschedulable go first, oldest first: a newer Pending one may still fit.
        stuck_idle = sorted((p for p in stuck if running_by_worker.get(p.key, 0) == 0), key=lambda p: p.created)
        removing = [p.name for p in stuck_idle[:surplus]]
        rest = [p for p in live if p.name not in removing]
        loads = [
            WorkerLoad(p.name, running_by_worker.get(p.key, 0), p in ready, p.node is None, p.created) for p in rest
        ]
        delete += removing + choose_removals(loads, surplus - len(removing))

    events: list[JobEvent] = []
    previous = pool.status.get("desiredWorkers")
    scaled = previous != desired and (create or len(live) > desired or previous is None)
    if previous != desired and (previous is not None or desired > 0):
        verb = "ScaledUp" if previous is None or desired > int(previous) else "ScaledDown"
        events.append(JobEvent("Normal", verb, reason))
    already = any(
        c.get("type") == "Degraded" and c.get("reason") == "PolicyViolation"
        for c in pool.status.get("conditions") or []
    )
    if violations and not already:
        events.append(JobEvent("Warning", "PolicyViolation", "no worker Pods are created: " + "; ".join(violations)))
    for p in failed:
        events.append(JobEvent("Warning", "WorkerReplaced", f"worker Pod {p.name} terminated; replacing it"))

    slots = spec.worker_slots()
    capacity = slots * len(ready)
    encoders = pool_encoders([leases[p.key].encoders for p in ready])
    busy = sum(min(running_by_worker.get(p.key, 0), slots) for p in ready)
    avg = memory.average_duration(now)
    conditions = _conditions(
        pool, len(ready), desired, limited, limited_message, unschedulable, storage_failures, encoder_failures, now,
        violations,
    )  # fmt: skip
    status: Obj = {
        "replicas": len(live),
        "selector": worker_selector(pool.name),
        "workers": len(live),
        "readyWorkers": len(ready),
        "desiredWorkers": desired,
        "busySlots": busy,
        "freeSlots": max(capacity - busy, 0),
        "queuedJobs": waiting,
        "encoders": encoders,
        "runningJobs": running,
        "capacity": {
            "avgJobSeconds": round(avg, 3) if avg is not None else None,
            "jobsPerHour": _round(jobs_per_hour(len(ready), slots, avg)),
        },
        "conditions": conditions,
        "observedGeneration": pool.generation,
    }
    if scaled or "lastScaleReason" not in pool.status:
        status["lastScaleTime"] = now_iso(now)
        status["lastScaleReason"] = reason
    memory.last_desired = desired
    counter_seconds = counter_write_seconds(pools, settings.write_budget)
    counters_due = memory.status_written is None or now - memory.status_written >= counter_seconds
    write = _changed(pool.status, status, ignore=frozenset() if counters_due else COUNTERS)
    if write:
        memory.status_written = now
    return PoolDecision(create, delete, status if write else None, events)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _changed(old: Obj, new: Obj, ignore: frozenset[str] = frozenset()) -> bool:
    def strip(conds: object) -> object:
        if not isinstance(conds, list):
            return conds
        return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conds]

    for key, value in new.items():
        if key == "lastScaleTime" or key in ignore:
            continue
        if key == "conditions":
            if strip(old.get(key)) != strip(value):
                return True
        elif key == "capacity":
            if {k: v for k, v in (old.get(key) or {}).items() if v is not None} != {
                k: v for k, v in value.items() if v is not None
            }:
                return True
        elif old.get(key) != value:
            return True
    return False


def _conditions(
    pool: PoolObj,
    ready: int,
    desired: int,
    limited: str | None,
    limited_message: str | None,
    unschedulable: list[WorkerPod],
    storage_failures: list[tuple[WorkerPod, str]],
    encoder_failures: list[tuple[WorkerPod, str]],
    now: float,
    violations: list[str] | None = None,
) -> list[Obj]:
    updates: list[tuple[str, str, str, str]] = []
    if ready > 0:
        updates.append(("Ready", "True", "WorkersReady", f"{ready} worker(s) ready"))
    elif desired == 0:
        updates.append(("Ready", "True", "ScaledToZero", "no workers needed; the first queued job starts one"))
    else:
        updates.append(("Ready", "False", "NoReadyWorkers", f"0 of {desired} desired workers are ready"))
    if limited:
        updates.append(("ScalingLimited", "True", limited, limited_message or limited))
    else:
        updates.append(("ScalingLimited", "False", "WithinLimits", "the pool can grow to what its queue needs"))
    if violations:
        msg = "no worker Pods are created: " + "; ".join(violations)
        updates.append(("Degraded", "True", "PolicyViolation", msg))
    elif unschedulable:
        msg = f"{len(unschedulable)} worker Pod(s) cannot be scheduled: {unschedulable[0].unschedulable}"
        updates.append(("Degraded", "True", "Unschedulable", msg))
    elif storage_failures:
        pod, why = storage_failures[0]
        msg = f"{len(storage_failures)} worker(s) failed the storage check; {pod.name}: {why}"
        updates.append(("Degraded", "True", "StorageUnavailable", msg))
    elif encoder_failures:
        pod, why = encoder_failures[0]
        msg = f"{len(encoder_failures)} worker(s) failed the encoder self-test; {pod.name}: {why}"
        updates.append(("Degraded", "True", "EncoderUnavailable", msg))
    else:
        updates.append(("Degraded", "False", "AsExpected", "all workers schedulable, their storage and encoders work"))
    return set_conditions(pool.status.get("conditions"), updates, now=now, generation=pool.generation)


def pool_encoders(worker_encoders: list[frozenset[str] | None]) -> str | None:
    """The encoders every ready worker of a pool passed its self-test with (sorted, comma-separated),
    so that jobs of their codecs can run on any of them; None when no ready worker said (none ready,
    or all from before the capability test)."""
    known = [e for e in worker_encoders if e is not None]
    if not known:
        return None
    return ",".join(sorted(frozenset.intersection(*known)))
