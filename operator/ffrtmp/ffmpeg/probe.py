"""ffprobe, run asynchronously: what an input or a written output contains.

Nothing here blocks the event loop: ffprobe runs with `asyncio.create_subprocess_exec`
(argv, never a shell) under a timeout, after which it is killed; files are read in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ffrtmp.ffmpeg.argv import NETWORK_RW_TIMEOUT_US
from ffrtmp.ffmpeg.media import SourceMedia, source_media_from_probe
from ffrtmp.subprocesses import run_captured

FFPROBE = "ffprobe"
PROBE_TIMEOUT_SECONDS = 30.0
LIVE_PROBE_TIMEOUT_SECONDS = 10.0
LIVE_ANALYZE_US = 2_000_000
MASTER_PLAYLIST_MAX_BYTES = 1 << 20
_ATTRIBUTE_RE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^",]*)')


@dataclass(frozen=True)
class ProbeResult:
    """What ffprobe says about a file or stream."""

    bytes: int | None
    duration_seconds: float | None
    format_name: str | None
    bit_rate: int | None
    video_codec: str | None
    width: int | None
    height: int | None
    audio_codec: str | None
    media: SourceMedia = field(default_factory=SourceMedia)  # what the planner needs of an input


@dataclass(frozen=True)
class HlsVariant:
    """One `#EXT-X-STREAM-INF` entry of a master playlist."""

    uri: str
    bandwidth: int | None
    average_bandwidth: int | None
    width: int | None
    height: int | None
    codecs: str | None


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _float(value: object) -> float | None:
    try:
        number = float(str(value))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_probe_output(document: dict[str, Any], *, size_fallback: int | None = None) -> ProbeResult:
    """A ProbeResult from ffprobe's `-show_format -show_streams` JSON."""
    fmt: dict[str, Any] = document.get("format") or {}
    streams: list[dict[str, Any]] = document.get("streams") or []
    video = next(
        (s for s in streams if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")),
        None,
    )
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    size = _int(fmt.get("size"))
    return ProbeResult(
        bytes=size if size is not None else size_fallback,
        duration_seconds=_float(fmt.get("duration")),
        format_name=fmt.get("format_name"),
        bit_rate=_int(fmt.get("bit_rate")),
        video_codec=video.get("codec_name") if video else None,
        width=_int(video.get("width")) if video else None,
        height=_int(video.get("height")) if video else None,
        audio_codec=audio.get("codec_name") if audio else None,
        media=source_media_from_probe(document),
    )


async def run_ffprobe(
    args: list[str], *, timeout_seconds: float, env: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """Run ffprobe with `args` (argv after the program name) in `env` (default: the worker's own);
    its JSON, or None on any failure."""
    try:
        finished = await run_captured([FFPROBE, *args], limit_seconds=timeout_seconds, env=env)
    except OSError:
        return None
    if finished is None or finished.returncode != 0:
        return None
    try:
        document = json.loads(finished.stdout)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


async def probe(
    path: str, *, timeout_seconds: float = PROBE_TIMEOUT_SECONDS, env: dict[str, str] | None = None
) -> ProbeResult | None:
    """Probe a written output (or any local file) in `env` (default: the worker's own); None when
    ffprobe cannot read it."""
    document = await run_ffprobe(
        ["-v", "error", "-print_format", "json", "-show_format", "-show_streams", path],
        timeout_seconds=timeout_seconds,
        env=env,
    )
    if document is None:
        return None
    size: int | None = None
    with contextlib.suppress(OSError):
        size = (await asyncio.to_thread(os.stat, path)).st_size
    return parse_probe_output(document, size_fallback=size)


async def probe_input(
    url: str,
    protocol_whitelist: str,
    *,
    timeout_seconds: float = PROBE_TIMEOUT_SECONDS,
    env: dict[str, str] | None = None,
    live: bool = False,
    input_options: Sequence[str] = (),
) -> ProbeResult | None:
    """Probe a job's input with the same protocol whitelist, network timeout and environment (the
    egress proxy) ffmpeg gets. A live input is read for at most LIVE_ANALYZE_US of stream and
    LIVE_PROBE_TIMEOUT_SECONDS in all (a stream not yet published gives None, not a wait). `input_options`:
    more options for the input (its request headers)."""
    args = ["-v", "error", "-protocol_whitelist", protocol_whitelist, *input_options]
    if "://" in url:
        args += ["-rw_timeout", str(NETWORK_RW_TIMEOUT_US)]
    if live:
        args += ["-analyzeduration", str(LIVE_ANALYZE_US)]
        timeout_seconds = min(timeout_seconds, LIVE_PROBE_TIMEOUT_SECONDS)
    document = await run_ffprobe(
        [*args, "-print_format", "json", "-show_format", "-show_streams", url],
        timeout_seconds=timeout_seconds,
        env=env,
    )
    if document is None:
        return None
    result = parse_probe_output(document)
    if result.media.hdr == "pq" and result.media.mastering_display is None:
        # HDR10 mastering display / content light levels of HEVC are SEI: on the first frame
        first_frame = await run_ffprobe(
            [*args, "-select_streams", "v:0", "-read_intervals", "%+#1", "-print_format", "json",
             "-show_frames", "-show_entries", "frame=side_data_list", url],
            timeout_seconds=timeout_seconds, env=env,
        )  # fmt: skip
        if first_frame is not None:
            result = parse_probe_output({**document, "frames": first_frame.get("frames") or []})
    return result


async def input_duration(
    url: str, protocol_whitelist: str, *, timeout_seconds: float = PROBE_TIMEOUT_SECONDS
) -> float | None:
    """The input's duration in seconds; None for live streams or when it cannot be probed."""
    result = await probe_input(url, protocol_whitelist, timeout_seconds=timeout_seconds)
    if result is None or result.duration_seconds is None or result.duration_seconds <= 0:
        return None
    return result.duration_seconds


def _attributes(text: str) -> dict[str, str]:
    return {key: value.strip('"') for key, value in _ATTRIBUTE_RE.findall(text)}


def parse_hls_master(text: str) -> list[HlsVariant]:
    """The variants of a master playlist, in order (I-frame playlists are not variants)."""
    variants: list[HlsVariant] = []
    pending: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#EXT-X-STREAM-INF:"):
            pending = _attributes(line.partition(":")[2])
            continue
        if line.startswith("#") or pending is None:
            continue
        width = height = None
        resolution = pending.get("RESOLUTION", "")
        if "x" in resolution:
            w, _, h = resolution.partition("x")
            width, height = _int(w), _int(h)
        variants.append(
            HlsVariant(
                uri=line,
                bandwidth=_int(pending.get("BANDWIDTH")),
                average_bandwidth=_int(pending.get("AVERAGE-BANDWIDTH")),
                width=width,
                height=height,
                codecs=pending.get("CODECS"),
            )
        )
        pending = None
    return variants


async def probe_hls_master(path: str) -> list[HlsVariant] | None:
    """The variants listed in the master playlist at `path`; None when it cannot be read."""

    def read() -> bytes:
        with open(path, "rb") as handle:
            return handle.read(MASTER_PLAYLIST_MAX_BYTES)

    try:
        data = await asyncio.to_thread(read)
    except OSError:
        return None
    return parse_hls_master(data.decode("utf-8", errors="replace"))
