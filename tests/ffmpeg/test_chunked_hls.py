"""Chunked hls ladders with the real ffmpeg: every chunk, the audio (and thumbnails) and the stitch's
packaging, against a single-pass encode of the same spec. Segments must start at the same frames
in every rendition and in both runs, and the master playlists must be the same text.

Clips are 320x240, 12 s, at ultrafast; chunks of 4 s, segments of 2 s.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_chunked_encodes import FILES, Clip, encode_chunked, ffprobe_json, make_clip, run_plan

from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.ffmpeg.argv import build_encode_plan
from ffrtmp.ffmpeg.probe import parse_probe_output

pytestmark = [
    pytest.mark.ffmpeg,
    pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="no ffmpeg"),
]

SEGMENT = 2
LADDER = [
    {"name": "240p", "container": "hls", "video": {"preset": "ultrafast", "height": 240, "bitrate": "500k"}},
    {"name": "180p", "container": "hls", "video": {"preset": "ultrafast", "height": 180, "crf": 30, "maxrate": "300k"}},
    {"name": "120p", "container": "hls", "video": {"preset": "ultrafast", "height": 120, "bitrate": "150k", "gop": 25},
     "audio": {"bitrate": "64k"}},
]  # fmt: skip


def hls_spec(source: Path, outputs: list[dict[str, Any]], **extra: Any) -> TranscodeJobSpec:
    return TranscodeJobSpec.model_validate(
        {"input": {"uri": str(source)}, "outputs": outputs, "hls": {"segmentSeconds": SEGMENT}} | extra
    )


def encode_single_pass(spec: TranscodeJobSpec, source: Path, tmp_path: Path) -> Path:
    """The single-pass run as a worker makes it (with the probed source)."""
    out, scratch = tmp_path / "single", tmp_path / "single-scratch"
    scratch.mkdir()
    media = parse_probe_output(
        ffprobe_json("-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(source))
    ).media
    plan = build_encode_plan(
        spec, "cpu", input_url=str(source), output_dir=str(out), scratch_dir=str(scratch), allowed_protocols=FILES,
        source=media,
    )  # fmt: skip
    run_plan(plan, out)
    return out


def segments(variant: Path) -> list[tuple[str, float]]:
    """(segment file, EXTINF duration) of a variant playlist, in order."""
    lines = variant.read_text().splitlines()
    return [
        (lines[i + 1], float(line.split(":", 1)[1].rstrip(",")))
        for i, line in enumerate(lines)
        if line.startswith("#EXTINF:")
    ]


Layout = tuple[float, int, tuple[int, ...]]


def variant_layout(variant: Path) -> list[Layout]:
    """Per segment of a variant (MPEG-TS, or fMP4 after its init segment): (first video frame's time,
    video frames, the keyframes' positions in display order). One ffprobe over the segments joined
    byte by byte; a packet's byte position says which segment holds it."""
    init = re.findall(r'#EXT-X-MAP:URI="([^"]+)"', variant.read_text())
    files = [variant.parent / name for name in init] + [variant.parent / name for name, _ in segments(variant)]
    ends = list(itertools.accumulate(f.stat().st_size for f in files))
    document = ffprobe_json(
        "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags,pos", "-print_format", "json",
        "concat:" + "|".join(str(f) for f in files),
    )  # fmt: skip
    held: list[list[dict[str, Any]]] = [[] for _ in files]
    for packet in document["packets"]:
        held[bisect.bisect_right(ends, int(packet["pos"]))].append(packet)
    assert init == [] or held[0] == [], "frames in the init segment"
    layout: list[Layout] = []
    for packets in held[len(init) :]:
        packets.sort(key=lambda p: float(p["pts_time"]))
        keyframes = tuple(i for i, p in enumerate(packets) if p["flags"].startswith("K"))
        layout.append((round(float(packets[0]["pts_time"]), 4), len(packets), keyframes))
    return layout


def ladder_layout(hls: Path, names: list[str]) -> dict[str, list[Layout]]:
    return {name: variant_layout(hls / name / "index.m3u8") for name in names}


def assert_decodes_cleanly(playlist: Path) -> None:
    decode = subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-i", str(playlist), "-map", "0", "-f", "null", "-"],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert decode.returncode == 0 and decode.stderr == "", decode.stderr


def test_a_chunked_ladder_has_the_single_pass_segments_and_master(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.mp4", Clip(seconds=12, rate="25", gop=50, audio=True))
    spec = hls_spec(source, LADDER)
    chunked = encode_chunked(spec, source, tmp_path, chunk_seconds=4)
    assert [(c.start_us, c.end_us) for c in chunked.chunks] == [(0, 4_000_000), (4_000_000, 8_000_000),
                                                                (8_000_000, 12_000_000)]  # fmt: skip
    ours, theirs = tmp_path / "chunked" / "hls", encode_single_pass(spec, source, tmp_path) / "hls"
    names = [o["name"] for o in LADDER]

    assert (ours / "master.m3u8").read_text() == (theirs / "master.m3u8").read_text()
    master = (ours / "master.m3u8").read_text()
    assert [int(b) for b in re.findall(r"BANDWIDTH=(\d+)", master)] == [
        int(1.1 * (500_000 + 128_000)), int(1.1 * (300_000 + 128_000)), int(1.1 * (150_000 + 64_000))
    ]  # fmt: skip
    assert re.findall(r"RESOLUTION=(\S+?),", master) == ["320x240", "240x180", "160x120"]

    layout = ladder_layout(ours, names)
    assert layout == ladder_layout(theirs, names)
    for name in names:
        assert [d for _, d in segments(ours / name / "index.m3u8")] == [
            d for _, d in segments(theirs / name / "index.m3u8")
        ]
        # a segment every 2 s of 50 frames, each starting with a keyframe; gop 25 restarts there
        keyframes = (0, 25) if name == "120p" else (0,)
        origin = layout[name][0][0]  # the muxer's offset (mpegts starts at 1.4 s)
        assert [(round(t - origin, 4), n, k) for t, n, k in layout[name]] == [
            (float(t), 50, keyframes) for t in range(0, 12, SEGMENT)
        ], layout[name]
        assert_decodes_cleanly(ours / name / "index.m3u8")
    audio = ffprobe_json("-v", "error", "-show_streams", "-print_format", "json", str(ours / "120p" / "seg_00000.ts"))
    assert {s["codec_type"] for s in audio["streams"]} == {"video", "audio"}


def test_a_single_fmp4_rendition_with_thumbnails_matches_the_single_pass(tmp_path: Path) -> None:
    # keyframes every 10 s: the cuts at 4 and 8 s decode from the keyframe before them
    source = make_clip(tmp_path / "clip.mp4", Clip(seconds=12, rate="25", gop=250, audio=True))
    outputs = [{"name": "main", "container": "hls", "video": {"preset": "ultrafast", "bitrate": "400k"}}]
    spec = hls_spec(
        source, outputs, thumbnails={"intervalSeconds": 3, "width": 160, "sprite": {"columns": 2, "rows": 2}},
        hls={"segmentSeconds": SEGMENT, "segmentType": "fmp4"},
    )  # fmt: skip
    encode_chunked(spec, source, tmp_path, chunk_seconds=4)
    ours, theirs = tmp_path / "chunked", encode_single_pass(spec, source, tmp_path)

    assert (ours / "hls" / "master.m3u8").read_text() == (theirs / "hls" / "master.m3u8").read_text()
    variant = ours / "hls" / "main" / "index.m3u8"
    assert '#EXT-X-MAP:URI="init.mp4"' in variant.read_text()
    ours_segments, theirs_segments = segments(variant), segments(theirs / "hls" / "main" / "index.m3u8")
    assert (
        [name for name, _ in ours_segments]
        == [name for name, _ in theirs_segments]
        == [f"seg_{i:05d}.m4s" for i in range(6)]
    )
    assert ours_segments == theirs_segments
    layout = ladder_layout(ours / "hls", ["main"])
    assert layout == ladder_layout(theirs / "hls", ["main"])
    assert len(layout["main"]) == 6 and all(keyframes[0] == 0 for _, _, keyframes in layout["main"])
    assert [frames for _, frames, _ in layout["main"]] == [50] * 6  # every frame, once
    assert_decodes_cleanly(ours / "hls" / "main" / "index.m3u8")

    def images(root: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / "thumbs").iterdir())}

    assert images(ours) == images(theirs)
    assert sorted(images(ours)) == [
        *(f"sprite_{i:03d}.jpg" for i in (1,)),
        *(f"thumb_{i:05d}.jpg" for i in range(1, 5)),
    ]
