"""How many workers a WorkerPool should have: a pure function of its queue and recent history.

No I/O and no clock reads: `now` comes in with the input, and the recommendation history the
scale-down window needs goes in and comes back out (the reconciler keeps it between calls).

    raw     = ceil((queued + running) / (slotsPerWorker * targetUtilization / 100))
    up      : raw > current  -> min(raw, current + scaleUpStep), at once; no growth while a worker
              Pod is unschedulable (ScalingLimited/Unschedulable)
    down    : raw < current  -> the highest raw recommendation of the stabilization window
              (like the HorizontalPodAutoscaler), so a queue that oscillates never flaps the pool
    to zero : only with minWorkers 0, once the window allows it and the pool was idle (nothing
              queued or running) for idleTimeoutSeconds
    always  : within minWorkers..maxWorkers, and never scaled down below the workers the running
              jobs occupy (ceil(running / slotsPerWorker))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

LIMITED_MAX_WORKERS: Final = "MaxWorkers"
LIMITED_UNSCHEDULABLE: Final = "Unschedulable"


@dataclass(frozen=True, slots=True)
class ScaleInput:
    """What the autoscaler knows about one pool at `now`."""

    now: float
    queued: int  # jobs waiting for this pool
    running: int  # jobs running in this pool
    slots_per_worker: int  # maxConcurrentJobs
    target_utilization: int  # percent 10..100
    current: int  # worker Pods that exist (not terminating)
    unschedulable: int  # of those, Pods Pending unschedulable for longer than the pending timeout
    min_workers: int
    max_workers: int
    scale_up_step: int
    stabilization_seconds: int  # scale-down window
    idle_timeout_seconds: int  # with min 0: scale to zero only after no work for this long
    last_active: float | None  # last time queued + running > 0 (None: never)
    history: tuple[tuple[float, int], ...]  # recent (time, raw recommendation)


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """The worker count to aim for, and why."""

    desired: int
    reason: str  # for Events and status.lastScaleReason
    limited: str | None  # None | "MaxWorkers" | "Unschedulable"
    limited_message: str | None
    history: tuple[tuple[float, int], ...]  # pruned to the window, this raw recommendation last


@dataclass(frozen=True)
class WorkerLoad:
    """A worker Pod as scale-down sees it."""

    name: str
    running: int
    ready: bool
    pending: bool
    created: float


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def raw_recommendation(queued: int, running: int, slots_per_worker: int, target_utilization: int) -> int:
    """ceil((queued + running) / (slots * utilization / 100)), in exact integer arithmetic."""
    work = max(queued, 0) + max(running, 0)
    slots = max(slots_per_worker, 1)
    utilization = min(max(target_utilization, 1), 100)
    return _ceil_div(work * 100, slots * utilization)


def _prune(history: tuple[tuple[float, int], ...], now: float, window: int) -> list[tuple[float, int]]:
    """The entries still inside the window (time > now - window), oldest first.

    An entry followed by a later one at least as high can never be the window's maximum (the
    later one stays in the window longer), so it is dropped too: the history stays a short,
    strictly decreasing staircase instead of one entry per call.
    """
    cutoff = now - max(window, 0)
    kept: list[tuple[float, int]] = []
    for t, r in sorted(history):
        if t > cutoff:
            while kept and kept[-1][1] <= r:
                kept.pop()
            kept.append((t, r))
    return kept


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def recommend(inp: ScaleInput) -> ScaleDecision:
    """The desired worker count of a pool; see the module docstring for the rules."""
    lo = max(inp.min_workers, 0)
    hi = max(inp.max_workers, lo)
    slots = max(inp.slots_per_worker, 1)
    step = max(inp.scale_up_step, 1)
    current = max(inp.current, 0)
    queued = max(inp.queued, 0)
    running = max(inp.running, 0)
    raw = raw_recommendation(queued, running, slots, inp.target_utilization)
    for_running = _ceil_div(running, slots)

    window = _prune(inp.history, inp.now, inp.stabilization_seconds)
    while window and window[-1][1] <= raw:
        window.pop()
    window.append((inp.now, raw))
    history = tuple(window)
    peak = max(r for _, r in window)

    util = "" if inp.target_utilization >= 100 else f" at {inp.target_utilization}% target utilization"
    base = (
        f"{_plural(queued, 'job')} queued, {running} running, {slots} slots/worker{util}: need {_plural(raw, 'worker')}"
    )
    limited: str | None = None
    limited_message: str | None = None

    if raw > current:
        target = min(raw, hi)
        if target <= current:  # at or above maxWorkers already
            desired = hi
            action = (
                f"keeping {hi} (maxWorkers)" if current == hi else f"scaling down from {current} to maxWorkers {hi}"
            )
        elif inp.unschedulable > 0:
            desired = current
            limited = LIMITED_UNSCHEDULABLE
            pods = _plural(inp.unschedulable, "worker Pod")
            limited_message = (
                f"{pods} pending unschedulable: new workers cannot be scheduled (no node has room "
                "or the device they request, e.g. a GPU); not adding workers until the pending ones run"
            )
            action = f"holding {current}: new workers cannot be scheduled"
        else:
            desired = min(target, current + step)
            action = f"scaling up from {current} to {desired}"
            if desired < target:
                action += f" (scale-up step {step})"
            elif target < raw:
                action += f" (maxWorkers {hi})"
    elif raw == current:
        desired = current
        action = f"keeping {current}"
    else:
        desired = min(current, peak)
        if desired > raw:
            action = f"holding {desired} (highest recommendation in the {inp.stabilization_seconds}s scale-down window)"
        else:
            action = f"scaling down from {current} to {desired}"
        if desired == 0 and lo == 0:
            idle_for = None if inp.last_active is None else inp.now - inp.last_active
            if idle_for is not None and idle_for < inp.idle_timeout_seconds:
                desired = min(current, 1)
                action = (
                    f"keeping {desired}: idle for {idle_for:.0f}s of the {inp.idle_timeout_seconds}s "
                    "idle timeout before scaling to zero"
                )
            else:
                action = f"scaling to zero from {current} (idle)"

    if raw > hi and limited is None:
        limited = LIMITED_MAX_WORKERS
        limited_message = f"the queue needs {_plural(raw, 'worker')} but maxWorkers is {hi}"
    # The workers the running jobs occupy are never scaled away (growth stays with the rules above).
    floor = min(max(lo, min(for_running, current)), hi)
    clamped = min(max(desired, floor), hi)
    if clamped != desired:
        if clamped == hi and desired > hi:
            action += f", capped at maxWorkers {hi}"
        elif clamped == lo:
            action += f", raised to minWorkers {lo}"
        else:
            action += f", raised to {clamped} for the running jobs"
        desired = clamped
    return ScaleDecision(desired, f"{base}; {action}", limited, limited_message, history)


def choose_removals(workers: Sequence[WorkerLoad], count: int) -> list[str]:
    """Names of at most `count` idle workers to remove: Pending ones first, then not-ready ones,
    then the newest. A busy worker (running > 0) is never chosen, even if that leaves fewer than
    `count`; a name listed twice is busy if either entry is."""
    busy = {w.name for w in workers if w.running > 0}
    idle: dict[str, WorkerLoad] = {}
    for w in workers:
        if w.name not in busy and w.name not in idle:
            idle[w.name] = w
    ranked = sorted(idle.values(), key=lambda w: (not w.pending, w.ready, -w.created, w.name))
    return [w.name for w in ranked[: max(count, 0)]]


def jobs_per_hour(workers: int, slots: int, avg_job_seconds: float | None) -> float | None:
    """The runbook's capacity formula: workers x slots x 3600 / average job duration."""
    if avg_job_seconds is None or not math.isfinite(avg_job_seconds) or avg_job_seconds <= 0:
        return None
    return max(workers, 0) * max(slots, 0) * 3600.0 / avg_job_seconds
