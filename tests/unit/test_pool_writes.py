"""A reconcile pass leaves the status writes of every namespace's pool in the background, together
(bounded by max_parallel_writes), one at a time per pool: with a hundred watched namespaces, waiting
for them held each pass, and every job waiting for the next one (BENCHMARKS.md, figure 8). The API is
an in-memory stand-in that answers each status write after 50 ms."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from ffrtmp.controller import reconciler as reconciler_module
from ffrtmp.controller.metrics import OperatorMetrics
from ffrtmp.controller.reconciler import FULL_POOL_PASS_SECONDS, Reconciler
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
    reconciler._last_full_pool_pass = 0.0  # a pass that would decide every pool
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
    await reconciler.pass_once()
    assert decided == ["ns7/cpu"]  # one event, one pool decided
    await settle(reconciler)

    decided.clear()
    monkeypatch.setattr(reconciler, "_last_full_pool_pass", time.monotonic() - FULL_POOL_PASS_SECONDS)
    await reconciler.pass_once()
    assert len(decided) == 50  # what only time changes is decided for every pool at least every second
