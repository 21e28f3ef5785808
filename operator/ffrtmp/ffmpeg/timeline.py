"""Times on a source's timeline as integer microseconds, written for ffmpeg without rounding."""

from __future__ import annotations

MICROS = 1_000_000


def seconds(us: int) -> str:
    """Microseconds as ffmpeg reads seconds, exactly: 10010000 -> `10.010000`."""
    return f"{us // MICROS}.{us % MICROS:06d}"


def parse_micros(text: str) -> int:
    """ffprobe's `12.345678` (six decimals or fewer) as microseconds, exactly."""
    whole, _, fraction = text.strip().partition(".")
    sign = -1 if whole.startswith("-") else 1
    return sign * (abs(int(whole or "0")) * MICROS + int((fraction + "000000")[:6] or "0"))
