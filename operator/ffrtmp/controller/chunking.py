"""Chunk planning (pure): where a file input is cut so that its chunks can be encoded in parallel.

Times are integer microseconds on the source timeline (0 is the input's first timestamp, as
ffmpeg's `-start_at_zero` sees it), so that a boundary is one exact number shared by the chunk
that ends there and the one that starts there: a frame at time t belongs to the chunk with
start <= t < end, in every chunk encode and in the stitch.

Boundaries go at a source keyframe close to the nominal chunk length (the decoder then starts
right at the cut, and an open-GOP source is cut where its GOPs are closed enough to decode),
else at the exact nominal time (the chunk encode then decodes from the previous keyframe and
drops the frames before its start). The plan is stored compactly (`encode_boundaries`) so that
a restarted operator continues the same plan.

`choose_mode` decides whether a job of chunking mode Auto runs chunked or single-pass.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from ffrtmp.ffmpeg.timeline import MICROS, seconds

__all__ = [
    "MICROS",
    "Chunk",
    "ChunkBounds",
    "ModeChoice",
    "bounds_for",
    "choose_mode",
    "decode_boundaries",
    "encode_boundaries",
    "plan_chunks",
    "plan_too_long",
    "seconds",
]
MIN_CHUNK_SECONDS = 2
MAX_PLAN_CHARS = 65536  # status.chunks.plan and chunkTask.plan hold at most this (api/job.py)


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    start_us: int
    end_us: int

    @property
    def duration_us(self) -> int:
        return self.end_us - self.start_us


@dataclass(frozen=True, slots=True)
class ChunkBounds:
    """How long a chunk may be: every chunk but the last lies in [shortest, longest]; the last
    in (0, last_longest]."""

    nominal_us: int
    tolerance_us: int

    @property
    def shortest_us(self) -> int:
        return self.nominal_us - self.tolerance_us

    @property
    def longest_us(self) -> int:
        return self.nominal_us + self.tolerance_us

    @property
    def last_longest_us(self) -> int:
        # A remainder of up to half a chunk joins the last chunk instead of becoming a tiny one.
        return self.nominal_us + self.nominal_us // 2


def bounds_for(chunk_seconds: int) -> ChunkBounds:
    """A keyframe within a quarter of the nominal length of the nominal cut is taken instead of it."""
    if chunk_seconds < MIN_CHUNK_SECONDS:
        raise ValueError(f"chunk_seconds must be at least {MIN_CHUNK_SECONDS}")
    nominal = chunk_seconds * MICROS
    return ChunkBounds(nominal, nominal // 4)


def plan_chunks(duration_us: int, chunk_seconds: int, keyframes_us: Sequence[int] = ()) -> tuple[Chunk, ...]:
    """Chunks covering [0, duration_us) in order, without gap or overlap.

    `keyframes_us`: the source's video keyframe times (any order; values outside the input are
    ignored). Each cut is at the keyframe nearest the nominal cut (previous cut + chunk length)
    within the bounds' tolerance, else exactly at the nominal cut.
    """
    if duration_us <= 0:
        raise ValueError("duration must be positive")
    bounds = bounds_for(chunk_seconds)
    keys = sorted({k for k in keyframes_us if 0 < k < duration_us})
    chunks: list[Chunk] = []
    start = 0
    while duration_us - start > bounds.last_longest_us:
        nominal = start + bounds.nominal_us
        low = bisect.bisect_left(keys, start + bounds.shortest_us)
        high = bisect.bisect_right(keys, start + bounds.longest_us)
        near = keys[low:high]
        cut = min(near, key=lambda k: (abs(k - nominal), k)) if near else nominal
        chunks.append(Chunk(len(chunks), start, cut))
        start = cut
    chunks.append(Chunk(len(chunks), start, duration_us))
    return tuple(chunks)


def encode_boundaries(chunks: Sequence[Chunk]) -> str:
    """The plan as stored in the parent's status: every boundary in microseconds, comma-separated
    (`0,10010000,...,duration`): 720 chunks (2 h in 10 s chunks) take about 8 kB, and at most
    MAX_PLAN_CHARS are stored (about 6,000 chunks; see plan_too_long)."""
    if not chunks:
        return ""
    return ",".join([*(str(c.start_us) for c in chunks), str(chunks[-1].end_us)])


def plan_too_long(plan: str, chunk_seconds: int) -> str | None:
    """Why a plan cannot be stored (too many chunks for MAX_PLAN_CHARS), or None."""
    if len(plan) <= MAX_PLAN_CHARS:
        return None
    count = plan.count(",")
    return (
        f"the input makes {count} chunks of {chunk_seconds} s: more than one plan holds "
        f"({MAX_PLAN_CHARS} characters of boundaries); use a longer chunking.chunkSeconds"
    )


def decode_boundaries(text: str) -> tuple[Chunk, ...]:
    """The chunks of a stored plan; ValueError when it is not a valid one."""
    points = [int(p) for p in text.split(",")]
    if len(points) < 2 or points[0] != 0 or any(b <= a for a, b in itertools.pairwise(points)):
        raise ValueError(f"not a chunk plan: {text[:80]!r}")
    return tuple(Chunk(i, a, b) for i, (a, b) in enumerate(itertools.pairwise(points)))


@dataclass(frozen=True, slots=True)
class ModeChoice:
    """Whether a job with chunking On or Auto runs chunked, and why (its condition Chunked)."""

    chunked: bool
    reason: str
    message: str


def choose_mode(mode: str, refusal: str | None, duration_us: int | None, auto_min_seconds: int) -> ModeChoice | None:
    """mode On: chunked. Auto: single-pass when the spec cannot be chunked (`refusal`, from
    `ffmpeg.chunks.chunking_refusal`), else by the input's duration (the last boundary of the plan
    task's plan): chunked when it is at least `auto_min_seconds`; None while it is not known."""
    if mode == "On":
        return ModeChoice(True, "ChunkingOn", "chunked: spec.chunking.mode is On")
    if refusal is not None:
        return ModeChoice(False, "NotChunkable", f"single-pass (chunking mode Auto): {refusal}")
    if duration_us is None:
        return None
    length = f"the input is {seconds(duration_us)} s"
    if duration_us >= auto_min_seconds * MICROS:
        return ModeChoice(
            True, "LongInput", f"chunked (mode Auto): {length}, at least autoMinSeconds {auto_min_seconds}"
        )
    return ModeChoice(
        False, "ShortInput", f"single-pass (mode Auto): {length}, under autoMinSeconds {auto_min_seconds}"
    )
