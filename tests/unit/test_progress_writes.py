"""Progress reports go out beside the encode: a slow or unreachable API server never holds up the reading
of ffmpeg's output (on ffmpeg 5 a full stdout pipe stops the whole encode), and what a report runs into
still ends the attempt when it must."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiohttp
import pytest

from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.ffmpeg.progress import ProgressSnapshot
from ffrtmp.kube.client import ApiError
from ffrtmp.worker.attempt import Attempt
from ffrtmp.worker.config import WorkerConfig
from ffrtmp.worker.fence import FencedStatus, Superseded
from ffrtmp.worker.metrics import WorkerMetrics

SNAP = ProgressSnapshot(out_time_seconds=1.0, fps=25.0, speed=1.0, total_size=1000, frame=25, ended=False)


class Status:
    """Stands in for the fenced client: each patch waits for `release`, then answers or raises `error`."""

    def __init__(self, error: BaseException | None = None, *, hang: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.done: list[dict[str, Any]] = []
        self.cancelled = 0
        self.error = error
        self.release = asyncio.Event()
        if not hang:
            self.release.set()

    async def patch(self, status: dict[str, Any]) -> dict[str, Any]:
        self.sent.append(status)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        self.done.append(status)
        return status


def _attempt(status: Status) -> Attempt:
    config = WorkerConfig(pod_name="w-0", namespace="ns", pool="cpu", progress_interval=0.0)
    return Attempt(
        client_status=cast(FencedStatus, status),
        spec=TranscodeJobSpec.model_validate({"input": {"uri": "/media/in.mp4"}, "outputs": [{"name": "out"}]}),
        config=config,
        metrics=WorkerMetrics(),
        namespace="ns",
        name="job",
        number=1,
    )


async def _report(attempt: Attempt) -> None:
    # Must come back at once whatever the API server does: the caller is ffmpeg's stdout reader.
    await asyncio.wait_for(attempt._progress(SNAP, 10.0, False, 0, 1), 1.0)


async def test_a_hanging_report_holds_up_nothing_and_the_next_ones_are_skipped() -> None:
    status = Status(hang=True)
    attempt = _attempt(status)
    for _ in range(20):
        await _report(attempt)
        await asyncio.sleep(0)
    assert len(status.sent) == 1  # one on its way, the others skipped rather than queued
    await attempt._settle_progress()  # the end of the pass: nothing may land after it
    assert status.cancelled == 1 and status.done == []
    status.release.set()
    await _report(attempt)
    await attempt._settle_progress()
    assert len(status.sent) == 2


async def test_reports_land_one_after_another_when_the_api_answers() -> None:
    status = Status()
    attempt = _attempt(status)
    for _ in range(5):
        await _report(attempt)
        await asyncio.sleep(0.01)
    await attempt._settle_progress()
    assert len(status.done) == 5
    assert status.done[0]["progress"]["outTimeSeconds"] == 1.0 and "heartbeatTime" in status.done[0]


@pytest.mark.parametrize(
    "error", [aiohttp.ClientConnectionError("refused"), TimeoutError(), ApiError(503, "ServiceUnavailable", "")]
)
async def test_a_report_lost_to_an_outage_is_only_logged(error: BaseException) -> None:
    attempt = _attempt(Status(error))
    await _report(attempt)
    await asyncio.sleep(0.01)
    await _report(attempt)  # no raise: the encode goes on
    await attempt._settle_progress()
    assert attempt.stop_reason is None


async def test_a_superseded_report_stops_the_attempt() -> None:
    attempt = _attempt(Status(Superseded("reassigned to w-1")))
    await _report(attempt)
    await asyncio.sleep(0.01)
    assert attempt.stop_reason == "superseded"
    with pytest.raises(Superseded, match="reassigned to w-1"):
        await _report(attempt)


async def test_a_report_refused_for_good_is_raised_by_the_next_one() -> None:
    attempt = _attempt(Status(ApiError(403, "Forbidden", "denied by the worker identity policy")))
    await _report(attempt)
    await asyncio.sleep(0.01)
    with pytest.raises(ApiError, match="Forbidden"):
        await _report(attempt)


async def test_reports_follow_the_period_and_a_new_period_is_drawn_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """One period after the Running write, then every period; a new period (the operator's cadence)
    moves the next report to a drawn point before one new period after the last, then every new period."""
    from ffrtmp.worker import attempt as attempt_module

    clock, period = [100.0], [10.0]
    monkeypatch.setattr(attempt_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(attempt_module.random, "random", lambda: 0.5)
    status = Status()
    attempt = _attempt(status)
    attempt.progress_seconds = lambda: period[0]
    attempt._started_monotonic = 100.0

    async def sent_at(t: float) -> int:
        clock[0] = t
        await _report(attempt)
        await attempt._settle_progress()
        return len(status.sent)

    assert await sent_at(109.9) == 0
    assert await sent_at(110.0) == 1
    assert await sent_at(119.9) == 1
    period[0] = 40.0  # taken from the Lease; seen at 120: due at 120 + 0.5 x (110 + 40 - 120) = 135
    assert await sent_at(120.0) == 1
    assert await sent_at(134.9) == 1
    assert await sent_at(135.0) == 2
    assert await sent_at(174.9) == 2
    assert await sent_at(175.0) == 3
