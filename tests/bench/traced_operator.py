"""`python -m tests.bench.traced_operator operator ...`: the unchanged operator plus one extra kopf
startup handler for diagnostics:

    FFRTMP_BENCH_TRACEMALLOC   a file: trace allocations, write the top ones there every 5 s
                               (diagnostics only: tracing slows the operator and costs memory)
    FFRTMP_BENCH_MEMSTATS      a file: every 30 s, a census without tracing: RSS, pymalloc's arenas
                               (blocks in use against blocks free) and live objects by type
    FFRTMP_BENCH_GC_GARBAGE    a file: what the cyclic collector freed, by type, every 10 s (the
                               collector keeps what it finds, gc.DEBUG_SAVEALL, and this tallies and
                               drops it: diagnostics only)

Importing this module registers nothing: registration happens in `main()`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

log = logging.getLogger("ffrtmp.bench")


def main() -> int:
    import kopf

    import ffrtmp.controller.handlers  # noqa: F401 - the project's handlers, registered first
    from ffrtmp.cli import main as cli_main

    trace = os.environ.get("FFRTMP_BENCH_TRACEMALLOC")
    if trace:
        tracemalloc.start(12)

        @kopf.on.startup()
        async def bench_tracemalloc(memo: kopf.Memo, **_: Any) -> None:
            memo.bench_trace_task = asyncio.create_task(_dump_allocations(Path(trace)))

    memstats = os.environ.get("FFRTMP_BENCH_MEMSTATS")
    if memstats:

        @kopf.on.startup()
        async def bench_memstats(memo: kopf.Memo, **_: Any) -> None:
            memo.bench_memstats_task = asyncio.create_task(_dump_census(Path(memstats)))

    garbage = os.environ.get("FFRTMP_BENCH_GC_GARBAGE")
    if garbage:
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.callbacks.append(_sample_allocator)

        @kopf.on.startup()
        async def bench_gc_garbage(memo: kopf.Memo, **_: Any) -> None:
            memo.bench_gc_garbage_task = asyncio.create_task(_tally_garbage(Path(garbage)))

    return cli_main(sys.argv[1:])


_TRIGGERS: dict[str, int] = {}


def _sample_allocator(phase: str, info: dict[str, Any]) -> None:
    """At the start of a collection, the Python code running: what allocated the object that
    pushed generation 0 over its threshold (a sample of who allocates most)."""
    if phase != "start":
        return
    frame = sys._getframe(1)
    where = []
    while frame is not None and len(where) < 6:
        where.append(f"{frame.f_code.co_qualname} ({Path(frame.f_code.co_filename).name}:{frame.f_lineno})")
        frame = frame.f_back
    key = " < ".join(where)
    _TRIGGERS[key] = _TRIGGERS.get(key, 0) + 1


async def _tally_garbage(path: Path, every: float = 10.0) -> None:
    tally: dict[str, int] = {}
    while True:
        await asyncio.sleep(every)
        for obj in gc.garbage:
            name = type(obj).__qualname__
            if name in ("frame", "coroutine", "function", "Task", "Future", "traceback"):
                code = getattr(obj, "f_code", None) or getattr(obj, "cr_code", None) or getattr(obj, "__code__", None)
                if code is not None:
                    name += f" {code.co_qualname} ({Path(code.co_filename).name}:{code.co_firstlineno})"
                elif name == "traceback":
                    frame = obj.tb_frame
                    name += f" {frame.f_code.co_qualname} ({Path(frame.f_code.co_filename).name}:{obj.tb_lineno})"
            tally[name] = tally.get(name, 0) + 1
        freed = len(gc.garbage)
        gc.garbage.clear()
        top = sorted(tally.items(), key=lambda kv: -kv[1])[:60]
        tmp = path.with_suffix(".tmp")
        triggers = sorted(_TRIGGERS.items(), key=lambda kv: -kv[1])[:40]
        doc = {"last_period_objects": freed, "top": top, "collections_started_in": triggers}
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(path)


def _pymalloc_stats() -> dict[str, int]:
    """The totals of `sys._debugmallocstats()` (written to fd 2): arenas, bytes in used and free blocks."""
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+") as out:
        try:
            sys.stderr.flush()
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read()
    totals: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        digits = value.strip().replace(",", "")
        if sep and digits.isdigit() and (name.startswith("#") or "unused pools" in name or "arenas *" in name):
            key = name.strip(" #")
            key = "arenas bytes" if "arenas *" in key else "unused pools bytes" if "unused pools" in key else key
            totals[key] = int(digits)
    return totals


async def _dump_census(path: Path, every: float = 30.0) -> None:
    while True:
        await asyncio.sleep(every)
        by_type: dict[str, list[int]] = {}
        for obj in gc.get_objects():
            entry = by_type.setdefault(type(obj).__qualname__, [0, 0])
            entry[0] += 1
            entry[1] += sys.getsizeof(obj)
        status = Path("/proc/self/status").read_text().splitlines()  # noqa: ASYNC240 - procfs, no disk
        rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
        doc = {
            "rss_bytes": rss_kb * 1024,
            "pymalloc": _pymalloc_stats(),
            "gc_tracked_types": sorted(([n, c, b] for n, (c, b) in by_type.items()), key=lambda t: -t[2])[:30],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(path)


async def _dump_allocations(path: Path, every: float = 5.0) -> None:
    ignore = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
    ]
    while True:
        await asyncio.sleep(every)
        snap = tracemalloc.take_snapshot().filter_traces(ignore)
        by_line = snap.statistics("lineno")
        by_file = snap.statistics("filename")
        doc = {
            "traced_bytes": sum(s.size for s in by_file),
            "top_files": [{"where": str(s.traceback), "bytes": s.size, "count": s.count} for s in by_file[:15]],
            "top_lines": [{"where": str(s.traceback), "bytes": s.size, "count": s.count} for s in by_line[:25]],
            "top_stacks": [
                {"bytes": s.size, "count": s.count, "stack": [str(f) for f in s.traceback.format()[-16:]]}
                for s in snap.statistics("traceback")[:8]
            ],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
