"""Job lifecycle decisions (pure): what each TranscodeJob needs next, as status patches.

One pass over the store yields every transition the operator makes: admission (InvalidSpec),
suspension, retries with backoff, requeue of jobs whose worker was lost, deadlines, TTL deletion
and the assignments of queued jobs to free worker slots. The loop applies them, fenced by the
resourceVersion each decision was made on.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ffrtmp.conditions import now_iso, set_conditions
from ffrtmp.controller.chunked import CreateJob, children_by_parent, decide_chunked, held_by_parent, orphaned
from ffrtmp.controller.scheduling import Assignment, PoolView, QueuedJob, WorkerSlots, eligible_pools, plan
from ffrtmp.controller.settings import OperatorSettings
from ffrtmp.controller.state import JobView, PoolObj, Store, WorkerLease, WorkerPod
from ffrtmp.redact import redact

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class JobEvent:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class PatchStatus:
    """A merge patch of the job's status, valid only on the resourceVersion it was decided on."""

    key: str
    resource_version: str
    status: Obj
    event: JobEvent | None = None
    # Applied only if a fresh read shows this worker Lease ("namespace/worker") still expired: the
    # decision rests on the watch's view of it, and a renewal may be on its way (a slow API server).
    unless_lease_renewed: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteJob:
    key: str
    uid: str
    reason: str


JobAction = PatchStatus | DeleteJob | CreateJob


@dataclass
class JobDecisions:
    actions: list[JobAction] = field(default_factory=list)
    # Earliest future time at which a decision would change without any event (backoff, TTL, deadline).
    wake_at: float | None = None
    # Queued jobs per pool key ("namespace/pool") that found no slot: the autoscaler's input.
    waiting_by_pool: dict[str, int] = field(default_factory=dict)

    def wake(self, at: float) -> None:
        if self.wake_at is None or at < self.wake_at:
            self.wake_at = at


def retry_backoff(failures: int, settings: OperatorSettings) -> float:
    """10 s, 20 s, 40 s ... capped, like the Job controller's pod backoff."""
    return float(min(settings.retry_backoff_seconds * 2 ** max(failures - 1, 0), settings.retry_backoff_max_seconds))


def lease_fresh(lease: WorkerLease | None, now: float, settings: OperatorSettings, since: float = 0.0) -> bool:
    """Renewed recently enough; `since` (the end of an API outage) counts as a renewal."""
    if lease is None or lease.renew_time is None:
        return False
    return max(lease.renew_time, since) + lease.duration + settings.lease_grace_seconds >= now


@dataclass(frozen=True, slots=True)
class WorkerLost:
    message: str
    # Set when the only evidence is an expired Lease (namespace/worker): worth one fresh read.
    expired_lease: str | None = None


def worker_lost(
    job: JobView,
    pods: dict[str, WorkerPod],
    leases: dict[str, WorkerLease],
    now: float,
    settings: OperatorSettings,
    since: float = 0.0,
) -> WorkerLost | None:
    """Why the job's worker can no longer run it, or None while it can."""
    wkey = f"{job.namespace}/{job.worker}"
    pod = pods.get(wkey)
    if pod is None:
        return WorkerLost(f"worker Pod {job.worker} no longer exists")
    if pod.failed:
        return WorkerLost(f"worker Pod {job.worker} has terminated")
    lease = leases.get(wkey)
    if lease is None:
        # A worker only gets jobs once its Lease exists; give a just-created one a moment.
        since = job.scheduled_time or now
        if now - since > 30 + settings.lease_grace_seconds:
            return WorkerLost(f"worker {job.worker} has no Lease")
        return None
    if not lease_fresh(lease, now, settings, since):
        age = now - (lease.renew_time or 0)
        return WorkerLost(f"worker {job.worker} stopped renewing its Lease {age:.0f}s ago", expired_lease=wkey)
    if job.phase == "Scheduled" and job.scheduled_time and now - job.scheduled_time > settings.start_timeout_seconds:
        return WorkerLost(f"worker {job.worker} did not start the attempt within {settings.start_timeout_seconds:.0f}s")
    last_sign = job.heartbeat_time or job.start_time
    if job.phase == "Running" and last_sign and now - last_sign > settings.heartbeat_timeout_seconds:
        return WorkerLost(f"worker {job.worker} reported no progress for {now - last_sign:.0f}s")
    return None


def _queued_status(job: JobView, reason: str, message: str, now: float, *, extra: Obj | None = None) -> Obj:
    status: Obj = {
        "phase": "Queued",
        "worker": None,
        "node": None,
        "progress": None,
        "heartbeatTime": None,
        "startTime": None,
        "scheduledTime": None,
        "message": message,
        "observedGeneration": job.generation,
        "conditions": set_conditions(
            job.conditions,
            [
                ("Queued", "True", reason, message),
                ("Scheduled", "False", reason, "not assigned to a worker"),
                ("Running", "False", reason, "not running"),
            ],
            now=now,
            generation=job.generation,
        ),
    }
    if job.queued_time is None:
        status["queuedTime"] = now_iso(now)
    if extra:
        status.update(extra)
    return status


def _failed_status(job: JobView, reason: str, message: str, now: float, *, extra: Obj | None = None) -> Obj:
    status: Obj = {
        "phase": "Failed",
        "reason": reason,
        "message": message,
        "completionTime": now_iso(now),
        "observedGeneration": job.generation,
        "conditions": set_conditions(
            job.conditions,
            [
                ("Failed", "True", reason, message),
                ("Running", "False", reason, "not running"),
                ("Queued", "False", reason, "finished"),
            ],
            now=now,
            generation=job.generation,
        ),
    }
    if extra:
        status.update(extra)
    return status


def _assign_status(job: JobView, a: Assignment, node: str | None, now: float) -> Obj:
    message = f"assigned to worker {a.worker}" + (f" on node {node}" if node else "")
    status: Obj = {
        "phase": "Scheduled",
        "pool": a.pool,
        "worker": a.worker,
        "node": node,
        "accelerator": a.accelerator,
        "attempt": job.attempt + 1,
        "scheduledTime": now_iso(now),
        "notBefore": None,
        "reason": None,
        "progress": None,
        "heartbeatTime": None,
        "startTime": None,
        "message": message,
        "observedGeneration": job.generation,
        "conditions": set_conditions(
            job.conditions,
            [
                ("Queued", "False", "Scheduled", message),
                ("Scheduled", "True", "Assigned", message),
                ("Running", "False", "Scheduled", "waiting for the worker to start ffmpeg"),
            ],
            now=now,
            generation=job.generation,
        ),
    }
    if job.queued_time is None:
        status["queuedTime"] = now_iso(now)
    return status


def _decide_one(
    job: JobView, store: Store, now: float, settings: OperatorSettings, out: JobDecisions, *, held: bool = False
) -> QueuedJob | None:
    """Actions for one job; returns it as a scheduling candidate when it waits for a slot.
    `held`: a chunked job's child not yet assigned while its parent is suspended (suspended too)."""
    rv = job.resource_version
    if job.terminal:
        if job.ttl_seconds is not None and job.completion_time is not None:
            due = job.completion_time + job.ttl_seconds
            if due <= now:
                out.actions.append(DeleteJob(job.key, job.uid, f"ttlSecondsAfterFinished ({job.ttl_seconds}s) passed"))
            else:
                out.wake(due)
        return None

    if job.invalid is not None:
        msg = f"invalid spec: {job.invalid}"
        out.actions.append(
            PatchStatus(
                job.key,
                rv,
                _failed_status(job, "InvalidSpec", msg, now),
                JobEvent("Warning", "InvalidSpec", msg),
            )
        )
        return None

    if job.suspend or held:
        if job.active or not job.suspended or job.phase not in ("Pending",):
            why, reason = (
                ("spec.suspend is true", "JobSuspended")
                if job.suspend
                else (f"its chunked parent {job.parent} is suspended", "ParentSuspended")
            )
            msg = f"suspended: {why}" + (f"; stopped attempt {job.attempt} on {job.worker}" if job.active else "")
            status: Obj = {
                "phase": "Pending",
                "worker": None,
                "node": None,
                "progress": None,
                "startTime": None,
                "scheduledTime": None,
                "heartbeatTime": None,
                "message": msg,
                "observedGeneration": job.generation,
                "conditions": set_conditions(
                    job.conditions,
                    [("Suspended", "True", reason, msg)]
                    + [(t, "False", reason, "suspended") for t in ("Running", "Scheduled", "Queued")],
                    now=now, generation=job.generation,
                ),
            }  # fmt: skip
            out.actions.append(PatchStatus(job.key, rv, status, JobEvent("Normal", "Suspended", msg)))
        return None

    if job.suspended:
        msg = "resumed: " + (
            "spec.suspend is false" if job.parent is None else f"its chunked parent {job.parent} resumed"
        )
        status = _queued_status(job, "Resumed", msg, now)
        status["conditions"] = set_conditions(
            status["conditions"],
            [("Suspended", "False", "JobResumed", msg)],
            now=now,
            generation=job.generation,
        )
        out.actions.append(PatchStatus(job.key, rv, status, JobEvent("Normal", "Resumed", msg)))
        return None

    if job.active:
        result = job.result
        if result is not None and result.attempt == job.attempt and result.outcome != "Succeeded":
            out.actions.append(_after_attempt(job, now, settings))
            return None
        lost = worker_lost(job, store.pods, store.leases, now, settings, store.api_ok_since)
        if lost is not None:
            msg = f"attempt {job.attempt} lost: {lost.message}; requeued (does not count against backoffLimit)"
            status = _queued_status(job, "WorkerLost", msg, now, extra={"reason": "WorkerLost"})
            event = JobEvent("Warning", "WorkerLost", msg)
            out.actions.append(PatchStatus(job.key, rv, status, event, unless_lease_renewed=lost.expired_lease))
            return None
        if job.timeout_seconds is not None:
            started = job.start_time or job.scheduled_time
            if started is not None:
                deadline = started + job.timeout_seconds
                if deadline <= now:
                    msg = f"ran longer than timeoutSeconds ({job.timeout_seconds}s); ffmpeg was stopped"
                    out.actions.append(
                        PatchStatus(
                            job.key,
                            rv,
                            _failed_status(job, "DeadlineExceeded", msg, now),
                            JobEvent("Warning", "DeadlineExceeded", msg),
                        )
                    )
                    return None
                out.wake(deadline)
        return None

    # Pending (new), Queued: a scheduling candidate.
    if job.not_before is not None and job.not_before > now:
        out.wake(job.not_before)
    return QueuedJob(
        key=job.key,
        namespace=job.namespace,
        priority=job.priority,
        queued_at=job.queued_time or job.created,
        accelerator=job.accelerator,
        hardware_policy=job.hardware_policy,
        pool_ref=job.pool_ref,
        not_before=job.not_before,
        codecs=job.codecs,
        object_storage=job.object_storage,
        secrets=job.secrets,
    )


def _after_attempt(job: JobView, now: float, settings: OperatorSettings) -> PatchStatus:
    """The worker reported a failed or handed-back attempt: retry, requeue or fail the job."""
    result = job.result
    assert result is not None
    rv = job.resource_version
    if result.outcome == "HandedBack":
        said = redact(result.message or "worker drained")
        msg = f"attempt {job.attempt} handed back by {result.worker} ({said}); requeued"
        return PatchStatus(
            job.key, rv, _queued_status(job, "HandedBack", msg, now), JobEvent("Normal", "HandedBack", msg)
        )
    failures = job.failed + 1
    # The worker redacted it; redacted again (URL userinfo, signed query values) for a worker that did not.
    what = f"attempt {job.attempt} failed: {result.reason}: {redact(result.message or '')}"
    if result.retryable and failures <= job.backoff_limit:
        delay = retry_backoff(failures, settings)
        msg = f"{what}; retry {failures}/{job.backoff_limit} in {delay:.0f}s"
        extra = {"failed": failures, "notBefore": now_iso(now + delay), "reason": result.reason}
        return PatchStatus(
            job.key,
            rv,
            _queued_status(job, "BackoffRetry", msg, now, extra=extra),
            JobEvent("Warning", "Retrying", msg),
        )
    msg = f"{what}; backoffLimit ({job.backoff_limit}) reached" if result.retryable else what
    return PatchStatus(
        job.key, rv, _failed_status(job, result.reason or "FfmpegError", msg, now, extra={"failed": failures}),
        JobEvent("Warning", result.reason or "Failed", msg),
    )  # fmt: skip


def worker_slots(
    store: Store, now: float, settings: OperatorSettings, running: dict[str, int], retiring: set[str]
) -> list[WorkerSlots]:
    slots = []
    for pod in store.pods.values():
        pool = store.pools.get(pod.pool_key)
        if pool is None or pool.spec is None:
            continue
        lease = store.leases.get(pod.key)
        accepting = (
            not pod.deleting
            and not pod.failed
            and pod.node is not None
            and pod.key not in retiring
            and lease is not None
            and lease.encoder_ok is True
            and lease.storage_ok is True
            and not lease.draining
            and lease_fresh(lease, now, settings, store.api_ok_since)
        )
        slots.append(
            WorkerSlots(
                name=pod.name,
                namespace=pod.namespace,
                pool=pod.pool,
                accelerator=pool.spec.accelerator,
                capacity=pool.spec.worker_slots(),
                running=running.get(pod.key, 0),
                accepting=accepting,
                storage_problem=lease.storage_message if lease is not None and lease.storage_ok is False else None,
                encoders=lease.encoders if lease is not None else None,
            )
        )
    return slots


def running_by_worker(jobs: Iterable[JobView]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for job in jobs:
        if job.active and job.worker:
            counts[f"{job.namespace}/{job.worker}"] += 1
    return counts


def pool_views(pools: Iterable[PoolObj]) -> list[PoolView]:
    return [
        PoolView(
            name=p.name,
            namespace=p.namespace,
            accelerator=p.spec.accelerator,
            paused=p.spec.paused,
            object_storage=p.spec.object_storage is not None,
            job_secrets=frozenset(p.spec.job_secrets or ()),
        )
        for p in pools
        if p.spec is not None
    ]


def decide_jobs(store: Store, now: float, settings: OperatorSettings, retiring: set[str] | None = None) -> JobDecisions:
    """Every job transition due now, and the assignments of queued jobs to free slots."""
    out = JobDecisions()
    candidates: list[QueuedJob] = []
    children = children_by_parent(store.jobs.values())
    for job in store.jobs.values():
        if job.parent is not None and job.part is not None and orphaned(job, store.jobs):
            out.actions.append(DeleteJob(job.key, job.uid, f"its chunked parent {job.parent} is finished or gone"))
            continue
        if job.chunked_spec is not None and not job.terminal and job.invalid is None:
            chunked = decide_chunked(job, children.get(job.key, []), now)
            out.actions.extend(chunked.creates)
            if chunked.status is not None:
                event = JobEvent(*chunked.event) if chunked.event is not None else None
                out.actions.append(PatchStatus(job.key, job.resource_version, chunked.status, event))
            if chunked.wake_at is not None:
                out.wake(chunked.wake_at)
            continue
        candidate = _decide_one(job, store, now, settings, out, held=held_by_parent(job, store.jobs))
        if candidate is not None:
            candidates.append(candidate)
    if not candidates:
        return out

    # Slots freed by this pass (requeues, failures) are used on the next pass, after the writes.
    running = running_by_worker(store.jobs.values())
    workers = worker_slots(store, now, settings, running, retiring or set())
    views = pool_views(store.pools.values())
    assignments, blocked = plan(candidates, workers, views, now)
    by_key = {c.key: c for c in candidates}
    waiting_cache: dict[tuple[str, str, str, str | None, tuple[str, ...]], str | None] = {}
    nodes = {p.key: p.node for p in store.pods.values()}
    for a in assignments:
        job = store.jobs[a.job]
        status = _assign_status(job, a, nodes.get(f"{job.namespace}/{a.worker}"), now)
        event = JobEvent("Normal", "Scheduled", f"attempt {job.attempt + 1}: {status['message']}")
        out.actions.append(PatchStatus(job.key, job.resource_version, status, event))
    for b in blocked:
        job = store.jobs[b.job]
        _count_waiting(by_key[b.job], views, workers, waiting_cache, out)
        if job.phase == "Queued" and job.queued_reason == b.reason and job.message == b.message:
            continue  # nothing new to say
        if b.reason == "Backoff" and job.phase == "Queued":
            continue  # the retry message already says when
        status = _queued_status(job, b.reason, b.message, now)
        queued_event = JobEvent("Normal", "Queued", b.message) if job.phase != "Queued" else None
        out.actions.append(PatchStatus(job.key, job.resource_version, status, queued_event))
    return out


def _count_waiting(
    candidate: QueuedJob,
    pools: list[PoolView],
    workers: list[WorkerSlots],
    cache: dict[tuple[str, str, str, str | None, tuple[str, ...]], str | None],
    out: JobDecisions,
) -> None:
    """Attribute a waiting job to the pool the scheduler would give it (the first live pool it is
    eligible for), for the autoscaler. Jobs of the same kind share one answer."""
    kind = (candidate.namespace, candidate.accelerator, candidate.hardware_policy, candidate.pool_ref, candidate.codecs)
    if kind not in cache:
        live = [p for p in eligible_pools(candidate, pools, workers) if not p.paused]
        cache[kind] = f"{live[0].namespace}/{live[0].name}" if live else None
    key = cache[kind]
    if key is not None:
        out.waiting_by_pool[key] = out.waiting_by_pool.get(key, 0) + 1
