"""How late the event loop runs: the lag of a timer that should fire every `interval` seconds, and
the pauses of Python's cyclic garbage collector, one cause of lag the process brings on itself.

Everything the operator and the worker do (Lease renewals, watches, progress writes, decisions)
shares one asyncio loop. A synchronous call, a stopped or starved process shows here as lag, so a
missed Lease renewal can be told apart from a slow API server (whose latency the callers measure).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

log = logging.getLogger(__name__)
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
GC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class LoopLag:
    """A histogram `<prefix>_event_loop_lag_seconds`, fed by `run()`; a warning above `warn_seconds`."""

    def __init__(
        self, registry: CollectorRegistry, prefix: str, *, interval: float = 0.5, warn_seconds: float = 1.0
    ) -> None:
        self.interval = interval
        self.warn_seconds = warn_seconds
        self.latest = 0.0
        # time.monotonic() of the latest tick: the worker's liveness checks the loop still runs.
        self.last_tick = time.monotonic()
        self.histogram = Histogram(
            f"{prefix}_event_loop_lag_seconds",
            f"How much later than planned a {interval}s timer of the event loop fired.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.gc_pauses = Histogram(
            f"{prefix}_gc_pause_seconds",
            "How long a collection of Python's cyclic garbage collector held the process, by generation.",
            ["generation"],
            buckets=GC_BUCKETS,
            registry=registry,
        )
        self._gc_started = 0.0

    def observe(self, lag: float) -> None:
        self.latest = lag
        self.last_tick = time.monotonic()
        self.histogram.observe(lag)
        if lag >= self.warn_seconds:
            log.warning("the event loop ran %.1fs late (blocked, stopped or starved of CPU)", lag)

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """A `gc.callbacks` entry: times each collection from its start to its stop."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            self.gc_pauses.labels(str(info["generation"])).observe(time.perf_counter() - self._gc_started)
            self._gc_started = 0.0

    async def run(self) -> None:
        """Measure the lag, and time the collector's pauses, for as long as this runs."""
        gc.callbacks.append(self.on_gc)
        try:
            while True:
                planned = time.monotonic() + self.interval
                await asyncio.sleep(self.interval)
                self.observe(max(time.monotonic() - planned, 0.0))
        finally:
            gc.callbacks.remove(self.on_gc)
