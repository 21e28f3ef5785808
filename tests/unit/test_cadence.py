"""The write budget's cadence: properties of decide_cadence, the Lease annotation, the rollout."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ffrtmp.api.cadence import Cadence, next_progress_due
from ffrtmp.controller.cadence import (
    RENEWALS_PER_LEASE,
    WriteBudget,
    counter_write_seconds,
    current_cadence,
    decide_cadence,
    lease_annotation_writes,
    published_annotation,
)

pytestmark = pytest.mark.unit

PROPERTY = settings(max_examples=400, deadline=None)
BUDGET = WriteBudget()
workers = st.integers(min_value=0, max_value=20_000)
running = st.integers(min_value=0, max_value=200_000)
budgets = st.builds(
    WriteBudget,
    writes_per_second=st.floats(min_value=5, max_value=2_000),
    lease_share=st.floats(min_value=0.1, max_value=0.9),
    event_writes_per_second=st.floats(min_value=0, max_value=4),
    pool_counter_writes_per_second=st.floats(min_value=0.5, max_value=20),
)
pool_counts = st.integers(min_value=0, max_value=2_000)


def test_a_small_farm_runs_at_the_floor_and_nothing_is_published() -> None:
    decision = decide_cadence(3, 10, BUDGET)
    assert decision.cadence == Cadence(5, 15, 5)
    assert published_annotation(decision, BUDGET) is None
    assert not decision.over_budget


def test_the_issues_example_two_thousand_workers_ten_thousand_jobs() -> None:
    decision = decide_cadence(2_000, 10_000, BUDGET)
    # 2,000 / 50 writes/s = 40 s renewals; progress gets 100 - 10 - 50 = 40 writes/s: 250 s -> 300 s step.
    assert decision.cadence == Cadence(40, 120, 300)
    assert decision.expected_writes_per_second == pytest.approx(2_000 / 40 + 10_000 / 300 + 10)
    assert not decision.over_budget
    assert published_annotation(decision, BUDGET) == "renew=40,lease=120,progress=300"


@PROPERTY
@given(workers, running, budgets)
def test_periods_stay_within_floor_and_ceiling(w: int, r: int, budget: WriteBudget) -> None:
    c = decide_cadence(w, r, budget).cadence
    assert budget.renew_floor_seconds <= c.renew_seconds <= budget.renew_max_seconds
    assert budget.progress_floor_seconds <= c.progress_seconds <= budget.progress_max_seconds
    assert c.lease_seconds == RENEWALS_PER_LEASE * c.renew_seconds


@PROPERTY
@given(workers, running, budgets)
def test_the_budget_holds_unless_a_ceiling_binds(w: int, r: int, budget: WriteBudget) -> None:
    d = decide_cadence(w, r, budget)
    at_ceiling = (
        d.cadence.renew_seconds == budget.renew_max_seconds or d.cadence.progress_seconds == budget.progress_max_seconds
    )
    if not at_ceiling:
        assert not d.over_budget
        assert d.expected_writes_per_second <= budget.writes_per_second * (1 + 1e-9)
    assert d.over_budget == (d.expected_writes_per_second > budget.writes_per_second * (1 + 1e-9))


@PROPERTY
@given(workers, running, pool_counts, budgets)
def test_the_pools_counter_writes_are_in_the_budget(w: int, r: int, pools: int, budget: WriteBudget) -> None:
    d = decide_cadence(w, r, budget, pools=pools)
    counters = pools / counter_write_seconds(pools, budget)
    assert counters <= budget.pool_counter_writes_per_second * (1 + 1e-9)
    base = w / d.cadence.renew_seconds + r / d.cadence.progress_seconds + budget.event_writes_per_second
    assert d.expected_writes_per_second == pytest.approx(base + counters)
    if d.cadence.renew_seconds < budget.renew_max_seconds and d.cadence.progress_seconds < budget.progress_max_seconds:
        assert not d.over_budget


@PROPERTY
@given(pool_counts, pool_counts, budgets)
def test_counter_period_is_monotone_in_pools_from_its_floor(a: int, b: int, budget: WriteBudget) -> None:
    low, high = sorted((a, b))
    assert budget.counter_floor_seconds <= counter_write_seconds(low, budget) <= counter_write_seconds(high, budget)


def test_a_hundred_pools_write_their_counters_every_twenty_seconds() -> None:
    assert counter_write_seconds(1, BUDGET) == 2.0
    assert counter_write_seconds(10, BUDGET) == 2.0
    assert counter_write_seconds(100, BUDGET) == 20.0
    # 2,000 workers and 10,000 jobs in 100 namespaces: progress gets 100 - 10 - 5 - 50 = 35 writes/s.
    decision = decide_cadence(2_000, 10_000, BUDGET, pools=100)
    assert decision.cadence == Cadence(40, 120, 300)
    assert decision.expected_writes_per_second == pytest.approx(50 + 10_000 / 300 + 10 + 5)


@PROPERTY
@given(workers, workers, running, budgets)
def test_renewal_period_is_monotone_in_workers(a: int, b: int, r: int, budget: WriteBudget) -> None:
    low, high = sorted((a, b))
    assert decide_cadence(low, r, budget).cadence.renew_seconds <= decide_cadence(high, r, budget).cadence.renew_seconds


@PROPERTY
@given(workers, running, running, budgets)
def test_progress_period_is_monotone_in_running_jobs(w: int, a: int, b: int, budget: WriteBudget) -> None:
    low, high = sorted((a, b))
    slow = decide_cadence(w, high, budget).cadence.progress_seconds
    assert decide_cadence(w, low, budget).cadence.progress_seconds <= slow


@PROPERTY
@given(workers, running, budgets)
def test_a_decision_is_stable_when_fed_back(w: int, r: int, budget: WriteBudget) -> None:
    first = decide_cadence(w, r, budget)
    assert decide_cadence(w, r, budget, current=first.cadence) == first


@PROPERTY
@given(workers, workers, running, budgets)
def test_steps_down_only_with_a_margin(before: int, after: int, r: int, budget: WriteBudget) -> None:
    current = decide_cadence(before, r, budget).cadence
    held = decide_cadence(after, r, budget, current=current).cadence
    fresh = decide_cadence(after, r, budget).cadence
    # Never below what the load needs, never above what was published or what the load needs.
    assert held.renew_seconds >= fresh.renew_seconds
    assert held.renew_seconds <= max(current.renew_seconds, fresh.renew_seconds)
    if held.renew_seconds < current.renew_seconds:
        lease_writes = budget.writes_per_second * budget.lease_share
        assert after / lease_writes <= 0.8 * held.renew_seconds or held.renew_seconds == budget.renew_floor_seconds


def test_load_just_under_a_step_keeps_the_longer_period() -> None:
    up = decide_cadence(300, 0, BUDGET).cadence  # 300 / 50 = 6 s -> 10 s
    assert up.renew_seconds == 10
    # 240 workers need 4.8 s: the floor would do, but only 4.0 s fits with the margin: stay at 10 s.
    assert decide_cadence(240, 0, BUDGET, current=up).cadence.renew_seconds == 10
    assert decide_cadence(200, 0, BUDGET, current=up).cadence.renew_seconds == 5


def test_past_the_ceilings_the_decision_says_over_budget() -> None:
    decision = decide_cadence(5_000, 0, BUDGET)
    assert decision.cadence.renew_seconds == 40
    assert decision.over_budget
    assert decision.expected_writes_per_second == pytest.approx(5_000 / 40 + 0 + 10)


def test_budget_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="write budget"):
        WriteBudget(writes_per_second=0)
    with pytest.raises(ValueError, match="pool counter writes"):
        WriteBudget(pool_counter_writes_per_second=0)
    with pytest.raises(ValueError, match="Lease share"):
        WriteBudget(lease_share=1.0)


@given(st.builds(Cadence, st.integers(1, 600), st.integers(1, 1800), st.integers(1, 900)))
def test_annotation_round_trips(cadence: Cadence) -> None:
    assert Cadence.parse(cadence.annotation()) == cadence


@pytest.mark.parametrize("text", [None, "", "renew=5", "renew=x,lease=15,progress=5", "renew=0,lease=15,progress=5", 7])
def test_a_malformed_annotation_is_ignored(text: object) -> None:
    assert Cadence.parse(text) is None


def test_published_cadence_never_shortens_a_workers_own_periods() -> None:
    own = Cadence(3, 9, 1)
    assert Cadence(10, 30, 20).at_least(own) == Cadence(10, 30, 20)
    assert Cadence(5, 15, 5).at_least(Cadence(5, 60, 10)) == Cadence(5, 60, 10)


def test_rollout_is_bounded_per_pass_and_skips_leases_already_told() -> None:
    wanted = "renew=10,lease=30,progress=10"
    published = {"ns/w3": None, "ns/w1": wanted, "ns/w2": "renew=5,lease=15,progress=5", "ns/w4": None}
    assert lease_annotation_writes(published, wanted, 2) == [("ns/w2", wanted), ("ns/w3", wanted)]
    assert lease_annotation_writes(published, None, 10) == [("ns/w1", None), ("ns/w2", None)]
    assert lease_annotation_writes({"ns/w1": wanted}, wanted, 10) == []


def test_current_cadence_is_what_most_leases_carry() -> None:
    assert current_cadence([None, None]) is None
    values = ["renew=10,lease=30,progress=5", "renew=10,lease=30,progress=5", "renew=5,lease=15,progress=5", None]
    assert current_cadence(values) == Cadence(10, 30, 5)


async def test_a_worker_takes_a_published_cadence_but_never_below_its_own() -> None:
    from ffrtmp.api.cadence import ANNOTATION_CADENCE
    from ffrtmp.kube.client import KubeClient
    from ffrtmp.worker.agent import Agent
    from ffrtmp.worker.config import WorkerConfig

    config = WorkerConfig(pod_name="w-1", namespace="ns", pool="cpu", lease_seconds=15, renew_seconds=5.0,
                          progress_interval=30.0)  # fmt: skip
    agent = Agent(client=KubeClient.__new__(KubeClient), config=config)

    def lease(annotation: str | None, duration: int) -> dict[str, object]:
        annotations = {} if annotation is None else {ANNOTATION_CADENCE: annotation}
        return {"metadata": {"annotations": annotations}, "spec": {"leaseDurationSeconds": duration}}

    agent._adopt_cadence(lease("renew=20,lease=60,progress=10", 15))
    assert agent.cadence == Cadence(20, 60, 30)  # progress: its own 30 s is longer than the published 10
    assert agent._lease_dirty.is_set()  # the Lease still says 15 s: renew again now with 60 s
    assert agent._lease_body()["spec"]["leaseDurationSeconds"] == 60
    agent._lease_dirty.clear()
    agent._adopt_cadence(lease("renew=20,lease=60,progress=10", 60))
    assert not agent._lease_dirty.is_set()
    agent._adopt_cadence(lease(None, 60))  # the annotation removed: back to its own periods
    assert agent.cadence == Cadence(5, 15, 30)
    assert agent._lease_dirty.is_set()


def _densest_bin(dues: list[float], start: float, period: float, bins: int = 20) -> float:
    """The fullest of `bins` equal stretches of [start, start + period), over the average."""
    counts = [0] * bins
    for due in dues:
        counts[int((due - start) % period / period * bins)] += 1
    return max(counts) / (len(dues) / bins)


@PROPERTY
@given(st.floats(min_value=0, max_value=1e6), st.floats(min_value=1, max_value=600),
       st.floats(min_value=1, max_value=600), st.floats(min_value=0, max_value=600),
       st.floats(min_value=0, max_value=1, exclude_max=True))  # fmt: skip
def test_a_report_is_due_within_its_period_or_the_old_one(
    last: float, previous: float, period: float, elapsed: float, draw: float
) -> None:
    now = last + elapsed
    due = next_progress_due(last, period, previous, now, draw)
    if period >= previous:  # never older than one period
        assert min(now, last + period) <= due <= max(now, last + period)
    else:  # within one new period, and never later than the old period had it
        assert min(now, last + previous) <= due <= min(now + period, last + previous)
    assert next_progress_due(last, period, period, now, draw) == last + period
    assert next_progress_due(last, period, None, now, draw) == last + period


@settings(max_examples=60, deadline=None)
@given(st.floats(min_value=2, max_value=160), st.floats(min_value=1.875, max_value=60), st.integers(0, 2**32 - 1))
def test_a_farm_changing_period_together_spreads_its_reports_over_the_new_one(
    old: float, ratio: float, seed: int
) -> None:
    """4,000 jobs' last reports spread over the old period; all take the new one at `now`. Kept one
    period after their last report they would all fall in a band as wide as the old period (`ratio`
    times the average rate); drawn, the densest twentieth of the new period holds under 1.8 x."""
    rng = random.Random(seed)
    new, now = old * ratio, 10_000.0
    lasts = [now - rng.uniform(0, old) for _ in range(4_000)]
    dues = [next_progress_due(last, new, old, now, rng.random()) for last in lasts]
    assert _densest_bin(dues, now, new) < 1.8
    assert _densest_bin([last + new for last in lasts], now, new) >= min(ratio, 20) * 0.9  # the band without it


def test_a_ramp_through_doubling_steps_does_not_narrow_the_band() -> None:
    """5 -> 10 -> 20 -> 40 -> 80 s, each step taken one period after the last: without the draw every
    step halves the band's share of the period (16 x the average rate at 80 s)."""
    rng = random.Random(7)
    dues = [rng.uniform(5, 10) for _ in range(4_000)]  # reports every 5 s, last ones spread over [0, 5)
    now, period = 5.0, 5.0
    for new in (10.0, 20.0, 40.0, 80.0):
        dues = [next_progress_due(due - period, new, period, now, rng.random()) for due in dues]
        period, now = new, now + new
        # one period on: every job has reported once more, at its due time
        dues = [due + period if due <= now else due for due in dues]
    assert _densest_bin(dues, now, period) < 1.8


def test_a_step_down_spreads_the_overdue_reports_over_one_new_period() -> None:
    rng = random.Random(3)
    now = 1_000.0
    lasts = [now - rng.uniform(0, 300) for _ in range(4_000)]
    dues = [next_progress_due(last, 160, 300, now, rng.random()) for last in lasts]
    assert all(now <= due <= now + 160 for due in dues)
    assert _densest_bin(dues, now, 160) < 1.8
