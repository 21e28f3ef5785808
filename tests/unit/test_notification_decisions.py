"""Notification decisions: which transitions each webhook target is owed, retries with backoff and jitter,
giving up, and what a job's life looks like to a receiver (each transition once, stable ids)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ffrtmp.api.notifications import MAX_PENDING, NotificationsSpec, PendingEvent, TargetDelivery
from ffrtmp.conditions import now_iso, parse_time
from ffrtmp.controller.notifications import (
    NotificationPlan,
    NotifyState,
    Outcome,
    RetryPolicy,
    after_delivery,
    decide_notifications,
    implied_transitions,
)

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0
UID = "0b6a4b9e-1111-2222-3333-444455556666"
RETRY = RetryPolicy(base_seconds=1.0, max_seconds=60.0)
ALL = ["Queued", "Running", "Succeeded", "Failed"]


def spec(
    *events: str, deadline: int = 3600, progress: int | None = None, names: tuple[str, ...] = ("ops",)
) -> NotificationsSpec:
    target: dict[str, object] = {
        "url": "https://hooks.example.com/in", "signingSecretRef": {"name": "hook", "key": "key"},
        "events": list(events or ALL),
    }  # fmt: skip
    if progress is not None:
        target["progressIntervalSeconds"] = progress
    return NotificationsSpec.model_validate(
        {"targets": [{"name": n, **target} for n in names], "deadlineSeconds": deadline}
    )


def state(phase: str | None, attempt: int = 0, **kw: float | None) -> NotifyState:
    return NotifyState(uid=UID, phase=phase, attempt=attempt, created=NOW - 100, **kw)  # type: ignore[arg-type]


def ids(plan: NotificationPlan) -> list[str]:
    return [s.event.id for s in plan.sends]


def deliver_all(records: list[TargetDelivery], plan: NotificationPlan, now: float) -> list[TargetDelivery]:
    for send in plan.sends:
        records = after_delivery(records, send.target, send.event.id, Outcome(True), now, RETRY)
    return records


def test_the_states_imply_their_transitions_in_order() -> None:
    assert implied_transitions(state(None), NOW) == []
    assert implied_transitions(state("Pending"), NOW) == []
    (queued,) = implied_transitions(state("Queued", queued_time=NOW - 5), NOW)
    assert (queued.type, queued.attempt, queued.time) == ("Queued", 0, NOW - 5)
    running = implied_transitions(state("Running", 1, start_time=NOW - 2), NOW)
    assert [(t.type, t.attempt) for t in running] == [("Queued", 0), ("Running", 1)]
    done = implied_transitions(state("Succeeded", 2, start_time=NOW - 9, completion_time=NOW - 1), NOW)
    assert [(t.type, t.attempt) for t in done] == [("Queued", 1), ("Running", 2), ("Succeeded", 2)]
    assert [t.time for t in done][1:] == [NOW - 9, NOW - 1]
    # Failed before it ever ran (an invalid spec; a deadline while Scheduled): no Running.
    assert [t.type for t in implied_transitions(state("Failed", 0), NOW)] == ["Failed"]
    assert [t.type for t in implied_transitions(state("Failed", 1), NOW)] == ["Queued", "Failed"]
    positions = [t.position for t in done]
    assert positions == sorted(positions)
    # A chunked parent is never assigned itself: it runs and finishes at attempt 0.
    parent = implied_transitions(state("Succeeded", 0, start_time=NOW - 9, completion_time=NOW - 1), NOW)
    assert [(t.type, t.attempt) for t in parent] == [("Running", 0), ("Succeeded", 0)]


def test_a_receiver_sees_each_transition_once_with_a_stable_id() -> None:
    s = spec(*ALL)
    records: list[TargetDelivery] = []
    seen: list[str] = []
    for st_ in (
        state("Queued", queued_time=NOW),
        state("Scheduled", 1),
        state("Running", 1, start_time=NOW + 1),
        state("Running", 1, start_time=NOW + 1),
        state("Succeeded", 1, start_time=NOW + 1, completion_time=NOW + 3),
        state("Succeeded", 1, start_time=NOW + 1, completion_time=NOW + 3),
    ):
        plan = decide_notifications(s, records, st_, NOW + 5)
        seen += ids(plan)
        records = deliver_all(plan.records, plan, NOW + 5)
    assert seen == [f"{UID}.queued.0", f"{UID}.running.1", f"{UID}.succeeded.1"]
    (rec,) = records
    assert rec.delivered == 3 and rec.pending is None and rec.last_event_type == "Succeeded"
    assert rec.last_event_id == f"{UID}.succeeded.1" and rec.seen == "1.2.0"


def test_only_the_asked_transitions_are_sent_and_a_late_view_catches_up() -> None:
    s = spec("Succeeded", "Failed")
    plan = decide_notifications(s, [], state("Running", 1, start_time=NOW), NOW)
    assert plan.sends == [] and plan.changed  # Queued and Running are recorded as seen, not sent
    assert plan.records[0].seen == "1.0.0"
    # A view that first sees the job finished records everything it implies at once.
    both = spec(*ALL)
    plan = decide_notifications(both, [], state("Succeeded", 1, start_time=NOW, completion_time=NOW + 2), NOW + 9)
    assert [p.type for p in plan.records[0].pending or []] == ["Queued", "Running", "Succeeded"]
    assert ids(plan) == [f"{UID}.queued.0"]  # one at a time, oldest first
    assert [p.time for p in plan.records[0].pending or []][1:] == [now_iso(NOW), now_iso(NOW + 2)]


def test_a_failing_receiver_gets_retries_with_backoff_then_the_delivery() -> None:
    s = spec("Succeeded")
    job = state("Succeeded", 1, start_time=NOW, completion_time=NOW)
    plan = decide_notifications(s, [], job, NOW)
    records, now = plan.records, NOW
    (event_id,) = ids(plan)
    waits = []
    for error in ("HTTP 500 Internal Server Error", "HTTP 500 Internal Server Error", "no answer within 2s"):
        records = after_delivery(records, "ops", event_id, Outcome(False, error), now, RETRY)
        (rec,) = records
        due = parse_time(rec.next_attempt_time)
        assert due is not None and due > now
        waits.append(due - now)
        assert decide_notifications(s, records, job, due - 1).sends == []  # not before it is due
        plan = decide_notifications(s, records, job, due)
        assert ids(plan) == [event_id]  # the same id on every retry
        now = due
    (rec,) = records
    assert rec.attempts == 3 and rec.consecutive_failures == 3 and rec.last_error == "no answer within 2s"
    assert waits == sorted(waits) and waits[-1] >= 2  # 0.5-1 s, 1-2 s, 2-4 s (rounded up to whole seconds)
    records = after_delivery(records, "ops", event_id, Outcome(True), now, RETRY)
    (rec,) = records
    assert rec.consecutive_failures == 0 and rec.attempts is None and rec.delivered == 1
    assert rec.last_error == "no answer within 2s"  # the last failure stays visible
    assert decide_notifications(s, records, job, now + 100).sends == []


def test_an_answer_for_an_event_no_longer_first_changes_nothing() -> None:
    s = spec("Succeeded")
    plan = decide_notifications(s, [], state("Succeeded", 1, start_time=NOW, completion_time=NOW), NOW)
    assert after_delivery(plan.records, "ops", "another-id", Outcome(True), NOW, RETRY) == plan.records
    assert after_delivery(plan.records, "other", ids(plan)[0], Outcome(True), NOW, RETRY) == plan.records


def test_an_event_past_the_deadline_is_given_up_and_the_next_one_goes() -> None:
    s = spec(*ALL, deadline=60)
    job = state("Succeeded", 1, start_time=NOW, completion_time=NOW + 100)
    plan = decide_notifications(s, [], job, NOW + 90)
    # Queued (at creation, NOW-100) and Running (NOW) are past the deadline at NOW+90; Succeeded is not yet.
    assert len(plan.given_up) == 2 and "deadlineSeconds (60s)" in plan.given_up[0]
    assert ids(plan) == [f"{UID}.succeeded.1"]
    (rec,) = plan.records
    assert rec.given_up == 2 and [p.type for p in rec.pending or []] == ["Succeeded"]


def test_a_refused_destination_gives_the_event_up_at_once() -> None:
    s = spec("Succeeded", "Failed")
    plan = decide_notifications(s, [], state("Failed", 0), NOW)
    records = after_delivery(plan.records, "ops", ids(plan)[0], Outcome(False, "not allowed", False), NOW, RETRY)
    (rec,) = records
    assert rec.pending is None and rec.given_up == 1 and rec.last_error == "not allowed"
    assert rec.consecutive_failures == 1
    assert decide_notifications(s, records, state("Failed", 0), NOW + 5).sends == []


def test_progress_every_interval_only_the_latest_waits() -> None:
    s = spec("Progress", progress=30)
    job = state("Running", 1, start_time=NOW, percent=10.0)
    plan = decide_notifications(s, [], job, NOW + 29)
    assert plan.sends == [] and plan.wake_at == NOW + 30
    plan = decide_notifications(s, plan.records, job, NOW + 31)
    assert ids(plan) == [f"{UID}.progress.1.1"] and plan.sends[0].event.percent == 10.0
    records = after_delivery(plan.records, "ops", ids(plan)[0], Outcome(False, "HTTP 503"), NOW + 31, RETRY)
    # While the first is retried, newer progress replaces the older waiting one.
    for t, percent in ((NOW + 61, 40.0), (NOW + 95, 70.0)):
        records = decide_notifications(s, records, replace(job, percent=percent), t).records
    assert [(p.id.rsplit(".", 1)[1], p.percent) for p in records[0].pending or []] == [("1", 10.0), ("3", 70.0)]


def test_pending_is_bounded_dropping_progress_first() -> None:
    s = spec("Queued", "Running", "Progress", progress=10)
    head = PendingEvent(id="x.queued.0", type="Queued", time=now_iso(NOW), attempt=0)
    many = [head.model_copy(update={"id": f"x.running.{i}", "type": "Running", "attempt": i}) for i in range(1, 11)]
    records = [
        TargetDelivery(name="ops", seen="10.0.0", pending=[head, *many[:-1]], next_attempt_time=now_iso(NOW + 500))
    ]
    job = state("Running", 10, start_time=NOW - 25, percent=50.0)
    plan = decide_notifications(s, records, job, NOW)
    (rec,) = plan.records
    assert len(rec.pending or []) == MAX_PENDING
    assert [p.type for p in rec.pending or []].count("Progress") == 0  # the new progress was the one dropped
    assert rec.given_up == 1 and plan.given_up and "more than 10" in plan.given_up[0]


def test_a_target_taken_out_of_the_spec_loses_its_record() -> None:
    two = spec("Succeeded", names=("a", "b"))
    job = state("Succeeded", 1, start_time=NOW, completion_time=NOW)
    first = decide_notifications(two, [], job, NOW)
    records = deliver_all(first.records, first, NOW)
    plan = decide_notifications(spec("Succeeded", names=("b",)), records, job, NOW)
    assert plan.changed and [r.name for r in plan.records] == ["b"] and plan.sends == []


@settings(max_examples=50)
@given(st.integers(1, 30), st.text(min_size=1, max_size=40))
def test_backoff_grows_is_capped_and_is_the_same_everywhere(attempts: int, event_id: str) -> None:
    policy = RetryPolicy(base_seconds=2.0, max_seconds=100.0)
    raw = min(2.0 * 2 ** (attempts - 1), 100.0)
    delay = policy.delay(attempts, event_id)
    assert raw / 2 <= delay < raw
    assert policy.delay(attempts, event_id) == delay


# --- a job's whole life, seen by a pass at random moments -----------------------------------------

STEPS = st.sampled_from(["succeed", "retry", "lost-before-start", "fail-running", "fail-scheduled"])


def life(steps: list[str]) -> list[NotifyState]:
    """The states a job goes through: queued, then attempts, each ending as its step says, until one ends it."""
    t = NOW
    states = [state("Pending"), state("Queued", 0, queued_time=t)]
    attempt = 0
    for step in [*steps, "succeed"]:
        attempt += 1
        t += 10
        states.append(state("Scheduled", attempt, queued_time=NOW))
        if step == "lost-before-start":
            states.append(state("Queued", attempt, queued_time=NOW))
            continue
        if step == "fail-scheduled":
            states.append(state("Failed", attempt, queued_time=NOW, completion_time=t + 1))
            return states
        states.append(state("Running", attempt, queued_time=NOW, start_time=t))
        if step == "retry":
            states.append(state("Queued", attempt, queued_time=NOW))
            continue
        final = "Failed" if step == "fail-running" else "Succeeded"
        states.append(state(final, attempt, queued_time=NOW, start_time=t, completion_time=t + 2))
        return states
    raise AssertionError("unreachable")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(STEPS, max_size=5),
    st.data(),
    st.lists(st.sampled_from(ALL), min_size=1, unique=True),
)
def test_each_asked_transition_reaches_each_target_exactly_once(
    steps: list[str], data: st.DataObject, events: list[str]
) -> None:
    states = life(steps)
    # A pass sees some of the states (the last one always: the job stays there).
    observed = [s for s in states[:-1] if data.draw(st.booleans())] + [states[-1]]
    s = spec(*events, names=("a", "b"), deadline=604800)  # retries here add up to hours of backoff
    records: list[TargetDelivery] = []
    delivered: dict[str, list[str]] = {"a": [], "b": []}
    now = NOW + 1000
    for job in observed:
        # Between two views the receivers fail a few attempts, then answer 2xx.
        for _ in range(12):
            plan = decide_notifications(s, records, job, now)
            records = plan.records
            if not plan.sends:
                if plan.wake_at is None:
                    break
                now = max(now, plan.wake_at)
                continue
            for send in plan.sends:
                ok = data.draw(st.booleans())
                if ok:
                    delivered[send.target].append(send.event.id)
                outcome = Outcome(True) if ok else Outcome(False, "HTTP 500")
                records = after_delivery(records, send.target, send.event.id, outcome, now, RETRY)
        # Drain whatever is still pending for this view.
        for _ in range(20):
            plan = decide_notifications(s, records, job, now)
            records = plan.records
            if not any(r.pending for r in records):
                break
            for send in plan.sends:
                delivered[send.target].append(send.event.id)
                records = after_delivery(records, send.target, send.event.id, Outcome(True), now, RETRY)
            now = max(now, plan.wake_at or now)
    expected: list[str] = []
    for job in observed:
        for t in implied_transitions(job, now):
            if t.type in events and t.event_id(UID) not in expected:
                expected.append(t.event_id(UID))
    for target, got in delivered.items():
        assert len(got) == len(set(got)), f"{target} got an id twice after a 2xx: {got}"
        assert sorted(got) == sorted(expected), (target, got, expected)
    assert all(not r.pending and not r.given_up for r in records)


def test_a_job_not_admitted_yet_has_nothing_to_write() -> None:
    plan = decide_notifications(spec(*ALL), [], state("Pending"), NOW)
    assert not plan.changed and plan.sends == [] and plan.records == [TargetDelivery(name="ops")]
