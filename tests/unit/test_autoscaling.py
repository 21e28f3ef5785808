"""Autoscaling: properties of the recommendation and of scale-down choices, plus examples."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ffrtmp.controller.autoscaling import (
    ScaleDecision,
    ScaleInput,
    WorkerLoad,
    choose_removals,
    jobs_per_hour,
    raw_recommendation,
    recommend,
)

pytestmark = pytest.mark.unit

PROPERTY = settings(max_examples=300, deadline=None)


def scale_input(**changes: Any) -> ScaleInput:
    base = ScaleInput(
        now=1_000.0,
        queued=0,
        running=0,
        slots_per_worker=4,
        target_utilization=100,
        current=0,
        unschedulable=0,
        min_workers=0,
        max_workers=100,
        scale_up_step=10,
        stabilization_seconds=300,
        idle_timeout_seconds=300,
        last_active=None,
        history=(),
    )
    return dataclasses.replace(base, **changes)


@st.composite
def inputs(draw: st.DrawFn) -> ScaleInput:
    now = draw(st.floats(1_000, 100_000, allow_nan=False))
    lo = draw(st.integers(0, 5))
    hi = draw(st.integers(lo, 40))
    current = draw(st.integers(0, 50))
    window = draw(st.integers(0, 600))
    history = tuple(
        sorted(
            draw(
                st.lists(
                    st.tuples(st.floats(now - 900, now, allow_nan=False), st.integers(0, 60)),
                    max_size=8,
                )
            )
        )
    )
    return ScaleInput(
        now=now,
        queued=draw(st.integers(0, 200)),
        running=draw(st.integers(0, 100)),
        slots_per_worker=draw(st.integers(1, 8)),
        target_utilization=draw(st.integers(10, 100)),
        current=current,
        unschedulable=draw(st.integers(0, current)) if draw(st.booleans()) else 0,
        min_workers=lo,
        max_workers=hi,
        scale_up_step=draw(st.integers(1, 20)),
        stabilization_seconds=window,
        idle_timeout_seconds=draw(st.integers(0, 900)),
        last_active=draw(st.none() | st.floats(now - 2_000, now, allow_nan=False)),
        history=history,
    )


# --- recommend: properties ----------------------------------------------------------------------


@PROPERTY
@given(inputs())
def test_desired_is_always_within_min_and_max(inp: ScaleInput) -> None:
    d = recommend(inp)
    assert inp.min_workers <= d.desired <= inp.max_workers
    assert d.reason


@PROPERTY
@given(inputs())
def test_running_jobs_keep_their_workers_as_far_as_max_allows(inp: ScaleInput) -> None:
    d = recommend(inp)
    needed = math.ceil(inp.running / inp.slots_per_worker)
    assert d.desired >= min(needed, inp.current, inp.max_workers)
    if inp.unschedulable == 0 and needed <= inp.current + inp.scale_up_step:
        assert d.desired >= min(needed, inp.max_workers)


@PROPERTY
@given(inputs(), st.integers(1, 100))
def test_desired_is_monotone_in_the_queue(inp: ScaleInput, more: int) -> None:
    smaller = recommend(inp)
    larger = recommend(dataclasses.replace(inp, queued=inp.queued + more))
    assert larger.desired >= smaller.desired


@PROPERTY
@given(inputs())
def test_scale_up_is_bounded_by_the_step(inp: ScaleInput) -> None:
    d = recommend(inp)
    assert d.desired <= max(inp.current + inp.scale_up_step, inp.min_workers)


@PROPERTY
@given(inputs())
def test_unschedulable_workers_stop_growth(inp: ScaleInput) -> None:
    d = recommend(dataclasses.replace(inp, unschedulable=max(inp.unschedulable, 1)))
    assert d.desired <= max(inp.current, inp.min_workers)
    raw = raw_recommendation(inp.queued, inp.running, inp.slots_per_worker, inp.target_utilization)
    if min(raw, inp.max_workers) > inp.current >= inp.min_workers:
        assert d.limited == "Unschedulable"
        assert d.limited_message and "cannot be scheduled" in d.limited_message


@PROPERTY
@given(inputs())
def test_scale_to_zero_only_after_the_idle_timeout(inp: ScaleInput) -> None:
    d = recommend(inp)
    if d.desired == 0 and inp.max_workers > 0:
        assert inp.queued == 0
        assert inp.running == 0
        if inp.current > 0 and inp.last_active is not None:
            assert inp.now - inp.last_active >= inp.idle_timeout_seconds


@PROPERTY
@given(inputs())
def test_an_idle_pool_goes_to_zero_exactly_when_the_idle_timeout_passed(inp: ScaleInput) -> None:
    inp = dataclasses.replace(
        inp,
        queued=0,
        running=0,
        min_workers=0,
        max_workers=max(inp.max_workers, 1),
        current=max(inp.current, 1),
        unschedulable=0,
        history=(),
    )
    idle = inp.last_active is None or inp.now - inp.last_active >= inp.idle_timeout_seconds
    assert (recommend(inp).desired == 0) == idle


@PROPERTY
@given(inputs())
def test_max_workers_limit_is_reported(inp: ScaleInput) -> None:
    d = recommend(inp)
    raw = raw_recommendation(inp.queued, inp.running, inp.slots_per_worker, inp.target_utilization)
    if raw > inp.max_workers:
        assert d.limited in ("MaxWorkers", "Unschedulable")
    elif d.limited is not None:
        assert d.limited == "Unschedulable"
    assert (d.limited is None) == (d.limited_message is None)


@PROPERTY
@given(inputs())
def test_history_is_pruned_to_the_window_and_ends_with_this_recommendation(inp: ScaleInput) -> None:
    d = recommend(inp)
    raw = raw_recommendation(inp.queued, inp.running, inp.slots_per_worker, inp.target_utilization)
    assert d.history[-1] == (inp.now, raw)
    assert all(t > inp.now - inp.stabilization_seconds for t, _ in d.history[:-1])
    # nothing that could still be the window's maximum is dropped
    in_window = [r for t, r in inp.history if t > inp.now - inp.stabilization_seconds]
    assert max(r for _, r in d.history) == max([*in_window, raw])


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(0, 20),
    queue=st.lists(st.integers(0, 80), min_size=2, max_size=30),
    gaps=st.lists(st.floats(0.5, 20, allow_nan=False), min_size=30, max_size=30),
    window=st.integers(60, 600),
    step=st.integers(1, 20),
    slots=st.integers(1, 4),
)
def test_an_oscillating_queue_never_flaps_within_the_window(
    *, start: int, queue: list[int], gaps: list[float], window: int, step: int, slots: int
) -> None:
    """Fed through successive calls (history threaded, workers appear at once), desired never drops
    below a value it rose to until that rise has left the stabilization window."""
    now, current = 10_000.0, start
    history: tuple[tuple[float, int], ...] = ()
    rises: list[tuple[float, int]] = []
    seen: list[tuple[float, int]] = []
    for q, gap in zip(queue, gaps, strict=False):
        now += gap
        d = recommend(
            scale_input(
                now=now,
                queued=q,
                current=current,
                slots_per_worker=slots,
                scale_up_step=step,
                stabilization_seconds=window,
                history=history,
                last_active=now if q else None,
            )
        )
        for t, level in rises:
            if now - t < window:
                assert d.desired >= level, (seen, (now, d.desired))
        if d.desired > current:
            rises.append((now, d.desired))
        seen.append((now, d.desired))
        current, history = d.desired, d.history


@PROPERTY
@given(inputs())
def test_from_zero_the_first_queued_job_scales_up_at_once(inp: ScaleInput) -> None:
    inp = dataclasses.replace(inp, current=0, unschedulable=0, queued=max(inp.queued, 1))
    if inp.max_workers > 0:
        assert recommend(inp).desired >= 1


# --- recommend: examples ------------------------------------------------------------------------


def test_forty_queued_jobs_with_four_slots_need_ten_workers_reached_in_steps() -> None:
    current, now = 0, 1_000.0
    history: tuple[tuple[float, int], ...] = ()
    steps = []
    for _ in range(4):
        d = recommend(
            scale_input(now=now, queued=40, current=current, scale_up_step=4, history=history, last_active=now)
        )
        steps.append(d.desired)
        current, history, now = d.desired, d.history, now + 15
    assert steps == [4, 8, 10, 10]
    first = recommend(scale_input(queued=40, scale_up_step=4))
    assert first.reason.startswith("40 jobs queued, 0 running, 4 slots/worker: need 10 workers")
    assert "scaling up from 0 to 4" in first.reason
    assert first.limited is None


def test_target_utilization_adds_headroom() -> None:
    d = recommend(scale_input(queued=40, target_utilization=80, scale_up_step=100))
    assert d.desired == 13  # ceil(40 / (4 * 0.8)) = ceil(12.5)
    assert "80% target utilization" in d.reason


def test_scale_down_waits_for_the_stabilization_window() -> None:
    busy = recommend(scale_input(now=1_000, queued=40, current=10, last_active=1_000))
    assert busy.desired == 10
    quiet = recommend(scale_input(now=1_100, queued=4, current=10, history=busy.history, last_active=1_100))
    assert quiet.desired == 10
    assert "scale-down window" in quiet.reason
    later = recommend(scale_input(now=1_301, queued=4, current=10, history=quiet.history, last_active=1_301))
    assert later.desired == 1
    assert "scaling down from 10 to 1" in later.reason


def test_a_queue_that_comes_and_goes_every_30s_keeps_the_pool_for_the_window() -> None:
    current, now = 10, 1_000.0
    history: tuple[tuple[float, int], ...] = ()
    sizes = []
    for i in range(20):  # 40 queued, then empty, then 40 ... every 30 s for 10 minutes
        queued = 40 if i % 2 == 0 else 0
        d = recommend(
            scale_input(now=now, queued=queued, current=current, history=history, last_active=now - (i % 2) * 30)
        )
        sizes.append(d.desired)
        current, history, now = d.desired, d.history, now + 30
    assert sizes == [10] * 20
    assert len(history) <= 2  # dominated entries are dropped: the history stays short


def test_scale_to_zero_waits_for_the_idle_timeout() -> None:
    inp = scale_input(now=10_000, current=2, last_active=9_900, stabilization_seconds=0)
    d = recommend(inp)
    assert d.desired == 1
    assert "idle for 100s of the 300s idle timeout" in d.reason
    assert recommend(dataclasses.replace(inp, last_active=9_700)).desired == 0
    assert recommend(dataclasses.replace(inp, last_active=None)).desired == 0
    assert recommend(dataclasses.replace(inp, min_workers=2, last_active=None)).desired == 2


def test_unschedulable_gpu_workers_hold_the_pool() -> None:
    d = recommend(scale_input(queued=40, current=3, unschedulable=1))
    assert d.desired == 3
    assert d.limited == "Unschedulable"
    assert d.limited_message is not None
    assert "GPU" in d.limited_message


def test_max_workers_caps_and_says_so() -> None:
    d = recommend(scale_input(queued=400, current=5, max_workers=8))
    assert d.desired == 8
    assert d.limited == "MaxWorkers"
    assert d.limited_message == "the queue needs 100 workers but maxWorkers is 8"


def test_min_workers_is_kept_with_an_empty_queue() -> None:
    d = recommend(scale_input(current=0, min_workers=2))
    assert d.desired == 2


def test_running_jobs_keep_their_workers() -> None:
    d = recommend(scale_input(running=9, slots_per_worker=4, current=5, stabilization_seconds=0))
    assert d.desired == 3


def test_decision_is_a_value() -> None:
    d = recommend(scale_input(queued=1))
    assert isinstance(d, ScaleDecision)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.desired = 3  # type: ignore[misc]


# --- choose_removals ----------------------------------------------------------------------------

loads = st.lists(
    st.builds(
        WorkerLoad,
        name=st.sampled_from([f"w{i}" for i in range(12)]),
        running=st.integers(0, 3),
        ready=st.booleans(),
        pending=st.booleans(),
        created=st.floats(0, 1_000, allow_nan=False),
    ),
    max_size=15,
)


@PROPERTY
@given(loads, st.integers(-2, 20))
def test_removals_are_idle_unique_and_at_most_count(workers: list[WorkerLoad], count: int) -> None:
    chosen = choose_removals(workers, count)
    busy = {w.name for w in workers if w.running > 0}
    assert len(chosen) == len(set(chosen))
    assert len(chosen) <= max(count, 0)
    assert not set(chosen) & busy
    assert set(chosen) <= {w.name for w in workers}
    idle = {w.name for w in workers} - busy
    assert len(chosen) == min(max(count, 0), len(idle))


def test_removal_prefers_pending_then_not_ready_then_newest() -> None:
    workers = [
        WorkerLoad("old-ready", 0, True, False, 100.0),
        WorkerLoad("new-ready", 0, True, False, 300.0),
        WorkerLoad("not-ready", 0, False, False, 50.0),
        WorkerLoad("pending", 0, False, True, 10.0),
        WorkerLoad("busy-new", 2, True, False, 999.0),
    ]
    assert choose_removals(workers, 10) == ["pending", "not-ready", "new-ready", "old-ready"]
    assert choose_removals(workers, 2) == ["pending", "not-ready"]
    assert choose_removals(workers, 0) == []


def test_removal_never_takes_a_busy_worker_even_if_fewer_result() -> None:
    workers = [WorkerLoad("a", 1, True, False, 1.0), WorkerLoad("b", 3, True, False, 2.0)]
    assert choose_removals(workers, 2) == []


# --- jobs_per_hour ------------------------------------------------------------------------------


def test_jobs_per_hour_runbook_formula() -> None:
    assert jobs_per_hour(4, 2, 600.0) == 48.0  # 4 x 2 x 3600 / 600
    assert jobs_per_hour(0, 2, 600.0) == 0.0
    assert jobs_per_hour(4, 2, None) is None
    assert jobs_per_hour(4, 2, 0.0) is None
