"""Pod writes are fenced: each worker Pod create or delete, and the pool status write, is checked against
the replica's lead right before it is sent, so a leader deposed between deciding and sending (stopped,
paused) drops the writes instead of doubling what the new leader does. Pods carry the leader's term."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from prometheus_client import generate_latest
from test_lifecycle import pool_obj

from ffrtmp.api.constants import LABEL_LEADER_TERM
from ffrtmp.controller.leader import ElectionTiming, LeaderElector, LeaseRecord, Observation
from ffrtmp.controller.metrics import OperatorMetrics
from ffrtmp.controller.reconciler import Reconciler
from ffrtmp.controller.settings import OperatorSettings

pytestmark = pytest.mark.unit
Obj = dict[str, Any]


class Lead:
    """Stands in for LeaderElector: `is_leader` turns False after `writes` writes were sent."""

    def __init__(self, writes: int, term: int = 7) -> None:
        self.writes_left = writes
        self.term = term
        self.identity = "me"

    @property
    def is_leader(self) -> bool:
        return self.writes_left > 0


class Api:
    """Records the writes sent; each one uses up the stand-in lead."""

    def __init__(self, lead: Lead) -> None:
        self.lead = lead
        self.sent: list[tuple[str, str, Obj | None]] = []
        self.names = itertools.count()

    def _sent(self, verb: str, path: str, body: Obj | None) -> None:
        self.sent.append((verb, path, body))
        self.lead.writes_left -= 1

    async def create(self, path: str, body: Obj) -> Obj:
        self._sent("create", path, body)
        meta = {**body["metadata"], "name": f"cpu-{next(self.names)}", "uid": "u", "resourceVersion": "1"}
        return {**body, "metadata": meta}

    async def delete_ignore_missing(self, path: str) -> None:
        self._sent("delete", path, None)

    async def merge_patch(self, path: str, body: Obj) -> Obj:
        self._sent("patch", path, body)
        return pool_obj()


def fenced(metrics: OperatorMetrics) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith("ffrtmp_operator_fenced_writes_total{"):
            labels, value = line.split(" ")
            out[labels.split('"')[1]] = float(value)
    return out


def apply(writes: int) -> tuple[Api, OperatorMetrics]:
    lead = Lead(writes)
    api = Api(lead)
    metrics = OperatorMetrics(leading=lambda: lead.is_leader)
    r = Reconciler(api, OperatorSettings(max_parallel_writes=1), metrics, lead)  # type: ignore[arg-type]
    r.on_event("pools", "ADDED", pool_obj())

    async def pool_writes() -> None:
        await r._apply_pool("media/cpu", 2, ["cpu-old"], [])
        r._write_pool_status_soon("media/cpu", {"desiredWorkers": 2})
        await asyncio.gather(*r._pool_status_writes.values())

    asyncio.run(pool_writes())
    return api, metrics


def test_a_leader_sends_its_pod_writes_with_its_term() -> None:
    api, metrics = apply(writes=10)
    assert [verb for verb, _, _ in api.sent] == ["create", "create", "delete", "patch"]
    for _, _, body in api.sent[:2]:
        assert body is not None and body["metadata"]["labels"][LABEL_LEADER_TERM] == "7"
    assert fenced(metrics) == {}


def test_writes_after_the_lead_ended_are_dropped_one_by_one() -> None:
    # Deposed after the first create went out: the second create, the delete and the status stay unsent.
    api, metrics = apply(writes=1)
    assert [verb for verb, _, _ in api.sent] == ["create"]
    assert fenced(metrics) == {"Pod": 2.0, "WorkerPool": 1.0}


def test_a_replica_deposed_before_sending_sends_nothing() -> None:
    api, metrics = apply(writes=0)
    assert api.sent == []
    assert fenced(metrics) == {"Pod": 3.0, "WorkerPool": 1.0}


def test_the_term_is_known_only_while_leading() -> None:
    """A stopped leader that wakes after its renew deadline is no leader and has no term, before its
    election loop has run even once (the check reads the local monotonic clock, nothing else)."""
    clock = [100.0]
    timing = ElectionTiming(lease_duration=15, renew_deadline=10, retry_period=2)
    elector = LeaderElector(None, "ns", "lease", "me", timing, monotonic=lambda: clock[0])  # type: ignore[arg-type]
    elector._observed = Observation(LeaseRecord("me", 15, None, None, 4), 100.0)
    elector._valid_until = 110.0  # renewed at 100
    assert elector.is_leader and elector.term == 4
    clock[0] = 109.9
    assert elector.term == 4
    clock[0] = 110.0  # stopped past the deadline: the renewal that would keep the lead never ran
    assert not elector.is_leader and elector.term is None
    clock[0] = 105.0
    elector._observed = Observation(LeaseRecord("other", 15, None, None, 5), 105.0)
    assert elector.term is None  # another replica's record: not ours, whatever the deadline says
