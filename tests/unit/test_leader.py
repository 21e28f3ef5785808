"""Leader election decisions (client-go semantics): a holder counts as gone only after its Lease record
stayed unchanged for leaseDurationSeconds of *local* time; the record's times are never compared with
the local clock, so a skewed clock neither steals a live Lease nor waits forever."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ffrtmp.conditions import now_iso, parse_time
from ffrtmp.controller.leader import (
    Decision,
    ElectionTiming,
    LeaseRecord,
    Observation,
    decide,
    expires_at,
    leading_until,
    lease_spec,
    observe,
)

TIMING = ElectionTiming(lease_duration=15, renew_deadline=10, retry_period=2)
ME, OTHER = "replica-b", "replica-a"


def record(
    holder: str = OTHER, renew: float = 1_700_000_000.0, transitions: int = 3, duration: int | None = 15
) -> LeaseRecord:
    stamp = now_iso(renew)
    return LeaseRecord(holder, duration, stamp, stamp, transitions)


def test_timing_is_checked_like_client_go() -> None:
    with pytest.raises(ValueError, match="greater than the renew deadline"):
        ElectionTiming(lease_duration=10, renew_deadline=10, retry_period=2)
    with pytest.raises(ValueError, match=r"1.2 x the retry period"):
        ElectionTiming(lease_duration=15, renew_deadline=2, retry_period=2)
    with pytest.raises(ValueError, match="positive"):
        ElectionTiming(lease_duration=15, renew_deadline=10, retry_period=0)
    with pytest.raises(ValueError, match="at least 1 s"):
        ElectionTiming(lease_duration=0.5, renew_deadline=0.3, retry_period=0.1)


def test_the_clock_restarts_only_when_the_record_changes() -> None:
    first = observe(None, record(), now=100.0)
    assert first == Observation(record(), 100.0)
    assert observe(first, record(), now=109.0) is first  # unchanged: still counted from 100
    renewed = observe(first, record(renew=1_700_000_002.0), now=110.0)
    assert renewed.since == 110.0
    moved = observe(renewed, record(transitions=4), now=111.0)
    assert moved.since == 111.0


def test_a_live_holder_is_waited_for_and_a_silent_one_taken_over() -> None:
    seen = observe(None, record(), now=100.0)
    assert decide(ME, seen, 100.0, TIMING) is Decision.WAIT
    assert decide(ME, seen, 114.9, TIMING) is Decision.WAIT
    assert decide(ME, seen, 115.0, TIMING) is Decision.ACQUIRE
    # The holder's own duration counts, not ours.
    longer = observe(None, record(duration=40), now=100.0)
    assert decide(ME, longer, 130.0, TIMING) is Decision.WAIT
    assert expires_at(longer, TIMING) == 140.0
    # No duration in the record: ours.
    assert expires_at(observe(None, record(duration=None), now=100.0), TIMING) == 115.0


def test_free_released_and_own_leases() -> None:
    assert decide(ME, observe(None, record(holder=""), now=5.0), 5.0, TIMING) is Decision.ACQUIRE
    assert decide(ME, observe(None, record(holder=ME), now=5.0), 5.0, TIMING) is Decision.RENEW


def test_a_renewing_holder_is_never_taken_over() -> None:
    """The holder renews every retry period: each read shows a new record, so the candidate never
    sees one unchanged for lease_duration, however long it watches."""
    seen: Observation | None = None
    for i in range(1000):
        now = 100.0 + i * TIMING.retry_period
        seen = observe(seen, record(renew=1_700_000_000.0 + i * TIMING.retry_period), now)
        assert decide(ME, seen, now, TIMING) is Decision.WAIT


def test_lease_spec_keeps_or_counts_transitions() -> None:
    mine = LeaseRecord(ME, 15, "2024-01-01T00:00:00Z", "2024-01-01T00:00:05Z", 7)
    renewed = lease_spec(ME, mine, 1_700_000_000.0, TIMING)
    assert renewed["acquireTime"] == "2024-01-01T00:00:00Z" and renewed["leaseTransitions"] == 7
    assert renewed["holderIdentity"] == ME and renewed["leaseDurationSeconds"] == 15
    assert parse_time(renewed["renewTime"]) == 1_700_000_000.0
    taken = lease_spec(ME, record(transitions=7), 1_700_000_000.0, TIMING)
    assert taken["leaseTransitions"] == 8 and taken["acquireTime"] == taken["renewTime"]
    assert lease_spec(ME, None, 1_700_000_000.0, TIMING)["leaseTransitions"] == 0


def test_the_leader_stops_before_any_candidate_may_take_over() -> None:
    """The leader's last successful renewal started at `t`; a candidate saw its record at `t` or later
    and waits lease_duration from then. The leader stops acting at t + renew_deadline, earlier."""
    for started in (0.0, 50.0, 1e6):
        seen = observe(None, record(holder=OTHER), now=started)
        assert leading_until(started, TIMING) < expires_at(seen, TIMING)


SKEW = st.floats(min_value=-10 * 365 * 86400, max_value=10 * 365 * 86400, allow_nan=False)


@given(
    skew=SKEW,
    holder_skew=SKEW,
    reads=st.lists(st.floats(min_value=0.01, max_value=TIMING.retry_period), min_size=1, max_size=40),
)
def test_skewed_clocks_neither_steal_a_live_lease_nor_wait_forever(
    skew: float, holder_skew: float, reads: list[float]
) -> None:
    """Whatever the wall clocks of holder and candidate say (years apart either way), a holder that
    renews is waited for, and a holder that stopped is taken over exactly lease_duration of local time
    after its last change was seen. The candidate's wall clock (`skew`) only stamps what it writes."""
    wall0 = 1_700_000_000.0
    local = 1000.0
    seen: Observation | None = None
    renewal = wall0 + holder_skew
    for gap in reads:  # the holder renews before every read: live
        local += gap
        renewal += gap
        seen = observe(seen, record(renew=renewal), local)
        assert decide(ME, seen, local, TIMING) is Decision.WAIT
    assert seen is not None
    last_change = seen.since
    # The holder stops. Reads keep showing the same record until lease_duration has passed locally.
    t = local
    while t < last_change + TIMING.lease_duration:
        seen = observe(seen, record(renew=renewal), t)
        assert decide(ME, seen, t, TIMING) is Decision.WAIT
        t += TIMING.retry_period
    seen = observe(seen, record(renew=renewal), t)
    assert decide(ME, seen, t, TIMING) is Decision.ACQUIRE
    taken = lease_spec(ME, seen.record, wall0 + skew, TIMING)
    assert taken["holderIdentity"] == ME and taken["leaseTransitions"] == 4
    assert parse_time(taken["renewTime"]) == pytest.approx(wall0 + skew, abs=1)
