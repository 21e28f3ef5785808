"""The worker's own attempt path (probe, plan, loudness measuring pass, encode, progress) on
generated real-world sources. The API server is not needed for this part: the attempt's
status writes go to a recorder, so the test sees every progress write the job would get."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, cast

import pytest

from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.worker.attempt import Attempt
from ffrtmp.worker.config import WorkerConfig
from ffrtmp.worker.fence import FencedStatus
from ffrtmp.worker.metrics import WorkerMetrics
from helpers import RTMP_HOST, nginx_rtmp, wait_for

pytestmark = [
    pytest.mark.ffmpeg,
    pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="no ffmpeg"),
]

SECONDS = 2


class StatusRecorder:
    """Takes the attempt's status patches in place of the fenced API client."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    async def patch(self, status: dict[str, Any]) -> dict[str, Any]:
        self.patches.append(status)
        return status

    async def patch_until(self, status: dict[str, Any], *, seconds: float = 120.0) -> dict[str, Any]:
        return await self.patch(status)


def attempt(media: Path, tmp_path: Path, spec: dict[str, Any], **config_fields: Any) -> tuple[Attempt, StatusRecorder]:
    recorder = StatusRecorder()
    fields: dict[str, Any] = {"allowed_protocols": ("file",), **config_fields}
    config = WorkerConfig(
        pod_name="w-0",
        namespace="ns",
        pool="cpu",
        media_roots=(str(media),),
        output_root=str(tmp_path / "output"),
        scratch_dir=str(tmp_path / "scratch"),
        progress_interval=0.0,
        **fields,
    )
    job = Attempt(
        client_status=cast(FencedStatus, recorder),
        spec=TranscodeJobSpec.model_validate(spec),
        config=config,
        metrics=WorkerMetrics(),
        namespace="ns",
        name="job",
        number=1,
    )
    return job, recorder


def generate(path: Path, *args: str) -> Path:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-threads", "1", *args,
         "-t", str(SECONDS), str(path)],
        check=True, timeout=120,
    )  # fmt: skip
    return path


async def test_broadcast_ts_with_loudness_through_the_attempt(tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    source = generate(media / "broadcast.ts", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=10",
                      "-f", "lavfi", "-i", "sine=frequency=300:sample_rate=48000,volume=0.03",
                      "-c:v", "mpeg2video", "-c:a", "mp2", "-output_ts_offset", "10000", "-f", "mpegts")  # fmt: skip
    loudness = {"integratedLufs": -16, "truePeakDb": "-1.5"}
    spec = {
        "input": {"uri": str(source)},
        "outputs": [{"name": "web", "video": {"preset": "ultrafast", "crf": 30}, "audio": {"loudness": loudness}}],
        "resources": {"limits": {"cpu": "1"}},
    }
    job, recorder = attempt(media, tmp_path, spec)

    async with job.egress():
        plan = await job._prepare()
        failure, _ = await job._encode(plan)

    assert failure is None
    assert len(plan.loudness_measure_passes) == 1
    percents = [p["progress"]["percent"] for p in recorder.patches if "progress" in p]
    out_times = [p["progress"]["outTimeSeconds"] for p in recorder.patches if "progress" in p]
    assert percents == sorted(percents)
    assert job._input_duration == pytest.approx(SECONDS, abs=0.3)  # the duration, not the end time
    assert percents and percents[-1] >= 50  # two passes: measuring, then encoding
    assert all(t is None or t <= SECONDS + 0.5 for t in out_times)  # not 10000 s
    integrated, video = await asyncio.to_thread(inspect, job.attempt_dir / "web.mp4")
    assert integrated == pytest.approx(-16, abs=1)
    assert (video["width"], video["height"], video["color_primaries"]) == (320, 180, "bt709")


def inspect(output: Path) -> tuple[float, dict[str, Any]]:
    """Integrated loudness (ebur128) and the video stream (ffprobe) of `output`."""
    command = ["ffmpeg", "-hide_banner", "-nostdin", "-i", str(output), "-af", "ebur128", "-f", "null", "-"]
    report = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stderr
    probe = ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", str(output)]
    streams = json.loads(subprocess.run(probe, capture_output=True, text=True, check=True, timeout=60).stdout)
    video = next(s for s in streams["streams"] if s["codec_type"] == "video")
    return float(re.findall(r"I:\s+(-?[\d.]+) LUFS", report)[-1]), video


async def test_an_odd_sized_live_stream_comes_out_even(tmp_path: Path) -> None:
    """A live rtmp input is probed briefly like a file: its first picture fixes the even size."""
    with nginx_rtmp(tmp_path / "nginx") as port:
        url = f"rtmp://{RTMP_HOST}:{port}/live/odd"
        # 4:4:4 H.264 can be odd-sized (4:2:0 cannot): a 321x241 stream in real time
        push = subprocess.Popen(
            ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi",
             "-i", "testsrc=size=321x241:rate=10", "-t", "30", "-c:v", "libx264", "-preset", "ultrafast",
             "-pix_fmt", "yuv444p", "-g", "10", "-f", "flv", url],
        )  # fmt: skip
        try:
            await asyncio.to_thread(wait_for, lambda: probe_stream(url), 10, "the pushed stream")
            spec = {
                "input": {"uri": url, "restartPolicy": {"maxRestarts": 0}},
                "outputs": [{"name": "web", "video": {"preset": "ultrafast", "crf": 30}}],
            }
            job, recorder = attempt(
                tmp_path, tmp_path, spec, allowed_protocols=("rtmp",), egress_allow=(f"{RTMP_HOST}/32",),
                egress_unproxied=("rtmp",),
            )  # fmt: skip
            async with job.egress():
                plan = await job._prepare()
                encoding = asyncio.create_task(job._encode(plan))
                for _ in range(200):  # a second of the stream encoded, then stop as a delete would
                    if any(((p.get("progress") or {}).get("outTimeSeconds") or 0) >= 1 for p in recorder.patches):
                        break
                    await asyncio.sleep(0.1)
                job.stop("cancelled")
                await encoding
        finally:
            push.terminate()
            push.wait(10)

    assert plan.live and (plan.outputs[0].width, plan.outputs[0].height) == (322, 242)  # from the probe
    stream = await asyncio.to_thread(video_of, job.attempt_dir / "web.mp4")
    assert (stream["width"], stream["height"], stream.get("sample_aspect_ratio", "1:1")) == (322, 242, "1:1")


def probe_stream(url: str) -> bool:
    command = ["ffprobe", "-v", "error", "-rw_timeout", "2000000", "-analyzeduration", "200000", "-show_streams", url]
    return subprocess.run(command, capture_output=True, timeout=10, check=False).returncode == 0


def video_of(path: Path) -> dict[str, Any]:
    probe = ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", str(path)]
    streams = json.loads(subprocess.run(probe, capture_output=True, text=True, check=True, timeout=60).stdout)
    videos = [s for s in streams["streams"] if s["codec_type"] == "video"]
    assert videos, streams
    return videos[0]
