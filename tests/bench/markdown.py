"""`python -m tests.bench.markdown .bench/results-full.json`: the results table of BENCHMARKS.md
(every figure with its unit, parameters, target and whether it is met) from a run.py document."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SKIP_PARAMS = {"clock", "create_concurrency", "encoder", "pool", "slots_per_worker", "scale_up_step"}


def _value(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def table(doc: dict[str, Any]) -> str:
    lines = [
        "| benchmark | figure | value | unit | executors | target | met | parameters |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for bench, report in doc["benchmarks"].items():
        if "figures" not in report:
            lines.append(f"| {bench} | FAILED: {report.get('error', '?')} | | | | | | |")
            continue
        for name, f in report["figures"].items():
            params = ", ".join(f"{k}={v}" for k, v in f["parameters"].items() if k not in SKIP_PARAMS)
            met = "" if f["met"] is None else ("yes" if f["met"] else "**no**")
            executors = "simulated" if f["simulated"] else "real"
            lines.append(
                f"| {bench} | {name} | {_value(f['value'])} | {f['unit']} | {executors} | {f['target'] or ''} "
                f"| {met} | {params} |"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    doc = json.loads(Path(argv[0] if argv else ".bench/results-full.json").read_text())
    print(table(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
