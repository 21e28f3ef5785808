"""Chunked encodes with the real ffmpeg: plan chunks from a keyframe probe, encode every chunk and
the audio, stitch, and compare with a single-pass encode of the same spec.

Clips are 320x240, 12 s, encoded at ultrafast/veryfast: each test takes a few seconds.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.controller.chunking import plan_chunks
from ffrtmp.ffmpeg.argv import EncodePlan, build_encode_plan
from ffrtmp.ffmpeg.chunks import (
    AUDIO_DIR,
    KEYFRAME_PROBE_ARGS,
    TimeRange,
    audio_plan,
    check_chunkable,
    chunk_dir,
    chunk_video_plan,
    cuts_on_keyframes,
    parse_keyframe_probe,
    stitch_plan,
)
from ffrtmp.ffmpeg.invalid_spec import InvalidSpec
from ffrtmp.ffmpeg.probe import parse_probe_output

pytestmark = [
    pytest.mark.ffmpeg,
    pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="no ffmpeg"),
]

SECONDS = 12
FILES = ["file"]


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def ffprobe_json(*args: str) -> dict[str, Any]:
    out = subprocess.run(["ffprobe", *args], capture_output=True, text=True, check=True).stdout
    document: dict[str, Any] = json.loads(out)
    return document


def make_clip(path: Path, *, rate: str, gop: int, audio: bool, vfr: bool = False) -> Path:
    video = ["-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={rate}"]
    sound = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"] if audio else []
    # VFR: keep frames 0,1,2 of every 7 and every 5th: gaps of 1 to 4 frame intervals.
    select = ["-vf", "select='lt(mod(n,7),3)+not(mod(n,5))'", "-fps_mode", "vfr"] if vfr else []
    codecs = ["-c:v", "libx264", "-preset", "ultrafast", "-g", str(gop), "-sc_threshold", "0", "-pix_fmt", "yuv420p"]
    ffmpeg(*video, *sound, "-t", str(SECONDS), *select, *codecs, *(["-c:a", "aac"] if audio else []), str(path))
    return path


@dataclass
class Stream:
    pts: list[int]  # in the stream's time base
    time_base: float
    duration: float | None

    @property
    def seconds(self) -> list[float]:
        return [p * self.time_base for p in self.pts]


def video_frames(path: Path) -> Stream:
    document = ffprobe_json(
        "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts:stream=time_base,duration",
        "-print_format", "json", str(path),
    )  # fmt: skip
    stream = document["streams"][0]
    num, den = (int(x) for x in stream["time_base"].split("/"))
    duration = float(stream["duration"]) if "duration" in stream else None
    return Stream([int(f["pts"]) for f in document["frames"]], num / den, duration)


def packet_dts(path: Path, stream: str) -> list[int]:
    document = ffprobe_json(
        "-v", "error", "-select_streams", stream, "-show_entries", "packet=dts", "-print_format", "json", str(path)
    )  # fmt: skip
    return [int(p["dts"]) for p in document["packets"]]


def stream_duration(path: Path, stream: str) -> float:
    document = ffprobe_json(
        "-v", "error", "-select_streams", stream, "-show_entries", "stream=duration", "-print_format", "json", str(path)
    )  # fmt: skip
    return float(document["streams"][0]["duration"])


def run_passes(passes: list[list[str]]) -> None:
    for argv in passes:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert done.returncode == 0 and done.stderr == "", done.stderr


def run_plan(plan: EncodePlan, folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    for directory in plan.directories:
        (folder / directory).mkdir(parents=True, exist_ok=True)
    run_passes(plan.passes)


@dataclass
class Chunked:
    output: Path
    chunks: tuple[TimeRange, ...]
    work: Path


def encode_chunked(spec: TranscodeJobSpec, source: Path, tmp_path: Path, chunk_seconds: int) -> Chunked:
    """What the chunk, audio and stitch tasks of a chunked job do, one after another."""
    check_chunkable(spec, chunk_seconds)
    duration, keyframes = parse_keyframe_probe(ffprobe_json(*KEYFRAME_PROBE_ARGS, str(source)))
    assert duration is not None
    media = parse_probe_output(
        ffprobe_json("-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(source))
    ).media
    keyframes = keyframes if cuts_on_keyframes(spec) else []
    chunks = tuple(TimeRange(c.index, c.start_us, c.end_us) for c in plan_chunks(duration, chunk_seconds, keyframes))
    work, scratch, out = tmp_path / "work", tmp_path / "scratch", tmp_path / "chunked"
    for folder in (work, scratch, out):
        folder.mkdir()
    common: dict[str, Any] = {
        "input_url": str(source), "scratch_dir": str(scratch), "allowed_protocols": FILES, "source": media,
    }  # fmt: skip
    for chunk in chunks:
        folder = work / chunk_dir(chunk.index)
        run_plan(chunk_video_plan(spec, chunk, "cpu", output_dir=str(folder), **common), folder)
    audio = audio_plan(spec, output_dir=str(work / AUDIO_DIR), **common)
    if audio is not None:
        run_plan(audio, work / AUDIO_DIR)
    stitch = stitch_plan(spec, chunks, work_dir=str(work), output_dir=str(out), with_audio=audio is not None)
    for name, text in stitch.lists.items():
        (work / name).write_text(text)
    for directory in stitch.directories:
        (out / directory).mkdir(parents=True)
    for source_dir, target in stitch.copies.items():
        shutil.copytree(work / source_dir, out / target)
    run_passes(stitch.passes)
    return Chunked(out / stitch.outputs[0].path, chunks, work)


def encode_single(spec: TranscodeJobSpec, source: Path, tmp_path: Path) -> Path:
    out, scratch = tmp_path / "single", tmp_path / "single-scratch"
    out.mkdir()
    scratch.mkdir()
    plan = build_encode_plan(
        spec, "cpu", input_url=str(source), output_dir=str(out), scratch_dir=str(scratch), allowed_protocols=FILES
    )
    run_plan(plan, out)
    return out / plan.outputs[0].path


def spec_of(source: Path, **video: Any) -> TranscodeJobSpec:
    return TranscodeJobSpec.model_validate(
        {
            "input": {"uri": str(source)},
            "outputs": [{"name": "main", "container": "mp4", "video": {"preset": "veryfast", **video}}],
        }
    )


def assert_well_formed(path: Path, *, audio: bool, frame_seconds: float) -> None:
    video = video_frames(path)
    assert all(b > a for a, b in itertools.pairwise(video.pts)), "video timestamps not strictly increasing"
    assert all(b > a for a, b in itertools.pairwise(packet_dts(path, "v:0"))), "video DTS not strictly increasing"
    if audio:
        assert all(b > a for a, b in itertools.pairwise(packet_dts(path, "a:0")))
        assert abs(stream_duration(path, "a:0") - stream_duration(path, "v:0")) <= frame_seconds + 1e-6
    full_decode = ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-f", "null", "-"]
    decode = subprocess.run(full_decode, check=False, capture_output=True, text=True)
    assert decode.returncode == 0 and decode.stdout == "" and decode.stderr == "", decode.stderr


@pytest.mark.parametrize(
    ("rate", "gop", "cuts"),
    [
        ("25", 55, "keyframe"),  # keyframes every 2.2 s: every 2 s cut moves onto one
        ("30000/1001", 600, "exact"),  # one keyframe: cuts between frames, decoded from the keyframe before
    ],
)
def test_cfr_clip_stitches_to_the_single_pass_frames(tmp_path: Path, rate: str, gop: int, cuts: str) -> None:
    source = make_clip(tmp_path / "clip.mp4", rate=rate, gop=gop, audio=True)
    spec = spec_of(source, crf=30)
    chunked = encode_chunked(spec, source, tmp_path, chunk_seconds=2)
    single = encode_single(spec, source, tmp_path)

    keyframes = set(parse_keyframe_probe(ffprobe_json(*KEYFRAME_PROBE_ARGS, str(source)))[1])
    on_keyframes = [c.start_us in keyframes for c in chunked.chunks[1:]]
    assert all(on_keyframes) if cuts == "keyframe" else not any(on_keyframes)
    assert len(chunked.chunks) == 6 if cuts == "keyframe" else len(chunked.chunks) >= 5

    ours, theirs = video_frames(chunked.output), video_frames(single)
    assert len(ours.pts) == len(theirs.pts)
    assert max(abs(a - b) for a, b in zip(ours.seconds, theirs.seconds, strict=True)) < 1e-4
    frame = 1 / (25 if rate == "25" else 30000 / 1001)
    assert_well_formed(chunked.output, audio=True, frame_seconds=frame)
    assert abs(stream_duration(chunked.output, "a:0") - stream_duration(single, "a:0")) < 1e-3


def test_vfr_clip_keeps_every_source_frame_at_its_time(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "vfr.mp4", rate="25", gop=50, audio=True, vfr=True)
    spec = spec_of(source, crf=30)
    chunked = encode_chunked(spec, source, tmp_path, chunk_seconds=2)
    ours, theirs = video_frames(chunked.output), video_frames(source)
    gaps = {round(b - a, 3) for a, b in itertools.pairwise(theirs.seconds)}
    assert len(gaps) > 1, "the clip is not variable frame rate"
    assert len(ours.pts) == len(theirs.pts)
    assert max(abs(a - b) for a, b in zip(ours.seconds, theirs.seconds, strict=True)) < 1e-4
    assert_well_formed(chunked.output, audio=True, frame_seconds=4 / 25)


def test_clip_without_audio(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "silent.mp4", rate="25", gop=50, audio=False)
    spec = spec_of(source, crf=30)
    chunked = encode_chunked(spec, source, tmp_path, chunk_seconds=2)
    single = encode_single(spec, source, tmp_path)
    assert len(video_frames(chunked.output).pts) == len(video_frames(single).pts) == SECONDS * 25
    document = ffprobe_json("-v", "error", "-show_streams", "-print_format", "json", str(chunked.output))
    assert [s["codec_type"] for s in document["streams"]] == ["video"]
    assert_well_formed(chunked.output, audio=False, frame_seconds=1 / 25)


def test_a_second_rendition_and_tags_are_stitched_too(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", rate="25", gop=50, audio=True)
    spec = TranscodeJobSpec.model_validate(
        {
            "input": {"uri": str(source)},
            "outputs": [
                {"name": "big", "container": "mp4", "video": {"preset": "ultrafast", "crf": 30}},
                {
                    "name": "small", "container": "mp4", "path": "sub/small.mp4", "tags": {"title": "Chunked"},
                    "video": {"preset": "ultrafast", "height": 120}, "audio": {"bitrate": "64k"},
                },
            ],
        }
    )  # fmt: skip
    chunked = encode_chunked(spec, source, tmp_path, chunk_seconds=4)
    small = chunked.output.parent / "sub" / "small.mp4"
    document = ffprobe_json("-v", "error", "-show_streams", "-show_format", "-print_format", "json", str(small))
    video = next(s for s in document["streams"] if s["codec_type"] == "video")
    assert (video["width"], video["height"]) == (160, 120)
    assert document["format"]["tags"]["title"] == "Chunked"
    assert len(video_frames(small).pts) == len(video_frames(chunked.output).pts) == SECONDS * 25
    assert_well_formed(small, audio=True, frame_seconds=1 / 25)


@pytest.mark.parametrize(
    ("outputs", "words"),
    [
        ([{"name": "a", "container": "mkv"}], "mp4 files and hls ladders, not mkv"),
        ([{"name": "a", "container": "mp4", "video": {"codec": "copy"}}], "codec copy"),
        ([{"name": "a", "container": "mp4", "video": {"fps": 30}}], "fps"),
        ([{"name": "a", "container": "mp4"}], "realtime"),
    ],
)
def test_what_chunking_does_not_do_yet_is_invalid_spec(outputs: list[dict[str, Any]], words: str) -> None:
    source = {"uri": "/media/a.mp4", **({"realtime": True} if words == "realtime" else {})}
    spec = TranscodeJobSpec.model_validate({"input": source, "outputs": outputs})
    with pytest.raises(InvalidSpec, match=words):
        check_chunkable(spec)
