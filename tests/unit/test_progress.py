"""ffmpeg -progress parsing, with blocks as ffmpeg 5.1 writes them."""

from __future__ import annotations

import pytest

from ffrtmp.ffmpeg.progress import ProgressParser, ProgressSnapshot, percent

pytestmark = pytest.mark.unit

# Captured from `ffmpeg -loglevel error -progress pipe:1 -nostats -i clip6.mp4 -c:v libx264 ...`.
FIRST_BLOCK = """frame=1
fps=0.00
stream_0_0_q=0.0
bitrate=   9.0kbits/s
total_size=48
out_time_us=42667
out_time_ms=42667
out_time=00:00:00.042667
dup_frames=0
drop_frames=0
speed=12.3x
progress=continue
"""
LAST_BLOCK = """frame=150
fps=0.00
stream_0_0_q=-1.0
bitrate=1799.4kbits/s
total_size=1353156
out_time_us=6016000
out_time_ms=6016000
out_time=00:00:06.016000
dup_frames=0
drop_frames=0
speed=21.2x
progress=end
"""
# The first block of a run whose output has no timestamp yet (null muxer, pass 1).
NA_BLOCK = """frame=0
fps=0.00
stream_0_0_q=0.0
bitrate=N/A
total_size=N/A
out_time_us=N/A
out_time_ms=N/A
out_time=N/A
dup_frames=0
drop_frames=0
speed=N/A
progress=continue
"""


def feed_all(parser: ProgressParser, text: str) -> list[ProgressSnapshot]:
    snapshots = [parser.feed(line) for line in text.splitlines(keepends=True)]
    return [s for s in snapshots if s is not None]


def test_snapshot_at_each_progress_line() -> None:
    parser = ProgressParser()
    snapshots = feed_all(parser, FIRST_BLOCK + LAST_BLOCK)
    assert snapshots == [
        ProgressSnapshot(out_time_seconds=0.042667, fps=0.0, speed=12.3, total_size=48, frame=1, ended=False),
        ProgressSnapshot(out_time_seconds=6.016, fps=0.0, speed=21.2, total_size=1353156, frame=150, ended=True),
    ]


def test_lines_before_the_end_of_a_block_return_nothing() -> None:
    parser = ProgressParser()
    assert all(parser.feed(line) is None for line in FIRST_BLOCK.splitlines()[:-1])
    snapshot = parser.feed("progress=continue\n")
    assert snapshot is not None
    assert snapshot.frame == 1


def test_not_available_values_are_none() -> None:
    (snapshot,) = feed_all(ProgressParser(), NA_BLOCK)
    assert snapshot == ProgressSnapshot(
        out_time_seconds=None, fps=0.0, speed=None, total_size=None, frame=0, ended=False
    )


def test_padded_speed_and_values_do_not_leak_between_blocks() -> None:
    parser = ProgressParser()
    feed_all(parser, FIRST_BLOCK)
    (snapshot,) = feed_all(parser, "speed=   0x\nprogress=continue\n")
    assert snapshot == ProgressSnapshot(
        out_time_seconds=None, fps=None, speed=0.0, total_size=None, frame=None, ended=False
    )


def test_out_time_fallbacks_and_negative_times() -> None:
    parser = ProgressParser()
    (a,) = feed_all(parser, "out_time_ms=2500000\nprogress=continue\n")
    (b,) = feed_all(parser, "out_time=01:02:03.500000\nprogress=continue\n")
    (c,) = feed_all(parser, "out_time_us=-23220\nout_time=-00:00:00.023220\nprogress=continue\n")
    assert a.out_time_seconds == 2.5
    assert b.out_time_seconds == 3723.5
    assert c.out_time_seconds == 0.0


def test_garbage_lines_are_ignored() -> None:
    parser = ProgressParser()
    assert parser.feed("") is None
    assert parser.feed("not a key value line") is None
    assert parser.feed("=value") is None
    (snapshot,) = feed_all(parser, "frame=abc\nfps=nan\nspeed=infx\nprogress=end\n")
    assert snapshot == ProgressSnapshot(None, None, None, None, None, ended=True)


@pytest.mark.parametrize(
    ("out_time", "duration", "expected"),
    [
        (3.0, 12.0, 25.0),
        (0.0, 12.0, 0.0),
        (12.5, 12.0, 100.0),  # the last frame runs slightly past the container duration
        (3.0, None, None),  # live
        (3.0, 0.0, None),
        (None, 12.0, None),
    ],
)
def test_percent(out_time: float | None, duration: float | None, expected: float | None) -> None:
    snapshot = ProgressSnapshot(out_time, None, None, None, None, ended=False)
    assert percent(snapshot, duration) == expected


def test_percent_of_an_ended_run_comes_from_its_output_time() -> None:
    (snapshot,) = feed_all(ProgressParser(), LAST_BLOCK)
    assert percent(snapshot, 6.0) == 100.0
    assert percent(snapshot, 12.032) == pytest.approx(50.0)
