"""Which notifications a job owes each of its webhook targets, and when to retry (pure).

A job's state implies the transitions it went through: Running at attempt 2 implies Queued (waiting for
attempt 2) and Running (attempt 2); Succeeded implies those and Succeeded. Each transition has a position
(attempt, stage, step) that only grows over a job's life:

    Queued#0 (0,1,0) < Running#1 (1,0,0) < Progress#1.k (1,0,k) < Queued#1 (1,1,0) < ... < Succeeded#a (a,2,0)

Every target's record (status.notifications, written by the leader only) keeps `seen`, the position of
the latest transition recorded for it, and `pending`, the events recorded and not delivered yet. A pass
records each implied transition after `seen` that the target asked for, once, whatever replica or pass
sees it first (a transition that happened while no operator watched is recorded late, with its own time
where the status has it), and sends the first pending event when its retry is due. A 2xx removes it; a
failure schedules the next attempt with exponential backoff and jitter (derived from the event id, so it
is the same on every replica); an event older than the deadline is given up. The event id is derived
from the job's uid, the transition and the attempt, so every retry, and a new leader's resend of a
delivery whose answer was lost, carries the same id.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from ffrtmp.api.notifications import MAX_PENDING, NotificationsSpec, PendingEvent, TargetDelivery, WebhookTarget
from ffrtmp.conditions import now_iso, parse_time
from ffrtmp.controller.state import JobView
from ffrtmp.egress.policy import EgressPolicy

Position = tuple[int, int, int]  # (attempt, stage, step)
BEFORE_ALL: Position = (-1, 0, 0)
DEFAULT_PROGRESS_SECONDS = 60
STAGE_RUNNING, STAGE_QUEUED, STAGE_FINISHED = 0, 1, 2


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff of failed deliveries: base * 2^(attempts-1), capped, times a jitter factor in [0.5, 1)."""

    base_seconds: float = 1.0
    max_seconds: float = 300.0

    def __post_init__(self) -> None:
        if not 0 < self.base_seconds <= self.max_seconds:
            raise ValueError("the notification retry base must be above 0 and at most the maximum")

    def delay(self, attempts: int, event_id: str) -> float:
        """The wait after the `attempts`-th failed attempt of an event (same on every replica)."""
        raw = min(self.base_seconds * 2.0 ** max(attempts - 1, 0), self.max_seconds)
        digest = hashlib.sha256(f"{event_id}/{attempts}".encode()).digest()
        jitter = int.from_bytes(digest[:8], "big") / 2**64  # [0, 1)
        return raw * (0.5 + jitter / 2)


@dataclass(frozen=True)
class NotificationSettings:
    """How the operator sends webhooks (flags --notification-*)."""

    # Host names, *.domain patterns and CIDRs a webhook may reach besides public addresses.
    allowed_destinations: tuple[str, ...] = ()
    timeout_seconds: float = 10.0  # per delivery attempt: connect, send, answer
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    workers: int = 8  # deliveries (jobs) in flight at once
    queue_size: int = 256  # plans waiting for a worker; more are offered again by a later pass

    def policy(self, cluster_cidrs: tuple[str, ...] = ()) -> EgressPolicy:
        deny = [(cidr, "inside the cluster's Service or Pod range") for cidr in cluster_cidrs]
        return EgressPolicy.build(self.allowed_destinations, deny)


@dataclass(frozen=True, slots=True)
class NotifyState:
    """What the decider reads of a job (from the store's view)."""

    uid: str
    phase: str | None
    attempt: int
    created: float
    queued_time: float | None = None
    start_time: float | None = None
    completion_time: float | None = None
    percent: float | None = None


def notify_state(job: JobView) -> NotifyState:
    return NotifyState(
        uid=job.uid, phase=job.phase, attempt=job.attempt, created=job.created, queued_time=job.queued_time,
        start_time=job.start_time, completion_time=job.completion_time, percent=job.percent,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Transition:
    type: str
    attempt: int
    position: Position
    time: float
    percent: float | None = None

    def event_id(self, uid: str) -> str:
        base = f"{uid}.{self.type.lower()}.{self.attempt}"
        return f"{base}.{self.position[2]}" if self.type == "Progress" else base


def format_position(position: Position) -> str:
    return ".".join(str(p) for p in position)


def parse_position(text: str | None) -> Position:
    if not text:
        return BEFORE_ALL
    try:
        attempt, stage, step = (int(p) for p in text.split("."))
    except ValueError:
        return BEFORE_ALL
    return (attempt, stage, step)


def progress_seconds(target: WebhookTarget) -> float:
    return float(target.progress_interval_seconds or DEFAULT_PROGRESS_SECONDS)


def implied_transitions(job: NotifyState, now: float, progress_every: float | None = None) -> list[Transition]:
    """The transitions the job's current state implies, in order (Progress only with `progress_every`)."""
    a = job.attempt
    out: list[Transition] = []
    if job.phase == "Queued":
        queued_at = (job.queued_time or job.created) if a == 0 else now
        return [Transition("Queued", a, (a, STAGE_QUEUED, 0), queued_at)]
    if job.phase not in ("Scheduled", "Running", "Succeeded", "Failed") or a < 0:
        return out
    if a >= 1:
        queued_at = (job.queued_time or job.created) if a == 1 else now
        out.append(Transition("Queued", a - 1, (a - 1, STAGE_QUEUED, 0), queued_at))
    # A chunked parent runs (its children do the work) at attempt 0: Running#0, after nothing.
    ran = job.phase in ("Running", "Succeeded") or (job.phase == "Failed" and job.start_time is not None)
    if ran:
        out.append(Transition("Running", a, (a, STAGE_RUNNING, 0), job.start_time or now))
    if job.phase == "Running" and progress_every and job.start_time is not None:
        step = int((now - job.start_time) // progress_every)
        if step >= 1:
            out.append(Transition("Progress", a, (a, STAGE_RUNNING, step), now, job.percent))
    if job.phase in ("Succeeded", "Failed"):
        out.append(Transition(job.phase, a, (a, STAGE_FINISHED, 0), job.completion_time or now))
    return out


@dataclass(frozen=True, slots=True)
class Send:
    """Deliver this target's first pending event now."""

    target: str
    event: PendingEvent


@dataclass
class NotificationPlan:
    records: list[TargetDelivery]
    changed: bool = False  # records differ from the job's status: write them
    sends: list[Send] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)  # one message per event given up (Warning Events)
    wake_at: float | None = None

    def wake(self, at: float) -> None:
        if self.wake_at is None or at < self.wake_at:
            self.wake_at = at


def _give_up(rec: TargetDelivery, index: int, why: str) -> tuple[TargetDelivery, str]:
    pending = list(rec.pending or [])
    event = pending.pop(index)
    message = f"target {rec.name}: gave up on the {event.type} event {event.id}: {why}"
    update: dict[str, object] = {"pending": pending or None, "given_up": (rec.given_up or 0) + 1, "last_error": why}
    if index == 0:
        update.update(attempts=None, next_attempt_time=None)
    return rec.model_copy(update=update), message


def _record(rec: TargetDelivery, target: WebhookTarget, uid: str, transitions: Iterable[Transition]) -> TargetDelivery:
    """`rec` with the transitions after its `seen` recorded (those the target asked for pending)."""
    seen = parse_position(rec.seen)
    pending = list(rec.pending or [])
    wanted = set(target.events)
    for t in transitions:
        if t.position <= seen:
            continue
        seen = t.position
        if t.type not in wanted:
            continue
        if t.type == "Progress":  # only the latest progress is worth sending: drop older ones not in flight
            pending = pending[:1] + [p for p in pending[1:] if p.type != "Progress"]
        event = PendingEvent(id=t.event_id(uid), type=t.type, time=now_iso(t.time), attempt=t.attempt)
        if t.percent is not None:
            event = event.model_copy(update={"percent": round(min(max(t.percent, 0.0), 100.0), 2)})
        pending.append(event)
    marked = format_position(seen) if seen != BEFORE_ALL else None
    return rec.model_copy(update={"seen": marked, "pending": pending or None})


def decide_notifications(
    spec: NotificationsSpec, records: list[TargetDelivery], job: NotifyState, now: float
) -> NotificationPlan:
    """Record what is new for every target, give up what is past the deadline or over the pending bound,
    and say which first pending events are due to be sent."""
    by_name = {r.name: r for r in records}
    plan = NotificationPlan(records=[])
    plan.changed = any(r.name not in {t.name for t in spec.targets} for r in records)
    for target in spec.targets:
        old = by_name.get(target.name) or TargetDelivery(name=target.name)
        every = progress_seconds(target) if "Progress" in target.events else None
        rec = _record(old, target, job.uid, implied_transitions(job, now, every))
        while len(rec.pending or []) > MAX_PENDING:
            pending = rec.pending or []
            index = next((i for i, p in enumerate(pending) if p.type == "Progress"), 0)
            rec, message = _give_up(rec, index, f"more than {MAX_PENDING} events pending")
            plan.given_up.append(message)
        while rec.pending:
            head = rec.pending[0]
            deadline = (parse_time(head.time) or now) + spec.deadline_seconds
            if now < deadline:
                break
            why = f"not delivered within deadlineSeconds ({spec.deadline_seconds}s), {rec.attempts or 0} attempt(s)"
            rec, message = _give_up(rec, 0, why)
            plan.given_up.append(message)
        if rec.pending:
            due = parse_time(rec.next_attempt_time) or 0.0
            if due <= now:
                plan.sends.append(Send(target.name, rec.pending[0]))
            else:
                plan.wake(due)
        if every is not None and job.phase == "Running" and job.start_time is not None:
            plan.wake(job.start_time + (int((now - job.start_time) // every) + 1) * every)
        plan.changed = plan.changed or rec != old
        plan.records.append(rec)
    return plan


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one delivery attempt came to. `retryable` False: give the event up at once (the egress policy
    refused the destination)."""

    delivered: bool
    error: str = ""
    retryable: bool = True


def after_delivery(
    records: list[TargetDelivery], target: str, event_id: str, outcome: Outcome, now: float, retry: RetryPolicy
) -> list[TargetDelivery]:
    """The records after an attempt to deliver `event_id` to `target` (unchanged if it is not that
    target's first pending event any more)."""
    return [
        _after_attempt(rec, outcome, now, retry)
        if rec.name == target and rec.pending and rec.pending[0].id == event_id
        else rec
        for rec in records
    ]


def _after_attempt(rec: TargetDelivery, outcome: Outcome, now: float, retry: RetryPolicy) -> TargetDelivery:
    pending = list(rec.pending or [])
    failures = (rec.consecutive_failures or 0) + 1
    if outcome.delivered:
        head = pending.pop(0)
        return rec.model_copy(
            update={
                "pending": pending or None, "attempts": None, "next_attempt_time": None, "consecutive_failures": 0,
                "last_event_id": head.id, "last_event_type": head.type, "last_delivery_time": now_iso(now),
                "delivered": (rec.delivered or 0) + 1,
            }
        )  # fmt: skip
    if not outcome.retryable:
        given_up, _ = _give_up(rec, 0, outcome.error[:512])
        return given_up.model_copy(update={"consecutive_failures": failures})
    attempts = (rec.attempts or 0) + 1
    next_attempt = now_iso(math.ceil(now + retry.delay(attempts, pending[0].id)))
    return rec.model_copy(
        update={
            "attempts": attempts, "consecutive_failures": failures, "last_error": outcome.error[:512],
            "next_attempt_time": next_attempt,
        }
    )  # fmt: skip


def pending_count(records: Iterable[TargetDelivery]) -> int:
    return sum(len(r.pending or []) for r in records)
