"""Chunk planning: properties over random durations and keyframe sets, plus examples."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ffrtmp.controller.chunking import (
    MICROS,
    Chunk,
    bounds_for,
    decode_boundaries,
    encode_boundaries,
    plan_chunks,
)
from ffrtmp.ffmpeg.chunks import parse_keyframe_probe
from ffrtmp.ffmpeg.timeline import parse_micros, seconds

pytestmark = pytest.mark.unit

durations = st.integers(min_value=1, max_value=3 * 3600 * MICROS)
chunk_lengths = st.integers(min_value=2, max_value=120)
keyframe_sets = st.lists(st.integers(min_value=-MICROS, max_value=4 * 3600 * MICROS), max_size=300)


@settings(max_examples=300, deadline=None)
@given(durations, chunk_lengths, keyframe_sets)
def test_chunks_cover_the_input_in_order_within_bounds(duration: int, chunk: int, keyframes: list[int]) -> None:
    chunks = plan_chunks(duration, chunk, keyframes)
    bounds = bounds_for(chunk)
    assert chunks[0].start_us == 0
    assert chunks[-1].end_us == duration
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for before, after in itertools.pairwise(chunks):
        assert before.end_us == after.start_us  # no gap, no overlap
    for c in chunks[:-1]:
        assert bounds.shortest_us <= c.duration_us <= bounds.longest_us
    assert 0 < chunks[-1].duration_us <= max(bounds.last_longest_us, 1)
    assert decode_boundaries(encode_boundaries(chunks)) == chunks


@settings(max_examples=200, deadline=None)
@given(durations, chunk_lengths, keyframe_sets)
def test_a_cut_is_a_keyframe_whenever_one_is_close_enough(duration: int, chunk: int, keyframes: list[int]) -> None:
    bounds = bounds_for(chunk)
    keys = {k for k in keyframes if 0 < k < duration}
    for c in plan_chunks(duration, chunk, keyframes)[:-1]:
        nominal = c.start_us + bounds.nominal_us
        near = [k for k in keys if c.start_us + bounds.shortest_us <= k <= c.start_us + bounds.longest_us]
        if near:
            assert c.end_us in keys
            assert abs(c.end_us - nominal) == min(abs(k - nominal) for k in near)
        else:
            assert c.end_us == nominal


def test_a_clip_with_keyframes_every_two_seconds_cuts_on_them() -> None:
    keyframes = [k * 2 * MICROS for k in range(7)]
    chunks = plan_chunks(12 * MICROS, 2, keyframes)
    assert [(c.start_us, c.end_us) for c in chunks] == [(k * 2 * MICROS, (k + 1) * 2 * MICROS) for k in range(6)]


def test_keyframes_off_the_nominal_grid_are_preferred_to_exact_cuts() -> None:
    # 29.97 fps, a keyframe every 300 frames: 10.01 s apart.
    keyframes = [round(k * 300 * 1001 * MICROS / 30000) for k in range(10)]
    chunks = plan_chunks(60 * MICROS, 10, keyframes)
    assert [c.end_us for c in chunks[:-1]] == keyframes[1:6]
    assert chunks[-1] == Chunk(5, keyframes[5], 60 * MICROS)


def test_without_keyframes_cuts_are_exact_and_a_short_remainder_joins_the_last_chunk() -> None:
    chunks = plan_chunks(34 * MICROS, 10)
    assert encode_boundaries(chunks) == "0,10000000,20000000,34000000"
    assert plan_chunks(36 * MICROS, 10)[-1] == Chunk(3, 30 * MICROS, 36 * MICROS)


def test_an_input_shorter_than_a_chunk_is_one_chunk() -> None:
    assert plan_chunks(3 * MICROS, 10) == (Chunk(0, 0, 3 * MICROS),)


@pytest.mark.parametrize("text", ["", "0", "5,10", "0,10,10", "0,20,10", "0,x"])
def test_a_damaged_stored_plan_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        decode_boundaries(text)


def test_refuses_chunks_shorter_than_two_seconds_and_empty_inputs() -> None:
    with pytest.raises(ValueError):
        plan_chunks(10 * MICROS, 1)
    with pytest.raises(ValueError):
        plan_chunks(0, 10)


def test_seconds_are_written_exactly() -> None:
    assert seconds(10_010_000) == "10.010000"
    assert seconds(33_367) == "0.033367"


@pytest.mark.parametrize(
    ("text", "us"),
    [("2.000000", 2_000_000), ("0.033367", 33_367), ("10.01", 10_010_000), ("7", 7_000_000), ("-0.08", -80_000)],
)
def test_ffprobe_times_are_read_exactly(text: str, us: int) -> None:
    assert parse_micros(text) == us


def test_keyframe_probe_times_count_from_the_inputs_first_timestamp() -> None:
    # An MPEG-TS input starts at 1.4 s: its first keyframe is 0 on the timeline chunks are cut on.
    document = {
        "frames": [{"pts_time": "3.400000"}, {"pts_time": "1.400000"}, {"side_data_list": []}],
        "format": {"start_time": "1.400000", "duration": "12.040000"},
    }
    assert parse_keyframe_probe(document) == (12_040_000, [0, 2_000_000])
    assert parse_keyframe_probe({}) == (None, [])
