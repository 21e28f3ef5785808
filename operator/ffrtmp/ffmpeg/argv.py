"""ffmpeg command lines for a TranscodeJobSpec: pure functions that return argv lists.

Every run looks like

    ffmpeg -hide_banner -nostdin -y -loglevel error -progress pipe:1 -nostats
        -protocol_whitelist <derived> <network/hwaccel/seek options> -i <input>
        [-filter_complex_threads N] -filter_complex <graph> <output options> <output> ...

Progress (`key=value` blocks) goes to stdout, errors to stderr. The input is decoded once;
`split` feeds one branch per encoded rendition (scale keeping the aspect ratio with even
dimensions, `fps`), plus one branch for thumbnails and one for the sprite sheet. All `hls`
outputs share ONE hls muxer (`-var_stream_map`), which writes `hls/<name>/index.m3u8`, the
segments next to it and the master playlist at `hls/<masterPlaylist>`.

Nothing here builds a shell string: `passes` are argv lists for `create_subprocess_exec`.

This module assembles the runs; the concerns it draws on live beside it: `encoders` (encoder
and preset tables per accelerator, codecs per container), `validation` (InvalidSpec checks),
`filters` (per-rendition filter chains: deinterlace, size, colour, tone map; the split graph),
`media` (the probed source and the size rule), `loudness` (the two-pass loudnorm data),
`rendition` (one output's stream choices: maps, audio options), `hls` (the one hls muxer),
`decode` (on nvenc: NVDEC, or software decode and one upload when NVDEC cannot decode the input).

Decisions (see also the module constants):

* Protocol whitelist: only what the input's own scheme needs, intersected with the pool's
  allowed protocols. A file input gets `file`; http(s) gets the allowed http family plus
  `tcp`, `tls` and `httpproxy` (for https: TLS goes through the worker's egress proxy with
  CONNECT) and `crypto` (AES-128 HLS); rtmp gets `rtmp,tcp`; rtmps gets `rtmps,tls,httpproxy,tcp`.
  So a remote playlist can never make ffmpeg read a local file, and a
  local playlist can never make it fetch URLs.
* Two-pass (CPU h264/hevc with a bitrate) runs as exactly two ffmpeg processes whatever the
  number of renditions: pass 1 encodes every two-pass rendition (video only) to the null
  muxer, pass 2 is the normal run in which those renditions read their pass-1 statistics.
  The statistics file is named explicitly per rendition (`<scratch>/2pass-<name>.log`, via
  `-x264-params stats=` / `-x265-params stats=`) because ffmpeg's own `-passlogfile` naming
  appends the global output-stream index, which differs between the two runs.
* HLS segments are aligned across renditions with `-force_key_frames` at every segment
  boundary (plus `-g`/`-keyint_min`/`-sc_threshold 0` when a gop is set), so every variant
  can switch at every segment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ffrtmp.api.job import (
    AudioSpec,
    HlsSpec,
    OutputSpec,
    ThumbnailSpec,
    TranscodeJobSpec,
    VideoSpec,
)
from ffrtmp.api.pool import DEFAULT_RENDER_DEVICE
from ffrtmp.ffmpeg.decode import nvdec_decodes, software_upload_filters
from ffrtmp.ffmpeg.encoders import (
    AOM_CPU_USED_MAP,
    AV1_CPU_ENCODER,
    AV1_CPU_ENCODERS,
    FILE_EXTENSIONS,
    MUXERS,
    NVENC_PRESET_MAP,
    SVTAV1_PRESET_MAP,
    resolve_preset,
    video_encoder,
)
from ffrtmp.ffmpeg.filters import (
    UnsupportedProcessing,
    carries_hdr10_metadata,
    check_hdr10_metadata,
    colour_options,
    filter_graph,
    rendition_filters,
    svtav1_hdr_params,
    thumbnail_filters,
    video_processing,
    x265_hdr_params,
)
from ffrtmp.ffmpeg.hls import HLS_DIR, hls_output
from ffrtmp.ffmpeg.inputs import InputNotAllowed
from ffrtmp.ffmpeg.invalid_spec import InvalidSpec
from ffrtmp.ffmpeg.loudness import LoudnessMeasurePass, measure_filter
from ffrtmp.ffmpeg.media import SourceMedia
from ffrtmp.ffmpeg.rendition import (
    Rendition,
    audio_args,
    audio_map,
    audio_stream,
    expected_size,
    video_map,
)
from ffrtmp.ffmpeg.timeline import MICROS, seconds
from ffrtmp.ffmpeg.validation import check_extra_args, check_folders, validate_output

# Names other modules import from here (the planner's public face).
__all__ = [
    "NETWORK_RW_TIMEOUT_US",
    "NVENC_PRESET_MAP",
    "EncodePlan",
    "InvalidSpec",
    "PlannedOutput",
    "build_encode_plan",
    "check_extra_args",
    "default_output_path",
    "is_live",
    "network_input_options",
    "protocol_whitelist",
    "with_input_headers",
]

FFMPEG = "ffmpeg"
BASE_ARGS = ("-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-progress", "pipe:1", "-nostats")
ACCELERATORS = ("nvenc", "qsv", "vaapi", "cpu")
NETWORK_RW_TIMEOUT_US = 15_000_000
RECONNECT_DELAY_MAX_SECONDS = 10
THUMBS_DIR = "thumbs"

OutputKind = Literal["file", "hls-master", "hls-variant", "thumbnails", "sprite", "stream"]


@dataclass(frozen=True)
class PlannedOutput:
    """Something the plan writes: path is relative to the job's output folder, or the URL."""

    name: str
    kind: OutputKind
    path: str
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class EncodePlan:
    """The ffmpeg runs of one attempt, in order, and what they write.

    `directories` (relative to the output folder) must exist before the first run: ffmpeg's
    image2 and file muxers do not create folders. `env` is added to ffmpeg's environment
    (SVT-AV1 logs to stderr unless `SVT_LOG` is lowered).
    """

    passes: list[list[str]]
    outputs: list[PlannedOutput]
    live: bool
    duration_seconds: float | None
    directories: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    # Runs before `passes`; their loudnorm measurements fill the placeholders in `passes`
    # (`loudness.apply_measurements`).
    loudness_measure_passes: list[LoudnessMeasurePass] = field(default_factory=list)


def default_output_path(output: OutputSpec) -> str:
    """Where an output goes, relative to the job's output folder (or its URL for restreams)."""
    if output.url is not None:
        return output.url
    if output.container == "hls":
        return f"{HLS_DIR}/{output.name}/index.m3u8"
    if output.path is not None:
        return output.path
    return f"{output.name}.{FILE_EXTENSIONS[output.container]}"


def _scheme(url: str) -> str:
    if url.startswith("/"):
        return "file"
    head, sep, _ = url.partition("://")
    return head.lower() if sep else ""


def protocol_whitelist(input_url: str, allowed_protocols: Iterable[str]) -> str:
    """The `-protocol_whitelist` for reading `input_url`: its scheme's needs, if the pool allows it."""
    allowed = set(allowed_protocols)
    scheme = _scheme(input_url)
    if scheme not in allowed:
        raise InputNotAllowed(f"This worker pool does not accept {scheme or 'this kind of'} input: {input_url}")
    if scheme == "file":
        needed = ["file"]
    elif scheme in ("http", "https"):
        family = [p for p in ("http", "https") if p in allowed]
        needed = [*family, "tcp", *(["tls", "httpproxy"] if "https" in family else []), "crypto"]
    elif scheme == "rtmp":
        needed = ["rtmp", "tcp"]
    elif scheme == "rtmps":
        needed = ["rtmps", "tls", "httpproxy", "tcp"]
    else:
        raise InputNotAllowed(f"Inputs of scheme '{scheme}' are not supported: {input_url}")
    return ",".join(needed)


def input_headers_options(headers: Mapping[str, str]) -> list[str]:
    """ffmpeg's (and ffprobe's) `-headers` input option for an http(s) input's request headers (input.headersFrom);
    nothing without headers. The HLS demuxer sends them on its playlist and segment requests too."""
    if not headers:
        return []
    return ["-headers", "".join(f"{name}: {value}\r\n" for name, value in headers.items())]


def with_input_headers(argv: list[str], input_url: str, headers: Mapping[str, str]) -> list[str]:
    """`argv` with the request headers set on its input `input_url` (before each `-i input_url`)."""
    options = input_headers_options(headers)
    if not options:
        return argv
    out: list[str] = []
    for i, item in enumerate(argv):
        if item == "-i" and i + 1 < len(argv) and argv[i + 1] == input_url:
            out += options
        out.append(item)
    return out


def network_input_options(input_url: str, *, live: bool) -> list[str]:
    """Timeouts and reconnects for network inputs: a dead server fails instead of hanging."""
    scheme = _scheme(input_url)
    if scheme in ("http", "https"):
        options = [
            "-rw_timeout", str(NETWORK_RW_TIMEOUT_US),
            "-reconnect", "1",
            "-reconnect_on_network_error", "1",
            "-reconnect_delay_max", str(RECONNECT_DELAY_MAX_SECONDS),
        ]  # fmt: skip
        # Only for streams: on seekable files it makes ffmpeg resume with ranges some servers ignore.
        return [*options, "-reconnect_streamed", "1"] if live else options
    if scheme in ("rtmp", "rtmps"):
        return ["-rw_timeout", str(NETWORK_RW_TIMEOUT_US)]
    return []


def is_live(spec: TranscodeJobSpec) -> bool:
    """The input is a stream without fixed duration (default: rtmp inputs are)."""
    if spec.input.live is not None:
        return spec.input.live
    return _scheme(spec.input.uri or "") in ("rtmp", "rtmps")  # uriFrom: the worker decides once it resolved it


def reads_in_real_time(spec: TranscodeJobSpec) -> bool:
    """`input.realtime`, or by default: a recorded input restreamed to an rtmp(s) output."""
    if spec.input.realtime is not None:
        return spec.input.realtime
    return not is_live(spec) and any(o.url is not None for o in spec.outputs)


def bitrate_bps(value: str) -> int:
    """A spec's bitrate ("800k", "5M", "128000") in bits per second."""
    factor = {"k": 1_000, "M": 1_000_000}.get(value[-1], 1)
    number = value[:-1] if factor != 1 else value
    return round(float(number) * factor)


def vbv_bufsize(v: VideoSpec) -> str | None:
    """The VBV buffer a single pass of `v` runs with: its bufsize, else 2 x its maxrate; None without
    a maxrate (no VBV)."""
    if v.maxrate is None:
        return None
    return v.bufsize if v.bufsize is not None else format_bps(2 * bitrate_bps(v.maxrate))


def format_bps(bps: int) -> str:
    """Bits per second as a spec writes them: "800k" for 800000."""
    if bps % 1_000_000 == 0:
        return f"{bps // 1_000_000}M"
    if bps % 1_000 == 0:
        return f"{bps // 1_000}k"
    return str(bps)


def _stats_prefix(scratch_dir: str, name: str) -> str:
    return os.path.join(scratch_dir, f"2pass-{name}")


def _video_args(
    r: Rendition,
    accelerator: str,
    spec_suffix: str,
    *,
    hls: HlsSpec | None,
    pass_number: int | None,
    scratch_dir: str,
    av1_cpu_encoder: str,
    source: SourceMedia | None = None,
) -> list[str]:
    """Encoder options of one video stream; `spec_suffix` is `:v` or `:v:N` (in the hls output)."""
    v = r.video
    s = spec_suffix
    if v.codec == "none":
        return ["-vn"]
    if v.codec == "copy":
        return [f"-c{s}", "copy"]
    encoder = video_encoder(accelerator, v.codec, av1_cpu_encoder)
    args = [f"-c{s}", encoder]
    if r.preset is not None:
        if encoder == "libsvtav1":
            args += [f"-preset{s}", str(SVTAV1_PRESET_MAP[r.preset])]
        elif encoder == "libaom-av1":
            args += [f"-cpu-used{s}", str(AOM_CPU_USED_MAP[r.preset])]
        elif accelerator == "vaapi":
            args += [f"-compression_level{s}", r.preset]
        else:
            args += [f"-preset{s}", r.preset]
    # rate control
    if accelerator == "nvenc":
        if v.crf is not None:
            args += [f"-rc{s}", "vbr", f"-cq{s}", str(v.crf), f"-b{s}", "0"]
        elif v.bitrate is not None:
            args += [f"-rc{s}", "vbr", f"-b{s}", v.bitrate]
    elif accelerator == "qsv":
        if v.crf is not None:
            args += [f"-global_quality{s}", str(v.crf)]
        elif v.bitrate is not None:
            args += [f"-b{s}", v.bitrate]
    elif accelerator == "vaapi":
        if v.crf is not None:
            args += [f"-rc_mode{s}", "CQP", f"-qp{s}", str(v.crf)]
        elif v.bitrate is not None:
            args += [f"-b{s}", v.bitrate]
    elif v.crf is not None:
        args += [f"-crf{s}", str(v.crf)]
        if encoder == "libaom-av1":
            args += [f"-b{s}", "0"]  # constant quality mode
    elif v.bitrate is not None:
        args += [f"-b{s}", v.bitrate]
    bufsize = vbv_bufsize(v)
    if v.maxrate is not None and bufsize is not None:
        args += [f"-maxrate{s}", v.maxrate, f"-bufsize{s}", bufsize]
    # keyframes
    if v.gop is not None:
        args += [f"-g{s}", str(v.gop)]
        if hls is not None:
            args += [f"-keyint_min{s}", str(v.gop)]
            if accelerator == "cpu":
                args += [f"-sc_threshold{s}", "0"]
    if hls is not None:
        args += [f"-force_key_frames{s}", f"expr:gte(t,n_forced*{hls.segment_seconds})"]
        if encoder in ("libx265", "h264_nvenc", "hevc_nvenc", "av1_nvenc"):
            args += [f"-forced-idr{s}", "1"]
        elif accelerator == "qsv":
            args += [f"-forced_idr{s}", "1"]
    ten_bit = r.processing is not None and r.processing.hdr_passthrough is not None
    if accelerator == "cpu":
        args += [f"-pix_fmt{s}", "yuv420p10le" if ten_bit else "yuv420p"]
    elif ten_bit and v.codec == "hevc":
        args += [f"-profile{s}", "main10"]
    if r.processing is not None:
        args += colour_options(r.processing, s, accelerator)
    if v.codec == "hevc" and (r.output.container == "mp4" or (hls is not None and hls.segment_type == "fmp4")):
        args += [f"-tag{s}", "hvc1"]  # what Apple players expect
    stats = _stats_prefix(scratch_dir, r.output.name)
    if encoder == "libx264" and pass_number is not None:
        args += [
            f"-pass{s}",
            str(pass_number),
            f"-passlogfile{s}",
            stats,
            f"-x264-params{s}",
            f"stats={stats}.log",
        ]
    if encoder == "libx265":  # x265 logs to stderr unless told otherwise
        params = (
            ":".join(["log-level=error", *x265_hdr_params(r.processing, source)]) if r.processing else "log-level=error"
        )
        if pass_number is not None:
            params += f":pass={pass_number}:stats={stats}.log"
        args += [f"-x265-params{s}", params]
    if r.processing is not None and carries_hdr10_metadata(r.processing, source):
        if encoder == "libsvtav1":
            args += [f"-svtav1-params{s}", ":".join(svtav1_hdr_params(r.processing, source))]
        elif encoder == "hevc_vaapi":
            args += [f"-sei{s}", "hdr"]  # from the frames' side data (its default, said out loud)
    return args


def _hardware_input_args(accelerator: str, render_device: str) -> list[str]:
    if accelerator == "nvenc":
        return ["-hwaccel", "cuda", "-hwaccel_output_format", "cuda"]
    if accelerator == "qsv":
        return ["-qsv_device", render_device, "-hwaccel", "qsv", "-hwaccel_output_format", "qsv"]
    if accelerator == "vaapi":
        return ["-vaapi_device", render_device, "-hwaccel", "vaapi", "-hwaccel_output_format", "vaapi"]
    return []


def build_encode_plan(
    spec: TranscodeJobSpec,
    accelerator: str,
    *,
    input_url: str,
    output_dir: str,
    scratch_dir: str,
    allowed_protocols: list[str],
    threads: int | None = None,
    input_has_audio: bool | None = None,
    source: SourceMedia | None = None,
    av1_cpu_encoder: str = AV1_CPU_ENCODER,
    render_device: str = DEFAULT_RENDER_DEVICE,
    time_range: tuple[int, int] | None = None,
    segment_keyframes: Mapping[str, HlsSpec] | None = None,
    roll_us: tuple[int, int] = (0, 0),
    encoder_options: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> EncodePlan:
    """The ffmpeg runs that turn `spec` into its outputs on a pool of `accelerator`.

    `input_url` is what `inputs.check_input` returned; `output_dir` the job's output folder
    and `scratch_dir` a private folder for two-pass statistics (both absolute). `threads`
    (from the job's cpu limit) caps decoder, filter and encoder threads. `input_has_audio`
    (from probing, when known): False drops audio everywhere; None maps audio optionally
    for files (`0:a:0?`) and requires it for hls (the variant map needs it).

    `source` (the probed input, see `media.SourceMedia`) decides output sizes, deinterlacing,
    colour conversion and audio track choice; it implies `input_has_audio` when that is None
    (not for a live input: a moment of the stream may not show its audio yet).
    Loudness normalisation adds `loudness_measure_passes` before `passes`.

    `time_range` (start, end) in microseconds of the source timeline: encode only the video frames
    with start <= pts < end, with timestamps relative to start and kept as they are (one chunk of
    a chunked job, see `ffmpeg.chunks`). `segment_keyframes` (output name -> hls packaging): those
    file outputs' video gets the keyframes an hls output of that packaging gets (a chunk of an hls
    rendition, packaged by the stitch). `roll_us` (before, after) in microseconds, with `time_range`:
    also encode the frames that long before the start and after the end, with keyframes forced at
    the start and the end, into a file in `scratch_dir`, and keep exactly the range's frames by a
    stream copy (`roll_remux`): the encoder then sees the frames it sees around a cut in a single
    pass (see `ffmpeg.chunks`). `encoder_options` (output name -> (option, value) pairs,
    such as ("-mbtree", "0")): added, with the stream's specifier, after that output's own video
    encoder options (a chunk's rate control, `chunks.chunk_rate_control`).

    Raises InvalidSpec for combinations ffmpeg cannot do, InputNotAllowed when the pool does
    not accept the input's protocol.
    """
    if accelerator not in ACCELERATORS:
        raise InvalidSpec(f"unknown accelerator {accelerator!r}: expected one of {', '.join(ACCELERATORS)}")
    if av1_cpu_encoder not in AV1_CPU_ENCODERS:
        raise ValueError(f"av1_cpu_encoder must be one of {', '.join(AV1_CPU_ENCODERS)}")
    if threads is not None and threads < 1:
        raise ValueError("threads must be at least 1")
    check_folders(output_dir, scratch_dir)
    live = is_live(spec)
    if input_has_audio is None and source is not None and not live:
        input_has_audio = bool(source.audio_streams)
    realtime = reads_in_real_time(spec)
    whitelist = protocol_whitelist(input_url, allowed_protocols)
    hls_outputs = [o for o in spec.outputs if o.container == "hls"]
    if spec.hls is not None and not hls_outputs:
        raise InvalidSpec("hls settings need at least one output with container hls")
    hls = (spec.hls or HlsSpec()) if hls_outputs else None
    # nvenc with a source NVDEC cannot decode (decode.py): software decode, one upload to the GPU.
    # Those frames arrive upright (autorotate): the chains must not turn them again.
    software_decode = accelerator == "nvenc" and source is not None and not nvdec_decodes(source)
    upload = software_upload_filters(source) if software_decode and source is not None else []
    filter_source = dataclasses.replace(source, rotation=0) if software_decode and source is not None else source
    if hls is not None and hls.segment_type == "ts":
        for o in hls_outputs:
            if o.video is not None and o.video.codec == "av1":
                raise InvalidSpec(f"output {o.name}: av1 in hls needs segmentType fmp4")

    renditions: list[Rendition] = []
    names: set[str] = set()
    paths: set[str] = set()
    for output in spec.outputs:
        video = output.video or VideoSpec()
        audio = output.audio or AudioSpec()
        if input_has_audio is False:
            audio = AudioSpec(codec="none")
        if output.name in names:
            raise InvalidSpec(f"output names must be unique: {output.name}")
        names.add(output.name)
        validate_output(output, video, audio, accelerator, live)
        processing = None
        if video.codec not in ("copy", "none"):
            processing = video_processing(video, filter_source)
            try:
                check_hdr10_metadata(video_encoder(accelerator, video.codec, av1_cpu_encoder), processing, source)
            except UnsupportedProcessing as e:
                raise InvalidSpec(f"output {output.name}: {e}") from e
        path = default_output_path(output)
        if output.url is None:
            if output.container != "hls" and path.split("/")[0] in (HLS_DIR, THUMBS_DIR):
                raise InvalidSpec(f"output {output.name}: the folders hls/ and thumbs/ are reserved")
            if path in paths:
                raise InvalidSpec(f"output {output.name}: another output already writes {path}")
            paths.add(path)
        target = output.url if output.url is not None else os.path.join(output_dir, path)
        if target == input_url:
            raise InvalidSpec(f"output {output.name} would overwrite the input")
        renditions.append(
            Rendition(
                output=output,
                video=video,
                audio=audio,
                path=path,
                target=target,
                preset=resolve_preset(video.preset, accelerator, spec.accelerator),
                processing=processing,
                audio_stream=audio_stream(output.name, audio, source),
            )
        )

    encoded = [r for r in renditions if r.video.codec not in ("copy", "none")]
    hardware = accelerator != "cpu" and bool(encoded)
    for index, r in enumerate(encoded):
        r.branch = f"v{index}"
        try:
            r.filters = rendition_filters(r.video, accelerator, r.processing)
        except UnsupportedProcessing as e:
            raise InvalidSpec(f"output {r.output.name}: {e}") from e
    thumbs = spec.thumbnails
    branches: list[tuple[str, list[str]]] = [(r.branch or "", r.filters) for r in encoded]
    if thumbs is not None:
        frames = accelerator if hardware else "cpu"
        branches.append(("thumbs", thumbnail_filters(thumbs, frames, sprite=False, source=filter_source)))
        if thumbs.sprite is not None:
            branches.append(("sprite", thumbnail_filters(thumbs, frames, sprite=True, source=filter_source)))

    def head(
        graph_branches: Sequence[tuple[str, list[str]]], *, final: bool = True, measuring: bool = False
    ) -> list[str]:
        base = list(BASE_ARGS)
        if measuring:  # loudnorm prints its measurement at info level; the audio is decoded on CPU
            base[base.index("-loglevel") + 1] = "info"
        argv = [FFMPEG, *base, "-protocol_whitelist", whitelist]
        argv += network_input_options(input_url, live=live)
        if hardware and not measuring and not software_decode:
            argv += _hardware_input_args(accelerator, render_device)
        if threads is not None:
            argv += ["-threads", str(threads)]
        if time_range is not None:
            # Source timestamps (from 0) through the graph: `trim` then cuts both neighbours of a
            # boundary at the same timestamp; -ss only seeks to the keyframe before the start.
            argv += ["-copyts", "-start_at_zero", "-noaccurate_seek"]
            if first_us > 0:
                argv += ["-ss", seconds(first_us)]
        if spec.input.start_seconds is not None:
            argv += ["-ss", str(spec.input.start_seconds)]
        if spec.input.duration_seconds is not None:
            argv += ["-t", str(spec.input.duration_seconds)]
        if final and realtime:
            argv += ["-re"]  # a first pass only analyses: it runs at full speed
        argv += ["-i", input_url]
        if graph_branches:
            if threads is not None:
                argv += ["-filter_complex_threads", str(threads)]
            argv += ["-filter_complex", filter_graph(graph_branches, [*cut, *(upload if hardware else ())])]
        return argv

    cut: list[str] = []
    first_us = 0
    rolled = time_range is not None and roll_us != (0, 0)
    if time_range is not None:
        start, end = time_range
        first_us = max(start - roll_us[0], 0)
        cut = [f"trim=start={seconds(first_us)}:end={seconds(end + roll_us[1])}"]
        # Rolled: shifted by ROLL_SHIFT_SECONDS (no negative timestamps); the stream copy undoes it.
        shift = f"+round({ROLL_SHIFT_SECONDS}/TB)" if rolled else ""
        cut += [f"setpts=PTS-round({seconds(start)}/TB){shift}"]
    thread_args = ["-threads", str(threads)] if threads is not None else []
    extra = list(spec.extra_args or [])
    check_extra_args(extra)

    def video_opts(r: Rendition, suffix: str, pass_number: int | None, in_hls: bool) -> list[str]:
        keyframes = (segment_keyframes or {}).get(r.output.name)
        args = _video_args(
            r,
            accelerator,
            suffix,
            hls=hls if in_hls else keyframes,
            pass_number=pass_number,
            scratch_dir=scratch_dir,
            av1_cpu_encoder=av1_cpu_encoder,
            source=source,
        )
        for option, value in (encoder_options or {}).get(r.output.name, ()):
            args += [f"{option}{suffix}", value]
        if rolled and time_range is not None:
            return _rolled_keyframes(args, suffix, time_range[1] - time_range[0], keyframes)
        return args

    two_pass = [r for r in encoded if r.video.two_pass]
    if two_pass and any(a.split(":")[0] in ("-x264-params", "-x265-params", "-x264opts") for a in extra):
        raise InvalidSpec("extraArgs -x264-params/-x265-params cannot be combined with twoPass")
    passes: list[list[str]] = []
    if two_pass:
        first = head([(r.branch or "", r.filters) for r in two_pass], final=False)
        for r in two_pass:
            in_hls = r.output.container == "hls"
            video_args = video_opts(r, ":v", 1, in_hls)
            # extraArgs in both passes: x264 refuses a second pass whose frame types differ
            first += ["-map", f"[{r.branch}]", *video_args, "-an", *thread_args, *extra, "-f", "null", "-"]
        passes.append(first)

    main = head(branches)
    planned: list[PlannedOutput] = []
    hls_written = False
    for r in renditions:
        pass_number = 2 if r.video.two_pass else None
        if r.output.container != "hls":
            main += [*video_map(r), *audio_map(r, required=input_has_audio is True)]
            main += [*video_opts(r, ":v", pass_number, False), *audio_args(r, ":a"), *thread_args]
            if time_range is not None:
                # The frames' own timestamps, at the source's precision: the stitch restores them.
                main += ["-fps_mode:v", "passthrough", "-enc_time_base:v", "-1"]
            main += ["-f", "nut" if rolled else MUXERS[r.output.container]]
            if r.output.container == "mp4" and not rolled:
                main += ["-movflags", "+faststart"]
            if r.output.tags is not None:
                for key, value in r.output.tags.to_api().items():
                    main += ["-metadata", f"{key}={value}"]
            if r.output.url is not None:
                main += ["-flvflags", "no_duration_filesize"]
            main += [*extra, _roll_file(r, scratch_dir) if rolled else r.target]
        elif not hls_written and hls is not None:
            main += hls_output(renditions, hls, output_dir, video_opts=video_opts, thread_args=thread_args, extra=extra)
            hls_written = True
        width, height = expected_size(r)
        kind: OutputKind = "stream" if r.output.url else ("hls-variant" if r.output.container == "hls" else "file")
        planned.append(PlannedOutput(r.output.name, kind, r.path, width, height))
    directories: set[str] = {os.path.dirname(r.path) for r in renditions if r.output.url is None}
    if hls is not None:
        planned.append(PlannedOutput("master", "hls-master", f"{HLS_DIR}/{hls.master_playlist}"))
        directories.update({HLS_DIR, *(os.path.dirname(r.path) for r in renditions if r.output.container == "hls")})
    if thumbs is not None:
        thumb_path = f"{THUMBS_DIR}/thumb_%05d.{thumbs.format}"
        main += _image_output("thumbs", thumbs, os.path.join(output_dir, thumb_path))
        planned.append(PlannedOutput("thumbnails", "thumbnails", thumb_path, thumbs.width, None))
        if thumbs.sprite is not None:
            sprite_path = f"{THUMBS_DIR}/sprite_%03d.{thumbs.format}"
            main += _image_output("sprite", thumbs, os.path.join(output_dir, sprite_path))
            sprite_width = thumbs.width * thumbs.sprite.columns
            planned.append(PlannedOutput("sprite", "sprite", sprite_path, sprite_width, None))
        directories.add(THUMBS_DIR)
    passes.append(main)
    if rolled and time_range is not None:
        passes += [roll_remux(r, scratch_dir, time_range[1] - time_range[0]) for r in encoded]
    uses_svt = accelerator == "cpu" and av1_cpu_encoder == "libsvtav1" and any(r.video.codec == "av1" for r in encoded)
    duration: float | None = spec.input.duration_seconds
    if time_range is not None:
        duration = (time_range[1] - time_range[0]) / MICROS
    return EncodePlan(
        passes=passes,
        outputs=planned,
        live=live,
        duration_seconds=float(duration) if duration is not None else None,
        directories=sorted(d for d in directories if d),
        env={"SVT_LOG": "1"} if uses_svt else {},
        loudness_measure_passes=_loudness_measure_passes(renditions, head([], final=False, measuring=True)),
    )


# What a rolled chunk encode adds to its timestamps, undone by its stream copy, which sees them in
# a time base of its own: a whole number of seconds that is a whole number of units of any source
# time base 1/N, 1001/N or 100/N, so that the shift is exact in both.
ROLL_SHIFT_SECONDS = 1001000
# A rolled frame is dropped when its timestamp is this far or more outside the kept range: a cut
# is a whole number of seconds or a source timestamp to the microsecond, so a kept frame is at
# most a microsecond outside it and a dropped one at least a source time base unit (1/90000 s).
ROLL_MARGIN_US = 5


def roll_remux(r: Rendition, scratch_dir: str, length_us: int) -> list[str]:
    """The stream copy of a rolled chunk encode (`build_encode_plan`'s `roll_us`) to the output,
    without the frames before 0 and from `length_us` on: those before the IDR at the start, and
    the IDR at the end and what follows it in decode order (closed GOPs: the frames kept need
    neither). The noise filter's drop expression is without commas (a filter list separator)."""
    low, high = seconds(ROLL_MARGIN_US), seconds(length_us - ROLL_MARGIN_US)
    drop = f"2-sgn(pts*tb+{low})-sgn({high}-pts*tb)"
    argv = [FFMPEG, *BASE_ARGS, "-protocol_whitelist", "file", "-copyts", "-itsoffset", f"-{ROLL_SHIFT_SECONDS}"]
    argv += ["-i", _roll_file(r, scratch_dir), "-map", "0:v:0", "-c", "copy", "-bsf:v", f"noise=drop={drop}"]
    if r.video.codec == "hevc":
        argv += ["-tag:v", "hvc1"]
    return [*argv, "-f", "mp4", "-movflags", "+faststart", r.target]


def _roll_file(r: Rendition, scratch_dir: str) -> str:
    return os.path.join(scratch_dir, f"{r.output.name}.rolled.nut")


def _rolled_keyframes(args: list[str], suffix: str, length_us: int, keyframes: HlsSpec | None) -> list[str]:
    """A rolled chunk's encoder options `args` (for NUT) with IDR frames forced at the chunk's start and end
    (where its stream copy cuts, in decode order) and, for an hls rendition, at every segment
    boundary as in its hls single pass. Times, not `expr:`: an expression's t counts from the
    first frame encoded, a rolled one."""
    times = [0, length_us]
    option = f"-force_key_frames{suffix}"
    if f"-tag{suffix}" in args:  # hvc1: an MP4 tag, which the stream copy sets
        at = args.index(f"-tag{suffix}")
        args = [*args[:at], *args[at + 2 :]]
    if keyframes is not None:
        times = sorted({*range(0, length_us, keyframes.segment_seconds * MICROS), length_us})
        at = args.index(option)
        args = [*args[:at], *args[at + 2 :]]  # the expression _video_args gives
    forced = ",".join(seconds(ROLL_SHIFT_SECONDS * MICROS + t) for t in times)
    return [*args, option, forced]


def _loudness_measure_passes(renditions: Sequence[Rendition], head: list[str]) -> list[LoudnessMeasurePass]:
    """One measuring run per source audio stream that some rendition normalises.

    Renditions normalising the same stream to different targets share its measurement:
    loudnorm's measured_* figures describe the input, not the target.
    """
    passes: list[LoudnessMeasurePass] = []
    for r in renditions:
        loudness = r.audio.loudness
        if loudness is None or r.audio.codec in ("copy", "none"):
            continue
        if any(p.stream == r.audio_stream for p in passes):
            continue
        argv = [*head, "-map", r.audio_stream, "-filter:a", measure_filter(loudness), "-vn", "-f", "null", "-"]
        passes.append(LoudnessMeasurePass(r.audio_stream, argv))
    return passes


def _image_output(label: str, thumbs: ThumbnailSpec, target: str) -> list[str]:
    """A numbered-image output (thumbnails or sprite sheets) of the filter branch `label`."""
    codec = ["-c:v", "mjpeg", "-q:v", "3"] if thumbs.format == "jpg" else ["-c:v", "png"]
    return ["-map", f"[{label}]", *codec, "-f", "image2", target]
