"""Fixtures of the benchmarks: one control plane for the whole bench session.

Importing this file starts nothing (the normal test run collects it and deselects the bench
tests); the control plane starts only when a bench test asks for `bench_env`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .common import SCALES, BenchEnv, extra_nodes_for


@pytest.fixture(scope="session")
def bench_scale() -> str:
    scale = os.environ.get("FFRTMP_BENCH_SCALE", "full")
    assert scale in SCALES, f"FFRTMP_BENCH_SCALE must be one of {SCALES}"
    return scale


@pytest.fixture(scope="session")
def bench_env(bench_scale: str) -> Iterator[BenchEnv]:
    import importlib

    from .run import ORDER

    workers = max(importlib.import_module(f"{__package__}.{n}").workers_needed(bench_scale) for n in ORDER)
    with BenchEnv(extra_nodes_for(workers)) as env:
        yield env
