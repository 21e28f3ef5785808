"""The worker's own attempt path (probe, plan, loudness measuring pass, encode, progress) on
generated real-world sources. The API server is not needed for this part: the attempt's
status writes go to a recorder, so the test sees every progress write the job would get."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.ffmpeg.probe import parse_hls_master
from ffrtmp.worker.attempt import Attempt
from ffrtmp.worker.config import WorkerConfig
from ffrtmp.worker.fence import FencedStatus
from ffrtmp.worker.metrics import WorkerMetrics
from helpers import RTMP_HOST, connect_guard, nginx_rtmp, wait_for

pytestmark = [
    pytest.mark.ffmpeg,
    pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="no ffmpeg"),
]

SECONDS = 2


class StatusRecorder:
    """Takes the attempt's status writes (progress patches and updates) in place of the fenced API client."""

    def __init__(self) -> None:
        self.writes: list[dict[str, Any]] = []

    async def patch(self, status: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(status)
        return status

    async def update_until(self, status: dict[str, Any], *, seconds: float = 120.0) -> dict[str, Any]:
        self.writes.append(status)
        return status


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
        connect_guard=connect_guard(),
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
    percents = [p["progress"]["percent"] for p in recorder.writes if "progress" in p]
    out_times = [p["progress"]["outTimeSeconds"] for p in recorder.writes if "progress" in p]
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
    with nginx_rtmp(tmp_path / "nginx", RTMP_HOST) as port:
        url = f"rtmp://{RTMP_HOST}:{port}/live/odd"
        # 4:4:4 H.264 can be odd-sized (4:2:0 cannot): a 321x241 stream in real time
        push = await asyncio.create_subprocess_exec(
            "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi",
            "-i", "testsrc=size=321x241:rate=10", "-t", "30", "-c:v", "libx264", "-preset", "ultrafast",
            "-pix_fmt", "yuv444p", "-g", "10", "-f", "flv", url,
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
                    if any(((p.get("progress") or {}).get("outTimeSeconds") or 0) >= 1 for p in recorder.writes):
                        break
                    await asyncio.sleep(0.1)
                job.stop("cancelled")
                await encoding
        finally:
            with contextlib.suppress(ProcessLookupError):
                push.terminate()
            await push.wait()

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


# -- the HLS ladder example on every class of real-world source ---------------------------------

LADDER = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "hls-abr-ladder.yaml").read_text())
HDR10 = (
    "log-level=error:hdr10=1:repeat-headers=1:colorprim=bt2020:transfer=smpte2084:colormatrix=bt2020nc:"
    "master-display=G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1):max-cll=1000,400"
)
HLG = "log-level=error:colorprim=bt2020:transfer=arib-std-b67:colormatrix=bt2020nc"
X264_444 = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p")  # 4:4:4 may be odd-sized


def woven(field: str) -> tuple[str, ...]:
    weave = "interleave_top" if field == "tff" else "interleave_bottom"
    return ("-vf", f"tinterlace=mode={weave},setfield={field}", "-c:v", "mpeg2video", "-q:v", "4",
            "-flags", "+ilme+ildct", "-top", "1" if field == "tff" else "0", "-f", "mpegts")  # fmt: skip


def hdr(params: str, transfer: str) -> tuple[str, ...]:
    return ("-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le", "-x265-params", params,
            "-color_primaries", "bt2020", "-color_trc", transfer, "-colorspace", "bt2020nc")  # fmt: skip


def upmix(layout: str, channels: int, frequency: int) -> str:
    return f"sine=frequency={frequency}:sample_rate=48000,pan={layout}" + "".join(f"|c{i}=c0" for i in range(channels))


# name: (file, lavfi video source, encoding and container options); every source is 2 s, 10-25 fps
SOURCES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "odd-portrait": ("odd.mp4", "testsrc=size=239x427:rate=10", X264_444),
    "odd-landscape": ("odd.mp4", "testsrc=size=427x239:rate=10", X264_444),
    "1080i-tff": ("tff.ts", "testsrc2=size=480x270:rate=50", woven("tff")),
    "576i-bff": ("bff.ts", "testsrc2=size=352x288:rate=50", woven("bff")),
    "hdr10": ("hdr10.mkv", "testsrc2=size=320x180:rate=10", hdr(HDR10, "smpte2084")),
    "hlg": ("hlg.mkv", "testsrc2=size=320x180:rate=10", hdr(HLG, "arib-std-b67")),
    "anamorphic": ("dvd.mpg", "testsrc2=size=360x240:rate=10,setsar=32/27", ("-c:v", "mpeg2video", "-q:v", "10")),
    "full-range": ("full.mp4", "testsrc2=size=320x180:rate=10",
                   ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuvj420p")),
    "far-from-zero": ("broadcast.ts", "testsrc2=size=320x180:rate=10",
                      ("-c:v", "mpeg2video", "-output_ts_offset", "10000", "-f", "mpegts")),
    "5.1-7.1-tracks": ("tracks.mkv", "testsrc2=size=320x180:rate=10",
                       ("-f", "lavfi", "-i", upmix("5.1", 6, 660), "-f", "lavfi", "-i", upmix("7.1", 8, 880),
                        "-map", "0:v", "-map", "1:a", "-map", "2:a", "-c:v", "libx264", "-preset", "ultrafast",
                        "-c:a", "flac", "-metadata:s:a:0", "language=deu", "-metadata:s:a:1", "language=fra")),
}  # fmt: skip


def ladder(uri: str) -> dict[str, Any]:
    """examples/hls-abr-ladder.yaml on a small, short source: renditions a third of the size
    (1080/720/480 -> 360/240/160 lines: the narrowest, 90 pixels, keeps the aspect within 1 %),
    1 s segments and stills, ultrafast."""
    spec = copy.deepcopy(LADDER["spec"])
    spec["input"]["uri"] = uri
    for output in spec["outputs"]:
        output["video"].update(height=output["video"]["height"] // 3, preset="ultrafast")
    spec["hls"]["segmentSeconds"] = 1
    spec["thumbnails"]["intervalSeconds"] = 1
    spec["resources"] = {"limits": {"cpu": "1"}}
    return spec


@pytest.mark.parametrize("kind", list(SOURCES))
async def test_the_hls_ladder_example_gives_aligned_playable_renditions(tmp_path: Path, kind: str) -> None:
    media = tmp_path / "media"
    media.mkdir()
    name, video, options = SOURCES[kind]
    has_audio = "-map" in options
    audio_input = () if has_audio else ("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000")
    source = generate(media / name, "-f", "lavfi", "-i", video, *audio_input, *options)
    source_video = video_of(source)
    job, _ = attempt(media, tmp_path, ladder(str(source)))

    async with job.egress():
        plan = await job._prepare()
        failure, _ = await job._encode(plan)

    assert failure is None, failure
    hls = job.attempt_dir / "hls"
    variants = parse_hls_master((hls / "master.m3u8").read_text())
    assert [v.uri for v in variants] == ["1080p/index.m3u8", "720p/index.m3u8", "480p/index.m3u8"]
    assert all(v.width and v.height and v.codecs and "avc1" in v.codecs for v in variants), variants
    segment_times = []
    for variant in variants:
        playlist = hls / variant.uri
        stream = video_of(playlist)
        assert (stream["width"], stream["height"]) == (variant.width, variant.height)
        assert stream["width"] % 2 == 0 and stream["height"] % 2 == 0
        assert abs(display_aspect(stream) / display_aspect(source_video) - 1) < Fraction(1, 100)
        assert stream.get("field_order", "progressive") == "progressive"
        assert (stream["color_primaries"], stream["color_transfer"], stream["color_space"]) == ("bt709",) * 3
        assert decode_errors(playlist) == ""
        durations = [float(d) for d in re.findall(r"#EXTINF:([\d.]+),", playlist.read_text())]
        starts = [sum(durations[:i]) for i in range(len(durations))]
        keyframes = keyframe_times(playlist)
        assert all(any(abs(k - s) < 0.5 / FPS[kind] for k in keyframes) for s in starts), (starts, keyframes)
        segment_times.append(durations)
    first = segment_times[0]
    assert len(first) == SECONDS  # 1 s segments of a 2 s source
    for durations in segment_times[1:]:
        assert len(durations) == len(first)
        assert all(abs(a - b) <= 1 / FPS[kind] for a, b in zip(durations, first, strict=True))
    assert len(list((job.attempt_dir / "thumbs").glob("thumb_*.jpg"))) == SECONDS


FPS = {kind: 25 if kind.endswith(("tff", "bff")) else 10 for kind in SOURCES}  # after the weave: 25 frames/s


def display_aspect(stream: dict[str, Any]) -> Fraction:
    num, _, den = stream.get("sample_aspect_ratio", "1:1").partition(":")
    sar = Fraction(int(num), int(den)) if num not in ("0", "") else Fraction(1)
    return Fraction(stream["width"], stream["height"]) * sar


def decode_errors(playlist: Path) -> str:
    command = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-i", str(playlist), "-f", "null", "-"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False).stderr


def keyframe_times(playlist: Path) -> list[float]:
    """Presentation times of the key frames, from the start of the rendition."""
    command = ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags",
               "-of", "csv=p=0", str(playlist)]  # fmt: skip
    rows = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout.split()
    times = [(float(t), flags) for t, flags in (row.split(",")[:2] for row in rows) if t != "N/A"]
    start = min(t for t, _ in times)
    return [t - start for t, flags in times if "K" in flags]
