"""The processes' memory settings: a 32 KiB TLS read buffer per connection, a higher generation-0
threshold for the garbage collector, and start-up's objects frozen."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import gc
import ssl
from collections.abc import Iterator

import pytest

from ffrtmp import heap

pytestmark = pytest.mark.unit


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds, tls_buffer = gc.get_threshold(), asyncio.sslproto.SSLProtocol.max_size
    yield
    gc.set_threshold(*thresholds)
    asyncio.sslproto.SSLProtocol.max_size = tls_buffer
    gc.unfreeze()


async def test_a_tls_connection_reads_into_32_kib_not_256(restored_gc: None) -> None:
    def read_buffer() -> int:
        protocol = asyncio.sslproto.SSLProtocol(
            asyncio.get_running_loop(), asyncio.Protocol(), ssl.create_default_context(), None
        )
        return len(protocol.get_buffer(-1))  # what the transport reads into: the whole buffer

    assert read_buffer() == 256 * 1024  # asyncio's own
    heap.configure()
    assert read_buffer() == heap.TLS_READ_BUFFER == 32 * 1024


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
