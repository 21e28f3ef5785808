"""The capability self-test with the real ffmpeg of this machine (Debian 12's 5.1): the CPU
encoders it lists are proven by one-frame encodes, and an ffmpeg without one is found out."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from ffrtmp.worker.selftest import parse_encoders, run_capability_test

pytestmark = [pytest.mark.ffmpeg, pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="no ffmpeg")]

CPU = ("libx264", "libx265", "libsvtav1")


def listed() -> frozenset[str]:
    out = subprocess.run(
        ["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True, check=True, timeout=60
    )
    return parse_encoders(out.stdout)


def wrapper(tmp_path: Path, body: str) -> str:
    real = shutil.which("ffmpeg")
    script = tmp_path / "ffmpeg"
    script.write_text(f'#!/bin/sh\nREAL={real}\n{body}\nexec $REAL "$@"\n')
    script.chmod(0o755)
    return str(script)


def test_the_cpu_capability_set_is_every_listed_cpu_encoder_and_each_really_encodes() -> None:
    report = asyncio.run(run_capability_test("cpu"))
    expected = [e for e in CPU if e in listed()]
    assert "libx264" in expected  # Debian 12's ffmpeg has all three
    assert report.primary.ok and report.primary.encoder == "libx264"
    assert report.encoders_annotation() == ",".join(expected)
    assert all(r.ok and r.seconds > 0 for r in report.results), report.summary()


def test_an_ffmpeg_without_an_encoder_is_found_out_without_trying_it(tmp_path: Path) -> None:
    ffmpeg = wrapper(
        tmp_path,
        'for a in "$@"; do\n'
        '  [ "$a" = libsvtav1 ] && { echo "Unknown encoder \'libsvtav1\'" >&2; exit 1; }\n'
        '  [ "$a" = -encoders ] && { $REAL "$@" | grep -v " libsvtav1 "; exit 0; }\n'
        "done",
    )
    report = asyncio.run(run_capability_test("cpu", ffmpeg=ffmpeg))
    assert report.encoders == {"libx264", "libx265"}
    av1 = report.results[-1]
    assert (av1.encoder, av1.ok, av1.message) == ("libsvtav1", False, "not in this ffmpeg (ffmpeg -encoders)")


def test_a_listed_encoder_that_cannot_encode_is_left_out_with_ffmpegs_words(tmp_path: Path) -> None:
    # Listed, but the encode fails (as a driver that refuses a codec would): the frame decides.
    ffmpeg = wrapper(
        tmp_path,
        'for a in "$@"; do\n'
        '  [ "$a" = libx265 ] && { echo "[libx265 @ 0x1] Cannot open libx265 encoder" >&2; exit 1; }\n'
        "done",
    )
    report = asyncio.run(run_capability_test("cpu", ffmpeg=ffmpeg))
    assert "libx265" not in report.encoders and "libx264" in report.encoders
    hevc = next(r for r in report.results if r.encoder == "libx265")
    assert not hevc.ok and "Cannot open libx265 encoder" in hevc.message


def test_when_h264_fails_nothing_else_is_tried(tmp_path: Path) -> None:
    ffmpeg = wrapper(tmp_path, 'for a in "$@"; do [ "$a" = libx264 ] && { echo "no x264" >&2; exit 1; }; done')
    report = asyncio.run(run_capability_test("cpu", ffmpeg=ffmpeg))
    assert not report.primary.ok and len(report.results) == 1 and report.encoders_annotation() == ""
