"""Fixtures of the chaos suite: a farm per test (operator, stand-in workers, media, outputs), the test
clips made once per session, and the summary table printed at the end of the run. With
FFRTMP_CHAOS_REPORT=1 the rows of the scenarios that ran are also merged into RELIABILITY.md (off by
default, so that `make test` leaves the tracked file alone)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaoslib import SUMMARY, TABLE_HEADER, ChaosFarm, merge_into_reliability, stop_farm

from helpers import REPO, TestCluster, make_clip


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small real clips, made once: copy them into a farm's media root before use."""
    d = tmp_path_factory.mktemp("clips")
    made = {
        "one": make_clip(d / "one.mp4", seconds=1),
        "short": make_clip(d / "short.mp4", seconds=2),
        "long": make_clip(d / "long.mp4", seconds=4),
        "paced": make_clip(d / "paced.mp4", seconds=8),  # for jobs read in real time (input.realtime)
        "tiny5": make_clip(d / "tiny5.mp4", seconds=1, rate=5, audio=False),
    }
    audio = d / "audio.m4a"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         "sine=frequency=440:duration=1", "-c:a", "aac", str(audio)],
        check=True, timeout=60,
    )  # fmt: skip
    made["audio"] = audio
    faststart = d / "faststart.mp4"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         "testsrc2=size=320x240:rate=25:duration=4", "-c:v", "libx264", "-preset", "ultrafast",
         "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(faststart)],
        check=True, timeout=60,
    )  # fmt: skip
    made["faststart"] = faststart
    return made


@pytest.fixture
def farm(cluster: TestCluster, namespace: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ChaosFarm]:
    media, output = tmp_path / "media", tmp_path / "output"
    media.mkdir()
    output.mkdir()
    f = ChaosFarm(cluster, namespace, tmp_path, media, output)
    yield f
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        f.dump()
    stop_farm(f)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{rep.when}", rep)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SUMMARY:
        return
    terminalreporter.section("chaos summary")
    terminalreporter.write_line(TABLE_HEADER)
    for result in SUMMARY:
        terminalreporter.write_line(result.row())
    if os.environ.get("FFRTMP_CHAOS_REPORT") == "1":
        merge_into_reliability(SUMMARY, REPO / "RELIABILITY.md")
