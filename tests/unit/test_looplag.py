"""The event-loop lag monitor measures a blocked loop, and warns about it."""

from __future__ import annotations

import asyncio
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
