"""The cyclic garbage collector's settings for the operator and the worker: long-running processes
whose heap is mostly objects that live as long as the process (imported modules, kopf, pydantic's
models, the store), beside short-lived ones that each decision pass or watch event makes and drops.

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
The operator does both (it settles once every watch has listed). The worker, whose heap is a few of
its own jobs beside the imports, only raises the threshold.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)
GEN0_THRESHOLD = 20_000
# Unchanged from CPython's defaults: a generation-1 collection per 10 of generation 0, a full one per
# 10 of those (and only when the objects promoted since the last one are a quarter of the rest).
GEN1_THRESHOLD = 10
GEN2_THRESHOLD = 10


def configure() -> None:
    """At process start: collect generation 0 less often (see the module's docstring)."""
    gc.set_threshold(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)


def settle() -> None:
    """Once started and synced: collect what start-up left, then freeze what is alive."""
    gc.collect()
    gc.freeze()
    log.debug("froze %d objects out of the cyclic collector's reach", gc.get_freeze_count())
