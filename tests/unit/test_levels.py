"""The H.264 level the stitch declares for CBR-like chunks: the single pass's (`ffmpeg.levels`).

The rule was checked against the real x264 on 336 encodes (320x240 to 1920x1080, 25 and 60 fps,
presets ultrafast/veryfast/medium, 150k to 30M, with and without a user maxrate of 1.5 x the
bitrate): the single pass's level was always the higher of the CBR-like chunk's and `vbv_level` of
the single pass's own VBV; `tests/ffmpeg/test_chunked_hls.py` checks one case end to end (the master
playlists' CODECS are the single pass's)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ffrtmp.api.job import TranscodeJobSpec, VideoSpec
from ffrtmp.ffmpeg.chunks import (
    TimeRange,
    leveled_outputs,
    parse_level_probe,
    stitch_levels,
    stitch_plan,
)
from ffrtmp.ffmpeg.levels import H264_LEVELS, single_pass_level, vbv_level

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("maxrate", "bufsize", "profile", "level"),
    [
        (1_000_000, 0, "Constrained Baseline", 20),  # 500k in plain ABR: x264 checks 2 x 500k; 1.3 allows 768k
        (768_000, 0, "Constrained Baseline", 13),
        (768_001, 0, "Constrained Baseline", 20),
        (960_000, 0, "High", 13),  # High: 5/4 of the Baseline limits
        (500_000, 2_000_001, "Main", 21),  # the buffer alone can decide: 1.3 and 2.0 hold 2,000 kbit
        (10_000_000, 0, "High", 30),
        (10_000_000, 20_000_000, "High", 32),
        (10**12, 0, "High", 62),  # past every level: the highest
    ],
)
def test_the_lowest_level_that_fits_a_vbv(maxrate: int, bufsize: int, profile: str, level: int) -> None:
    assert vbv_level(maxrate, bufsize, profile) == level


def test_the_single_pass_level_is_the_higher_of_the_chunks_and_its_own_vbvs() -> None:
    abr = VideoSpec(bitrate="500k")
    assert single_pass_level(abr, 13, "Constrained Baseline") == 20  # measured: one pass 2.0, a chunk 1.3
    assert single_pass_level(abr, 30, "Constrained Baseline") == 30  # frame size already asks for more
    capped = VideoSpec(bitrate="500k", maxrate="750k")  # the single pass's bufsize: 2 x maxrate
    assert single_pass_level(capped, 12, "High") == 13
    assert single_pass_level(VideoSpec(bitrate="500k", maxrate="750k", bufsize="3M"), 12, "High") == 21
    assert single_pass_level(VideoSpec(crf=23), 12, "High") == 12


@given(
    bitrate=st.integers(min_value=64, max_value=100_000),
    chunk_level=st.sampled_from([idc for idc, _, _ in H264_LEVELS]),
    profile=st.sampled_from(["Constrained Baseline", "Main", "High"]),
)
def test_the_stitch_never_declares_a_lower_level_than_the_chunk(bitrate: int, chunk_level: int, profile: str) -> None:
    assert single_pass_level(VideoSpec(bitrate=f"{bitrate}k"), chunk_level, profile) >= chunk_level


def spec() -> TranscodeJobSpec:
    return TranscodeJobSpec.model_validate({
        "input": {"uri": "/media/film.mp4"},
        "outputs": [
            {"name": "hi", "container": "hls", "video": {"bitrate": "5M", "height": 1080}},
            {"name": "lo", "container": "hls", "video": {"preset": "ultrafast", "bitrate": "500k", "height": 240}},
            {"name": "crf", "container": "hls", "video": {"crf": 28, "maxrate": "800k", "height": 360}},
            {"name": "file", "container": "mp4", "video": {"bitrate": "500k", "preset": "ultrafast"}},
        ],
    })  # fmt: skip


def test_the_stitch_declares_the_single_pass_level_in_the_streams_it_copies() -> None:
    job = spec()
    assert leveled_outputs(job, "cpu") == ["hi", "lo", "file"]  # libx264 with a bitrate: CBR-like chunks
    assert leveled_outputs(job, "nvenc") == []
    levels = stitch_levels(job, {"hi": ("High", 40), "lo": ("Constrained Baseline", 13),
                                 "file": ("Constrained Baseline", 30)})  # fmt: skip
    assert levels == {"lo": 20}  # hi: 2 x 5M fits 4.0 (High); file: its frame size already needs 3.0
    levels["file"] = 31
    chunks = [TimeRange(0, 0, 8_000_000), TimeRange(1, 8_000_000, 16_000_000)]
    mp4, hls = stitch_plan(job, chunks, work_dir="/w", output_dir="/o", with_audio=True, levels=levels).passes
    assert hls[hls.index("-bsf:v:0") + 1] == "h264_mp4toannexb"
    assert hls[hls.index("-bsf:v:1") + 1] == "h264_mp4toannexb,h264_metadata=level=20"
    assert hls[hls.index("-bsf:v:2") + 1] == "h264_mp4toannexb"
    assert mp4[mp4.index("-bsf:v") + 1] == "h264_metadata=level=31"
    plain = stitch_plan(job, chunks, work_dir="/w", output_dir="/o", with_audio=True).passes
    assert not any("h264_metadata" in arg for run in plain for arg in run)


@pytest.mark.parametrize(
    ("document", "found"),
    [
        ({"streams": [{"profile": "High", "level": 40}]}, ("High", 40)),
        ({"streams": [{"profile": "High", "level": -99}]}, None),  # ffprobe's "unknown"
        ({"streams": []}, None),
        ({}, None),
    ],
)
def test_the_level_probe(document: dict[str, object], found: tuple[str, int] | None) -> None:
    assert parse_level_probe(document) == found
