"""The garbage collector's settings: a higher generation-0 threshold, and start-up's objects frozen."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ffrtmp import heap

pytestmark = pytest.mark.unit


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()


def test_configure_lets_generation_0_hold_a_passs_objects(restored_gc: None) -> None:
    heap.configure()
    assert gc.get_threshold() == (heap.GEN0_THRESHOLD, 10, 10)
    assert heap.GEN0_THRESHOLD >= 10 * 700  # the point: far above CPython's default


def test_a_pass_worth_of_short_lived_objects_meets_no_collection(restored_gc: None) -> None:
    heap.configure()
    gc.collect()
    young: list[dict[str, int]] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            young.append(info)

    gc.callbacks.append(count)
    try:
        for _ in range(50):  # 50 passes, each building and dropping 1,000 container objects
            views = [{"pool": i} for i in range(1_000)]
            del views
    finally:
        gc.callbacks.remove(count)
    assert young == []
    gc.set_threshold(700, 10, 10)  # CPython's default, for contrast
    gc.callbacks.append(count)
    try:
        views = [{"pool": i} for i in range(1_000)]
        del views
    finally:
        gc.callbacks.remove(count)
    assert young, "the default threshold collects within one pass"


def test_settle_freezes_what_is_alive(restored_gc: None) -> None:
    alive = [{"store": i} for i in range(1_000)]
    heap.settle()
    assert gc.get_freeze_count() >= len(alive)
    walked = {id(obj) for obj in gc.get_objects()}  # every generation the collector walks
    assert not any(id(obj) in walked for obj in alive)
