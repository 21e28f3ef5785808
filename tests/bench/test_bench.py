"""`make bench`: every benchmark as a pytest test (scale from FFRTMP_BENCH_SCALE, default full).

Each test prints its table and writes .bench/<name>.json. A benchmark that misses its target
still passes (the figure is the result); it fails only when it could not measure.
"""

from __future__ import annotations

import asyncio
import importlib

import pytest

from .common import RESULTS_DIR, BenchEnv, write_json
from .run import ORDER

pytestmark = pytest.mark.bench


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", ORDER)
def test_benchmark(name: str, bench_env: BenchEnv, bench_scale: str) -> None:
    module = importlib.import_module(f"{__package__}.{name}")
    report = asyncio.run(module.run(bench_env, bench_scale))
    print("\n" + report.table())
    write_json(RESULTS_DIR / f"{name}-{bench_scale}.json", report.document())
    assert report.figures, "no figure measured"
    assert all(f.value is not None for f in report.figures if f.target), [
        f.name for f in report.figures if f.target and f.value is None
    ]
