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
  A libx264 chunk at constant quality (on cpu, no output with a bitrate: `chunk_roll`) is rolled:
  encoded from ROLL_BEFORE_US before its start (where there is source) to ROLL_AFTER_US past its
  end, with IDR frames forced at the start and the end, into `<scratch>/<output>.rolled.nut`
  (timestamps shifted by ROLL_SHIFT_SECONDS: NUT takes no negative ones), and a second run copies to
  `<output>.mp4` exactly the frames with start <= pts < end (the noise filter drops the others by
  timestamp; the GOPs are closed, so the frames kept refer to none of them). x264 then sees what a
  single pass sees at a cut: its macroblock tree knows that an IDR frame follows a chunk's last
  frames (not rolled, those got about a third fewer bits: up to 1.2 dB PSNR below the median at crf
  30), and the frames after a chunk's first IDR frame are not those of a fresh encode (without the
  roll before the start, the B-frames after it were still 1.25 dB below the one-run encode of the
  vfr test clip). The cost: the rolled frames' encode, and the decode from the source keyframe
  before the rolled start. Not with a bitrate: there the dip comes from x264's ABR start in every
  chunk, which a roll does not cure (measured 2.7 dB rolled against 2.3 unrolled, RUNBOOK), and the
  cost weighs most on the fast presets ladders use (figure 7's 1080p veryfast ladder at 4 s chunks:
  1.22 x the single pass's CPU rolled, against 0.83 unrolled). Not for libx265: its forced keyframes
  are CRA pictures while open-gop is on (its default), whose POCs would run on from the rolled
  frames.
  A libx264 chunk with a bitrate (on cpu) gets its own rate control instead (`chunk_rate_control`,
  where the policy and its measurements are): each chunk is a fresh x264 run, whose ABR start
  (no rate-control history, a model guess, macroblock-tree costs) spent too little for about a
  second, so every cut dipped 2.3-3.7 dB below the median PSNR.
* audio: every output's audio from the whole input, once, into `<work>/audio/<output>.m4a`
  (AAC frames are 1024 samples: audio cut at video boundaries would gap or overlap there); outputs
  with the same audio settings share one encode (`audio_files`: a ladder's renditions mostly do), and
  the thumbnails and sprite sheets from the source, as a single pass makes them.
* stitch: per output, the concat demuxer reads the chunks by stream copy. Its list gives each
  chunk `inpoint 0` (keep the first frame's offset from the chunk start: the demuxer would
  otherwise move it to 0) and `duration` = the chunk's planned length, so that chunk i is placed
  at exactly its start on the source timeline and every frame gets back its source timestamp.
  The audio is muxed beside it and the MP4 written with faststart. The hls outputs are packaged
  in one run by the single pass's hls muxer options (`hls.hls_muxer`): it cuts each variant's
  segments at the first keyframe at or after every multiple of the segment length, the forced
  ones, so segments start at the same frames in every rendition and as in a single pass.

Frame timing: a chunked output keeps the source's frame timestamps. ffmpeg's default for a
single-pass MP4 is a constant frame rate (frames duplicated or dropped to fit the grid), so for a
variable-frame-rate source the two differ; for a constant-rate source they are the same frames.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ffrtmp.api.job import AudioSpec, ChunkTask, HlsSpec, OutputSpec, TranscodeJobSpec, VideoSpec
from ffrtmp.api.pool import DEFAULT_RENDER_DEVICE
from ffrtmp.ffmpeg.argv import (
    BASE_ARGS,
    FFMPEG,
    THUMBS_DIR,
    EncodePlan,
    PlannedOutput,
    bitrate_bps,
    build_encode_plan,
    default_output_path,
    format_bps,
)
from ffrtmp.ffmpeg.hls import HLS_DIR, hls_muxer
from ffrtmp.ffmpeg.invalid_spec import InvalidSpec
from ffrtmp.ffmpeg.levels import single_pass_level
from ffrtmp.ffmpeg.media import SourceMedia
from ffrtmp.ffmpeg.rendition import DEFAULT_AUDIO_BITRATE
from ffrtmp.ffmpeg.timeline import parse_micros, seconds

AUDIO_DIR = "audio"
CHUNKABLE_CONTAINERS = ("mp4", "hls")
ANNEX_B_FILTERS = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}
# libx264 only: libx265 (3.5 with FFmpeg 5.1) makes a forced keyframe a CRA picture, not an IDR, while
# open-gop is on (its default; -forced-idr does not change that): POCs then run on from the rolled
# frames and the stitched chunks repeat them.
ROLLED_CODECS = ("h264",)
ROLL_BEFORE_US = 200_000
ROLL_AFTER_US = 100_000
# A libx264 chunk with a bitrate (`chunk_rate_control`): the VBV buffer in seconds of the bitrate, and
# its fullness when the chunk starts.
CHUNK_VBV_SECONDS = 2
CHUNK_VBV_INIT = 0.8


@dataclass(frozen=True)
class TimeRange:
    """One chunk's part of the source timeline, in microseconds: start <= pts < end."""

    index: int
    start_us: int
    end_us: int


def chunk_dir(index: int) -> str:
    """The folder of chunk `index` in the work area: one file per output, `<output>.mp4`."""
    return f"c{index:05d}"


def chunking_refusal(spec: TranscodeJobSpec, chunk_seconds: int | None = None) -> str | None:
    """Why `spec` cannot be chunked (with chunks of `chunk_seconds`, when given), or None. The CRD's
    CEL refuses the same for `mode: On`; `mode: Auto` runs such a job single-pass instead."""
    if spec.input.start_seconds is not None or spec.input.duration_seconds is not None or spec.input.realtime:
        # realtime (-re) paces by source timestamps, which a chunk keeps: it would wait until its start.
        return "input.startSeconds, input.durationSeconds and input.realtime are not supported with chunking yet"
    if not (spec.input.uri or "").startswith("/") or spec.input.live:
        return "chunking needs a file input: live, rtmp(s), http(s) and s3 inputs are not supported"
    if spec.destination is not None:
        return "spec.destination is not supported with chunking yet"
    for output in spec.outputs:
        video = output.video or VideoSpec()
        if output.container not in CHUNKABLE_CONTAINERS:
            return f"output {output.name}: chunking writes mp4 files and hls ladders, not {output.container}"
        if video.codec in ("copy", "none"):
            return f"output {output.name}: chunking encodes video; codec {video.codec} is not supported"
        if video.two_pass:
            # A first pass measures the whole input to place bits; per chunk it would hit the target
            # per chunk, not over the input (TWO_PASS_REFUSAL in the docs).
            return f"output {output.name}: twoPass is not supported with chunking (use a bitrate with maxrate)"
        if video.fps is not None:
            return f"output {output.name}: fps is not supported with chunking yet"
    segment = hls_segment_seconds(spec)
    if chunk_seconds is not None and segment is not None and chunk_seconds % segment != 0:
        return (
            f"chunkSeconds {chunk_seconds} is not a whole multiple of hls.segmentSeconds {segment}: "
            "chunks are cut at segment boundaries"
        )
    return None


def check_chunkable(spec: TranscodeJobSpec, chunk_seconds: int | None = None) -> None:
    """InvalidSpec when `spec` cannot be chunked (see `chunking_refusal`)."""
    refusal = chunking_refusal(spec, chunk_seconds)
    if refusal is not None:
        raise InvalidSpec(refusal)


def hls_segment_seconds(spec: TranscodeJobSpec) -> int | None:
    """The hls segment length when the job has hls outputs."""
    if not any(o.container == "hls" for o in spec.outputs):
        return None
    return (spec.hls or HlsSpec()).segment_seconds


def cuts_on_keyframes(spec: TranscodeJobSpec) -> bool:
    """Whether the planner may move a cut onto a source keyframe. Not for hls outputs: their chunks
    start exactly at multiples of chunkSeconds, i.e. at segment boundaries, so that each chunk's
    forced keyframes (and the segments the stitch cuts there) fall where a single pass puts them."""
    return hls_segment_seconds(spec) is None


def input_share(task: ChunkTask, spec: TranscodeJobSpec, input_seconds: float | None) -> float:
    """The part of the input one task of a chunked job reads (its `ffrtmp_job_input_bytes_total`
    counts that part of the input's size, so that a chunked job's tasks add up to what the farm
    read, not to the input's size once per task): a chunk its share of the input's length, the
    audio the whole input, the plan the whole input where it finds the keyframes (else the
    header: nothing), the stitch nothing (it reads the chunks)."""
    if task.kind == "Stitch" or (task.kind == "Plan" and not cuts_on_keyframes(spec)):
        return 0.0
    if task.kind == "Video" and task.start_micros is not None and task.end_micros is not None and input_seconds:
        return min(1.0, (task.end_micros - task.start_micros) / 1_000_000 / input_seconds)
    return 1.0


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
    `<output>.mp4` in `output_dir` (published as the work area's `chunk_dir(index)`). An hls
    output's chunk gets the keyframes its hls encode gets (forced at every segment boundary)."""
    check_chunkable(spec)
    outputs = [
        output.model_copy(
            update={"container": "mp4", "audio": AudioSpec(codec="none"), "path": f"{output.name}.mp4", "tags": None}
        )
        for output in spec.outputs
    ]
    options: dict[str, list[tuple[str, str]]] = {}
    for i, output in enumerate(outputs):
        control = chunk_rate_control(output.video or VideoSpec(), accelerator)
        if control is not None:
            video, options[output.name] = control
            outputs[i] = output.model_copy(update={"video": video})
    ladder = spec.hls or HlsSpec()
    return build_encode_plan(
        spec.model_copy(update={"outputs": outputs, "hls": None, "thumbnails": None}),
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
        segment_keyframes={o.name: ladder for o in spec.outputs if o.container == "hls"},
        roll_us=chunk_roll(spec, accelerator),
        encoder_options=options,
    )


def chunk_roll(spec: TranscodeJobSpec, accelerator: str) -> tuple[int, int]:
    """How far before and after its range a chunk is encoded (see the module docstring): libx264
    at constant quality only."""
    videos = [o.video or VideoSpec() for o in spec.outputs]
    if accelerator != "cpu" or any(v.codec not in ROLLED_CODECS or v.bitrate is not None for v in videos):
        return (0, 0)
    return (ROLL_BEFORE_US, ROLL_AFTER_US)


def chunk_rate_control(video: VideoSpec, accelerator: str) -> tuple[VideoSpec, list[tuple[str, str]]] | None:
    """The rate control of a chunk of an output with a video bitrate, encoded by libx264: its
    video settings (maxrate, bufsize) and encoder options beside them; None for the others, encoded
    as in a single pass. This is the one place of the policy.

    A chunk is a one-pass x264 run of a few seconds. In plain ABR (`-b:v`, what a single pass
    runs) each run starts with no rate-control history: its first second got too few bits, and
    every cut of a chunked output dipped (frames within two of a cut 2.1-6 dB PSNR below the
    median at 2 s chunks, 3.6 dB at 10 s, the output 10-30 % under the bitrate; RUNBOOK "Chunked
    jobs"). A chunk
    is therefore encoded CBR-like: maxrate = bitrate (x264 then drops the ABR overflow term and
    the VBV buffer's fullness sets the quantizer from the first frame), a buffer of
    CHUNK_VBV_SECONDS of the bitrate that starts CHUNK_VBV_INIT full (`-rc_init_occupancy`, x264's
    vbv-init; at 0.9, x264's default, each chunk spends the 10 % above the 80 % it keeps the buffer
    under: +18 % size at 2 s chunks), and without the macroblock tree (`-mbtree 0`): a chunk's last
    frames, which no later frame of the run refers to, got too few bits from it, and with it the
    start still dipped 1.3-2 dB. No extra CPU (no frame is encoded twice). Measured on the test
    clips at 2 s chunks, veryfast: at most 0.7 dB below the lower of the median and a one-run
    encode's frame (plain ABR: 2.1-6 dB), the output 2.5-6 % over the bitrate; at medium +15 %
    (+5.6 % at 10 s chunks: each chunk spends down its initial buffer; RUNBOOK "Chunked jobs", with
    what else was tried).

    The user's maxrate and bufsize stay a bound: maxrate becomes the lower of theirs and the
    bitrate, bufsize the lower of theirs (default 2 x maxrate) and CHUNK_VBV_SECONDS of the bitrate.
    A stream that fits a buffer that small, filled that slowly, fits theirs too (a larger buffer
    filled faster only loosens a VBR buffer model), so a capped ladder rendition stays within its
    cap. A rendition without maxrate gets maxrate = bitrate too, a cap its single pass does not
    have: it is what makes the chunk CBR-like. Its chunks may declare a lower H.264 level than the single pass
    (x264 checks the level against the VBV): the stitch declares the single pass's
    (`leveled_outputs`, `stitch_levels`, `levels.single_pass_level`).

    Not libx265, nor the hardware encoders (nvenc, qsv, vaapi; not measured): those chunks keep the
    single pass's options and show their rate control's start at every cut (libx265, 2 s chunks:
    0.7-4.6 dB). The same recipe for x265 (`vbv-init=0.8:cutree=0`) measured 0.2 dB but 21 % over
    the bitrate, with strict-cbr 1.65 dB."""
    if video.bitrate is None or accelerator != "cpu" or video.codec != "h264":  # libx264
        return None
    bitrate = bitrate_bps(video.bitrate)
    maxrate = bitrate if video.maxrate is None else min(bitrate, bitrate_bps(video.maxrate))
    theirs = bitrate_bps(video.bufsize) if video.bufsize is not None else 2 * maxrate
    bufsize = min(theirs, CHUNK_VBV_SECONDS * bitrate)
    video = video.model_copy(update={"maxrate": format_bps(maxrate), "bufsize": format_bps(bufsize)})
    return video, [("-rc_init_occupancy", str(round(CHUNK_VBV_INIT * bufsize))), ("-mbtree", "0")]


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
    (published as the work area's AUDIO_DIR), and the job's thumbnails and sprite sheets from the
    source (under THUMBS_DIR there, as a single pass makes them); None when there is neither (no
    output carries audio, or the input has none, and no thumbnails)."""
    check_chunkable(spec)
    with_audio = source is None or bool(source.audio_streams)
    encoded = sorted(set(audio_files(spec).values())) if with_audio else []
    outputs = [
        OutputSpec(name=o.name, container="mp4", path=f"{o.name}.m4a", video=VideoSpec(codec="none"), audio=o.audio)
        for o in spec.outputs
        if o.name in encoded
    ]
    if not outputs and spec.thumbnails is None:
        return None
    return build_encode_plan(
        spec.model_copy(update={"outputs": outputs, "extra_args": None, "hls": None}),
        "cpu",
        input_url=input_url,
        output_dir=output_dir,
        scratch_dir=scratch_dir,
        allowed_protocols=allowed_protocols,
        threads=threads,
        input_has_audio=True if source is not None and with_audio else None,
        source=source,
    )


def audio_files(spec: TranscodeJobSpec) -> dict[str, str]:
    """Output name -> the output whose `<name>.m4a` holds its audio, for the outputs with audio: the
    first output with the same audio settings (the same encode of the same source stream)."""
    files: dict[str, str] = {}
    first: list[tuple[AudioSpec, str]] = []
    for output in spec.outputs:
        audio = output.audio or AudioSpec()
        if audio.codec == "none":
            continue
        same = next((name for settings, name in first if settings == audio), None)
        if same is None:
            first.append((audio, output.name))
        files[output.name] = same or output.name
    return files


@dataclass(frozen=True)
class StitchPlan:
    """The stitch runs; before them, the concat lists they read are written (path relative to the
    work area -> text), `directories` (relative to the output folder) made, and `copies` made (a
    folder of the work area -> where it goes in the output folder: the thumbnails)."""

    passes: list[list[str]]
    outputs: list[PlannedOutput]
    lists: dict[str, str] = field(default_factory=dict)
    directories: list[str] = field(default_factory=list)
    copies: dict[str, str] = field(default_factory=dict)


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
    spec: TranscodeJobSpec,
    chunks: Sequence[TimeRange],
    *,
    work_dir: str,
    output_dir: str,
    with_audio: bool,
    levels: Mapping[str, int] | None = None,
) -> StitchPlan:
    """Per mp4 output: its chunks by stream copy, its audio beside them, MP4 with faststart; the hls
    outputs: one run packaging every rendition's joined chunks and audio by stream copy with the
    single pass's hls muxer options (`hls.hls_muxer`); the thumbnails copied. Written to the job's
    output folder. `with_audio`: whether the audio task wrote audio files. `levels`: output name ->
    the H.264 level to declare in its copied stream (`levels.single_pass_level`, for the outputs
    whose chunks declared a lower one: `leveled_outputs`)."""
    levels = levels or {}
    check_chunkable(spec)
    passes: list[list[str]] = []
    planned: list[PlannedOutput] = []
    lists: dict[str, str] = {}
    for output in spec.outputs:
        # Beside chunks/: the demuxer refuses paths with a component starting with a period.
        lists[f"{output.name}.ffconcat"] = concat_list(output.name, chunks)
    ladder = [o for o in spec.outputs if o.container == "hls"]
    sources = audio_files(spec) if with_audio else {}
    for output in spec.outputs:
        if output.container == "hls":
            continue
        path = default_output_path(output)
        audio = sources.get(output.name)
        argv = [FFMPEG, *BASE_ARGS, *_joined_inputs(output, work_dir, audio)]
        argv += ["-map", "0:v:0", *(["-map", "1:a:0"] if audio else []), "-c", "copy"]
        if output.name in levels:
            argv += ["-bsf:v", _level_filter(levels[output.name])]
        argv += ["-movflags", "+faststart"]
        if output.tags is not None:
            for key, value in output.tags.to_api().items():
                argv += ["-metadata", f"{key}={value}"]
        argv += ["-f", "mp4", os.path.join(output_dir, path)]
        passes.append(argv)
        planned.append(PlannedOutput(output.name, "file", path))
    if ladder:
        passes.append(_hls_stitch(spec, ladder, work_dir, output_dir, sources, levels))
        planned += [PlannedOutput(o.name, "hls-variant", default_output_path(o)) for o in ladder]
        master = (spec.hls or HlsSpec()).master_playlist
        planned.append(PlannedOutput("master", "hls-master", f"{HLS_DIR}/{master}"))
    copies: dict[str, str] = {}
    if spec.thumbnails is not None:
        copies[os.path.join(AUDIO_DIR, THUMBS_DIR)] = THUMBS_DIR
        thumbs = spec.thumbnails
        planned.append(PlannedOutput("thumbnails", "thumbnails", f"{THUMBS_DIR}/thumb_%05d.{thumbs.format}"))
        if thumbs.sprite is not None:
            planned.append(PlannedOutput("sprite", "sprite", f"{THUMBS_DIR}/sprite_%03d.{thumbs.format}"))
    directories = sorted({os.path.dirname(p.path) for p in planned if p.kind not in ("thumbnails", "sprite")} - {""})
    return StitchPlan(passes, planned, lists, directories, copies)


def _joined_inputs(output: OutputSpec, work_dir: str, audio: str | None) -> list[str]:
    """An output's joined chunks (the concat demuxer over its list) and its audio: the audio file of
    the output named `audio` (None: no audio)."""
    listed = os.path.join(work_dir, f"{output.name}.ffconcat")
    inputs = ["-protocol_whitelist", "file", "-f", "concat", "-i", listed]
    if audio is not None:
        inputs += ["-protocol_whitelist", "file", "-i", os.path.join(work_dir, AUDIO_DIR, f"{audio}.m4a")]
    return inputs


def _hls_stitch(
    spec: TranscodeJobSpec,
    ladder: Sequence[OutputSpec],
    work_dir: str,
    output_dir: str,
    sources: dict[str, str],
    levels: Mapping[str, int],
) -> list[str]:
    """One run: every hls rendition's joined chunks and audio, by stream copy, into the hls muxer as
    the single pass configures it. The streams carry the encodes' target bitrates (bitrate, else
    maxrate; the audio's), which the muxer writes as the master playlist's BANDWIDTH as it does
    from the encoders in a single pass; h264 and hevc go back to the Annex B headers an encoder gives
    the muxer (the chunks' MP4 stores them as avcC/hvcC), from which it writes CODECS."""
    inputs: list[str] = []
    maps: list[str] = []
    variants: list[str] = []
    audio_index = 0
    for video_index, output in enumerate(ladder):
        video = output.video or VideoSpec()
        audio_spec = output.audio or AudioSpec()
        audio = sources.get(output.name)
        first = inputs.count("-i")
        inputs += _joined_inputs(output, work_dir, audio)
        rate = video.bitrate or video.maxrate
        maps += ["-map", f"{first}:v:0", f"-c:v:{video_index}", "copy"]
        maps += [f"-b:v:{video_index}", rate] if rate is not None else []
        filters = [ANNEX_B_FILTERS[video.codec]] if video.codec in ANNEX_B_FILTERS else []
        if output.name in levels:
            filters.append(_level_filter(levels[output.name]))
        if filters:
            maps += [f"-bsf:v:{video_index}", ",".join(filters)]
        entry = f"v:{video_index}"
        if audio is not None:
            maps += ["-map", f"{first + 1}:a:0", f"-c:a:{audio_index}", "copy"]
            maps += [f"-b:a:{audio_index}", audio_spec.bitrate or DEFAULT_AUDIO_BITRATE]
            entry += f",a:{audio_index}"
            audio_index += 1
        variants.append(f"{entry},name:{output.name}")
    return [FFMPEG, *BASE_ARGS, *inputs, *maps, *hls_muxer(spec.hls or HlsSpec(), output_dir, variants)]


def _level_filter(level_idc: int) -> str:
    return f"h264_metadata=level={level_idc}"


def leveled_outputs(spec: TranscodeJobSpec, accelerator: str) -> list[str]:
    """The outputs whose chunks were encoded CBR-like (`chunk_rate_control`): their chunks may declare
    a lower H.264 level than a single pass would, and the stitch declares the single pass's
    (`levels.single_pass_level`, from the first chunk's probed level and profile)."""
    return [o.name for o in spec.outputs if chunk_rate_control(o.video or VideoSpec(), accelerator) is not None]


def stitch_levels(spec: TranscodeJobSpec, probed: Mapping[str, tuple[str, int]]) -> dict[str, int]:
    """The `levels` of `stitch_plan`: per output in `probed` (name -> the profile and level_idc its
    first chunk declares), the single pass's level where that is higher."""
    levels: dict[str, int] = {}
    for output in spec.outputs:
        if output.name in probed:
            profile, chunk_level = probed[output.name]
            wanted = single_pass_level(output.video or VideoSpec(), chunk_level, profile)
            if wanted > chunk_level:
                levels[output.name] = wanted
    return levels


LEVEL_PROBE_ARGS = ("-v", "error", "-select_streams", "v:0", "-show_entries", "stream=profile,level", "-of", "json")


def parse_level_probe(document: dict[str, object]) -> tuple[str, int] | None:
    """(profile, level_idc) of the first video stream, from ffprobe's JSON with LEVEL_PROBE_ARGS."""
    streams = document.get("streams")
    first = streams[0] if isinstance(streams, list) and streams else None
    if not isinstance(first, dict):
        return None
    profile, level = first.get("profile"), first.get("level")
    if not isinstance(profile, str) or not isinstance(level, int) or level <= 0:
        return None
    return profile, level


KEYFRAME_PROBE_ARGS = (
    "-v", "error", "-skip_frame", "nokey", "-select_streams", "v:0",
    "-show_entries", "frame=pts_time:format=start_time,duration", "-print_format", "json",
)  # fmt: skip
DURATION_PROBE_ARGS = ("-v", "error", "-show_entries", "format=start_time,duration", "-print_format", "json")


def plan_probe_args(spec: TranscodeJobSpec) -> tuple[str, ...]:
    """The ffprobe options of a chunked job's Plan task (`parse_keyframe_probe` reads its output).
    The source's keyframes only where a cut may move onto one (`cuts_on_keyframes`): finding them
    reads and decodes the whole input (0.46 s for figure 7's 120 s 1080p clip, a 2-hour film's every
    byte from object storage). An hls ladder's cuts are exact, and its plan reads the container's
    header alone (0.08 s)."""
    return KEYFRAME_PROBE_ARGS if cuts_on_keyframes(spec) else DURATION_PROBE_ARGS


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
