"""TranscodeJob: one input, one or more renditions, run once by one worker."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field

from ffrtmp.api.base import ApiModel, api_config, rules
from ffrtmp.api.common import Conditions, LocalObjectReference, ResourceList, SecretKeySelector, Timestamp
from ffrtmp.api.notifications import NotificationsSpec, TargetDelivery
from ffrtmp.storage.uri import OBJECT_URI_PATTERN, PREFIX_URI_PATTERN

Accelerator = Literal["auto", "nvenc", "qsv", "vaapi", "cpu"]
HardwarePolicy = Literal["required", "preferred", "disabled"]
Container = Literal["mp4", "mkv", "flv", "hls", "mpegts"]
VideoCodec = Literal["h264", "hevc", "av1", "copy", "none"]
AudioCodec = Literal["aac", "opus", "mp3", "copy", "none"]
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
NVENC_PRESETS = ("p1", "p2", "p3", "p4", "p5", "p6", "p7")
Deinterlace = Literal["auto", "on", "off"]
HdrMode = Literal["tonemap", "passthrough"]
Preset = Literal[
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
    "p1", "p2", "p3", "p4", "p5", "p6", "p7",
]  # fmt: skip
QSV_PRESETS = ("veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
VAAPI_PRESETS = ("fast", "medium", "slow")

BITRATE_PATTERN = r"^[1-9][0-9]{0,5}(\.[0-9]{1,3})?[kM]?$"
Bitrate = Annotated[
    str,
    Field(
        max_length=12,
        pattern=BITRATE_PATTERN,
        description="Bits per second as ffmpeg writes it: `6M`, `2.5M`, `800k`, `128k`.",
    ),
]
RELATIVE_PATH_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*){0,3}$"
# Options that read or write files, or change how ffmpeg finds them: only the operator sets these.
FORBIDDEN_EXTRA_OPTIONS = (
    "-i", "-y", "-n", "-f", "-filter_script", "-filter_complex_script", "-attach",
    "-dump_attachment", "-passlogfile", "-vstats_file", "-vstats", "-report", "-progress",
    "-protocol_whitelist", "-protocol_blacklist", "-init_hw_device", "-hwaccel_device",
    "-vaapi_device", "-qsv_device", "-filter_hw_device", "-stats_enc_pre", "-stats_enc_post", "-stats_mux_pre",
    "-sdp_file", "-benchmark_all",
)  # fmt: skip
# Filters that open files by name.
FORBIDDEN_FILTER_WORDS = ("movie", "amovie", "sendcmd", "asendcmd", "zmq", "azmq", "subtitles", "ass")
# The regexes the CEL rules use (RE2 and Python's re read them alike). An option is refused with a
# stream specifier too (`-filter_script:v`); a filter name is found where ffmpeg's graph parser finds
# one: after a separator, a link label or a quote, with blanks (space, tab) around it and an optional
# `@instance` suffix.
FORBIDDEN_OPTION_PATTERN = "^(" + "|".join(FORBIDDEN_EXTRA_OPTIONS) + ")(:.*)?$"
FORBIDDEN_FILTER_PATTERN = (
    r"(^|[,:\[\]='\"])[ \t]*(" + "|".join(FORBIDDEN_FILTER_WORDS) + r")(@[A-Za-z0-9_]*)?[ \t]*([=,\['\"]|$)"
)
SHELL_CHARACTERS = ";&|$`<>\\\n\r"


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


def _cel_string(text: str) -> str:
    """`text` as a single-quoted CEL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class LiveRestartPolicy(ApiModel):
    """How a live job recovers when its input stream drops."""

    max_restarts: int = Field(default=10, ge=0, le=1000, description="Restarts after stream loss before the job fails.")
    backoff_seconds: int = Field(
        default=2, ge=1, le=300, description="First wait before reconnecting; doubles each time."
    )
    max_backoff_seconds: int = Field(default=60, ge=1, le=3600, description="Upper bound of the doubling wait.")


class ValueFromSecret(ApiModel):
    """A value the worker reads from a Secret when the attempt starts: it is never copied into the job's
    spec or status, and every message, Event, log line and stderr tail has it redacted."""

    secret_key_ref: SecretKeySelector = Field(
        description=(
            "The Secret and key holding the value. The job runs only in pools that list the Secret in "
            "spec.jobSecrets (their workers mount it); without one it waits Queued (NoMatchingPool). When the "
            "Secret or key does not exist the job fails with reason SecretNotFound, naming the Secret and key."
        )
    )


HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
# Headers ffmpeg or the egress proxy set themselves, or that would change what the request means.
RESERVED_HEADERS = ("host", "content-length", "transfer-encoding", "connection", "proxy-authorization", "range")


class HeaderFromSecret(ApiModel):
    """An HTTP request header whose value comes from a Secret, e.g. `Authorization: Bearer ...`."""

    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=HEADER_NAME_PATTERN,
        description=f"The header name, e.g. `Authorization` or `X-Api-Key` (not {', '.join(RESERVED_HEADERS)}).",
        json_schema_extra=rules(
            (
                f"!(self.lowerAscii() in {_cel_list(RESERVED_HEADERS)})",
                f"headersFrom must not set {', '.join(RESERVED_HEADERS)}",
            ),
        ),
    )
    secret_key_ref: SecretKeySelector = Field(
        description=(
            "The Secret and key holding the header's whole value (one line). The job runs only in pools that list "
            "the Secret in spec.jobSecrets; a missing Secret or key fails it with reason SecretNotFound."
        )
    )


class InputSpec(ApiModel):
    """What to transcode."""

    model_config = api_config(
        json_schema_extra=rules(
            ("has(self.uri) != has(self.uriFrom)", "set input.uri or input.uriFrom (one of them)"),
            (
                "!has(self.realtime) || !self.realtime || "
                "!((has(self.uri) && self.uri.startsWith('rtmp')) || (has(self.live) && self.live))",
                "input.realtime is for file and http(s) inputs: a live input arrives in real time already",
            ),
            (
                "!has(self.uri) || !self.uri.startsWith('s3://') || !(has(self.live) && self.live)",
                "an s3:// input is a stored object, not a live stream",
            ),
            (
                "!has(self.headersFrom) || !has(self.uri) || self.uri.matches('^https?://')",
                "input.headersFrom is for http(s):// inputs",
            ),
        )
    )

    uri: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        description=(
            "Absolute file path under one of the pool's media roots, an http(s):// or rtmp(s):// URL, or "
            "an object `s3://bucket/key` in the pool's object storage (WorkerPool spec.objectStorage), which "
            "ffmpeg reads with ranged GETs through a presigned URL the worker makes. Other schemes (file:, "
            "concat:, data:, ...) are refused. Set uri or uriFrom."
        ),
        json_schema_extra=rules(
            (
                "self.startsWith('/') || self.matches('^(https?|rtmps?|s3)://[^/]')",
                "input.uri must be an absolute file path or an http(s):// or rtmp(s):// URL, or s3://bucket/key",
            ),
            ("!self.contains('/../') && !self.endsWith('/..')", "input.uri must not contain '..'"),
            ("!self.matches('[\\\\s\\\\x00]')", "input.uri must not contain whitespace"),
            (
                f"!self.startsWith('s3://') || self.matches({_cel_string(OBJECT_URI_PATTERN)})",
                "input.uri s3://bucket/key: bucket 3-63 of a-z 0-9 . -, a key with no . or .. steps, not ending in /",
            ),
            (
                "!self.startsWith('s3://') || !self.lowerAscii().matches('[.]m3u8?$')",
                "an HLS playlist cannot be read from s3:// (its segments would need URLs of their own): "
                "read it over https, or transcode a media file",
            ),
        ),
    )
    uri_from: ValueFromSecret | None = Field(
        default=None,
        description=(
            "The input URL from a Secret instead of `uri`, for a URL that is a credential itself: userinfo "
            "(`https://user:password@host/...`), a signed query string, an RTMP stream key. It must be an "
            "http(s):// or rtmp(s):// URL (one line; a trailing newline is dropped), and the worker checks it "
            "like `uri` (allowedProtocols, egress policy). Its scheme is not known before the worker reads it: "
            "set `live: true` for a live stream (rtmp(s) URLs are live by default at the worker, but restartPolicy "
            "and the rules of live inputs need `live` at apply)."
        ),
    )
    headers_from: list[HeaderFromSecret] | None = Field(
        default=None,
        max_length=8,
        description=(
            "HTTP request headers for an http(s) input, each value from a Secret (`Authorization`, an API key). "
            "ffmpeg and ffprobe send them on every request for the input (the worker's HLS playlist check "
            "too); they are never written to the job."
        ),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    start_seconds: int | None = Field(
        default=None, ge=0, le=86400 * 7, description="Seek to this many seconds before reading."
    )
    duration_seconds: int | None = Field(
        default=None, ge=1, le=86400 * 7, description="Transcode only this many seconds."
    )
    live: bool | None = Field(
        default=None,
        description=(
            "The input is a live stream with no fixed duration (default: true for rtmp:// inputs). "
            "Progress then reports stream time instead of percent."
        ),
    )
    restart_policy: LiveRestartPolicy | None = Field(
        default=None,
        description=(
            "For live inputs: reconnect with backoff when the stream drops (ffmpeg ends, or the stream "
            "time stops advancing for 20 s: servers such as nginx-rtmp keep the connection open after "
            "the publisher leaves)."
        ),
    )
    realtime: bool | None = Field(
        default=None,
        description=(
            "Read the input at its native frame rate (ffmpeg -re), as a live source would arrive, so "
            "the job takes at least the input's duration. Default: on when a file or http(s) input is "
            "restreamed to an rtmp(s):// output (faster than real time would flood the server and its "
            "viewers), off otherwise. Not for live inputs: they arrive in real time already."
        ),
    )


class VideoSpec(ApiModel):
    """The video stream of one rendition."""

    model_config = api_config(
        json_schema_extra=rules(
            ("!(has(self.bitrate) && has(self.crf))", "bitrate and crf are mutually exclusive: set one"),
            (
                "self.codec != 'copy' || !(has(self.width) || has(self.height) || has(self.preset) || "
                "has(self.bitrate) || has(self.crf) || has(self.fps) || has(self.gop) || has(self.maxrate) || "
                "has(self.deinterlace) || has(self.hdr))",
                "codec copy re-uses the input stream: width, height, fps, gop, preset, bitrate, "
                "maxrate, crf, deinterlace and hdr must not be set",
            ),
            ("!has(self.maxrate) || has(self.bitrate) || has(self.crf)", "maxrate needs bitrate or crf"),
            ("!has(self.bufsize) || has(self.maxrate)", "bufsize needs maxrate"),
            ("!(has(self.twoPass) && self.twoPass) || has(self.bitrate)", "twoPass needs a bitrate target"),
            (
                "!(has(self.twoPass) && self.twoPass) || self.codec in ['h264', 'hevc']",
                "twoPass is supported for h264 and hevc",
            ),
            (
                "(!has(self.width) || self.width % 2 == 0) && (!has(self.height) || self.height % 2 == 0)",
                "width and height must be even (4:2:0 video)",
            ),
            (
                "!has(self.hdr) || self.hdr != 'passthrough' || self.codec in ['hevc', 'av1']",
                "hdr passthrough needs codec hevc or av1 (10-bit)",
            ),
        )
    )

    codec: VideoCodec = Field(default="h264", description="h264, hevc, av1, copy (no re-encode) or none (drop video).")
    bitrate: Bitrate | None = Field(default=None, description="Target average bitrate, e.g. `6M`.")
    crf: int | None = Field(
        default=None, ge=0, le=63, description="Constant quality (lower is better); excludes bitrate."
    )
    maxrate: Bitrate | None = Field(default=None, description="Peak bitrate cap (VBV), e.g. `8M`.")
    bufsize: Bitrate | None = Field(default=None, description="VBV buffer size; default 2 x maxrate.")
    preset: Preset | None = Field(
        default=None,
        description=(
            "Speed/quality preset. x264 names (ultrafast..veryslow) map to every encoder; "
            "p1..p7 are NVENC's own and need accelerator nvenc."
        ),
    )
    width: int | None = Field(
        default=None, ge=16, le=7680, description="Output width; with height unset, aspect is kept."
    )
    height: int | None = Field(
        default=None, ge=16, le=4320, description="Output height; with width unset, aspect is kept."
    )
    fps: int | None = Field(default=None, ge=1, le=240, description="Output frame rate.")
    gop: int | None = Field(default=None, ge=1, le=1200, description="Keyframe interval in frames.")
    two_pass: bool | None = Field(
        default=None, description="Two-pass encode for an exact bitrate target (CPU h264/hevc)."
    )
    deinterlace: Deinterlace | None = Field(
        default=None,
        description=(
            "auto (default): deinterlace when the probed source is interlaced (field order tt, bb, tb "
            "or bt); on: always; off: never. One progressive frame per frame (bwdif send_frame on CPU, "
            "yadif_cuda on nvenc, deinterlace_vaapi on vaapi, vpp_qsv deinterlace on qsv)."
        ),
    )
    hdr: HdrMode | None = Field(
        default=None,
        description=(
            "For HDR10 (PQ) and HLG sources. tonemap (default): convert to SDR BT.709 (zscale + "
            "tonemap hable on CPU, tonemap_vaapi on vaapi; not on qsv). passthrough: 10-bit output keeping "
            "the HDR transfer and BT.2020 primaries and matrix; needs codec hevc or av1. HDR10 mastering "
            "display and content light levels are carried by libx265, libsvtav1 and hevc_vaapi; on other "
            "encoders a source that has them is InvalidSpec."
        ),
    )


class LoudnessSpec(ApiModel):
    """EBU R128 loudness normalisation, two-pass: ffmpeg's loudnorm measures the whole input
    first, then the encode applies one linear gain (linear=true) with the measured values."""

    integrated_lufs: int = Field(
        default=-23, ge=-70, le=-5, description="Integrated loudness target in LUFS (EBU R128: -23; web: -16)."
    )
    true_peak_db: str = Field(
        default="-1",
        max_length=4,
        pattern=r"^-(0|[1-9])(\.[0-9])?$",
        description="Maximum true peak in dBTP, a decimal string from `-9.9` to `-0`, e.g. `-1` or `-1.5`.",
    )
    loudness_range_lu: int = Field(
        default=11,
        ge=1,
        le=50,
        description=(
            "Loudness range target in LU. When the source's range is wider, loudnorm falls back "
            "from one linear gain to its dynamic mode."
        ),
    )


class AudioSpec(ApiModel):
    """The audio stream of one rendition.

    Channel layout: with `channels` 2 a 5.1 or 7.1 source is downmixed by ffmpeg's default
    matrix (`-ac 2`: centre and surrounds mixed in at -3 dB, LFE dropped, the sum normalised
    against clipping); without `channels` the source layout is kept.
    """

    model_config = api_config(
        json_schema_extra=rules(
            (
                "!(self.codec in ['copy', 'none']) || !(has(self.bitrate) || has(self.channels) || "
                "has(self.sampleRate))",
                "audio codec copy or none takes no bitrate, channels or sampleRate",
            ),
            ("!(has(self.track) && has(self.language))", "set audio track or language, not both"),
            (
                "self.codec != 'none' || !(has(self.track) || has(self.language))",
                "audio codec none takes no track or language",
            ),
            (
                "!(self.codec in ['copy', 'none']) || !has(self.loudness)",
                "loudness normalisation re-encodes audio: not with codec copy or none",
            ),
        )
    )

    codec: AudioCodec = Field(default="aac", description="aac, opus, mp3, copy or none (drop audio).")
    bitrate: Bitrate | None = Field(default=None, description="e.g. `128k`.")
    channels: int | None = Field(
        default=None,
        ge=1,
        le=8,
        description=(
            "1 mono, 2 stereo, 6 for 5.1 (default: the source's). 5.1/7.1 to stereo uses ffmpeg's default "
            "downmix: centre and surrounds mixed in at -3 dB, LFE dropped, normalised against clipping."
        ),
    )
    sample_rate: int | None = Field(default=None, ge=8000, le=192000, description="Samples per second.")
    track: int | None = Field(
        default=None,
        ge=0,
        le=63,
        description="Which audio stream of the input, counted from 0 among audio streams (default: the first).",
    )
    language: str | None = Field(
        default=None,
        min_length=2,
        max_length=3,
        pattern=r"^[a-z]{2,3}$",
        description=(
            "Take the first audio stream tagged with this language (ISO 639-2, e.g. `eng`, `deu`); "
            "the job fails with InvalidSpec when the input has none."
        ),
    )
    loudness: LoudnessSpec | None = Field(
        default=None, description="Normalise loudness to an EBU R128 target (a measuring pass runs first)."
    )


TagValue = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")]
TAG_CONTAINERS = ("mp4", "mkv", "flv")


class OutputTags(ApiModel):
    """Metadata tags written into the file's container (`-metadata`); players and `ffprobe` show them."""

    title: TagValue | None = Field(default=None, description="Title, e.g. the programme's name.")
    artist: TagValue | None = Field(default=None, description="Author or artist.")
    comment: TagValue | None = Field(default=None, description="Free-form comment.")
    copyright: TagValue | None = Field(default=None, description="Copyright notice.")
    description: TagValue | None = Field(default=None, description="Longer description.")


class OutputSpec(ApiModel):
    """One rendition: a file, an HLS variant, or an RTMP restream."""

    model_config = api_config(
        json_schema_extra=rules(
            ("!(has(self.path) && has(self.url))", "set path or url, not both"),
            (
                "!(has(self.urlFrom) && (has(self.path) || has(self.url)))",
                "set one of path, url and urlFrom",
            ),
            (
                "!(has(self.url) || has(self.urlFrom)) || self.container == 'flv'",
                "an rtmp:// url output needs container flv",
            ),
            (
                "self.container != 'hls' || !has(self.path)",
                "hls outputs are written under the job's hls folder; path must not be set",
            ),
            (
                "!has(self.video) || self.video.codec != 'av1' || self.container != 'flv'",
                "container flv cannot carry av1",
            ),
            (
                "!has(self.video) || self.video.codec != 'hevc' || self.container != 'flv'",
                "container flv cannot carry hevc",
            ),
            (
                "!has(self.tags) || self.container in " + str(list(TAG_CONTAINERS)),
                "tags are written into mp4, mkv and flv outputs only (hls and mpegts carry none)",
            ),
            (
                "self.container != 'hls' || (has(self.video) && (self.video.codec == 'copy' || "
                "has(self.video.bitrate) || has(self.video.maxrate)))",
                "hls outputs need video.bitrate or video.maxrate (the master playlist's BANDWIDTH)",
            ),
        )
    )

    name: str = Field(
        min_length=1,
        max_length=32,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Unique name of the rendition, e.g. `1080p`; also the default file name.",
    )
    container: Container = Field(default="mp4", description="mp4, mkv, flv, mpegts or hls.")
    path: str | None = Field(
        default=None,
        max_length=255,
        pattern=RELATIVE_PATH_PATTERN,
        description="File path relative to the job's output folder (default `<name>.<container>`).",
    )
    url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^rtmps?://[^\s/]+/\S+$",
        description="Publish to this rtmp(s):// URL instead of a file (restream).",
    )
    url_from: ValueFromSecret | None = Field(
        default=None,
        description=(
            "Publish to an rtmp(s):// URL read from a Secret instead of `url`: for a URL carrying a stream key "
            "(`rtmp://live.example.com/app/STREAM-KEY`). One line (a trailing newline is dropped), the form `url` "
            "has; container flv."
        ),
    )
    video: VideoSpec | None = Field(default=None, description="Video settings (default: h264).")
    audio: AudioSpec | None = Field(default=None, description="Audio settings (default: aac).")
    tags: OutputTags | None = Field(
        default=None, description="Metadata tags of the file (mp4, mkv, flv), e.g. `title` and `copyright`."
    )


class HlsSpec(ApiModel):
    """How `hls` outputs are packaged: one master playlist over all of them."""

    segment_seconds: int = Field(default=6, ge=1, le=60, description="Target segment duration.")
    segment_type: Literal["ts", "fmp4"] = Field(default="ts", description="MPEG-TS or fragmented MP4.")
    playlist_type: Literal["vod", "event", "live"] = Field(
        default="vod", description="vod (complete list), event (grows) or live (rolling window)."
    )
    list_size: int = Field(default=6, ge=1, le=100, description="Segments kept in a live (rolling) playlist.")
    master_playlist: str = Field(
        default="master.m3u8",
        max_length=64,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]*\.m3u8$",
        description="File name of the master playlist.",
    )


class SpriteSpec(ApiModel):
    """A grid of thumbnails in one image."""

    columns: int = Field(default=5, ge=1, le=20, description="Thumbnails per row.")
    rows: int = Field(default=5, ge=1, le=20, description="Rows per sprite sheet.")


class ThumbnailSpec(ApiModel):
    """Still images taken at a fixed interval."""

    interval_seconds: int = Field(default=10, ge=1, le=3600, description="One thumbnail every N seconds.")
    width: int = Field(default=320, ge=16, le=3840, description="Thumbnail width; height keeps aspect.")
    format: Literal["jpg", "png"] = Field(default="jpg", description="jpg or png.")
    sprite: SpriteSpec | None = Field(default=None, description="Also tile them into sprite sheets.")


class JobResources(ApiModel):
    """Limits the worker enforces on this job's ffmpeg."""

    limits: ResourceList | None = Field(
        default=None,
        description=(
            "cpu caps ffmpeg's threads; memory caps the resident memory of ffmpeg and its children, "
            "measured every 0.5 s (going over it stops the job: MemoryLimitExceeded, not retried)."
        ),
    )


AUTO_MIN_SECONDS = 600


class ChunkingSpec(ApiModel):
    """Chunked encoding: the input is cut into time ranges that workers encode in parallel, then
    stitched. For long file inputs to mp4 files and hls ladders; the job's wall time shrinks with the
    pool's free slots at a small cost in total CPU (each chunk decodes from the keyframe before its
    start) and one stream-copy stitch."""

    mode: Literal["Off", "On", "Auto"] = Field(
        default="Off",
        description=(
            "Off (default): one worker runs the job. On: a planning task probes the input (its keyframes "
            "too, unless the outputs are an hls ladder, whose cuts are exact) and cuts it into chunks; child "
            "TranscodeJobs (labelled ffmpeg-rtmp.io/parent) encode each chunk's video and the whole input's "
            "audio (and the thumbnails) once, and a stitch task joins them by stream copy (mp4 files, hls "
            "ladders). Auto: chunked when the outputs allow it and the planning task finds the input at least "
            "autoMinSeconds long, else one worker runs the job; the condition "
            "Chunked says which and why."
        ),
    )
    chunk_seconds: int = Field(
        default=10,
        ge=2,
        le=3600,
        description=(
            "Nominal chunk length. A cut moves to a source keyframe within a quarter of it, else it is exact; "
            "a remainder of up to half a chunk joins the last chunk. With hls outputs it must be a whole "
            "multiple of hls.segmentSeconds (default 6), and cuts are exact: chunks start at segment boundaries."
        ),
    )
    max_chunks_in_flight: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="At most this many chunk tasks queued or running at once (default: all of them).",
    )
    auto_min_seconds: int = Field(
        default=AUTO_MIN_SECONDS,
        ge=1,
        le=86400 * 7,
        description=(
            f"mode Auto: inputs at least this long (default {AUTO_MIN_SECONDS} s) are chunked, shorter ones run "
            "single-pass (a short input then costs one extra probing task)."
        ),
    )


MAX_MICROS = 86400 * 7 * 1_000_000  # a week of input, as the input's own seconds fields allow


class ChunkTask(ApiModel):
    """Set by the operator on the child jobs of a chunked job (do not set it yourself): which part
    of the parent's work this child does. Intermediate files go to the parent's work area
    (`<output root>/<namespace>/<parent>/.chunks/`)."""

    kind: Literal["Plan", "Video", "Audio", "Stitch"] = Field(
        description=(
            "Plan: probe the input and store the chunk plan; Video: encode one chunk's video for every "
            "output; Audio: encode the whole input's audio for every output; Stitch: join the chunks and "
            "the audio into the parent's outputs."
        )
    )
    parent: str = Field(min_length=1, max_length=253, description="The chunked job this task belongs to.")
    chunk_seconds: int | None = Field(default=None, ge=2, le=3600, description="Plan: the nominal chunk length.")
    index: int | None = Field(default=None, ge=0, le=100000, description="Video: the chunk's number from 0.")
    start_micros: int | None = Field(
        default=None, ge=0, le=MAX_MICROS, description="Video: chunk start on the source timeline."
    )
    end_micros: int | None = Field(default=None, ge=1, le=MAX_MICROS, description="Video: chunk end (exclusive).")
    plan: str | None = Field(
        default=None, max_length=65536, description="Stitch: the chunk boundaries (as status.chunks.plan)."
    )


_CHUNKING_ON = "has(self.chunking) && self.chunking.mode == 'On'"
_CHUNK_SECONDS = "(has(self.chunking.chunkSeconds) ? self.chunking.chunkSeconds : 10)"
_SEGMENT_SECONDS = "(has(self.hls) && has(self.hls.segmentSeconds) ? self.hls.segmentSeconds : 6)"
_CHUNKING_RULES = (
    (
        f"!({_CHUNKING_ON}) || (has(self.input.uri) && self.input.uri.startsWith('/') && "
        "!(has(self.input.live) && self.input.live))",
        "chunking needs a file input: live, rtmp(s), http(s) and s3 inputs are not supported with chunking",
    ),
    (
        f"!({_CHUNKING_ON}) || self.outputs.all(o, o.container in ['mp4', 'hls'])",
        "chunking writes mp4 files and hls ladders: rtmp/flv, mkv and mpegts outputs are not supported with chunking",
    ),
    (
        f"!({_CHUNKING_ON}) || !self.outputs.exists(o, o.container == 'hls') || "
        f"{_CHUNK_SECONDS} % {_SEGMENT_SECONDS} == 0",
        "chunking.chunkSeconds must be a whole multiple of hls.segmentSeconds: chunks are cut at segment boundaries",
        "'chunking.chunkSeconds %d is not a whole multiple of hls.segmentSeconds %d: chunks are cut at segment "
        f"boundaries'.format([{_CHUNK_SECONDS}, {_SEGMENT_SECONDS}])",
    ),
    (
        f"!({_CHUNKING_ON}) || !has(self.destination)",
        "spec.destination is not supported with chunking yet: chunked outputs go to the pool's output volume",
    ),
    (
        f"!({_CHUNKING_ON}) || self.outputs.all(o, !has(o.video) || !(o.video.codec in ['copy', 'none']))",
        "chunking encodes video: video codec copy or none is not supported with chunking",
    ),
    (
        f"!({_CHUNKING_ON}) || self.outputs.all(o, !has(o.video) || !(has(o.video.twoPass) && o.video.twoPass))",
        "twoPass is not supported with chunking: a first pass would measure each chunk, not the whole input "
        "(use bitrate with maxrate)",
    ),
    (
        f"!({_CHUNKING_ON}) || self.outputs.all(o, !has(o.video) || !has(o.video.fps))",
        "fps is not supported with chunking yet",
    ),
    (
        f"!({_CHUNKING_ON}) || !(has(self.input.startSeconds) || has(self.input.durationSeconds) || "
        "(has(self.input.realtime) && self.input.realtime))",
        "input.startSeconds, input.durationSeconds and input.realtime are not supported with chunking yet",
    ),
    (
        "!has(self.chunking) || self.chunking.mode == 'Off' || !has(self.chunkTask)",
        "chunkTask is set by the operator on a chunked job's children",
    ),
)


class DestinationSpec(ApiModel):
    """Where the finished job's files go instead of the pool's output volume."""

    uri: str = Field(
        max_length=1024,
        pattern=PREFIX_URI_PATTERN,
        description=(
            "`s3://bucket/prefix/` (or `s3://bucket/`) in the pool's object storage (WorkerPool "
            "spec.objectStorage: endpoint, region, credentials). One prefix for the whole job: every output, "
            "HLS ladder, thumbnail and sprite is uploaded below it at the path it has in the job's folder "
            "(`out.mp4`, `hls/master.m3u8`, `hls/720p/seg_000.ts`, ...), so playlists keep their relative "
            "references. Files are written to the worker's scratch space first and uploaded once the "
            "attempt succeeded: media, then variant playlists, then master playlists, then `manifest.json` "
            "(files, sizes, SHA-256, attempt), which marks a complete set. Above 8 MiB a file is uploaded "
            "in parts. Deleting the job (or its TTL) never deletes what was uploaded."
        ),
    )


_OUTPUTS_RULES = rules(
    (
        "self.filter(o, o.container == 'hls').size() == 0 || "
        "self.filter(o, o.container == 'hls').all(o, !has(o.video) || o.video.codec != 'none')",
        "every hls output needs a video stream",
    ),
)


def _immutable_optional(name: str) -> tuple[str, str]:
    """An optional field that may be neither added, removed nor changed after creation."""
    return (
        f"has(self.{name}) == has(oldSelf.{name}) && (!has(self.{name}) || self.{name} == oldSelf.{name})",
        f"{name} is immutable",
    )


_SPEC_RULES = rules(
    *_CHUNKING_RULES,
    (
        "self.accelerator != 'nvenc' || self.outputs.all(o, !has(o.video) || !has(o.video.preset) || "
        f"o.video.preset in {_cel_list((*NVENC_PRESETS, 'fast', 'medium', 'slow'))})",
        "accelerator nvenc takes presets p1..p7 or fast, medium, slow",
    ),
    (
        "self.accelerator != 'qsv' || self.outputs.all(o, !has(o.video) || !has(o.video.preset) || "
        f"o.video.preset in {_cel_list(QSV_PRESETS)})",
        f"accelerator qsv takes presets {', '.join(QSV_PRESETS)}",
    ),
    (
        "self.accelerator != 'vaapi' || self.outputs.all(o, !has(o.video) || !has(o.video.preset) || "
        f"o.video.preset in {_cel_list(VAAPI_PRESETS)})",
        "accelerator vaapi takes presets fast, medium, slow",
    ),
    (
        "!(self.accelerator in ['cpu', 'auto']) || self.outputs.all(o, !has(o.video) || "
        f"!has(o.video.preset) || !(o.video.preset in {_cel_list(NVENC_PRESETS)}))",
        "presets p1..p7 are NVENC's: set accelerator nvenc or use ultrafast..veryslow",
    ),
    (
        "!self.outputs.exists(o, has(o.video) && has(o.video.twoPass) && o.video.twoPass) || "
        "self.accelerator == 'cpu' || self.hardwarePolicy == 'disabled'",
        "twoPass runs on CPU encoders: set accelerator cpu (or hardwarePolicy disabled)",
    ),
    (
        "self.hardwarePolicy != 'disabled' || self.accelerator in ['auto', 'cpu']",
        "hardwarePolicy disabled needs accelerator auto or cpu",
    ),
    (
        "!has(self.hls) || self.outputs.exists(o, o.container == 'hls')",
        "hls settings need at least one output with container hls",
    ),
    (
        "!has(self.input.restartPolicy) || (has(self.input.live) && self.input.live) || "
        "(has(self.input.uri) && self.input.uri.startsWith('rtmp'))",
        "input.restartPolicy applies to live inputs only",
    ),
    ("self.input == oldSelf.input", "input is immutable"),
    ("self.outputs == oldSelf.outputs", "outputs are immutable"),
    ("self.accelerator == oldSelf.accelerator", "accelerator is immutable"),
    ("self.hardwarePolicy == oldSelf.hardwarePolicy", "hardwarePolicy is immutable"),
    _immutable_optional("poolRef"),
    _immutable_optional("extraArgs"),
    _immutable_optional("hls"),
    _immutable_optional("thumbnails"),
    _immutable_optional("chunking"),
    _immutable_optional("chunkTask"),
    _immutable_optional("destination"),
    (
        "!has(self.destination) || !((has(self.input.uri) && self.input.uri.startsWith('rtmp')) || "
        "(has(self.input.live) && self.input.live))",
        "destination uploads a finished job's files: a live job's playlists change while it runs, "
        "write them to the pool's output volume",
    ),
    (
        "!has(self.destination) || self.outputs.all(o, !has(o.path) || o.path != 'manifest.json')",
        "manifest.json under spec.destination is the job's manifest: give the output another path",
    ),
    (
        "!has(self.destination) || has(self.thumbnails) || self.outputs.exists(o, !has(o.url) && !has(o.urlFrom))",
        "spec.destination uploads files, and every output is an rtmp:// url stream",
    ),
)
# Transition rules (those naming oldSelf) only run on update; the server skips them on create.

_EXTRA_ARGS_RULES = rules(
    (
        "self.all(a, !a.matches('[;&|$`<>\\\\\\\\\\\\n\\\\r]'))",
        "extraArgs is an argv list, not a shell string: items must not contain ; & | $ ` < > \\ or newlines",
    ),
    (
        "self.all(a, !a.contains('/'))",
        "extraArgs must not name files or URLs (no '/'): outputs go in spec.outputs",
    ),
    (
        f"self.all(a, !a.matches({_cel_string(FORBIDDEN_OPTION_PATTERN)}))",
        "extraArgs must not set inputs, outputs, formats, log files or devices "
        "(-i, -y, -f, -progress, -report, -passlogfile, -init_hw_device, ...): the operator sets those",
    ),
    (
        f"self.all(a, !a.matches({_cel_string(FORBIDDEN_FILTER_PATTERN)}))",
        "extraArgs must not use filters that open files (movie, amovie, sendcmd, zmq, subtitles, ass)",
    ),
)


class TranscodeJobSpec(ApiModel):
    """What to transcode, into what, where it may run and how hard to try."""

    model_config = api_config(json_schema_extra=_SPEC_RULES)

    input: InputSpec = Field(description="The source: a file under a media root, an object or a stream URL.")
    outputs: list[OutputSpec] = Field(
        min_length=1,
        max_length=10,
        description="Renditions made from one decode in a single ffmpeg run; names are unique.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            **_OUTPUTS_RULES,
        },
    )
    destination: DestinationSpec | None = Field(
        default=None,
        description=(
            "Upload the job's files to object storage (`uri: s3://bucket/prefix/`) instead of writing them to "
            "the pool's output volume (default)."
        ),
    )
    hls: HlsSpec | None = Field(default=None, description="Packaging of the `hls` outputs into one ABR ladder.")
    thumbnails: ThumbnailSpec | None = Field(default=None, description="Still images every N seconds.")
    accelerator: Accelerator = Field(
        default="auto",
        description="Encoder family: auto (any pool), nvenc, qsv, vaapi or cpu.",
    )
    hardware_policy: HardwarePolicy = Field(
        default="preferred",
        description=(
            "required: only a pool of the accelerator; preferred: fall back to a CPU pool "
            "when no such pool exists or its encoder is unavailable; disabled: CPU only."
        ),
    )
    pool_ref: LocalObjectReference | None = Field(
        default=None, description="Run in this WorkerPool only (default: any matching pool)."
    )
    priority: int = Field(
        default=0, ge=-1000, le=1000, description="Higher runs first; FIFO within a priority. Mutable."
    )
    timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        le=604800,
        description="Fail with DeadlineExceeded when a run takes longer (like activeDeadlineSeconds).",
    )
    backoff_limit: int = Field(
        default=3, ge=0, le=20, description="Retries of retryable failures before the job fails."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, le=31536000, description="Delete the job this long after it finished."
    )
    sla_seconds: int | None = Field(
        default=None,
        ge=1,
        le=604800,
        description="Submit-to-finish target; counted in the SLA compliance metric.",
    )
    suspend: bool = Field(
        default=False,
        description="Hold the job: not scheduled while true; a running attempt is stopped and requeued.",
    )
    extra_args: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        default=None,
        max_length=64,
        description=(
            "Extra ffmpeg output options as an argv list (never a shell string), e.g. "
            "[`-tune`, `film`]. Options naming files, devices or formats are refused."
        ),
        json_schema_extra={"x-kubernetes-list-type": "atomic", **_EXTRA_ARGS_RULES},
    )
    resources: JobResources | None = Field(default=None, description="Per-job limits the worker enforces.")
    chunking: ChunkingSpec | None = Field(
        default=None, description="Encode a long file input in chunks on several workers at once (default Off)."
    )
    chunk_task: ChunkTask | None = Field(
        default=None, description="Set by the operator on a chunked job's children: the part this child does."
    )
    notifications: NotificationsSpec | None = Field(
        default=None,
        description=(
            "CloudEvents webhooks told about this job's transitions (Queued, Running, Succeeded, Failed, "
            "Progress), signed, retried until a 2xx or a deadline; delivery is recorded in status.notifications."
        ),
    )


Phase = Literal["Pending", "Queued", "Scheduled", "Running", "Succeeded", "Failed", "Cancelled"]
FailureReason = Literal[
    "InputNotFound", "InputNotAllowed", "InvalidInput", "EncoderUnavailable", "DeadlineExceeded",
    "WorkerLost", "OOMKilled", "MemoryLimitExceeded", "InvalidSpec", "FfmpegError", "OutputError", "Stalled",
    "BackoffLimitExceeded", "StreamEnded", "DestinationNotAllowed", "BucketNotFound", "ObjectStorageAccessDenied",
    "ObjectStorageUnreachable", "ObjectStorageError", "ObjectStorageNotConfigured",
    "ObjectStorageCredentialsUnavailable", "SecretNotFound", "InvalidSecret",
]  # fmt: skip


class Progress(ApiModel):
    """How far the running attempt is."""

    percent: float | None = Field(default=None, ge=0, le=100, description="0..100; unset for live.")
    fps: float | None = Field(default=None, ge=0, description="Frames encoded per second.")
    speed: float | None = Field(default=None, ge=0, description="Media seconds per wall second.")
    out_time_seconds: float | None = Field(default=None, ge=0, description="Media time written so far.")
    total_bytes: int | None = Field(default=None, ge=0, description="Bytes written so far.")


class OutputResult(ApiModel):
    """A written file, as ffprobe reports it."""

    name: str = Field(max_length=64, description="Rendition name (or `master`, `thumbnails`).")
    path: str = Field(max_length=1100, description="Where it was written: a path, or s3://bucket/key when uploaded.")
    bytes: int = Field(ge=0, description="File size.")
    duration_seconds: float | None = Field(default=None, description="Media duration.")
    codec: str | None = Field(default=None, max_length=64, description="Video (else audio) codec.")
    width: int | None = Field(default=None, description="Video width.")
    height: int | None = Field(default=None, description="Video height.")
    bitrate: int | None = Field(default=None, description="Overall bits per second.")
    count: int | None = Field(default=None, description="For thumbnails: how many images.")


class AttemptResult(ApiModel):
    """What the worker reported for an attempt; the operator turns it into the job's phase."""

    attempt: int = Field(ge=1, description="The attempt this result belongs to.")
    worker: str = Field(max_length=253, description="Worker that ran it.")
    outcome: Literal["Succeeded", "Failed", "HandedBack"] = Field(
        description="Succeeded, Failed, or HandedBack (the worker drained before finishing)."
    )
    reason: str | None = Field(default=None, max_length=64, description="Why it failed.")
    message: str | None = Field(default=None, max_length=1024, description="What went wrong.")
    retryable: bool | None = Field(default=None, description="Whether another attempt may succeed.")
    stderr_tail: str | None = Field(default=None, max_length=4096, description="ffmpeg's last stderr lines.")
    finish_time: Timestamp | None = Field(default=None, description="When the attempt ended.")


class ChunkRetry(ApiModel):
    """A task of a chunked job that was retried (after a failed attempt or a lost worker)."""

    part: str = Field(max_length=16, description="The task: plan, audio, stitch, or cNNNNN (chunk NNNNN).")
    attempts: int = Field(ge=0, description="Attempts so far (a requeue after a lost worker counts too).")
    failures: int = Field(ge=0, description="Failed attempts that counted against backoffLimit.")
    reason: str | None = Field(default=None, max_length=64, description="The last failure reason known.")


class ChunksStatus(ApiModel):
    """A chunked job's chunks (on the parent), or the plan a Plan task made (on that child)."""

    plan: str | None = Field(
        default=None,
        max_length=65536,
        description="Chunk boundaries in microseconds of the source timeline, comma-separated, from 0 to the end.",
    )
    total: int | None = Field(default=None, ge=0, description="Chunks in the plan.")
    succeeded: int | None = Field(default=None, ge=0, description="Chunks encoded.")
    running: int | None = Field(default=None, ge=0, description="Chunks being encoded.")
    failed: int | None = Field(default=None, ge=0, description="Chunks failed past their backoffLimit.")
    summary: str | None = Field(default=None, max_length=64, description="`succeeded/total`, or the stage.")
    retried: int | None = Field(
        default=None,
        ge=0,
        description="Tasks (chunks, audio, plan, stitch) retried after a failed attempt or a lost worker.",
    )
    retries: list[ChunkRetry] | None = Field(
        default=None,
        max_length=20,
        description="Up to 20 of the retried tasks, those with the most attempts first (never one entry per chunk).",
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )


class TranscodeJobStatus(ApiModel):
    """Observed state, written by the operator and by the worker running the current attempt."""

    phase: Phase | None = Field(default=None, description="Display phase; conditions carry the detail.")
    conditions: Conditions | None = None
    observed_generation: int | None = Field(default=None, description="Last spec generation acted on.")
    pool: str | None = Field(default=None, max_length=253, description="WorkerPool of the current attempt.")
    worker: str | None = Field(default=None, max_length=253, description="Worker Pod of the current attempt.")
    node: str | None = Field(default=None, max_length=253, description="Node of that worker.")
    accelerator: str | None = Field(default=None, max_length=16, description="Encoder family used.")
    attempt: int | None = Field(default=None, ge=0, description="Current attempt; 1 for the first run.")
    failed: int | None = Field(default=None, ge=0, description="Failed attempts that counted against backoffLimit.")
    progress: Progress | None = None
    heartbeat_time: Timestamp | None = Field(default=None, description="Last progress write of the worker.")
    queued_time: Timestamp | None = Field(default=None, description="When the job was first queued.")
    not_before: Timestamp | None = Field(default=None, description="Retry backoff: not scheduled before this.")
    scheduled_time: Timestamp | None = Field(default=None, description="When the current attempt was assigned.")
    start_time: Timestamp | None = Field(default=None, description="When ffmpeg of the current attempt started.")
    completion_time: Timestamp | None = Field(default=None, description="When the job finished.")
    queue_seconds: float | None = Field(default=None, description="Submit to first start.")
    outputs: list[OutputResult] | None = Field(
        default=None,
        max_length=64,
        description="Files the succeeded attempt wrote, as ffprobe reports them (streams are not listed).",
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    result: AttemptResult | None = None
    restarts: int | None = Field(default=None, ge=0, description="Live restarts after stream loss.")
    chunks: ChunksStatus | None = Field(default=None, description="Chunked jobs: the plan and the chunks' states.")
    reason: str | None = Field(
        default=None, max_length=64, description=f"Why the job failed: {', '.join(get_args(FailureReason))}."
    )
    message: str | None = Field(default=None, max_length=4096, description="Human-readable status.")
    notifications: list[TargetDelivery] | None = Field(
        default=None,
        max_length=4,
        description="Delivery of spec.notifications, per target: pending events, failures, the last delivered.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class TranscodeJob(ApiModel):
    """A transcode of one input into one or more renditions."""

    model_config = api_config(extra="ignore")

    api_version: str = Field(default="ffmpeg-rtmp.io/v1alpha1")
    kind: str = Field(default="TranscodeJob")
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: TranscodeJobSpec
    status: TranscodeJobStatus | None = None
