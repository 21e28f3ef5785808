"""The ffmpeg runs of a chunked job: a chunk's video, the whole input's audio, and the stitch.

A chunked job's outputs are made in three kinds of task, each a plain ffmpeg run planned here
(the planner of `controller.chunking` decides the time ranges):

* chunk i: every output's video for the source frames with start <= pts < end, no audio, into
  `<work>/c<i>/<output>.mp4`. Source timestamps go through the graph (`-copyts
  -start_at_zero`) so that `trim` cuts both neighbours of a boundary at the same timestamp;
  `-ss` before `-i` only seeks to the keyframe before the start (decoding from there, so a cut
  need not be at a keyframe). The frames keep their timestamps, relative to the chunk's start,
  at the source's precision (`-fps_mode passthrough -enc_time_base -1`): no frame is dropped,
  duplicated or moved at a cut, and a variable frame rate survives. Each chunk is a closed GOP
  sequence starting with an IDR frame (a new encode always starts with one; x264/x265 GOPs are
  closed unless asked otherwise).
* audio: every output's audio from the whole input, once, into `<work>/audio/<output>.m4a`
  (AAC frames are 1024 samples: audio cut at video boundaries would gap or overlap there).
* stitch: per output, the concat demuxer reads the chunks by stream copy. Its list gives each
  chunk `inpoint 0` (keep the first frame's offset from the chunk start: the demuxer would
  otherwise move it to 0) and `duration` = the chunk's planned length, so that chunk i is placed
  at exactly its start on the source timeline and every frame gets back its source timestamp.
  The audio is muxed beside it and the MP4 written with faststart.

Frame timing: a chunked output keeps the source's frame timestamps. ffmpeg's default for a
single-pass MP4 is a constant frame rate (frames duplicated or dropped to fit the grid), so for a
variable-frame-rate source the two differ; for a constant-rate source they are the same frames.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from ffrtmp.api.job import AudioSpec, OutputSpec, TranscodeJobSpec, VideoSpec
from ffrtmp.api.pool import DEFAULT_RENDER_DEVICE
from ffrtmp.ffmpeg.argv import BASE_ARGS, FFMPEG, EncodePlan, PlannedOutput, build_encode_plan, default_output_path
from ffrtmp.ffmpeg.invalid_spec import InvalidSpec
from ffrtmp.ffmpeg.media import SourceMedia
from ffrtmp.ffmpeg.timeline import parse_micros, seconds

AUDIO_DIR = "audio"


@dataclass(frozen=True)
class TimeRange:
    """One chunk's part of the source timeline, in microseconds: start <= pts < end."""

    index: int
    start_us: int
    end_us: int


def chunk_dir(index: int) -> str:
    """The folder of chunk `index` in the work area: one file per output, `<output>.mp4`."""
    return f"c{index:05d}"


def check_chunkable(spec: TranscodeJobSpec) -> None:
    """What chunking does not do yet, as InvalidSpec (the CRD's CEL refuses the same)."""
    if spec.input.start_seconds is not None or spec.input.duration_seconds is not None or spec.input.realtime:
        # realtime (-re) paces by source timestamps, which a chunk keeps: it would wait until its start.
        raise InvalidSpec(
            "input.startSeconds, input.durationSeconds and input.realtime are not supported with chunking yet"
        )
    if not (spec.input.uri or "").startswith("/"):
        raise InvalidSpec("chunking needs a file input")
    if spec.destination is not None:
        raise InvalidSpec("spec.destination is not supported with chunking yet")
    if spec.hls is not None or spec.thumbnails is not None:
        raise InvalidSpec("hls packaging and thumbnails are not supported with chunking yet")
    for output in spec.outputs:
        video = output.video or VideoSpec()
        if output.container != "mp4":
            raise InvalidSpec(f"output {output.name}: only mp4 outputs are supported with chunking yet")
        if video.codec in ("copy", "none"):
            raise InvalidSpec(f"output {output.name}: chunking encodes video; codec {video.codec} is not supported")
        if video.two_pass:
            raise InvalidSpec(f"output {output.name}: twoPass is not supported with chunking yet")
        if video.fps is not None:
            raise InvalidSpec(f"output {output.name}: fps is not supported with chunking yet")


def chunk_video_plan(
    spec: TranscodeJobSpec,
    chunk: TimeRange,
    accelerator: str,
    *,
    input_url: str,
    output_dir: str,
    scratch_dir: str,
    allowed_protocols: list[str],
    threads: int | None = None,
    source: SourceMedia | None = None,
    render_device: str = DEFAULT_RENDER_DEVICE,
) -> EncodePlan:
    """One chunk: every output's video for the chunk's time range, without audio, as
    `<output>.mp4` in `output_dir` (published as the work area's `chunk_dir(index)`)."""
    check_chunkable(spec)
    outputs = [
        output.model_copy(update={"audio": AudioSpec(codec="none"), "path": f"{output.name}.mp4", "tags": None})
        for output in spec.outputs
    ]
    return build_encode_plan(
        spec.model_copy(update={"outputs": outputs}),
        accelerator,
        input_url=input_url,
        output_dir=output_dir,
        scratch_dir=scratch_dir,
        allowed_protocols=allowed_protocols,
        threads=threads,
        input_has_audio=False,
        source=source,
        render_device=render_device,
        time_range=(chunk.start_us, chunk.end_us),
    )


def audio_plan(
    spec: TranscodeJobSpec,
    *,
    input_url: str,
    output_dir: str,
    scratch_dir: str,
    allowed_protocols: list[str],
    threads: int | None = None,
    source: SourceMedia | None = None,
) -> EncodePlan | None:
    """Every output's audio from the whole input, in one run, as `<output>.m4a` in `output_dir`
    (published as the work area's AUDIO_DIR); None when no output carries audio (the input has
    none, or every output drops it)."""
    check_chunkable(spec)
    if source is not None and not source.audio_streams:
        return None
    outputs = [
        OutputSpec(name=o.name, container="mp4", path=f"{o.name}.m4a", video=VideoSpec(codec="none"), audio=o.audio)
        for o in spec.outputs
        if (o.audio or AudioSpec()).codec != "none"
    ]
    if not outputs:
        return None
    return build_encode_plan(
        spec.model_copy(update={"outputs": outputs, "extra_args": None}),
        "cpu",
        input_url=input_url,
        output_dir=output_dir,
        scratch_dir=scratch_dir,
        allowed_protocols=allowed_protocols,
        threads=threads,
        input_has_audio=True if source is not None else None,
        source=source,
    )


@dataclass(frozen=True)
class StitchPlan:
    """The stitch runs (one per output); before them, the concat lists they read are written
    (path relative to the work area -> text) and `directories` (relative to the output folder)
    made."""

    passes: list[list[str]]
    outputs: list[PlannedOutput]
    lists: dict[str, str] = field(default_factory=dict)
    directories: list[str] = field(default_factory=list)


def concat_list(output_name: str, chunks: Sequence[TimeRange]) -> str:
    lines = ["ffconcat version 1.0"]
    for chunk in chunks:
        lines += [
            f"file {chunk_dir(chunk.index)}/{output_name}.mp4",
            "inpoint 0",
            f"duration {seconds(chunk.end_us - chunk.start_us)}",
        ]
    return "\n".join(lines) + "\n"


def stitch_plan(
    spec: TranscodeJobSpec, chunks: Sequence[TimeRange], *, work_dir: str, output_dir: str, with_audio: bool
) -> StitchPlan:
    """Per output: its chunks by stream copy, its audio beside them, MP4 with faststart, written
    to the job's output folder. `with_audio`: whether the audio task wrote audio files."""
    check_chunkable(spec)
    passes: list[list[str]] = []
    planned: list[PlannedOutput] = []
    lists: dict[str, str] = {}
    for output in spec.outputs:
        # Beside chunks/: the demuxer refuses paths with a component starting with a period.
        listed = f"{output.name}.ffconcat"
        lists[listed] = concat_list(output.name, chunks)
        path = default_output_path(output)
        argv = [FFMPEG, *BASE_ARGS, "-protocol_whitelist", "file", "-f", "concat", "-i", os.path.join(work_dir, listed)]
        audio = with_audio and (output.audio or AudioSpec()).codec != "none"
        if audio:
            argv += ["-i", os.path.join(work_dir, AUDIO_DIR, f"{output.name}.m4a")]
        argv += ["-map", "0:v:0", *(["-map", "1:a:0"] if audio else []), "-c", "copy"]
        argv += ["-movflags", "+faststart"]
        if output.tags is not None:
            for key, value in output.tags.to_api().items():
                argv += ["-metadata", f"{key}={value}"]
        argv += ["-f", "mp4", os.path.join(output_dir, path)]
        passes.append(argv)
        planned.append(PlannedOutput(output.name, "file", path))
    directories = sorted({os.path.dirname(p.path) for p in planned} - {""})
    return StitchPlan(passes, planned, lists, directories)


KEYFRAME_PROBE_ARGS = (
    "-v", "error", "-skip_frame", "nokey", "-select_streams", "v:0",
    "-show_entries", "frame=pts_time:format=start_time,duration", "-print_format", "json",
)  # fmt: skip


def parse_keyframe_probe(document: dict[str, object]) -> tuple[int | None, list[int]]:
    """(duration, keyframe times) in microseconds on the timeline that starts at 0 with the input's
    first timestamp (as `-start_at_zero` sees it), from ffprobe's JSON with KEYFRAME_PROBE_ARGS."""
    fmt = document.get("format")
    fmt = fmt if isinstance(fmt, dict) else {}
    origin = _micros(fmt.get("start_time")) or 0
    duration = _micros(fmt.get("duration"))
    frames = document.get("frames")
    keys: list[int] = []
    for frame in frames if isinstance(frames, list) else []:
        at = _micros(frame.get("pts_time")) if isinstance(frame, dict) else None
        if at is not None:
            keys.append(at - origin)
    return duration, sorted(keys)


def _micros(value: object) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_micros(value)
    except ValueError:
        return None
