"""Real-world sources through the planner and the real ffmpeg: sizes, fields, colour, audio.

Each class of source is generated here with ffmpeg (tiny: about 2 s, 10-25 fps, small
frames), probed with `probe_input` into the planner's `SourceMedia` exactly as the worker
does, planned for cpu, and run: loudness measuring passes first, their loudnorm JSON parsed
and applied (`loudness.apply_measurements`, as `worker/attempt.py` does), then the encode.
Outputs are checked with ffprobe and ffmpeg's own analysis filters (idet, signalstats,
ebur128).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.ffmpeg.argv import EncodePlan, build_encode_plan
from ffrtmp.ffmpeg.loudness import apply_measurements, parse_loudnorm_output
from ffrtmp.ffmpeg.media import SourceMedia
from ffrtmp.ffmpeg.probe import probe_input
from ffrtmp.ffmpeg.progress import ProgressParser, ProgressSnapshot, percent

pytestmark = [
    pytest.mark.ffmpeg,
    pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="no ffmpeg"),
]

SECONDS = 2
ALL = ["file"]
QUIET = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-threads", "1"]
SINE = "sine=frequency=440:sample_rate=48000"


def generate(path: Path, *args: str) -> Path:
    subprocess.run([*QUIET, *args, "-t", str(SECONDS), str(path)], check=True, timeout=120)
    return path


def ffprobe(path: Path) -> dict[str, Any]:
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format", str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def video_stream(path: Path) -> dict[str, Any]:
    return next(s for s in ffprobe(path)["streams"] if s["codec_type"] == "video")


def audio_streams(path: Path) -> list[dict[str, Any]]:
    return [s for s in ffprobe(path)["streams"] if s["codec_type"] == "audio"]


def analyse(path: Path, audio_or_video_filter: str, stream: str = "-vf") -> str:
    """ffmpeg's stderr (info level) after running an analysis filter over `path`."""
    done = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-threads", "1", "-i", str(path), stream, audio_or_video_filter,
         "-f", "null", "-"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return done.stderr


def display_aspect(stream: dict[str, Any]) -> Fraction:
    sar = stream.get("sample_aspect_ratio", "1:1")
    num, _, den = sar.partition(":")
    ratio = Fraction(int(num), int(den)) if num not in ("0", "") else Fraction(1)
    return Fraction(stream["width"], stream["height"]) * ratio


def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[str, list[ProgressSnapshot]]:
    """Run one planned pass in the plan's environment added to ours, as the worker does."""
    environment = {**os.environ, **env} if env else None
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr
    parser = ProgressParser()
    snapshots = [s for line in done.stdout.splitlines() if (s := parser.feed(line)) is not None]
    return done.stderr, snapshots


async def plan_for(
    source: Path, tmp_path: Path, outputs: list[dict[str, Any]], **spec_fields: Any
) -> tuple[EncodePlan, SourceMedia]:
    info = await probe_input(str(source), "file")
    assert info is not None
    spec = TranscodeJobSpec.model_validate({"input": {"uri": str(source)}, "outputs": outputs, **spec_fields})
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "scratch").mkdir(exist_ok=True)
    plan = build_encode_plan(
        spec,
        "cpu",
        input_url=str(source),
        output_dir=str(tmp_path / "out"),
        scratch_dir=str(tmp_path / "scratch"),
        allowed_protocols=ALL,
        threads=1,
        input_has_audio=info.audio_codec is not None,
        source=info.media,
    )
    return plan, info.media


async def encode(
    source: Path, tmp_path: Path, outputs: list[dict[str, Any]], **spec_fields: Any
) -> tuple[Path, EncodePlan, list[ProgressSnapshot]]:
    """Plan and run like the worker's attempt: measuring passes, then the encode passes."""
    plan, _ = await plan_for(source, tmp_path, outputs, **spec_fields)
    for folder in plan.directories:
        (tmp_path / "out" / folder).mkdir(parents=True, exist_ok=True)
    measurements = {}
    for measure in plan.loudness_measure_passes:
        stderr, _ = await asyncio.to_thread(run, measure.argv)
        measurements[measure.stream] = parse_loudnorm_output(stderr)
    snapshots: list[ProgressSnapshot] = []
    passes = apply_measurements(plan.passes, measurements)
    if measurements:
        assert all("linear=true" in " ".join(argv) for argv in passes)  # the measured values went in
    for argv in passes:
        stderr, snaps = await asyncio.to_thread(run, argv, plan.env)
        assert stderr == "", stderr
        snapshots += snaps
    return tmp_path / "out", plan, snapshots


def h264(**video: Any) -> dict[str, Any]:
    return {"codec": "h264", "preset": "ultrafast", "crf": 30, **video}


# -- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "request_", "expected"),
    [
        ("359x639", {}, (360, 640)),  # odd portrait (a 1079x1917 phone clip, scaled down)
        ("639x359", {}, (640, 360)),  # odd landscape
        ("639x359", {"height": 240}, (428, 240)),
        ("359x639", {"width": 180}, (180, 320)),
    ],
)
async def test_odd_sources_come_out_even_with_their_aspect(
    tmp_path: Path, size: str, request_: dict[str, int], expected: tuple[int, int]
) -> None:
    # testsrc is RGB (testsrc2 rounds to even) and 4:4:4 H.264 can be odd-sized; 4:2:0 cannot
    source = generate(tmp_path / "odd.mp4", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=10",
                      "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p")  # fmt: skip
    out, plan, _ = await encode(
        source, tmp_path, [{"name": "web", "video": h264(**request_), "audio": {"codec": "none"}}]
    )

    stream = video_stream(out / "web.mp4")
    assert (stream["width"], stream["height"]) == expected
    assert (plan.outputs[0].width, plan.outputs[0].height) == expected
    w, h = map(int, size.split("x"))
    assert abs(display_aspect(stream) / Fraction(w, h) - 1) < Fraction(1, 100)


async def test_odd_source_without_a_probe_comes_out_even(tmp_path: Path) -> None:
    """The live fallback (a stream not up when the attempt probed): the size rule by expression."""
    source = generate(tmp_path / "odd.mp4", "-f", "lavfi", "-i", "testsrc=size=321x241:rate=10",
                      "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p")  # fmt: skip
    spec = TranscodeJobSpec.model_validate(
        {"input": {"uri": str(source)}, "outputs": [{"name": "web", "video": h264(), "audio": {"codec": "none"}}]}
    )
    (tmp_path / "out").mkdir()
    plan = build_encode_plan(spec, "cpu", input_url=str(source), output_dir=str(tmp_path / "out"),
                             scratch_dir=str(tmp_path), allowed_protocols=ALL, threads=1)  # fmt: skip
    await asyncio.to_thread(run, plan.passes[-1])

    stream = video_stream(tmp_path / "out" / "web.mp4")
    assert (stream["width"], stream["height"]) == (322, 242)


def with_display_rotation(stored: Path, path: Path, *, degrees: int) -> Path:
    """The same stream, to be shown turned (ffmpeg 5.1's mov muxer writes the display matrix)."""
    command = [*QUIET, "-i", str(stored), "-c", "copy", "-metadata:s:v:0", f"rotate={degrees}", str(path)]
    subprocess.run(command, check=True, timeout=60)
    return path


async def test_phone_clip_with_display_rotation_comes_out_upright_and_even(tmp_path: Path) -> None:
    stored = generate(tmp_path / "stored.mp4", "-f", "lavfi", "-i", "testsrc=size=639x359:rate=10",
                      "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p")  # fmt: skip
    source = with_display_rotation(stored, tmp_path / "phone.mp4", degrees=90)

    out, plan, _ = await encode(source, tmp_path, [{"name": "web", "video": h264(), "audio": {"codec": "none"}}])

    stream = video_stream(out / "web.mp4")
    assert (stream["width"], stream["height"]) == (360, 640) == (plan.outputs[0].width, plan.outputs[0].height)


async def test_anamorphic_ntsc_keeps_sixteen_by_nine_with_square_pixels(tmp_path: Path) -> None:
    source = generate(tmp_path / "dvd.mpg", "-f", "lavfi", "-i", "testsrc2=size=720x480:rate=10",
                      "-vf", "setsar=32/27", "-c:v", "mpeg2video", "-q:v", "10")  # fmt: skip
    assert display_aspect(video_stream(source)) == Fraction(16, 9)
    out, _, _ = await encode(
        source,
        tmp_path,
        [
            {"name": "keep", "video": h264(), "audio": {"codec": "none"}},
            {"name": "small", "video": h264(width=320), "audio": {"codec": "none"}},
        ],
        thumbnails={"intervalSeconds": 1, "width": 160},
    )
    keep, small = video_stream(out / "keep.mp4"), video_stream(out / "small.mp4")
    assert (keep["width"], keep["height"], keep.get("sample_aspect_ratio", "1:1")) == (854, 480, "1:1")
    assert (small["width"], small["height"], small.get("sample_aspect_ratio", "1:1")) == (320, 180, "1:1")
    thumb = video_stream(out / "thumbs" / "thumb_00001.jpg")
    for stream in (keep, small, thumb):
        assert abs(display_aspect(stream) / Fraction(16, 9) - 1) < Fraction(1, 100)
    assert (thumb["width"], thumb["height"]) == (160, 90)


# -- interlaced -----------------------------------------------------------------------------

IDET_RE = re.compile(r"Multi frame detection: TFF:\s*(\d+) BFF:\s*(\d+) Progressive:\s*(\d+)")


def field_counts(path: Path) -> tuple[int, int, int]:
    match = IDET_RE.search(analyse(path, "idet"))
    assert match is not None
    tff, bff, progressive = map(int, match.groups())
    return tff, bff, progressive


def interlaced_source(path: Path, size: str, field: str) -> Path:
    """MPEG-2 in TS, `field` (tff/bff) first: 50 progressive frames/s woven into 25 interlaced
    frames/s, so motion combs."""
    weave = "interleave_top" if field == "tff" else "interleave_bottom"
    return generate(path, "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=50",
                    "-vf", f"tinterlace=mode={weave},setfield={field}", "-c:v", "mpeg2video", "-q:v", "4",
                    "-flags", "+ilme+ildct", "-top", "1" if field == "tff" else "0", "-f", "mpegts")  # fmt: skip


@pytest.mark.parametrize(
    ("name", "size", "field", "order"),
    [("hd-tff.ts", "480x270", "tff", "tt"), ("pal-bff.ts", "352x288", "bff", "bb")],
)
async def test_interlaced_mpeg2_is_deinterlaced(tmp_path: Path, name: str, size: str, field: str, order: str) -> None:
    source = interlaced_source(tmp_path / name, size, field)
    tff, bff, progressive = field_counts(source)
    assert (tff if field == "tff" else bff) > progressive  # the source really is interlaced
    plan, media = await plan_for(source, tmp_path, [{"name": "p", "video": h264(), "audio": {"codec": "none"}}])
    assert media.field_order == order
    assert "bwdif=mode=send_frame" in " ".join(plan.passes[-1])

    # good quality: idet reads heavy compression noise on a small frame as combing
    out, _, _ = await encode(source, tmp_path, [{"name": "p", "video": h264(crf=16), "audio": {"codec": "none"}}])

    tff, bff, progressive = field_counts(out / "p.mp4")
    assert progressive > 4 * (tff + bff)
    assert video_stream(out / "p.mp4").get("field_order", "progressive") == "progressive"


# -- colour ---------------------------------------------------------------------------------


HDR10_PARAMS = (
    "log-level=error:hdr10=1:repeat-headers=1:colorprim=bt2020:transfer=smpte2084:colormatrix=bt2020nc:"
    "master-display=G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1):max-cll=1000,400"
)
HLG_PARAMS = "log-level=error:colorprim=bt2020:transfer=arib-std-b67:colormatrix=bt2020nc"


def hdr_source(path: Path, params: str, transfer: str) -> Path:
    return generate(path, "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=10",
                    "-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le", "-x265-params", params,
                    "-color_primaries", "bt2020", "-color_trc", transfer, "-colorspace", "bt2020nc")  # fmt: skip


@pytest.mark.parametrize(("params", "transfer"), [(HDR10_PARAMS, "smpte2084"), (HLG_PARAMS, "arib-std-b67")])
async def test_hdr_sources_are_tone_mapped_to_bt709(tmp_path: Path, params: str, transfer: str) -> None:
    source = hdr_source(tmp_path / "hdr.mkv", params, transfer)
    assert video_stream(source)["color_transfer"] == transfer

    out, plan, _ = await encode(source, tmp_path, [{"name": "sdr", "video": h264(), "audio": {"codec": "none"}}])

    assert "tonemap=tonemap=hable:desat=0" in " ".join(plan.passes[-1])
    stream = video_stream(out / "sdr.mp4")
    assert (stream["color_primaries"], stream["color_transfer"], stream["color_space"]) == ("bt709",) * 3
    assert (stream["pix_fmt"], stream["color_range"]) == ("yuv420p", "tv")


@pytest.mark.parametrize(("codec", "encoder"), [("hevc", "libx265"), ("av1", "libsvtav1")])
async def test_hdr10_passthrough_keeps_pq_and_its_metadata_in_ten_bit(tmp_path: Path, codec: str, encoder: str) -> None:
    source = hdr_source(tmp_path / "hdr10.mkv", HDR10_PARAMS, "smpte2084")
    video = {"codec": codec, "preset": "ultrafast", "crf": 30, "hdr": "passthrough"}

    out, plan, _ = await encode(source, tmp_path, [{"name": "hdr", "video": video, "audio": {"codec": "none"}}])

    assert encoder in plan.passes[-1]
    stream = video_stream(out / "hdr.mp4")
    assert stream["codec_name"] == codec
    assert (stream["color_primaries"], stream["color_transfer"], stream["color_space"]) == (
        "bt2020",
        "smpte2084",
        "bt2020nc",
    )
    assert stream["pix_fmt"] == "yuv420p10le"
    info = await probe_input(str(out / "hdr.mp4"), "file")  # reads the first frame's SEI / metadata OBU
    assert info is not None
    assert info.media.mastering_display == "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)"
    assert info.media.content_light == "1000,400"


async def test_full_range_source_comes_out_limited_range_bt709(tmp_path: Path) -> None:
    white_bar = "drawbox=x=0:y=0:w=80:h=180:color=white:t=fill"
    source = generate(tmp_path / "full.mp4", "-f", "lavfi", "-i", f"testsrc2=size=320x180:rate=10,{white_bar}",
                      "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuvj420p")  # fmt: skip
    source_peaks = [int(v) for v in re.findall(r"YMAX=(\d+)", analyse(source, "signalstats,metadata=print"))]
    assert source_peaks and min(source_peaks) >= 250  # white is 255 in full range

    out, _, _ = await encode(source, tmp_path, [{"name": "tv", "video": h264(), "audio": {"codec": "none"}}])

    stream = video_stream(out / "tv.mp4")
    assert (stream["pix_fmt"], stream["color_range"]) == ("yuv420p", "tv")
    assert (stream["color_primaries"], stream["color_transfer"], stream["color_space"]) == ("bt709",) * 3
    peaks = [int(v) for v in re.findall(r"YMAX=(\d+)", analyse(out / "tv.mp4", "signalstats,metadata=print"))]
    assert peaks and min(peaks) >= 225 and max(peaks) <= 240  # white is 235 in limited range


def centre_rgb(path: Path) -> tuple[int, int, int]:
    """The first frame's centre pixel as RGB, decoded with the matrix the file is tagged with."""
    done = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path), "-frames:v", "1",
         "-vf", "scale=in_color_matrix=auto:in_range=auto,format=rgb24", "-f", "rawvideo", "-"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    stream = video_stream(path)
    width, height = stream["width"], stream["height"]
    offset = 3 * ((height // 2) * width + width // 2)
    r, g, b = done.stdout[offset : offset + 3]
    return r, g, b


async def test_bt601_sd_source_is_converted_not_just_retagged(tmp_path: Path) -> None:
    source = generate(tmp_path / "sd601.mp4", "-f", "lavfi", "-i", "color=c=red:size=320x240:rate=10",
                      "-vf", "scale=out_color_matrix=bt601,format=yuv420p", "-c:v", "libx264", "-preset", "ultrafast",
                      "-crf", "10", "-color_primaries", "smpte170m", "-color_trc", "smpte170m",
                      "-colorspace", "smpte170m")  # fmt: skip
    assert all(abs(a - e) <= 8 for a, e in zip(centre_rgb(source), (255, 0, 0), strict=True))

    out, _, _ = await encode(source, tmp_path, [{"name": "hd", "video": h264(crf=10), "audio": {"codec": "none"}}])

    assert video_stream(out / "hd.mp4")["color_space"] == "bt709"
    red = centre_rgb(out / "hd.mp4")
    assert all(abs(a - e) <= 8 for a, e in zip(red, (255, 0, 0), strict=True)), red


# -- thumbnails -------------------------------------------------------------------------------


def first_frame(path: Path, pix_fmt: str, *filters: str) -> tuple[bytes, int, int]:
    """The first frame as raw `pix_fmt` (range and matrix as tagged), and its size."""
    chain = ",".join([*filters, "scale=in_color_matrix=auto:in_range=auto", f"format={pix_fmt}"])
    done = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(path), "-frames:v", "1",
         "-vf", chain, "-f", "rawvideo", "-"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    stream = video_stream(path)
    return done.stdout, stream["width"], stream["height"]


def line_ratio(path: Path) -> float:
    """Mean luma difference between neighbouring lines over that between lines two apart: under 1
    for a progressive picture (neighbours are closer), over 1 where the two fields of a moving
    picture are woven together (combing)."""
    luma, width, height = first_frame(path, "gray")
    rows = [luma[y * width : (y + 1) * width] for y in range(height)]
    near = sum(abs(a - b) for y in range(height - 1) for a, b in zip(rows[y], rows[y + 1], strict=True))
    far = sum(abs(a - b) for y in range(height - 2) for a, b in zip(rows[y], rows[y + 2], strict=True))
    return (near / (height - 1)) / (far / (height - 2))


def mean_rgb(path: Path, *filters: str) -> tuple[float, float, float]:
    rgb, width, height = first_frame(path, "rgb24", *filters)
    pixels = width * height
    return sum(rgb[0::3]) / pixels, sum(rgb[1::3]) / pixels, sum(rgb[2::3]) / pixels


async def test_thumbnails_of_an_interlaced_source_are_progressive(tmp_path: Path) -> None:
    source = interlaced_source(tmp_path / "hd-tff.ts", "480x270", "tff")
    assert line_ratio(source) > 1.0  # a frame of the source, as it is, combs

    # full width: scaling down would blur the combing away and make the check meaningless
    out, _, _ = await encode(source, tmp_path, [{"name": "p", "video": h264(), "audio": {"codec": "none"}}],
                             thumbnails={"intervalSeconds": 1, "width": 480})  # fmt: skip

    thumbs = sorted((out / "thumbs").glob("thumb_*.jpg"))
    assert len(thumbs) == SECONDS
    assert all(line_ratio(thumb) < 0.8 for thumb in thumbs), [line_ratio(t) for t in thumbs]


async def test_thumbnails_of_an_hdr_source_are_tone_mapped_like_the_rendition(tmp_path: Path) -> None:
    source = hdr_source(tmp_path / "hdr10.mkv", HDR10_PARAMS, "smpte2084")

    out, _, _ = await encode(source, tmp_path, [{"name": "sdr", "video": h264(crf=18), "audio": {"codec": "none"}}],
                             thumbnails={"intervalSeconds": 1, "width": 320})  # fmt: skip

    thumb = mean_rgb(out / "thumbs" / "thumb_00001.jpg")
    rendition = mean_rgb(out / "sdr.mp4")
    as_if_sdr = mean_rgb(source)  # the PQ code values shown as they are: what SDR screens get untreated
    # mean colour distances (0..441): measured 2.5 to the rendition, 30 to the untreated picture
    assert math.dist(thumb, rendition) <= 6, (thumb, rendition)
    assert math.dist(thumb, as_if_sdr) >= 20, (thumb, as_if_sdr)


# -- timestamps far from zero -----------------------------------------------------------------


async def test_progress_of_a_broadcast_ts_starting_at_ten_thousand_seconds(tmp_path: Path) -> None:
    source = generate(tmp_path / "broadcast.ts", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=10",
                      "-f", "lavfi", "-i", SINE, "-c:v", "mpeg2video", "-c:a", "mp2",
                      "-output_ts_offset", "10000", "-f", "mpegts")  # fmt: skip
    info = await probe_input(str(source), "file")
    assert info is not None and info.media.start_seconds is not None
    assert info.media.start_seconds > 9999
    assert info.duration_seconds == pytest.approx(SECONDS, abs=0.3)

    _, _, snapshots = await encode(source, tmp_path, [{"name": "web", "video": h264()}])

    times = [s.out_time_seconds for s in snapshots if s.out_time_seconds is not None]
    assert times and max(times) <= SECONDS + 0.5  # relative to the output's start, not 10000 s
    assert percent(snapshots[-1], info.duration_seconds) == pytest.approx(100, abs=10)


# -- audio ----------------------------------------------------------------------------------


def upmix(layout: str, channels: int) -> str:
    """A pan filter copying the mono input into every channel of `layout`."""
    return f"pan={layout}" + "".join(f"|c{i}=c0" for i in range(channels))


@pytest.fixture
def multitrack(tmp_path: Path) -> Path:
    """Three audio tracks: eng mono, deu 5.1, fra 7.1."""
    return generate(
        tmp_path / "multi.mkv",
        "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=10",
        "-f", "lavfi", "-i", SINE,
        "-f", "lavfi", "-i", f"sine=frequency=660:sample_rate=48000,{upmix('5.1', 6)}",
        "-f", "lavfi", "-i", f"sine=frequency=880:sample_rate=48000,{upmix('7.1', 8)}",
        "-map", "0:v", "-map", "1:a", "-map", "2:a", "-map", "3:a",
        "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "flac",
        "-metadata:s:a:0", "language=eng", "-metadata:s:a:1", "language=deu", "-metadata:s:a:2", "language=fra",
    )  # fmt: skip


async def test_audio_track_chosen_by_language_or_index_and_downmixed(multitrack: Path, tmp_path: Path) -> None:
    outputs = [
        {"name": "deu", "video": {"codec": "none"}, "audio": {"language": "deu", "channels": 2}},
        {"name": "fra", "video": {"codec": "none"}, "audio": {"language": "fra"}},
        {"name": "third", "video": {"codec": "none"}, "audio": {"track": 2, "channels": 2}},
        {"name": "first", "video": {"codec": "none"}},
    ]
    out, _, _ = await encode(multitrack, tmp_path, outputs)

    channels = {
        name: [s["channels"] for s in audio_streams(out / f"{name}.mp4")] for name in ("deu", "fra", "third", "first")
    }
    assert channels == {"deu": [2], "fra": [8], "third": [2], "first": [1]}


EBUR128_I_RE = re.compile(r"Integrated loudness:\s+I:\s+(-?[\d.]+) LUFS")
EBUR128_PEAK_RE = re.compile(r"True peak:\s+Peak:\s+(-?[\d.]+|-inf) dBFS")


async def test_loudness_is_normalised_in_two_passes(tmp_path: Path) -> None:
    source = generate(tmp_path / "quiet.mkv", "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=10",
                      "-f", "lavfi", "-i", "sine=frequency=300:sample_rate=48000,volume=0.03",
                      "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "flac")  # fmt: skip
    web = {"integratedLufs": -16, "truePeakDb": "-1.5", "loudnessRangeLu": 11}
    out, plan, _ = await encode(
        source,
        tmp_path,
        [
            {"name": "web", "video": {"codec": "none"}, "audio": {"loudness": web}},
            {"name": "broadcast", "video": {"codec": "none"}, "audio": {"loudness": {}}},  # EBU R128 -23, -1 dBTP
        ],
    )

    assert len(plan.loudness_measure_passes) == 1  # one measurement of the source serves both targets
    for name, target, peak_limit in (("web", -16, -1.5), ("broadcast", -23, -1.0)):
        report = analyse(out / f"{name}.mp4", "ebur128=peak=true", "-af")
        integrated = float(EBUR128_I_RE.findall(report)[-1])
        true_peak = float(EBUR128_PEAK_RE.findall(report)[-1])
        assert integrated == pytest.approx(target, abs=1), name
        assert true_peak <= peak_limit, name
