"""Which Events the operator writes: every Warning, and Normal Events within a budget.

No I/O and no clock reads: `now` comes in with each call (the reconciler passes a monotonic clock).

One Event per job transition is an API write per transition: at 10,000 running jobs, hundreds a
second, as many as the status writes they tell about. Instead

    Warning : always written (failures, lost workers, policy violations: what someone must act on)
    Normal  : written while a token bucket allows (`rate` a second, at most `burst` at once); one
              over the budget is not written but counted for its namespace, by reason
    summary : a namespace that had any held back gets one Normal Event `EventsSampled` ("412
              Scheduled, 398 Started events not recorded in the last 60s; ..."), `summary_seconds`
              after the first of them was held; so at most one a namespace per `summary_seconds`

A token goes first to a summary that is due, then to a Warning (written without one too), then to a
Normal Event. So Normal Event writes, summaries included, over any window of w seconds stay within
rate * w + burst; a Warning storm takes the tokens and leaves less room for Normal Events; and a due
summary is never starved by the Events it counts. Every held-back Event is counted in exactly one
summary: the next one of its namespace.

A summary is about its namespace's jobs, whose own Events were held. It is written against the
WorkerPool that most of the held Events concerned (`kubectl describe wp` shows it beside the pool's
scaling Events; `kubectl get events -n NS` lists it anyway), or, when none of them named a pool, the
object of the last one held. Not against the Namespace or the operator's Deployment: an Event lives
in its object's namespace (a cluster-scoped object's in `default`), and the operator may create
Events only in the namespaces it watches.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Final

SUMMARY_REASON: Final = "EventsSampled"
WARNING: Final = "Warning"


@dataclass(frozen=True, slots=True)
class EventBudget:
    """The operator's flags --event-rate, --event-burst and --event-summary-seconds."""

    rate: float = 10.0  # Normal Events a second, on average
    burst: int = 50  # Normal Events at once, after a quiet spell
    summary_seconds: float = 60.0  # how long held-back Events are counted before their summary

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"the Event rate must be above 0, got {self.rate}")
        if self.burst < 1:
            raise ValueError(f"the Event burst must be at least 1, got {self.burst}")
        if not self.summary_seconds > 0:
            raise ValueError(f"the Event summary interval must be above 0 s, got {self.summary_seconds}")


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """An object in the Event's namespace (TranscodeJob or WorkerPool)."""

    kind: str
    name: str
    uid: str


@dataclass(frozen=True, slots=True)
class Summary:
    """One EventsSampled Event: the Normal Events of a namespace that were not written."""

    namespace: str
    target: ObjectRef
    counts: tuple[tuple[str, int], ...]  # (reason, Events held back), most first
    seconds: float  # since the first of them was held

    @property
    def held(self) -> int:
        return sum(n for _, n in self.counts)

    def message(self) -> str:
        counted = ", ".join(f"{n} {reason}" for reason, n in self.counts)
        return (
            f"{counted} events not recorded in the last {self.seconds:.0f}s (over the operator's Event budget, "
            "--event-rate); see job status, conditions and the ffrtmp_* metrics"
        )


@dataclass(slots=True)
class _Held:
    since: float
    last: ObjectRef
    counts: Counter[str] = field(default_factory=Counter)
    pools: Counter[ObjectRef] = field(default_factory=Counter)


class EventGate:
    """The token bucket and the held-back counts; deterministic in the times it is given."""

    def __init__(self, budget: EventBudget, now: float) -> None:
        self.budget = budget
        self.tokens = float(budget.burst)
        self._at = now
        self._held: dict[str, _Held] = {}
        self._next_due: float | None = None  # when the earliest summary falls due

    def admit(
        self, namespace: str, type_: str, reason: str, obj: ObjectRef, pool: ObjectRef | None, now: float
    ) -> bool:
        """True: write this Event now. False: it is over the budget and counted for its namespace's
        next summary. `pool`: the WorkerPool it concerns (a job's, or the pool itself), if any."""
        self._refill(now)
        free = self.tokens >= 1 and not self._summary_due(now)
        if free:
            self.tokens -= 1
        if free or type_ == WARNING:
            return True
        held = self._held.get(namespace)
        if held is None:
            held = self._held[namespace] = _Held(since=now, last=obj)
            due = now + self.budget.summary_seconds
            self._next_due = due if self._next_due is None else min(self._next_due, due)
        held.last = obj
        held.counts[reason] += 1
        if pool is not None:
            held.pools[pool] += 1
        return False

    def summaries(self, now: float) -> list[Summary]:
        """The summaries due now that the budget has tokens for, oldest first. One that finds no
        token stays due (its namespace's counts go on) and takes the next one before any Event."""
        self._refill(now)
        if not self._summary_due(now):
            return []
        out = []
        for namespace, held in sorted(self._held.items(), key=lambda item: (item[1].since, item[0])):
            if held.since + self.budget.summary_seconds > now or self.tokens < 1:
                break
            self.tokens -= 1
            del self._held[namespace]
            # The pool most of them concerned, ties by name; else the object of the last one.
            pools = sorted(held.pools.items(), key=lambda item: (-item[1], item[0].name))
            target = pools[0][0] if pools else held.last
            counts = tuple(sorted(held.counts.items(), key=lambda item: (-item[1], item[0])))
            out.append(Summary(namespace, target, counts, now - held.since))
        self._next_due = min((h.since for h in self._held.values()), default=None)
        if self._next_due is not None:
            self._next_due += self.budget.summary_seconds
        return out

    def held_back(self) -> dict[str, dict[str, int]]:
        """Namespace -> reason -> Events held back and not yet in a summary."""
        return {ns: dict(held.counts) for ns, held in self._held.items()}

    def _summary_due(self, now: float) -> bool:
        return self._next_due is not None and now >= self._next_due

    def _refill(self, now: float) -> None:
        if now > self._at:  # a clock that steps back adds nothing
            self.tokens = min(float(self.budget.burst), self.tokens + (now - self._at) * self.budget.rate)
            self._at = now
