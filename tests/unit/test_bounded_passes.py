"""A pass makes its writes' coroutines only as write slots free up, and keeps no answer it is done
with: a pass that created a thousand worker Pods held every created Pod until the last create
returned, and that burst stayed in the operator's heap (BENCHMARKS.md, figure 9's footprint). A
job's spec is validated once per version, and the cache keeps no copy of the spec."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_lifecycle import pool_obj

from ffrtmp.controller import state
from ffrtmp.controller.metrics import OperatorMetrics
from ffrtmp.controller.reconciler import Reconciler
from ffrtmp.controller.settings import OperatorSettings

pytestmark = pytest.mark.unit
Obj = dict[str, Any]


def reconciler(api: object, slots: int) -> Reconciler:
    return Reconciler(api, OperatorSettings(max_parallel_writes=slots), OperatorMetrics())  # type: ignore[arg-type]


@given(items=st.integers(0, 60), slots=st.integers(1, 12))
def test_gather_awaits_everything_with_at_most_the_write_slots_made_at_once(items: int, slots: int) -> None:
    alive = 0
    most_alive = 0
    done: list[int] = []

    async def work(i: int) -> None:
        nonlocal alive, most_alive
        alive += 1
        most_alive = max(most_alive, alive)
        await asyncio.sleep(0)
        done.append(i)
        alive -= 1

    made = 0

    def works() -> Any:
        nonlocal made
        for i in range(items):
            made += 1
            assert made - len(done) <= slots, "a coroutine was made before a runner was free for it"
            yield work(i)

    asyncio.run(reconciler(object(), slots)._gather(works()))
    assert sorted(done) == list(range(items))
    assert most_alive <= slots


class PodApi:
    """Answers each Pod create after a few loop turns and counts the answers not yet dropped."""

    def __init__(self) -> None:
        self.names = itertools.count()
        self.in_flight = 0
        self.most_in_flight = 0

    async def create(self, path: str, body: Obj) -> Obj:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        for _ in range(3):
            await asyncio.sleep(0)
        self.in_flight -= 1
        meta = {**body["metadata"], "name": f"cpu-{next(self.names)}", "uid": "u", "resourceVersion": "1"}
        return {**body, "metadata": meta}


async def test_a_thousand_pod_creates_keep_a_write_slots_worth_of_coroutines_and_each_pod_is_stored() -> None:
    api = PodApi()
    r = reconciler(api, 8)
    r.on_event("pools", "ADDED", pool_obj())
    started = 0
    most_started = 0
    real = r._create_pod

    async def counted(path: str, manifest: Obj) -> None:
        nonlocal started, most_started
        started += 1
        most_started = max(most_started, started)
        try:
            await real(path, manifest)
        finally:
            started -= 1

    r._create_pod = counted  # type: ignore[method-assign]
    await r._apply_pool("media/cpu", 1000, [], [])
    assert len(r.store.pods) == 1000
    assert api.most_in_flight == 8
    assert most_started == 8  # not 1,000 coroutines, each holding its answer until the last one


async def test_a_failed_pod_create_is_counted_and_the_others_are_stored() -> None:
    class FailingSecond(PodApi):
        async def create(self, path: str, body: Obj) -> Obj:
            if next(self.calls) == 1:
                raise RuntimeError("connection reset")
            return await super().create(path, body)

        calls = itertools.count()

    r = reconciler(FailingSecond(), 2)
    r.on_event("pools", "ADDED", pool_obj())
    await r._apply_pool("media/cpu", 4, [], [])
    assert len(r.store.pods) == 3
    assert r.metrics.reconcile_errors.labels("Pod")._value.get() == 1


def job(uid: str, generation: int, crf: object) -> Obj:
    meta = {"name": "j", "namespace": "media", "uid": uid, "generation": generation, "resourceVersion": "1"}
    spec = {"input": {"uri": "/media/in.mp4"}, "outputs": [{"name": "out", "video": {"crf": crf}}]}
    return {"metadata": meta, "spec": spec, "status": {}}


def test_a_spec_is_validated_once_per_version_and_its_text_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []
    real = state._spec_verdict

    def counting(spec_json: str) -> str | None:
        checked.append(spec_json)
        return real(spec_json)

    monkeypatch.setattr(state, "_spec_verdict", counting)
    monkeypatch.setattr(state, "_SPEC_VERDICTS", type(state._SPEC_VERDICTS)())
    assert state.parse_job(job("u1", 1, 23)).invalid is None
    assert state.parse_job(job("u1", 1, 23)).invalid is None  # a status event: not validated again
    assert len(checked) == 1
    invalid = state.parse_job(job("u1", 2, 99)).invalid  # an edited spec: a new generation
    assert invalid is not None and "crf" in invalid
    assert len(checked) == 2
    assert all(isinstance(v, str | None) for v in state._SPEC_VERDICTS.values())  # verdicts, no spec texts
    # Objects made outside the API server can share a uid and generation: their specs still count.
    assert state.parse_job(job("", 1, 23)).invalid is None
    assert state.parse_job(job("", 1, 99)).invalid is not None
    assert len(checked) == 4


def test_the_verdict_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "_SPEC_VERDICTS", type(state._SPEC_VERDICTS)())
    monkeypatch.setattr(state, "_SPEC_VERDICTS_MAX", 5)
    for i in range(12):
        state.parse_job(job(f"u{i}", 1, 23))
    assert [key[:2] for key in state._SPEC_VERDICTS] == [(f"u{i}", 1) for i in range(7, 12)]
