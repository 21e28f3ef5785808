"""Run the argv plans with the real ffmpeg (5.1 on Debian 12) on tiny lavfi clips, then ffprobe.

Clips are 640x360 at 25 fps with a sine tone, a few seconds long, encoded with fast presets:
the whole module takes a few seconds on two busy cores.
"""

from __future__ import annotations

import asyncio
import ctypes.util
import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.ffmpeg.argv import EncodePlan, build_encode_plan, protocol_whitelist
from ffrtmp.ffmpeg.errors import Failure, classify_failure
from ffrtmp.ffmpeg.inputs import check_input, check_playlist
from ffrtmp.ffmpeg.probe import input_duration, probe, probe_hls_master, probe_input
from ffrtmp.ffmpeg.progress import ProgressParser, ProgressSnapshot, percent

pytestmark = [
    pytest.mark.ffmpeg,
    pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="no ffmpeg"),
]

CLIP_SECONDS = 8
ALL = ["file", "http", "https", "rtmp", "rtmps"]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A media root with clip.mp4 (8 s, 640x360, h264 + aac, faststart)."""
    root = tmp_path_factory.mktemp("media")
    subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=640x360:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=48000",
            "-t",
            str(CLIP_SECONDS),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-crf",
            "18",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            "-movflags",
            "+faststart",
            "-shortest",
            str(root / "clip.mp4"),
        ],
        check=True,
        timeout=120,
    )
    return root


@dataclass
class Run:
    returncode: int
    stderr: str
    snapshots: list[ProgressSnapshot]


async def run_argv(argv: list[str], env: dict[str, str] | None = None) -> Run:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    parser = ProgressParser()
    snapshots: list[ProgressSnapshot] = []

    async def read_progress() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            snapshot = parser.feed(line.decode())
            if snapshot is not None:
                snapshots.append(snapshot)

    async def read_errors() -> bytes:
        assert process.stderr is not None
        return await process.stderr.read()

    async with asyncio.timeout(300):
        _, stderr = await asyncio.gather(read_progress(), read_errors())
        returncode = await process.wait()
    return Run(returncode, stderr.decode(errors="replace"), snapshots)


async def run_plan(plan: EncodePlan, output_dir: Path) -> list[Run]:
    for folder in plan.directories:
        (output_dir / folder).mkdir(parents=True, exist_ok=True)
    runs = []
    for argv in plan.passes:
        run = await run_argv(argv, plan.env)
        assert run.returncode == 0, run.stderr
        assert run.stderr == "", run.stderr  # -loglevel error and quiet encoders: stderr is for errors
        runs.append(run)
    return runs


def make_plan(
    spec: dict[str, Any], media: Path, tmp_path: Path, accelerator: str = "cpu", **kwargs: Any
) -> tuple[EncodePlan, Path, str]:
    s = TranscodeJobSpec.model_validate(spec)
    input_url = kwargs.pop("input_url", None) or check_input(
        s.input.uri, allowed_protocols=ALL, media_roots=[str(media)]
    )
    out = tmp_path / "out"
    scratch = tmp_path / "scratch"
    out.mkdir(exist_ok=True)
    scratch.mkdir(exist_ok=True)
    plan = build_encode_plan(
        s,
        accelerator,
        input_url=input_url,
        output_dir=str(out),
        scratch_dir=str(scratch),
        allowed_protocols=ALL,
        **kwargs,
    )
    return plan, out, input_url


def bps(value: str) -> int:
    return int(float(value[:-1]) * {"k": 1_000, "M": 1_000_000}[value[-1]])


async def test_hls_ladder_with_thumbnails_and_sprite(media: Path, tmp_path: Path) -> None:
    ladder = [
        ("360p", {"width": 640}, "800k"),
        ("240p", {"height": 240}, "400k"),
        ("180p", {"width": 320, "height": 180}, "200k"),
    ]
    spec = {
        "input": {"uri": str(media / "clip.mp4")},
        "outputs": [
            {
                "name": name,
                "container": "hls",
                "video": {**size, "bitrate": rate, "preset": "ultrafast"},
                "audio": {"bitrate": "64k"},
            }
            for name, size, rate in ladder
        ],
        "hls": {"segmentSeconds": 2},
        "thumbnails": {"intervalSeconds": 2, "width": 160, "sprite": {"columns": 2, "rows": 2}},
    }
    plan, out, _ = make_plan(spec, media, tmp_path, threads=2)
    (run,) = await run_plan(plan, out)

    assert run.snapshots[-1].ended
    assert percent(run.snapshots[-1], float(CLIP_SECONDS)) == pytest.approx(100.0, abs=2)
    variants = await probe_hls_master(str(out / "hls" / "master.m3u8"))
    assert variants is not None
    assert [(v.uri, v.width, v.height) for v in variants] == [
        ("360p/index.m3u8", 640, 360),
        ("240p/index.m3u8", 426, 240),
        ("180p/index.m3u8", 320, 180),
    ]
    for variant, (_, _, rate) in zip(variants, ladder, strict=True):
        requested = bps(rate) + 64_000
        assert variant.bandwidth is not None
        assert 0.8 * requested <= variant.bandwidth <= 1.5 * requested, (variant, requested)
    for name, _, _ in ladder:
        playlist = (out / "hls" / name / "index.m3u8").read_text()
        assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist
        assert "#EXT-X-ENDLIST" in playlist
        assert playlist.count("#EXTINF:2.0") == CLIP_SECONDS // 2  # keyframes forced at every boundary
        result = await probe(str(out / "hls" / name / "index.m3u8"))
        assert result is not None
        assert (result.video_codec, result.audio_codec) == ("h264", "aac")
        assert result.duration_seconds == pytest.approx(CLIP_SECONDS, abs=0.2)

    thumbs = sorted(p.name for p in (out / "thumbs").glob("thumb_*.jpg"))
    assert thumbs == [f"thumb_{i:05d}.jpg" for i in range(1, math.ceil(CLIP_SECONDS / 2) + 1)]
    first = await probe(str(out / "thumbs" / "thumb_00001.jpg"))
    assert first is not None
    assert (first.width, first.height) == (160, 90)
    sprites = sorted((out / "thumbs").glob("sprite_*.jpg"))
    assert [p.name for p in sprites] == ["sprite_001.jpg"]
    sprite = await probe(str(sprites[0]))
    assert sprite is not None
    assert (sprite.width, sprite.height) == (320, 180)
    assert [o.path for o in plan.outputs if o.kind in ("thumbnails", "sprite")] == [
        "thumbs/thumb_%05d.jpg",
        "thumbs/sprite_%03d.jpg",
    ]

    # what ffmpeg wrote passes the playlist check when used as an input
    checked = await check_playlist(str(out / "hls" / "master.m3u8"), allowed_protocols=["file"], media_roots=[str(out)])
    assert len(checked) == 4


async def test_two_pass_hits_the_bitrate(media: Path, tmp_path: Path) -> None:
    spec = {
        "input": {"uri": str(media / "clip.mp4")},
        "outputs": [
            {
                "name": "a",
                "video": {"bitrate": "400k", "twoPass": True, "preset": "veryfast"},
                "audio": {"codec": "none"},
            },
            {"name": "b", "container": "mkv", "video": {"width": 320, "crf": 30, "preset": "ultrafast"}},
        ],
    }
    plan, out, _ = make_plan(spec, media, tmp_path)
    assert len(plan.passes) == 2
    await run_plan(plan, out)
    result = await probe(str(out / "a.mp4"))
    assert result is not None
    assert result.bit_rate is not None
    assert result.bit_rate == pytest.approx(400_000, rel=0.10)
    assert (result.width, result.height, result.audio_codec) == (640, 360, None)
    assert sorted(os.listdir(tmp_path / "scratch")) == ["2pass-a.log", "2pass-a.log.mbtree"]
    other = await probe(str(out / "b.mkv"))
    assert other is not None
    assert (other.width, other.height, other.audio_codec) == (320, 180, "aac")


async def test_fmp4_hls_with_copy_variant_seek_and_duration(media: Path, tmp_path: Path) -> None:
    spec = {
        "input": {"uri": str(media / "clip.mp4"), "startSeconds": 2, "durationSeconds": 4},
        "outputs": [
            {"name": "src", "container": "hls", "video": {"codec": "copy"}, "audio": {"codec": "copy"}},
            {
                "name": "small",
                "container": "hls",
                "video": {"width": 320, "crf": 30, "maxrate": "300k", "preset": "ultrafast"},
                "audio": {"codec": "none"},
            },
        ],
        "hls": {"segmentSeconds": 2, "segmentType": "fmp4", "playlistType": "event"},
    }
    plan, out, _ = make_plan(spec, media, tmp_path)
    (run,) = await run_plan(plan, out)
    assert percent(run.snapshots[-1], plan.duration_seconds) == pytest.approx(100.0, abs=3)
    variants = await probe_hls_master(str(out / "hls" / "master.m3u8"))
    assert variants is not None
    assert [(v.uri, v.width) for v in variants] == [("src/index.m3u8", 640), ("small/index.m3u8", 320)]
    assert variants[1].bandwidth == 330_000  # maxrate + 10%, what ffmpeg 5.1 writes without a bitrate
    small = (out / "hls" / "small" / "index.m3u8").read_text()
    assert "#EXT-X-MAP:URI=" in small
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in small
    assert list((out / "hls" / "small").glob("*.m4s"))
    result = await probe(str(out / "hls" / "small" / "index.m3u8"))
    assert result is not None
    assert result.duration_seconds == pytest.approx(4.0, abs=0.2)
    assert result.audio_codec is None


async def test_files_codecs_audio_only_png_thumbnails(media: Path, tmp_path: Path) -> None:
    """Every file container, hevc and av1 on CPU (quiet on stderr), audio-only, remux, png thumbnails."""
    spec = {
        "input": {"uri": str(media / "clip.mp4"), "durationSeconds": 2},
        "outputs": [
            {"name": "ts", "container": "mpegts", "video": {"height": 180, "fps": 10, "preset": "ultrafast"}},
            {"name": "hevc", "video": {"codec": "hevc", "width": 320, "crf": 32, "preset": "ultrafast"}},
            {
                "name": "av1",
                "container": "mkv",
                "video": {"codec": "av1", "width": 320, "crf": 45, "preset": "ultrafast"},
            },
            {
                "name": "flv",
                "container": "flv",
                "video": {"width": 160, "bitrate": "200k", "gop": 25},
                "audio": {"codec": "mp3", "sampleRate": 44100},
            },
            {
                "name": "opus",
                "container": "mkv",
                "video": {"codec": "none"},
                "audio": {"codec": "opus", "bitrate": "64k", "channels": 1},
            },
            {
                "name": "remux",
                "path": "copies/remux.mkv",
                "container": "mkv",
                "video": {"codec": "copy"},
                "audio": {"codec": "copy"},
            },
        ],
        "thumbnails": {"intervalSeconds": 1, "width": 64, "format": "png"},
        "extraArgs": ["-metadata", "title=test"],
    }
    plan, out, _ = make_plan(spec, media, tmp_path, threads=1)
    await run_plan(plan, out)
    ts = await probe(str(out / "ts.ts"))
    assert ts is not None
    assert (ts.video_codec, ts.width, ts.height, ts.audio_codec) == ("h264", 320, 180, "aac")
    opus = await probe(str(out / "opus.mkv"))
    assert opus is not None
    assert (opus.video_codec, opus.audio_codec) == (None, "opus")
    for name, codec in (("hevc.mp4", "hevc"), ("av1.mkv", "av1"), ("flv.flv", "h264")):
        result = await probe(str(out / name))
        assert result is not None
        assert result.video_codec == codec
        assert result.duration_seconds == pytest.approx(2.0, abs=0.2)
    assert plan.env == {"SVT_LOG": "1"}
    remux = await probe(str(out / "copies" / "remux.mkv"))
    assert remux is not None
    assert (remux.video_codec, remux.width) == ("h264", 640)
    assert len(list((out / "thumbs").glob("thumb_*.png"))) == 2


async def test_http_input(media: Path, tmp_path: Path) -> None:
    app = web.Application()
    app.router.add_static("/media", media)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        url = f"http://127.0.0.1:{server.port}/media/clip.mp4"
        spec = {"input": {"uri": url, "durationSeconds": 2},
                "outputs": [{"name": "a", "video": {"width": 320, "preset": "ultrafast"}}]}  # fmt: skip
        plan, out, _ = make_plan(spec, media, tmp_path)
        assert "http,https,tcp,tls,httpproxy,crypto" in plan.passes[0]
        await run_plan(plan, out)
        result = await probe(str(out / "a.mp4"))
        assert result is not None
        assert result.duration_seconds == pytest.approx(2.0, abs=0.2)
        assert await input_duration(url, protocol_whitelist(url, ALL)) == pytest.approx(CLIP_SECONDS, abs=0.1)
    finally:
        await server.close()


async def test_probe_helpers(media: Path) -> None:
    clip = str(media / "clip.mp4")
    result = await probe(clip)
    assert result is not None
    assert (result.video_codec, result.width, result.height, result.audio_codec) == ("h264", 640, 360, "aac")
    assert result.bytes == await asyncio.to_thread(os.path.getsize, clip)
    assert result.duration_seconds == pytest.approx(CLIP_SECONDS, abs=0.1)
    assert result.bit_rate is not None
    assert await input_duration(clip, "file") == pytest.approx(CLIP_SECONDS, abs=0.1)
    assert await probe(str(media / "missing.mp4")) is None
    assert await probe_input(clip, "http,tcp") is None  # the whitelist applies to probing too
    assert await probe_hls_master(str(media / "missing.m3u8")) is None


# --- real failures ----------------------------------------------------------------------------


async def failing_run(spec: dict[str, Any], media: Path, tmp_path: Path, **kwargs: Any) -> Failure:
    plan, out, input_url = make_plan(spec, media, tmp_path, **kwargs)
    for folder in plan.directories:
        (out / folder).mkdir(parents=True, exist_ok=True)
    run = await run_argv(plan.passes[-1], plan.env)
    assert run.returncode != 0
    return classify_failure(run.returncode, run.stderr[-4096:], input_url=input_url)


def simple(uri: str, **output: Any) -> dict[str, Any]:
    return {"input": {"uri": uri}, "outputs": [{"name": "a", "video": {"preset": "ultrafast"}, **output}]}


async def test_missing_input(media: Path, tmp_path: Path) -> None:
    failure = await failing_run(simple(str(media / "nope.mp4")), media, tmp_path)
    assert failure == Failure("InputNotFound", f"The input file does not exist: {media / 'nope.mp4'}", False)


async def test_random_bytes_input(media: Path, tmp_path: Path) -> None:
    (media / "random.mp4").write_bytes(os.urandom(20_000))
    failure = await failing_run(simple(str(media / "random.mp4")), media, tmp_path)
    assert (failure.reason, failure.retryable) == ("InvalidInput", False)


async def test_zero_byte_input(media: Path, tmp_path: Path) -> None:
    (media / "empty.mp4").write_bytes(b"")
    failure = await failing_run(simple(str(media / "empty.mp4")), media, tmp_path)
    assert (failure.reason, failure.retryable) == ("InvalidInput", False)
    assert "empty" in failure.message


@pytest.mark.parametrize(
    ("extra", "words"),
    [(["-foo", "bar"], "Unrecognized option 'foo'"), (["-tune", "bogus"], "invalid tune 'bogus'")],
)
async def test_unknown_encoder_option(media: Path, tmp_path: Path, extra: list[str], words: str) -> None:
    spec = {**simple(str(media / "clip.mp4")), "extraArgs": extra}
    failure = await failing_run(spec, media, tmp_path)
    assert (failure.reason, failure.retryable) == ("FfmpegError", False)
    assert words in failure.message


async def test_unknown_encoder(media: Path) -> None:
    clip = str(media / "clip.mp4")
    run = await run_argv(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", clip, "-c:v", "libnothing", "-f", "null", "-"]
    )
    failure = classify_failure(run.returncode, run.stderr)
    assert failure == Failure("EncoderUnavailable", "This worker's ffmpeg has no encoder libnothing.", False)


@pytest.mark.skipif(ctypes.util.find_library("cuda") is not None, reason="this machine has CUDA")
async def test_nvenc_without_a_gpu(media: Path, tmp_path: Path) -> None:
    spec = {**simple(str(media / "clip.mp4"), video={"width": 320}), "accelerator": "nvenc"}
    failure = await failing_run(spec, media, tmp_path, accelerator="nvenc")
    assert (failure.reason, failure.retryable) == ("EncoderUnavailable", False)
    assert "libcuda" in failure.message


async def test_playlist_entry_outside_the_whitelist(media: Path, tmp_path: Path) -> None:
    playlist = media / "remote.m3u8"
    playlist.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4,\nhttp://127.0.0.1:1/seg.ts\n#EXT-X-ENDLIST\n")
    failure = await failing_run(simple(str(playlist)), media, tmp_path)
    assert (failure.reason, failure.retryable) == ("InputNotAllowed", False)


async def test_missing_output_folder(media: Path, tmp_path: Path) -> None:
    spec = simple(str(media / "clip.mp4"), path="missing/a.mp4")
    plan, out, input_url = make_plan(spec, media, tmp_path)
    run = await run_argv(plan.passes[-1])  # without creating plan.directories
    failure = classify_failure(run.returncode, run.stderr, input_url=input_url)
    assert failure == Failure(
        "OutputError", f"Could not write to {out / 'missing' / 'a.mp4'}: No such file or directory", True
    )
