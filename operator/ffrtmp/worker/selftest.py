"""Encoder self-test: a real one-frame encode with the pool's encoder. `ffmpeg -encoders` or NVML
saying an encoder exists is no proof that this node's driver and device can run it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ffrtmp.api.pool import DEFAULT_RENDER_DEVICE

SELF_TEST_TIMEOUT = 60.0
SOURCE = ["-f", "lavfi", "-i", "color=c=black:s=256x144:r=25:d=0.2"]
ENCODERS = {"cpu": "libx264", "nvenc": "h264_nvenc", "qsv": "h264_qsv", "vaapi": "h264_vaapi"}


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


def self_test_argv(accelerator: str, ffmpeg: str = "ffmpeg", render_device: str = DEFAULT_RENDER_DEVICE) -> list[str]:
    """The argv of the one-frame test encode for an accelerator (pure); qsv and vaapi open `render_device`."""
    encoder = ENCODERS[accelerator]
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


async def run_self_test(
    accelerator: str, ffmpeg: str = "ffmpeg", render_device: str = DEFAULT_RENDER_DEVICE
) -> SelfTestResult:
    encoder = ENCODERS.get(accelerator, accelerator)
    if accelerator not in ENCODERS:
        return SelfTestResult(False, encoder, f"unknown accelerator {accelerator!r}", 0.0)
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *self_test_argv(accelerator, ffmpeg, render_device),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        return SelfTestResult(False, encoder, f"{ffmpeg} not found", 0.0)
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), SELF_TEST_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return SelfTestResult(False, encoder, f"timed out after {SELF_TEST_TIMEOUT:.0f}s", SELF_TEST_TIMEOUT)
    seconds = time.monotonic() - started
    if proc.returncode == 0:
        return SelfTestResult(True, encoder, "", seconds)
    return SelfTestResult(False, encoder, _summarize(stderr.decode(errors="replace")), seconds)
