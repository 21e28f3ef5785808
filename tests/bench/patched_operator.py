"""`python -m tests.bench.patched_operator operator ...`: the unchanged operator plus ONE extra kopf
startup handler that applies a proposed setting, to measure a proposed operator change without
editing operator/ (the "after" figures of BENCHMARKS.md).

    FFRTMP_BENCH_QUEUEING_WORKER_LIMIT   kopf settings.queueing.worker_limit ("none": unlimited)
    FFRTMP_BENCH_QUEUEING_IDLE_TIMEOUT   kopf settings.queueing.idle_timeout (seconds)
    FFRTMP_BENCH_TRACEMALLOC             a file: trace allocations, write the top ones there every 5 s
                                         (diagnostics only: tracing slows the operator and costs memory)

The handler runs after the project's own startup handler (registered first), so it wins.
Importing this module registers nothing: registration happens in `main()`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tracemalloc
from pathlib import Path
from typing import Any

log = logging.getLogger("ffrtmp.bench")


def main() -> int:
    import kopf

    import ffrtmp.controller.handlers  # noqa: F401 - the project's handlers, registered first
    from ffrtmp.cli import main as cli_main

    @kopf.on.startup()
    async def bench_overrides(settings: kopf.OperatorSettings, **_: Any) -> None:
        before = (settings.queueing.worker_limit, settings.queueing.idle_timeout)
        limit = os.environ.get("FFRTMP_BENCH_QUEUEING_WORKER_LIMIT")
        if limit is not None:
            settings.queueing.worker_limit = None if limit.lower() == "none" else int(limit)
        idle = os.environ.get("FFRTMP_BENCH_QUEUEING_IDLE_TIMEOUT")
        if idle is not None:
            settings.queueing.idle_timeout = float(idle)
        log.warning(
            "bench overrides: queueing (worker_limit, idle_timeout) %s -> %s",
            before, (settings.queueing.worker_limit, settings.queueing.idle_timeout),
        )  # fmt: skip

    trace = os.environ.get("FFRTMP_BENCH_TRACEMALLOC")
    if trace:
        tracemalloc.start(12)

        @kopf.on.startup()
        async def bench_tracemalloc(memo: kopf.Memo, **_: Any) -> None:
            memo.bench_trace_task = asyncio.create_task(_dump_allocations(Path(trace)))

    return cli_main(sys.argv[1:])


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
