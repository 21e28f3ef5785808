"""The reconciler posts its Events through the Event budget: Normal ones over it are counted, then
summed up in one EventsSampled Event against the pool; Warnings always go out; ffrtmp_events_total
counts each outcome. The API is an in-memory stand-in that records the Events posted."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import pytest
from test_lifecycle import NS, job_obj, job_spec, pool_obj
from test_operator_metrics import samples

from ffrtmp.controller.events import EventBudget
from ffrtmp.controller.lifecycle import JobEvent
from ffrtmp.controller.main import add_arguments, settings_from
from ffrtmp.controller.metrics import OperatorMetrics
from ffrtmp.controller.reconciler import Reconciler
from ffrtmp.controller.settings import OperatorSettings
from ffrtmp.kube.client import ApiError

pytestmark = pytest.mark.unit
Obj = dict[str, Any]
# 2 at once, then one every 0.2 s: the Events of one synchronous burst find no new token.
BUDGET = EventBudget(rate=5, burst=2, summary_seconds=0.1)


class EventApi:
    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.events: list[Obj] = []

    async def create(self, path: str, body: Obj, **_: Any) -> Obj:
        assert path == f"/api/v1/namespaces/{NS}/events"
        if self.refuse:
            raise ApiError(403, "Forbidden", "events is forbidden")
        self.events.append(body)
        return body


def reconciler(api: EventApi) -> tuple[Reconciler, OperatorMetrics]:
    settings = OperatorSettings(job_events="all", event_budget=BUDGET, metrics_port=0, health_port=0)
    metrics = OperatorMetrics()
    r = Reconciler(api, settings, metrics)  # type: ignore[arg-type]
    r.on_event("pools", "ADDED", pool_obj())
    return r, metrics


def run_job(r: Reconciler, name: str) -> None:
    """Running, then Succeeded, as the worker writes them: a Started and a Completed Event."""
    running: Obj = {"phase": "Running", "worker": "cpu-a", "attempt": 1, "pool": "cpu"}
    r.on_job("ADDED", job_obj(name, rv="1", spec=job_spec(), status={"phase": "Scheduled", "pool": "cpu"}))
    r.on_job("MODIFIED", job_obj(name, rv="2", spec=job_spec(), status=running))
    r.on_job("MODIFIED", job_obj(name, rv="3", spec=job_spec(), status={**running, "phase": "Succeeded"}))


async def settle(r: Reconciler) -> None:
    async with asyncio.timeout(5):
        await asyncio.gather(*r._background)


def events_total(metrics: OperatorMetrics) -> dict[tuple[str, str, str], float]:
    out = {}
    for key, value in samples(metrics).items():
        if key.startswith("ffrtmp_events_total{"):
            labels = dict(kv.split("=", 1) for kv in key[len("ffrtmp_events_total{") : -1].split(","))
            out[(labels["type"], labels["reason"], labels["outcome"])] = value
    return out


async def test_events_over_the_budget_are_summed_up_against_the_pool_and_warnings_all_go_out() -> None:
    api = EventApi()
    r, metrics = reconciler(api)
    for name in ("a", "b", "c"):
        run_job(r, name)
    for name in ("x", "y"):
        r._event(NS, "TranscodeJob", name, f"uid-{name}", JobEvent("Warning", "InputNotFound", "no such file"))
    r._post_event_summaries()  # none due yet
    await settle(r)
    posted = [(e["type"], e["reason"], e["involvedObject"]["name"]) for e in api.events]
    assert posted == [
        ("Normal", "Started", "a"), ("Normal", "Completed", "a"),
        ("Warning", "InputNotFound", "x"), ("Warning", "InputNotFound", "y"),
    ]  # fmt: skip

    await asyncio.sleep(BUDGET.summary_seconds + 1 / BUDGET.rate)
    r._post_event_summaries()
    await settle(r)
    summary = api.events[-1]
    assert (summary["type"], summary["reason"]) == ("Normal", "EventsSampled")
    assert summary["involvedObject"] == {
        "apiVersion": "ffmpeg-rtmp.io/v1alpha1", "kind": "WorkerPool", "name": "cpu", "namespace": NS,
        "uid": "uid-pool-media-cpu",
    }  # fmt: skip
    assert summary["message"].startswith("2 Completed, 2 Started events not recorded in the last 0s")
    assert events_total(metrics) == {
        ("Normal", "Started", "written"): 1, ("Normal", "Completed", "written"): 1,
        ("Normal", "Started", "sampled"): 2, ("Normal", "Completed", "sampled"): 2,
        ("Warning", "InputNotFound", "written"): 2, ("Normal", "EventsSampled", "written"): 1,
    }  # fmt: skip


async def test_an_event_the_api_refuses_is_counted_as_failed() -> None:
    r, metrics = reconciler(EventApi(refuse=True))
    r._event(NS, "WorkerPool", "cpu", "uid-pool-media-cpu", JobEvent("Normal", "ScaledUp", "queue of 3"))
    await settle(r)
    assert events_total(metrics) == {("Normal", "ScaledUp", "failed"): 1}


def parse(*argv: str) -> OperatorSettings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from(parser.parse_args(list(argv)))


def test_flags_and_environment_set_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse().event_budget == EventBudget() == EventBudget(10.0, 50, 60.0)
    flags = ("--event-rate=2.5", "--event-burst=5", "--event-summary-seconds=30")
    assert parse(*flags).event_budget == EventBudget(2.5, 5, 30.0)
    monkeypatch.setenv("FFRTMP_EVENT_RATE", "1")
    monkeypatch.setenv("FFRTMP_EVENT_BURST", "2")
    assert parse().event_budget == EventBudget(1.0, 2, 60.0)


@pytest.mark.parametrize("flag", ["--event-rate=0", "--event-burst=0", "--event-summary-seconds=-1"])
def test_a_budget_that_writes_nothing_stops_the_operator_at_start(flag: str) -> None:
    with pytest.raises(SystemExit, match="--event-rate, --event-burst"):
        parse(flag)
