"""The Event budget: properties of the gate over random Event streams, plus examples."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ffrtmp.controller.events import EventBudget, EventGate, ObjectRef, Summary

pytestmark = pytest.mark.unit

PROPERTY = settings(max_examples=300, deadline=None)
NAMESPACES = ("a", "b", "c")
REASONS = ("Scheduled", "Started", "Completed", "ScaledUp")
POOL = ObjectRef("WorkerPool", "cpu", "u-cpu")


def job(name: str) -> ObjectRef:
    return ObjectRef("TranscodeJob", name, f"u-{name}")


@dataclass(frozen=True)
class Step:
    after: float  # seconds after the previous step
    namespace: str | None  # None: the reconciler's pass asks for the summaries due
    type: str = "Normal"
    reason: str = "Scheduled"
    repeat: int = 1  # this many such Events at once (a pass's decisions come in bursts)


budgets = st.builds(
    EventBudget,
    rate=st.floats(0.1, 50, allow_nan=False),
    burst=st.integers(1, 20),
    summary_seconds=st.floats(0.5, 30, allow_nan=False),
)
steps = st.lists(
    st.builds(
        Step,
        after=st.one_of(st.just(0.0), st.floats(0, 5, allow_nan=False)),
        namespace=st.one_of(st.none(), st.sampled_from(NAMESPACES)),
        type=st.sampled_from(["Normal", "Normal", "Normal", "Warning"]),
        reason=st.sampled_from(REASONS),
        repeat=st.integers(1, 30),
    ),
    max_size=100,
)


@dataclass
class Run:
    normal_writes: list[float]  # times of the Normal Event writes, summaries included
    warnings: int
    warnings_written: int
    summaries: list[tuple[float, Summary]]
    pending_at_each_summary: list[tuple[Summary, Counter[str]]]  # what was held since the last one
    left: dict[str, Counter[str]]  # held back, in no summary yet


def run(budget: EventBudget, events: list[Step], drain: bool) -> Run:
    now = 1000.0
    gate = EventGate(budget, now)
    out = Run([], 0, 0, [], [], {})
    pending: dict[str, Counter[str]] = defaultdict(Counter)

    def ask(now: float) -> None:
        for s in gate.summaries(now):
            out.normal_writes.append(now)
            out.summaries.append((now, s))
            out.pending_at_each_summary.append((s, pending.pop(s.namespace, Counter())))

    for i, step in enumerate(events):
        now += step.after
        if step.namespace is None:
            ask(now)
            continue
        for k in range(step.repeat):
            written = gate.admit(step.namespace, step.type, step.reason, job(f"j{i}-{k}"), POOL, now)
            if step.type == "Warning":
                out.warnings += 1
                out.warnings_written += written
            elif written:
                out.normal_writes.append(now)
            else:
                pending[step.namespace][step.reason] += 1
    if drain:  # passes go on with no new Events: every count ends up in a summary
        for _ in range(len(NAMESPACES) + 2):
            now += budget.summary_seconds + budget.burst / budget.rate
            ask(now)
    out.left = {ns: c for ns, c in pending.items() if c}
    return out


@PROPERTY
@given(budgets, steps)
def test_normal_writes_over_any_window_stay_within_rate_times_window_plus_burst(
    budget: EventBudget, events: list[Step]
) -> None:
    times = run(budget, events, drain=True).normal_writes
    assert times == sorted(times)
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            written = j - i + 1  # the writes at times[i..j], a window of times[j] - start seconds
            assert written <= budget.rate * (times[j] - start) + budget.burst + 1e-9, (i, j, times)


@PROPERTY
@given(budgets, steps)
def test_warnings_are_never_held_back(budget: EventBudget, events: list[Step]) -> None:
    r = run(budget, events, drain=False)
    assert r.warnings_written == r.warnings


@PROPERTY
@given(budgets, steps)
def test_every_held_back_event_is_counted_in_exactly_one_summary(budget: EventBudget, events: list[Step]) -> None:
    r = run(budget, events, drain=True)
    for summary, held_since_the_last in r.pending_at_each_summary:
        assert Counter(dict(summary.counts)) == held_since_the_last, summary
        assert summary.held > 0
    assert r.left == {}


@PROPERTY
@given(budgets, steps)
def test_a_namespace_gets_at_most_one_summary_per_interval(budget: EventBudget, events: list[Step]) -> None:
    last: dict[str, float] = {}
    for at, s in run(budget, events, drain=True).summaries:
        assert s.seconds >= budget.summary_seconds - 1e-9  # times add up in floats
        if s.namespace in last:
            assert at - last[s.namespace] >= budget.summary_seconds - 1e-9
        last[s.namespace] = at


def test_a_burst_then_the_rate_then_a_summary() -> None:
    gate = EventGate(EventBudget(rate=1, burst=2, summary_seconds=60), now=0)
    written = [gate.admit("ns", "Normal", "Scheduled", job(f"j{i}"), POOL, 0) for i in range(5)]
    assert written == [True, True, False, False, False]
    assert gate.admit("ns", "Warning", "InputNotFound", job("bad"), POOL, 0)
    assert gate.admit("ns", "Normal", "Started", job("j0"), POOL, 1.0)  # one token a second
    assert not gate.admit("ns", "Normal", "Started", job("j1"), POOL, 1.5)
    assert gate.summaries(59.9) == []
    [summary] = gate.summaries(60)
    assert summary == Summary("ns", POOL, (("Scheduled", 3), ("Started", 1)), 60)
    assert summary.message().startswith("3 Scheduled, 1 Started events not recorded in the last 60s")
    assert gate.held_back() == {}
    assert gate.summaries(1000) == []


def test_a_due_summary_takes_the_next_token_before_any_event() -> None:
    gate = EventGate(EventBudget(rate=1, burst=1, summary_seconds=10), now=0)
    assert gate.admit("ns", "Normal", "Scheduled", job("a"), None, 0)
    assert not gate.admit("ns", "Normal", "Scheduled", job("b"), None, 0)
    # Due at 10 s with a token there: an Event does not take it, a Warning is written without it.
    assert not gate.admit("ns", "Normal", "Completed", job("c"), None, 10)
    assert gate.admit("ns", "Warning", "Retrying", job("d"), None, 10)
    [summary] = gate.summaries(10)
    assert summary.counts == (("Completed", 1), ("Scheduled", 1))
    assert summary.target == job("c")  # no pool named: the last one held
    assert not gate.admit("ns", "Normal", "Scheduled", job("e"), None, 10)  # that was the only token
    assert gate.admit("ns", "Normal", "Scheduled", job("f"), None, 11)


def test_a_warning_takes_a_token_when_there_is_one() -> None:
    gate = EventGate(EventBudget(rate=1, burst=1, summary_seconds=10), now=0)
    assert gate.admit("ns", "Warning", "Retrying", job("a"), None, 0)
    assert not gate.admit("ns", "Normal", "Scheduled", job("b"), None, 0)


def test_the_summary_names_the_pool_most_held_events_concerned() -> None:
    gpu = ObjectRef("WorkerPool", "gpu", "u-gpu")
    gate = EventGate(EventBudget(rate=1, burst=1, summary_seconds=5), now=0)
    gate.admit("ns", "Normal", "Scheduled", job("first"), None, 0)
    for name, pool in (("a", POOL), ("b", gpu), ("c", gpu), ("d", None)):
        assert not gate.admit("ns", "Normal", "Scheduled", job(name), pool, 0)
    assert not gate.admit("other", "Normal", "ScaledUp", POOL, POOL, 0)
    [mine] = gate.summaries(5)  # one token: the other namespace's summary waits for the next
    assert (mine.namespace, mine.target, mine.counts) == ("ns", gpu, (("Scheduled", 4),))
    assert gate.summaries(5.5) == []
    [theirs] = gate.summaries(6)
    assert (theirs.namespace, theirs.target, theirs.seconds) == ("other", POOL, 6)


def test_a_clock_that_steps_back_adds_no_tokens() -> None:
    gate = EventGate(EventBudget(rate=10, burst=1, summary_seconds=1000), now=100)
    assert gate.admit("ns", "Normal", "Scheduled", job("a"), None, 100)
    assert not gate.admit("ns", "Normal", "Scheduled", job("b"), None, 50)
    assert not gate.admit("ns", "Normal", "Scheduled", job("c"), None, 100)
    assert gate.admit("ns", "Normal", "Scheduled", job("d"), None, 100.2)


@pytest.mark.parametrize(
    ("rate", "burst", "seconds", "needle"),
    [(0, 5, 60, "rate"), (1, 0, 60, "burst"), (1, 5, 0, "interval"), (float("nan"), 5, 60, "rate")],
)
def test_a_budget_that_writes_nothing_is_refused(rate: float, burst: int, seconds: float, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        EventBudget(rate, burst, seconds)
