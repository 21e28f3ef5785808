"""`python -m tests.bench.traced_operator operator ...`: the unchanged operator plus one extra kopf
startup handler for diagnostics:

    FFRTMP_BENCH_TRACEMALLOC   a file: trace allocations, write the top ones there every 5 s
                               (diagnostics only: tracing slows the operator and costs memory)

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
