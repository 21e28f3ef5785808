"""Memory settings of the operator and worker processes: the TLS read buffer of each connection,
and the cyclic garbage collector.

TLS read buffer. asyncio's TLS transport (`asyncio.sslproto.SSLProtocol`, which aiohttp uses) gives
every connection a 256 KiB read buffer, zero-filled, so resident, from the start. The operator
holds one connection per watch (HTTP/1.1: one stream each): with 100 watched namespaces 400 watches,
483 connections in all, and 131 MB of its 215 MB once ready were outside Python's object allocator
(figure 8, BENCHMARKS.md). A TLS record is at most 16 KiB, so TLS_READ_BUFFER (32 KiB) still takes
two whole records per read; a large list takes more reads, each a few microseconds.

Garbage collector. The processes are long-running, with a heap that is mostly objects that live as
long as the process (imported modules, kopf, pydantic's models, the store), beside short-lived ones
that each decision pass or watch event makes and drops.

CPython's defaults collect generation 0 after every 700 net new container objects, and every full
collection walks every tracked object. Measured in figure 8 (BENCHMARKS.md) on the operator with
100 watched namespaces, in a 40 s window of 5 job submissions a second: 231 generation-0, 21
generation-1 and 2 full collections; the full ones held the event loop 80 ms each, and the jobs that
arrived meanwhile made the submit -> Running p99. One decision pass over 100 pools builds about a
thousand short-lived objects (scheduling's per-namespace index, pool views), so a pass met the
threshold mid-way, and its objects, still alive, were promoted to older generations where only a
full collection frees them. So:
- generation 0 holds up to GEN0_THRESHOLD net new objects before a collection: a pass's objects are
  freed by reference counting before one comes, and a young collection costs about a millisecond;
- once the process has started and listed everything (`settle`), what is alive then is frozen out
  of the collector's reach (`gc.freeze`): later full collections walk only what came after. Frozen
  objects are still freed by reference counting; only cycles among them would stay.
The operator settles once every watch has listed. The worker, whose heap is a few of its own jobs
beside the imports, only configures.
"""

from __future__ import annotations

import asyncio.sslproto
import gc
import logging

log = logging.getLogger(__name__)
TLS_READ_BUFFER = 32 * 1024
GEN0_THRESHOLD = 20_000
# Unchanged from CPython's defaults: a generation-1 collection per 10 of generation 0, a full one per
# 10 of those (and only when the objects promoted since the last one are a quarter of the rest).
GEN1_THRESHOLD = 10
GEN2_THRESHOLD = 10


def configure() -> None:
    """At process start, before any connection: a smaller TLS read buffer per connection, and
    generation 0 collected less often (see the module's docstring)."""
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER  # a class attribute, read by each new connection
    gc.set_threshold(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)


def settle() -> None:
    """Once started and synced: collect what start-up left, then freeze what is alive."""
    gc.collect()
    gc.freeze()
    log.debug("froze %d objects out of the cyclic collector's reach", gc.get_freeze_count())
