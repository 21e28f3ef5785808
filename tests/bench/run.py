"""Run the benchmarks on one local control plane: `python tests/bench/run.py --json out.json
[--only NAME[,NAME]] [--scale small|full]`. Prints each table and writes ONE JSON document
{"machine": ..., "benchmarks": {name: report}} (default .bench/results-<scale>.json)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# Order: the request counts first (quiet server), the real encodes next, the 10,000-job footprints last.
ORDER = [
    "overhead", "chunking", "api_requests", "latency", "autoscaler", "scheduling", "namespaces", "write_budget",
    "running_footprint", "footprint",
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from tests.bench.common import RESULTS_DIR, SCALES, BenchEnv, extra_nodes_for, machine_facts, write_json

    parser = argparse.ArgumentParser(prog="python tests/bench/run.py")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only", default="", help="comma-separated benchmark names: " + ", ".join(ORDER))
    parser.add_argument("--scale", choices=SCALES, default=os.environ.get("FFRTMP_BENCH_SCALE", "full"))
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    names = [n for n in args.only.split(",") if n] or ORDER
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    modules = {n: importlib.import_module(f"tests.bench.{n}") for n in names}
    workers = max(m.workers_needed(args.scale) for m in modules.values())
    out = args.json or RESULTS_DIR / f"results-{args.scale}.json"
    doc: dict[str, object] = {"scale": args.scale, "machine": machine_facts(), "benchmarks": {}}
    results: dict[str, object] = doc["benchmarks"]  # type: ignore[assignment]
    failed = []
    with BenchEnv(extra_nodes_for(workers)) as env:
        doc["control_plane"] = {"root": str(env.root), "extra_nodes": env.extra_nodes, "up_seconds": env.up_seconds}
        for name in names:
            started = time.monotonic()
            try:
                report = asyncio.run(modules[name].run(env, args.scale))
            except Exception as e:  # one broken benchmark must not lose the others' figures
                import traceback

                failed.append(name)
                results[name] = {"error": repr(e), "traceback": traceback.format_exc()}
                print(f"== {name} FAILED: {e!r}\n{traceback.format_exc()}", flush=True)
            else:
                print(report.table(), flush=True)
                results[name] = {**report.document(), "seconds": round(time.monotonic() - started, 1)}
            write_json(out, doc)
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
