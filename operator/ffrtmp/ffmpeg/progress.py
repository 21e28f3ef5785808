"""Parse the `key=value` blocks ffmpeg writes with `-progress pipe:1`.

A block ends with `progress=continue` (or `progress=end` for the last one):

    frame=150
    fps=24.97
    bitrate=1799.4kbits/s
    total_size=1353156
    out_time_us=6016000
    speed=1.02x
    progress=continue

Values may be `N/A` (no output timestamp yet, null muxer size) and are padded with spaces
(`speed=   0x`). `out_time_ms` is microseconds too (an old ffmpeg misnomer); `out_time_us`
wins when both are there.

`out_time` is output time: ffmpeg (without `-copyts`) shifts the input's first timestamp to
zero, so a broadcast TS whose timestamps start at 10000 s still reports 0..duration, and the
probed `format.duration` (a length, not an end time) is the right denominator for `percent`
(tests/ffmpeg/test_real_media.py and test_attempt_media.py check both with such a TS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressSnapshot:
    """One `-progress` block."""

    out_time_seconds: float | None
    fps: float | None
    speed: float | None
    total_size: int | None
    frame: int | None
    ended: bool


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    text = value.strip().removesuffix("x").strip()
    if not text or text.upper() == "N/A":
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _integer(value: str | None) -> int | None:
    number = _number(value)
    return None if number is None or number < 0 else int(number)


def _clock_seconds(value: str | None) -> float | None:
    """`HH:MM:SS.micro` (possibly negative) as seconds."""
    if value is None:
        return None
    text = value.strip()
    negative = text.startswith("-")
    parts = text.lstrip("-").split(":")
    if len(parts) != 3:
        return None
    try:
        seconds = int(parts[0]) * 3600 + int(parts[1]) * 60 + float(parts[2])
    except ValueError:
        return None
    return -seconds if negative else seconds


class ProgressParser:
    """Feed it stdout lines; it returns a snapshot at the end of every block."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}

    def feed(self, line: str) -> ProgressSnapshot | None:
        """Take one line (with or without its newline); a snapshot when the line ends a block."""
        key, sep, value = line.strip().partition("=")
        if not sep or not key:
            return None
        key = key.strip()
        if key != "progress":
            self._values[key] = value.strip()
            return None
        values, self._values = self._values, {}
        return _snapshot(values, ended=value.strip() == "end")


def _snapshot(values: dict[str, str], *, ended: bool) -> ProgressSnapshot:
    micros = _number(values.get("out_time_us"))
    if micros is None:
        micros = _number(values.get("out_time_ms"))
    out_time = micros / 1_000_000 if micros is not None else _clock_seconds(values.get("out_time"))
    if out_time is not None:
        out_time = max(out_time, 0.0)  # audio priming makes the first timestamps negative
    fps = _number(values.get("fps"))
    speed = _number(values.get("speed"))
    return ProgressSnapshot(
        out_time_seconds=out_time,
        fps=fps if fps is None or fps >= 0 else None,
        speed=speed if speed is None or speed >= 0 else None,
        total_size=_integer(values.get("total_size")),
        frame=_integer(values.get("frame")),
        ended=ended,
    )


def percent(snapshot: ProgressSnapshot, duration: float | None) -> float | None:
    """How far along, 0..100, for a known positive duration; None otherwise (live, unknown).

    Computed from the output time only (ffmpeg also ends a failed run with `progress=end`).
    Callers keep the value monotone across snapshots and scale it across passes.
    """
    if duration is None or duration <= 0:
        return None
    if snapshot.out_time_seconds is None:
        return None
    return min(100.0, max(0.0, snapshot.out_time_seconds * 100.0 / duration))
