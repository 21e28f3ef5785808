"""Chunked encodes with the real ffmpeg: plan chunks from a keyframe probe, encode every chunk and
the audio, stitch, and compare with a single-pass encode of the same spec.

Every hard input (variable frame rate, odd sizes, a rotated phone clip, an open-GOP source, keyframes
only every 10 s, no audio) is checked the same way: same frames at the same times as the single pass,
no gap or duplicate at a cut, audio as long as the video, a clean full decode, and no quality dip at
the cuts (per-frame PSNR against the source). Clips are small (320x240 or less, 6-12 s) and encoded at
ultrafast/veryfast: each case takes a few seconds.
"""

from __future__ import annotations

import itertools
import json
import shutil
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.controller.chunking import MICROS, plan_chunks
from ffrtmp.ffmpeg.argv import EncodePlan, build_encode_plan
from ffrtmp.ffmpeg.chunks import (
    AUDIO_DIR,
    LEVEL_PROBE_ARGS,
    TimeRange,
    audio_plan,
    check_chunkable,
    chunk_dir,
    chunk_video_plan,
    leveled_outputs,
    parse_keyframe_probe,
    parse_level_probe,
    plan_probe_args,
    stitch_levels,
    stitch_plan,
)
from ffrtmp.ffmpeg.invalid_spec import InvalidSpec
from ffrtmp.ffmpeg.media import SourceMedia
from ffrtmp.ffmpeg.probe import parse_probe_output

pytestmark = [
    pytest.mark.ffmpeg,
    pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="no ffmpeg"),
]

FILES = ["file"]


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def ffprobe_json(*args: str) -> dict[str, Any]:
    out = subprocess.run(["ffprobe", *args], capture_output=True, text=True, check=True).stdout
    document: dict[str, Any] = json.loads(out)
    return document


@dataclass(frozen=True)
class Clip:
    """A generated source: testsrc2 (+ a sine) encoded with x264 at a fixed GOP."""

    seconds: int = 6
    size: str = "320x240"
    rate: str = "25"
    gop: int = 50
    audio: bool = True
    vfr: bool = False  # keep frames 0,1,2 of every 7 and every 5th: gaps of 1 to 4 frame intervals
    open_gop: bool = False  # open GOPs with B-frames: leading B-frames after an I-frame refer to the GOP before
    rotate: int = 0  # display rotation (the tag a phone writes), set on a stream copy


def make_clip(path: Path, clip: Clip) -> Path:
    video = ["-f", "lavfi", "-i", f"testsrc2=size={clip.size}:rate={clip.rate}"]
    sound = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"] if clip.audio else []
    select = ["-vf", "select='lt(mod(n,7),3)+not(mod(n,5))'", "-fps_mode", "vfr"] if clip.vfr else []
    codecs = ["-c:v", "libx264", "-preset", "ultrafast", "-g", str(clip.gop), "-sc_threshold", "0"]
    if clip.open_gop:  # ultrafast has no B-frames
        codecs += ["-bf", "3", "-x264-params", "open_gop=1:b-pyramid=none"]
    codecs += ["-pix_fmt", "yuv420p", *(["-c:a", "aac"] if clip.audio else [])]
    encoded = path.with_suffix(".raw.mp4") if clip.rotate else path
    ffmpeg(*video, *sound, "-t", str(clip.seconds), *select, *codecs, str(encoded))
    if clip.rotate:
        ffmpeg("-i", str(encoded), "-c", "copy", "-metadata:s:v:0", f"rotate={clip.rotate}", str(path))
    return path


@dataclass
class Probe:
    """One ffprobe of a file: its streams, the video frames' timestamps and each stream's packet DTS."""

    streams: list[dict[str, Any]]
    video_pts: list[int]  # in the video stream's time base
    video_time_base: float
    dts: dict[str, list[int]]  # by codec type (the first stream of each)

    @property
    def video(self) -> dict[str, Any]:
        return next(s for s in self.streams if s["codec_type"] == "video")

    @property
    def frame_seconds(self) -> list[float]:
        return [p * self.video_time_base for p in self.video_pts]

    @property
    def kinds(self) -> list[str]:
        return [s["codec_type"] for s in self.streams]

    @property
    def size(self) -> tuple[int, int]:
        return int(self.video["width"]), int(self.video["height"])

    def duration(self, kind: str) -> float:
        return float(next(s for s in self.streams if s["codec_type"] == kind)["duration"])


def probe(path: Path) -> Probe:
    document = ffprobe_json(
        "-v", "error", "-print_format", "json", "-show_entries",
        "stream=index,codec_type,time_base,duration,width,height:frame=pts,stream_index:packet=dts,stream_index",
        str(path),
    )  # fmt: skip
    streams = document["streams"]
    video = next(s for s in streams if s["codec_type"] == "video")
    num, den = (int(x) for x in video["time_base"].split("/"))
    kind = {s["index"]: s["codec_type"] for s in streams}
    dts: dict[str, list[int]] = {}
    pts: list[int] = []
    for item in document["packets_and_frames"]:  # in read order
        if item["type"] == "packet":
            dts.setdefault(kind[item["stream_index"]], []).append(int(item["dts"]))
        elif item["stream_index"] == video["index"]:
            pts.append(int(item["pts"]))
    return Probe(streams, pts, num / den, dts)


def leading_frames(path: Path) -> int:
    """Video packets that follow a keyframe in decode order but show before it (open GOPs)."""
    document = ffprobe_json(
        "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts,flags", "-print_format", "json", str(path)
    )  # fmt: skip
    leading, key_pts = 0, None
    for packet in document["packets"]:
        if "K" in packet["flags"]:
            key_pts = int(packet["pts"])
        elif key_pts is not None and int(packet["pts"]) < key_pts:
            leading += 1
    return leading


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
    keyframes_us: list[int]  # the source's, as the plan task found them
    source: SourceMedia


def encode_chunked(spec: TranscodeJobSpec, source: Path, tmp_path: Path, chunk_seconds: int) -> Chunked:
    """What the chunk, audio and stitch tasks of a chunked job do, one after another."""
    check_chunkable(spec, chunk_seconds)
    duration, keyframes = parse_keyframe_probe(ffprobe_json(*plan_probe_args(spec), str(source)))
    assert duration is not None
    media = probed(source)
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
    first = work / chunk_dir(chunks[0].index)
    declared = {name: parse_level_probe(ffprobe_json(*LEVEL_PROBE_ARGS, str(first / f"{name}.mp4")))
                for name in leveled_outputs(spec, "cpu")}  # fmt: skip
    assert None not in declared.values(), declared
    levels = stitch_levels(spec, {name: found for name, found in declared.items() if found is not None})
    stitch = stitch_plan(
        spec, chunks, work_dir=str(work), output_dir=str(out), with_audio=audio is not None, levels=levels
    )
    for name, text in stitch.lists.items():
        (work / name).write_text(text)
    for directory in stitch.directories:
        (out / directory).mkdir(parents=True)
    for source_dir, target in stitch.copies.items():
        shutil.copytree(work / source_dir, out / target)
    run_passes(stitch.passes)
    return Chunked(out / stitch.outputs[0].path, chunks, work, keyframes, media)


def probed(source: Path) -> SourceMedia:
    document = ffprobe_json("-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(source))
    media = parse_probe_output(document).media
    assert media is not None
    return media


def encode_single(spec: TranscodeJobSpec, source: Path, tmp_path: Path, media: SourceMedia) -> Path:
    """The same spec in one run, planned from the same probe (`media`) as the chunks."""
    out, scratch = tmp_path / "single", tmp_path / "single-scratch"
    out.mkdir()
    scratch.mkdir()
    plan = build_encode_plan(
        spec, "cpu", input_url=str(source), output_dir=str(out), scratch_dir=str(scratch), allowed_protocols=FILES,
        source=media,
    )  # fmt: skip
    run_plan(plan, out)
    return out / plan.outputs[0].path


def spec_of(source: Path, **video: Any) -> TranscodeJobSpec:
    return TranscodeJobSpec.model_validate(
        {
            "input": {"uri": str(source)},
            "outputs": [{"name": "main", "container": "mp4", "video": {"preset": "veryfast", **video}}],
        }
    )


def assert_well_formed(path: Path, *, audio: bool, frame_seconds: float) -> Probe:
    """Timestamps strictly increasing, audio as long as the video within `frame_seconds`, and a
    full decode that prints nothing; returns the probe."""
    found = probe(path)
    assert all(b > a for a, b in itertools.pairwise(found.video_pts)), "video timestamps not strictly increasing"
    assert all(b > a for a, b in itertools.pairwise(found.dts["video"])), "video DTS not strictly increasing"
    if audio:
        assert all(b > a for a, b in itertools.pairwise(found.dts["audio"]))
        assert abs(found.duration("audio") - found.duration("video")) <= frame_seconds + 1e-6
    full_decode = ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-f", "null", "-"]
    decode = subprocess.run(full_decode, check=False, capture_output=True, text=True)
    assert decode.returncode == 0 and decode.stdout == "" and decode.stderr == "", decode.stderr
    return found


def psnr_per_frame(output: Path, size: tuple[int, int], source: Path, tmp_path: Path) -> list[float]:
    """Luma PSNR of each output frame against the source frame at the same time, the source
    converted as the encode converts it (to the output's size, bicubic, BT.709 matrix)."""
    width, height = size
    stats = tmp_path / "psnr.log"
    reference = f"scale={width}:{height}:flags=bicubic:out_color_matrix=bt709,setsar=1"
    ffmpeg("-i", str(output), "-i", str(source), "-lavfi", f"[1:v]{reference}[ref];[0:v][ref]psnr=stats_file={stats}",
           "-f", "null", "-")  # fmt: skip
    values = [dict(field.split(":", 1) for field in line.split()) for line in stats.read_text().splitlines()]
    return [100.0 if v["psnr_y"] == "inf" else float(v["psnr_y"]) for v in values]


def frames_at_cuts(frame_seconds: list[float], cuts_us: list[int], around: int = 2) -> tuple[list[int], set[int]]:
    """The first frame of each chunk after the first, and every frame within `around` of a cut."""
    firsts: list[int] = []
    near: set[int] = set()
    for cut in cuts_us:
        first = next((i for i, t in enumerate(frame_seconds) if t * MICROS >= cut - 1), len(frame_seconds))
        firsts.append(first)
        near.update(range(max(first - around, 0), min(first + around + 1, len(frame_seconds))))
    return firsts, near


# How far below the output's median PSNR a frame within 2 of a cut may be: 1 dB. Where the same
# frames encoded in one run (the whole input as one chunk: same frames, timestamps and settings)
# are below the median themselves, the frame may be 1 dB below that run's frame instead: measured,
# a one-run encode of the vfr clip is 2.3 dB below its median at frames 48-53 (longer gaps between
# frames, B-frames) and of odd-source-scaled 1.7 dB at frame 108, with no cut there.
# Before the chunks were rolled (chunks.ROLL_BEFORE_US/ROLL_AFTER_US), frames at a cut were down to
# 1.2 dB below the median on the other six cases (crf 30, 2 s chunks), 1.9-2.0 on those two: a
# chunk's last frames got about a third fewer bits than in a single pass (x264's macroblock tree
# saw no later frame referring to them) and the next chunk started without rate-control history.
# Rolled: at most 0.85 dB below on those six, 1.85 (vfr) and 1.65 (odd-source-scaled) on the two.
# Unrolled chunks fail this check (long-gop: frame 39, the last before a cut, 1.16 dB below the
# median and 1.95 dB below the one run).
DIP_NEAR_CUT_DB = 1.0


HARD_INPUTS: dict[str, tuple[Clip, dict[str, Any], str]] = {  # source, output video settings, where the cuts fall
    # NTSC rate, one keyframe: every cut is between frames, decoded from the keyframe before
    "cfr-ntsc-exact-cuts": (Clip(rate="30000/1001", gop=600), {}, "exact"),
    # keyframes only every 10 s (at 10 fps, to keep it short): exact cuts, the one at 10 s on the keyframe
    "long-gop": (Clip(seconds=12, rate="10", gop=100), {}, "mixed"),
    "vfr": (Clip(vfr=True), {}, "any"),
    "odd-source-size": (Clip(size="319x179", gop=150), {}, "exact"),
    "odd-source-scaled": (Clip(size="319x179", gop=55), {"height": 120}, "keyframe"),
    "no-audio": (Clip(audio=False, gop=150), {}, "exact"),
    "rotated-phone-clip": (Clip(rotate=90, gop=150), {}, "exact"),
    "open-gop": (Clip(open_gop=True, gop=50), {}, "keyframe"),
}
CHUNK_SECONDS = 2


@pytest.mark.parametrize(("clip", "video", "cuts"), HARD_INPUTS.values(), ids=HARD_INPUTS.keys())
def test_stitched_output_matches_a_single_pass_encode(
    tmp_path: Path, clip: Clip, video: dict[str, Any], cuts: str
) -> None:
    source = make_clip(tmp_path / "clip.mp4", clip)
    assert_matches_single_pass(tmp_path, clip, spec_of(source, crf=30, **video), cuts)


# Renditions with a bitrate (an ABR ladder's): the chunks' own rate control (chunks.chunk_rate_control)
# keeps the cuts within DIP_NEAR_CUT_DB. Measured with it: -0.3 to 0.64 dB below on these clips (0.7 at
# most over several runs, long-gop-capped: x264's threaded rate control varies run to run). With the
# single pass's plain ABR (-b:v) in every chunk each case fails, its first failing frame 1.7-3.3 dB
# below (the frames after a cut: x264's ABR start spends too little in every chunk).
BITRATE_INPUTS: dict[str, tuple[Clip, dict[str, Any], str]] = {
    "detailed-640x360": (Clip(size="640x360"), {"bitrate": "800k"}, "keyframe"),
    "cfr-ntsc-exact-cuts": (Clip(rate="30000/1001", gop=600), {"bitrate": "300k"}, "exact"),
    "long-gop-capped": (Clip(seconds=12, rate="10", gop=100), {"bitrate": "300k", "maxrate": "450k"}, "mixed"),
    "vfr": (Clip(vfr=True), {"bitrate": "300k"}, "any"),
}


@pytest.mark.parametrize(("clip", "video", "cuts"), BITRATE_INPUTS.values(), ids=BITRATE_INPUTS.keys())
def test_a_bitrate_rendition_has_no_dip_at_the_cuts(
    tmp_path: Path, clip: Clip, video: dict[str, Any], cuts: str
) -> None:
    source = make_clip(tmp_path / "clip.mp4", clip)
    assert_matches_single_pass(tmp_path, clip, spec_of(source, **video), cuts)


def assert_matches_single_pass(tmp_path: Path, clip: Clip, spec: TranscodeJobSpec, cuts: str) -> None:
    """`spec` chunked (CHUNK_SECONDS) against its single pass: the same frames at the same times, a
    well-formed file, and no frame within 2 of a cut more than DIP_NEAR_CUT_DB below the lower of the
    median and the same frame of a one-run encode (the whole input as one chunk)."""
    source = Path(spec.input.uri or "")
    chunked = encode_chunked(spec, source, tmp_path, chunk_seconds=CHUNK_SECONDS)
    single = probe(encode_single(spec, source, tmp_path, chunked.source))
    cut_points = [c.start_us for c in chunked.chunks[1:]]
    assert len(cut_points) >= clip.seconds // CHUNK_SECONDS - 2
    on_keyframes = [cut in chunked.keyframes_us for cut in cut_points]
    expected = {"keyframe": all(on_keyframes), "exact": not any(on_keyframes), "any": True,
                "mixed": any(on_keyframes) and not all(on_keyframes)}  # fmt: skip
    assert expected[cuts], (cuts, cut_points, chunked.keyframes_us)
    if clip.open_gop:
        assert leading_frames(source) > 0, "the source has no open GOP"

    reference = single
    if clip.vfr:
        # A single-pass MP4 is constant frame rate (frames repeated to fill the gaps); a chunk keeps
        # the source's frames at their times, so the reference is the source's own frame times.
        reference = probe(source)
        assert len({round(b - a, 3) for a, b in itertools.pairwise(reference.frame_seconds)}) > 1, "not VFR"
    gap = max(b - a for a, b in itertools.pairwise(reference.frame_seconds))
    ours = assert_well_formed(chunked.output, audio=clip.audio, frame_seconds=gap)
    assert ours.size == single.size
    if clip.rotate:
        assert ours.size == (240, 320), "the rotation was not applied as in a single pass"
    assert ours.kinds == single.kinds == (["video", "audio"] if clip.audio else ["video"])
    assert len(ours.video_pts) == len(reference.video_pts), (len(ours.video_pts), len(reference.video_pts))
    # Same times: no frame lost, repeated or moved at a cut.
    assert max(abs(a - b) for a, b in zip(ours.frame_seconds, reference.frame_seconds, strict=True)) < 1e-4
    if clip.audio:
        assert abs(ours.duration("audio") - single.duration("audio")) < 1e-3

    psnr = psnr_per_frame(chunked.output, ours.size, source, tmp_path)
    assert len(psnr) == len(ours.video_pts)
    median = statistics.median(psnr)
    firsts, near = frames_at_cuts(ours.frame_seconds, cut_points)
    assert median > 30, f"median PSNR {median:.2f} dB: the frames are not the source's"
    one_run = tmp_path / "one-run"
    one_run.mkdir()
    whole = encode_chunked(spec, source, one_run, chunk_seconds=4 * clip.seconds)
    assert len(whole.chunks) == 1
    alone = psnr_per_frame(whole.output, ours.size, source, one_run)
    assert len(alone) == len(psnr)
    for i in near:
        floor = min(median, alone[i]) - DIP_NEAR_CUT_DB
        assert psnr[i] >= floor, f"frame {i} at a cut: {psnr[i]:.2f} dB, median {median:.2f}, one run {alone[i]:.2f}"
    print(f"PSNR median {median:.2f} dB, lowest first frame {min(psnr[i] for i in firsts):.2f} dB, "
          f"lowest within 2 frames of a cut {min(psnr[i] for i in near):.2f} dB "
          f"(one run there: {min(alone[i] for i in near):.2f} dB), at most "
          f"{max(min(median, alone[i]) - psnr[i] for i in near):.2f} dB below the floor's reference")  # fmt: skip


def test_a_second_rendition_and_tags_are_stitched_too(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", Clip(seconds=8))
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
    found = assert_well_formed(small, audio=True, frame_seconds=1 / 25)
    assert found.size == (160, 120)
    assert len(found.video_pts) == len(probe(chunked.output).video_pts) == 8 * 25
    tags = ffprobe_json("-v", "error", "-show_entries", "format_tags", "-print_format", "json", str(small))
    assert tags["format"]["tags"]["title"] == "Chunked"


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
