"""Encoder self-test: a real one-frame encode with each encoder the pool's accelerator offers.

`ffmpeg -encoders` or NVML saying an encoder exists is no proof that this node's driver and device
can run it, and an encoder missing from `ffmpeg -encoders` (Debian 12's ffmpeg has no av1_nvenc,
av1_qsv or av1_vaapi) cannot run at all. So the worker asks `ffmpeg -encoders` once, then encodes
one tiny frame with each listed encoder of h264, hevc and av1 for its accelerator (cpu: libx264,
libx265, libsvtav1), one after the other (a GPU may limit concurrent sessions). h264 comes first and
decides readiness (`SelfTestResult.ok`); when it fails the others are not tried. The encoders that
passed are the worker's capability set, published on its Lease (`ANNOTATION_ENCODERS`), which the
operator's scheduler matches against each job's codecs."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ffrtmp.api.pool import DEFAULT_RENDER_DEVICE
from ffrtmp.ffmpeg.encoders import VIDEO_CODECS, video_encoder
from ffrtmp.subprocesses import run_captured

SELF_TEST_TIMEOUT = 60.0
SOURCE = ["-f", "lavfi", "-i", "color=c=black:s=256x144:r=25:d=0.2"]
ACCELERATORS = ("cpu", "nvenc", "qsv", "vaapi")
PRIMARY_CODEC = "h264"


@dataclass(frozen=True)
class SelfTestResult:
    ok: bool
    encoder: str
    message: str
    seconds: float

    def annotation(self) -> str:
        if self.ok:
            return f"ok: {self.encoder} encoded a frame in {self.seconds:.2f}s"
        return f"failed: {self.encoder}: {self.message}"


@dataclass(frozen=True)
class CapabilityReport:
    """The self-test of every codec: `primary` (h264) decides readiness; `encoders` passed."""

    primary: SelfTestResult
    results: tuple[SelfTestResult, ...]  # in codec order, the primary first; untried ones absent

    @property
    def encoders(self) -> frozenset[str]:
        return frozenset(r.encoder for r in self.results if r.ok)

    def encoders_annotation(self) -> str:
        """The Lease annotation: the encoders that passed, comma-separated in codec order."""
        return ",".join(r.encoder for r in self.results if r.ok)

    def summary(self) -> str:
        return "; ".join(r.annotation() for r in self.results)


def self_test_argv(
    accelerator: str, ffmpeg: str = "ffmpeg", render_device: str = DEFAULT_RENDER_DEVICE, codec: str = PRIMARY_CODEC
) -> list[str]:
    """The argv of the one-frame test encode of `codec` for an accelerator (pure); qsv and vaapi open
    `render_device`."""
    encoder = video_encoder(accelerator, codec)
    head = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error"]
    tail = ["-frames:v", "1", "-c:v", encoder, "-f", "null", "-"]
    if accelerator == "qsv":
        device = f"qsv=hw:hw_any,child_device={render_device}"
        return [*head, "-init_hw_device", device, "-filter_hw_device", "hw", *SOURCE,
                "-vf", "format=nv12,hwupload=extra_hw_frames=16", *tail]  # fmt: skip
    if accelerator == "vaapi":
        return [*head, "-vaapi_device", render_device, *SOURCE, "-vf", "format=nv12,hwupload", *tail]
    if accelerator == "nvenc":
        return [*head, *SOURCE, "-pix_fmt", "yuv420p", *tail]
    return [*head, *SOURCE, "-pix_fmt", "yuv420p", *tail]


def _summarize(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "ffmpeg failed without a message"
    # The first line names the cause ("Cannot load libcuda.so.1"); the last is often generic.
    interesting = [line for line in lines if "Conversion failed" not in line and "Error while" not in line]
    return "; ".join((interesting or lines)[:2])[:400]


def parse_encoders(listing: str) -> frozenset[str]:
    """Encoder names from `ffmpeg -encoders` (pure): the lines after the `------` rule, e.g.
    ` V....D libx264              libx264 H.264 / AVC ...`."""
    names: set[str] = set()
    started = False
    for line in listing.splitlines():
        parts = line.split()
        if not started:
            started = bool(parts) and set(parts[0]) == {"-"}
            continue
        if len(parts) >= 2 and len(parts[0]) == 6:
            names.add(parts[1])
    return frozenset(names)


async def _run(argv: list[str], env: dict[str, str] | None = None) -> tuple[int | None, str, str, float]:
    """Exit code (None: timed out), stdout, stderr and seconds of one short ffmpeg run."""
    started = time.monotonic()
    finished = await run_captured(argv, limit_seconds=SELF_TEST_TIMEOUT, env={**os.environ, **env} if env else None)
    if finished is None:
        return None, "", "", SELF_TEST_TIMEOUT
    stdout, stderr = finished.stdout.decode(errors="replace"), finished.stderr.decode(errors="replace")
    return finished.returncode, stdout, stderr, time.monotonic() - started


async def run_self_test(
    accelerator: str, ffmpeg: str = "ffmpeg", render_device: str = DEFAULT_RENDER_DEVICE, codec: str = PRIMARY_CODEC
) -> SelfTestResult:
    """One real one-frame encode of `codec` with the accelerator's encoder for it."""
    if accelerator not in ACCELERATORS:
        return SelfTestResult(False, accelerator, f"unknown accelerator {accelerator!r}", 0.0)
    encoder = video_encoder(accelerator, codec)
    # SVT-AV1 prints its banner to stderr unless told otherwise (as in argv.EncodePlan.env).
    env = {"SVT_LOG": "1"} if encoder == "libsvtav1" else None
    try:
        code, _, stderr, seconds = await _run(self_test_argv(accelerator, ffmpeg, render_device, codec), env)
    except FileNotFoundError:
        return SelfTestResult(False, encoder, f"{ffmpeg} not found", 0.0)
    if code is None:
        return SelfTestResult(False, encoder, f"timed out after {SELF_TEST_TIMEOUT:.0f}s", SELF_TEST_TIMEOUT)
    if code == 0:
        return SelfTestResult(True, encoder, "", seconds)
    return SelfTestResult(False, encoder, _summarize(stderr), seconds)


async def run_capability_test(
    accelerator: str, ffmpeg: str = "ffmpeg", render_device: str = DEFAULT_RENDER_DEVICE
) -> CapabilityReport:
    """The self-test of h264, then (when it passed) of every other codec whose encoder this ffmpeg has."""
    primary = await run_self_test(accelerator, ffmpeg, render_device)
    results = [primary]
    if primary.ok:
        try:
            code, listing, _, _ = await _run([ffmpeg, "-hide_banner", "-encoders"])
        except FileNotFoundError:
            code, listing = 1, ""
        available = parse_encoders(listing) if code == 0 else None
        for codec in VIDEO_CODECS:
            if codec == PRIMARY_CODEC:
                continue
            encoder = video_encoder(accelerator, codec)
            if available is not None and encoder not in available:
                results.append(SelfTestResult(False, encoder, "not in this ffmpeg (ffmpeg -encoders)", 0.0))
            else:  # listed, or the listing failed: the encode decides
                results.append(await run_self_test(accelerator, ffmpeg, render_device, codec))
    return CapabilityReport(primary, tuple(results))
