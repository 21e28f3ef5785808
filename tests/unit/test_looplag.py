"""The event-loop lag monitor measures a blocked loop, and warns about it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from ffrtmp.looplag import LoopLag

pytestmark = pytest.mark.unit


async def test_a_blocked_loop_shows_as_lag_and_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    lag = LoopLag(registry, "ffrtmp_test", interval=0.05, warn_seconds=0.2)
    task = asyncio.create_task(lag.run())
    await asyncio.sleep(0.12)  # a few undisturbed rounds
    quiet = lag.latest
    with caplog.at_level(logging.WARNING, logger="ffrtmp.looplag"):
        time.sleep(0.4)  # noqa: ASYNC251 - the point: a synchronous call blocks the loop
        await asyncio.sleep(0.12)
    task.cancel()
    assert quiet < 0.2
    text = generate_latest(registry).decode()
    # The timer planned 0.05 s ahead fired at least 0.35 s late.
    assert 'ffrtmp_test_event_loop_lag_seconds_bucket{le="0.25"}' in text
    count = float(
        next(ln for ln in text.splitlines() if ln.startswith("ffrtmp_test_event_loop_lag_seconds_count")).split()[1]
    )
    over = float(next(ln for ln in text.splitlines() if 'le="0.25"' in ln).split()[1])
    assert count - over >= 1, text
    assert any("event loop ran" in r.message for r in caplog.records)


async def test_collector_pauses_are_timed_by_generation_while_it_runs() -> None:
    registry = CollectorRegistry()
    lag = LoopLag(registry, "ffrtmp_test", interval=0.05)
    task = asyncio.create_task(lag.run())
    await asyncio.sleep(0)  # run() registers its callback
    garbage = [[i] for i in range(100_000)]
    for item in garbage:
        item.append(item)  # cycles: only the collector frees them
    del garbage
    gc.collect(2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert lag.on_gc not in gc.callbacks, "the callback outlived run()"
    full = registry.get_sample_value("ffrtmp_test_gc_pause_seconds_count", {"generation": "2"})
    spent = registry.get_sample_value("ffrtmp_test_gc_pause_seconds_sum", {"generation": "2"})
    assert full is not None and full >= 1
    assert spent is not None and spent > 0
    gc.collect(2)
    after = registry.get_sample_value("ffrtmp_test_gc_pause_seconds_count", {"generation": "2"})
    assert after == full, "a collection after run() ended was still timed"
