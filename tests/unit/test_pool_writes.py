"""A reconcile pass leaves the status writes of every namespace's pool in the background, together
(bounded by max_parallel_writes), one at a time per pool: with a hundred watched namespaces, waiting
for them held each pass, and every job waiting for the next one (BENCHMARKS.md, figure 8). The API is
an in-memory stand-in that answers each status write after 50 ms."""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ffrtmp.controller import reconciler as reconciler_module
from ffrtmp.controller.metrics import OperatorMetrics
from ffrtmp.controller.reconciler import FULL_POOL_PASS_SECONDS, Reconciler, pool_time_due
from ffrtmp.controller.settings import OperatorSettings

pytestmark = pytest.mark.unit
Obj = dict[str, Any]
WRITE_SECONDS = 0.05


def pool(namespace: str) -> Obj:
    meta = {"name": "cpu", "namespace": namespace, "uid": f"u-{namespace}", "resourceVersion": "5", "generation": 1}
    spec = {"accelerator": "cpu", "minWorkers": 0, "maxWorkers": 0, "autoscaling": {"enabled": False}}
    return {"metadata": meta, "spec": spec, "status": {}}


class SlowApi:
    """Answers the readiness check at once and every pool status write after WRITE_SECONDS."""

    def __init__(self, pools: dict[str, Obj]) -> None:
        self.pools = pools
        self.in_flight = 0
        self.most_in_flight = 0
        self.writes = 0
        self.answered = asyncio.Event()

    async def request(self, method: str, path: str, **_: Any) -> Obj:
        return {}

    async def create(self, path: str, body: Obj, **_: Any) -> Obj:
        return body

    async def merge_patch(self, path: str, body: Obj, **_: Any) -> Obj:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(WRITE_SECONDS)
        self.in_flight -= 1
        self.writes += 1
        self.answered.set()
        namespace = path.split("/namespaces/")[1].split("/", maxsplit=1)[0]
        return {**self.pools[namespace], "status": body["status"]}


async def wait_for_writes(api: SlowApi, count: int) -> None:
    async with asyncio.timeout(10):
        while api.writes < count or api.in_flight:
            api.answered.clear()
            await api.answered.wait()


async def settle(reconciler: Reconciler) -> None:
    """Until every pool status write of the reconciler is answered and done with."""
    async with asyncio.timeout(10):
        while reconciler._pool_status_writes:
            await asyncio.gather(*reconciler._pool_status_writes.values())
            await asyncio.sleep(0)  # their done callbacks


def many_pools(count: int) -> tuple[SlowApi, Reconciler, list[str]]:
    namespaces = [f"ns{i}" for i in range(count)]
    pools = {ns: pool(ns) for ns in namespaces}
    api = SlowApi(pools)
    settings = OperatorSettings(namespaces=tuple(namespaces), max_parallel_writes=16, metrics_port=0, health_port=0)
    reconciler = Reconciler(api, settings, OperatorMetrics())  # type: ignore[arg-type]
    for ns in namespaces:
        reconciler.on_sync("pools", ns, [pools[ns]], "10")
    return api, reconciler, namespaces


async def test_the_pools_of_many_namespaces_are_written_together_after_the_pass() -> None:
    api, reconciler, namespaces = many_pools(40)

    started = time.monotonic()
    await reconciler.pass_once()
    assert api.writes == 0 and api.in_flight == 0  # the pass did not wait for a single one
    await wait_for_writes(api, 40)
    seconds = time.monotonic() - started

    assert api.writes == 40
    assert api.most_in_flight == 16  # as many as --max-parallel-writes allows, no more
    assert seconds < 40 * WRITE_SECONDS / 2, f"40 pool writes took {seconds:.2f}s"
    assert all(reconciler.store.pools[f"{ns}/cpu"].status.get("readyWorkers") == 0 for ns in namespaces)


async def test_a_pool_whose_status_write_is_out_is_decided_again_once_it_is_answered() -> None:
    api, reconciler, _ = many_pools(3)
    await reconciler.pass_once()
    await asyncio.sleep(0)  # the writes are sent
    reconciler.trigger.clear()
    reconciler._pool_decided_at.clear()  # a pass that would decide every pool
    await reconciler.pass_once()  # the writes are still out: no pool is decided, nothing is written twice
    await wait_for_writes(api, 3)
    assert api.writes == 3
    await asyncio.wait_for(reconciler.trigger.wait(), 5)  # the skipped pools get a pass of their own
    await reconciler.pass_once()  # decided from the written status: nothing left to write
    await asyncio.sleep(2 * WRITE_SECONDS)
    assert api.writes == 3


async def test_a_pass_decides_only_the_pools_that_changed_and_every_pool_each_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, reconciler, _ = many_pools(50)
    decided: list[str] = []
    real = reconciler_module.decide_pool

    def counting(pool: Any, *args: Any, **kwargs: Any) -> Any:
        decided.append(pool.key)
        return real(pool, *args, **kwargs)

    monkeypatch.setattr(reconciler_module, "decide_pool", counting)
    await reconciler.pass_once()
    assert len(decided) == 50  # the first pass decides every pool
    await settle(reconciler)

    decided.clear()
    changed = {**pool("ns7"), "spec": {**pool("ns7")["spec"], "minWorkers": 0}}
    changed["metadata"] = {**changed["metadata"], "resourceVersion": "6", "generation": 2}
    reconciler.on_event("pools", "MODIFIED", changed)
    with monkeypatch.context() as m:  # no pool's second ends meanwhile
        m.setattr(reconciler_module, "pool_time_due", lambda *_: False)
        await reconciler.pass_once()
    assert decided == ["ns7/cpu"]  # one event, one pool decided
    await settle(reconciler)

    decided.clear()
    long_ago = {key: at - FULL_POOL_PASS_SECONDS for key, at in reconciler._pool_decided_at.items()}
    monkeypatch.setattr(reconciler, "_pool_decided_at", long_ago)
    await reconciler.pass_once()
    assert len(decided) == 50  # what only time changes is decided for every pool at least every second


async def test_pools_come_due_spread_over_the_second_not_all_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """After all 100 pools were decided together (the first pass), passes every 50 ms for 2.2 s with no
    event decide each pool once or twice a second and never more than a few in one pass."""
    _, reconciler, _ = many_pools(100)
    per_pass: list[int] = []
    decided: dict[str, list[float]] = {}
    real = reconciler_module.decide_pool

    def counting(pool: Any, *args: Any, **kwargs: Any) -> Any:
        decided.setdefault(pool.key, []).append(time.monotonic())
        per_pass[-1] += 1
        return real(pool, *args, **kwargs)

    monkeypatch.setattr(reconciler_module, "decide_pool", counting)
    per_pass.append(0)
    started = previous = time.monotonic()
    await reconciler.pass_once()
    await settle(reconciler)
    assert per_pass == [100]
    while time.monotonic() - started < 2.2 or len(per_pass) < 21:
        per_pass.append(0)
        began = time.monotonic()
        await reconciler.pass_once()
        # About the pools whose second ended since the last pass (100 x the gap), not all 100 at once.
        assert per_pass[-1] <= 100 * (began - previous) / FULL_POOL_PASS_SECONDS + 8, (per_pass, began - previous)
        previous = began
        await settle(reconciler)
        await asyncio.sleep(0.05)
    for key, times in decided.items():
        gaps = [b - a for a, b in pairwise(times)]
        assert len(times) >= 3, (key, times)  # the first pass and at least once in each later second
        assert max(gaps) <= FULL_POOL_PASS_SECONDS + 0.5, (key, gaps)


@given(
    key=st.text(min_size=1, max_size=30),
    gaps=st.lists(st.floats(min_value=0.001, max_value=0.4), min_size=1, max_size=200),
    start=st.floats(min_value=0, max_value=1e6),
)
def test_a_pool_decided_whenever_due_is_decided_at_least_once_a_period(
    key: str, gaps: list[float], start: float
) -> None:
    period, decided_at, now, last_gap = FULL_POOL_PASS_SECONDS, start, start, 0.0
    for gap in gaps:
        now += gap
        if pool_time_due(key, decided_at, now, period):
            assert now - decided_at > 0
            decided_at = now
        last_gap = now - decided_at
        assert last_gap < period + gap + 1e-6  # never a full period plus a pass without a decision
    assert pool_time_due(key, None, now, period)
