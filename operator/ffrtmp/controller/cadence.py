"""The farm's API write budget: how often workers renew their Leases and report progress.

The API server is the job database, and at farm scale its steady write load is every worker's Lease
renewal plus every running job's progress report (plus Events, budgeted in events.py). The operator
sizes both periods so that, in steady state,

    workers / renew  +  running jobs / progress  +  event rate  +  pool counter writes  <=  budget

and publishes them on each worker's Lease (api/cadence.py). A pool's status counters (busy and free
slots, queued and running jobs) are written at most every 2 s, and less often with many pools so that
all pools together write at most `pool_counter_writes_per_second` (counter_write_seconds). Lease
renewals take up to `lease_share` of the budget; progress gets what the renewals, Events and pool
counters leave. Periods come in doubling steps from the floor (5, 10, 20, 40 s; progress up to 300 s)
so that a farm's cadence changes rarely: a step up is taken at once (the budget), a step down only
once the load fits the shorter period with a margin.

Failure detection follows the Lease: a worker is lost `lease = 3 x renew` seconds (plus the
operator's grace) after its last renewal, so at most 3 x renew_max + grace = 125 s by default,
whatever the farm size. Where the ceilings bind (more than renew_max x lease_share x budget = 2,000
workers, or too many running jobs for progress every progress_max), the budget is exceeded rather
than detection or progress given up; the decision says so and the operator exports it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ffrtmp.api.cadence import Cadence

# Renewals per Lease duration: a Lease survives two lost renewals, as Kubernetes node Leases do.
RENEWALS_PER_LEASE = 3
# A shorter period is taken again only once the load is at most this share of what it allows.
STEP_DOWN_MARGIN = 0.8


@dataclass(frozen=True, slots=True)
class WriteBudget:
    writes_per_second: float = 100.0
    lease_share: float = 0.5
    # Held for Normal Events (--event-rate; events.py): progress gets what renewals and Events leave.
    event_writes_per_second: float = 10.0
    # Held for the pools' counter writes: 100 pools (a hundred namespaces) write theirs every 20 s.
    pool_counter_writes_per_second: float = 5.0
    counter_floor_seconds: float = 2.0
    renew_floor_seconds: float = 5.0
    renew_max_seconds: float = 40.0
    progress_floor_seconds: float = 5.0
    progress_max_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.writes_per_second <= 0:
            raise ValueError(f"the write budget must be > 0 writes/s, got {self.writes_per_second}")
        if not 0 < self.lease_share < 1:
            raise ValueError(f"the Lease share of the write budget must be in (0, 1), got {self.lease_share}")
        if self.pool_counter_writes_per_second <= 0 or self.counter_floor_seconds <= 0:
            raise ValueError("pool counter writes: need a share > 0 writes/s and a floor > 0 s")
        if not 0 < self.renew_floor_seconds <= self.renew_max_seconds:
            raise ValueError("renewal periods: need 0 < floor <= max")
        if not 0 < self.progress_floor_seconds <= self.progress_max_seconds:
            raise ValueError("progress periods: need 0 < floor <= max")

    @property
    def floor(self) -> Cadence:
        return Cadence(
            self.renew_floor_seconds, RENEWALS_PER_LEASE * self.renew_floor_seconds, self.progress_floor_seconds
        )


@dataclass(frozen=True, slots=True)
class CadenceDecision:
    cadence: Cadence
    # Steady-state writes/s this cadence makes (renewals + progress + the Event allowance + pool counters).
    expected_writes_per_second: float
    over_budget: bool


def _step(need: float, floor: float, ceiling: float, current: float | None) -> float:
    """The shortest period floor x 2^k (capped at ceiling) that is >= need; a step down from
    `current` only to a period the load fits with STEP_DOWN_MARGIN to spare."""
    period = _doubling(need, floor, ceiling)
    if current is not None and period < current:
        period = min(current, _doubling(need / STEP_DOWN_MARGIN, floor, ceiling))
    return period


def _doubling(need: float, floor: float, ceiling: float) -> float:
    period = floor
    while period < need and period < ceiling:
        period = min(period * 2, ceiling)
    return period


def counter_write_seconds(pools: int, budget: WriteBudget) -> float:
    """How often one pool's counters alone may be written when `pools` pools are managed: every
    counter_floor_seconds, and rarer past that so that all pools together keep to their share. Written
    every 2 s each, a hundred namespaces' pools made 50 writes/s (BENCHMARKS.md, figure 8)."""
    return max(budget.counter_floor_seconds, pools / budget.pool_counter_writes_per_second)


def decide_cadence(
    workers: int, running: int, budget: WriteBudget, current: Cadence | None = None, pools: int = 0
) -> CadenceDecision:
    """The periods for `workers` Leases and `running` jobs' progress, with `pools` pools writing their
    counters; `current` is what was published last (None: nothing, the floor)."""
    lease_writes = budget.writes_per_second * budget.lease_share
    renew = _step(
        workers / lease_writes, budget.renew_floor_seconds, budget.renew_max_seconds,
        current.renew_seconds if current else None,
    )  # fmt: skip
    fixed = budget.event_writes_per_second + pools / counter_write_seconds(pools, budget)
    progress_writes = budget.writes_per_second - fixed - workers / renew
    progress_need = running / progress_writes if progress_writes > 0 else math.inf
    progress = _step(
        progress_need, budget.progress_floor_seconds, budget.progress_max_seconds,
        current.progress_seconds if current else None,
    )  # fmt: skip
    cadence = Cadence(renew, RENEWALS_PER_LEASE * renew, progress)
    expected = workers / renew + running / progress + fixed
    return CadenceDecision(cadence, expected, expected > budget.writes_per_second * (1 + 1e-9))


def published_annotation(decision: CadenceDecision, budget: WriteBudget) -> str | None:
    """The Lease annotation for a decision: None at the floor (every worker's own settings hold there,
    so a small farm, or a test with short Leases, runs exactly as configured)."""
    return None if decision.cadence == budget.floor else decision.cadence.annotation()


def lease_annotation_writes(
    published: Mapping[str, str | None], wanted: str | None, limit: int
) -> list[tuple[str, str | None]]:
    """The Leases (by key, in key order) whose cadence annotation is not `wanted`, at most `limit`
    of them per pass: a new cadence reaches a thousand workers over some passes, not in one burst."""
    stale = sorted(key for key, value in published.items() if value != wanted)
    return [(key, wanted) for key in stale[: max(limit, 0)]]


def current_cadence(published: Iterable[str | None]) -> Cadence | None:
    """What the farm was last told: the most common annotation on its Leases (None: none published)."""
    counts: dict[str, int] = {}
    for value in published:
        if value is not None:
            counts[value] = counts.get(value, 0) + 1
    if not counts:
        return None
    return Cadence.parse(max(sorted(counts), key=lambda v: counts[v]))
