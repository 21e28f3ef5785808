"""Checks of a spec against what ffmpeg can do, before any argv is built (InvalidSpec).

The CRD's CEL rules refuse most of this at `kubectl apply`; these checks repeat them for
specs that reach the worker otherwise and add those that need the accelerator or the input.
"""

from __future__ import annotations

from ffrtmp.api.job import TAG_CONTAINERS, AudioSpec, OutputSpec, VideoSpec
from ffrtmp.ffmpeg.encoders import (
    AUDIO_CODECS_BY_CONTAINER,
    MP3_SAMPLE_RATES,
    OPUS_SAMPLE_RATES,
    VIDEO_CODECS_BY_CONTAINER,
)
from ffrtmp.ffmpeg.invalid_spec import InvalidSpec

MAX_CRF_H26X = 51
_VIDEO_SETTINGS = (
    "width",
    "height",
    "fps",
    "gop",
    "preset",
    "bitrate",
    "crf",
    "maxrate",
    "bufsize",
    "two_pass",
    "deinterlace",
    "hdr",
)


# Output options that take no value: what follows them is a new item, never their value.
FLAG_OPTIONS = frozenset({
    "-an", "-vn", "-sn", "-dn", "-shortest", "-copyts", "-start_at_zero", "-xerror", "-bitexact",
    "-apad", "-reinit_filter", "-autorotate", "-noautorotate", "-autoscale", "-noautoscale",
})  # fmt: skip


def check_extra_args(extra: list[str]) -> None:
    """extraArgs are options and their values only: a bare item that is not an option's value
    would be taken by ffmpeg as one more output file (written outside the job's folder)."""
    expects_value = False
    for item in extra:
        if item.startswith("-") and not _is_number(item):
            expects_value = item not in FLAG_OPTIONS
            continue
        if not expects_value:
            raise InvalidSpec(
                f"extraArgs item {item!r} is not the value of an option: ffmpeg would take it as another output file"
            )
        expects_value = False


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_folders(output_dir: str, scratch_dir: str) -> None:
    for name, folder in (("output_dir", output_dir), ("scratch_dir", scratch_dir)):
        if not folder.startswith("/"):
            raise ValueError(f"{name} must be an absolute path: {folder}")
        # '%' is a pattern in hls/image2 names; ':' and '=' split -x264-params values.
        if any(c in folder for c in "%:=,;") or any(c.isspace() for c in folder):
            raise ValueError(f"{name} must not contain '%', ':', '=', ',', ';' or spaces: {folder}")


def validate_output(output: OutputSpec, video: VideoSpec, audio: AudioSpec, accelerator: str, live: bool) -> None:
    name = f"output {output.name}"
    if output.url is not None and output.path is not None:
        raise InvalidSpec(f"{name}: set path or url, not both")
    if output.url is not None and output.container != "flv":
        raise InvalidSpec(f"{name}: an rtmp:// url output needs container flv")
    if output.container == "hls" and (output.path is not None or output.url is not None):
        raise InvalidSpec(f"{name}: hls outputs are written under the job's hls folder; set no path or url")
    if output.tags is not None and output.container not in TAG_CONTAINERS:
        raise InvalidSpec(f"{name}: tags are written into mp4, mkv and flv outputs only, not {output.container}")
    if video.codec not in VIDEO_CODECS_BY_CONTAINER[output.container]:
        if output.container == "hls" and video.codec == "none":
            raise InvalidSpec(f"{name}: every hls output needs a video stream")
        raise InvalidSpec(f"{name}: container {output.container} cannot carry {video.codec} video")
    if audio.codec not in AUDIO_CODECS_BY_CONTAINER[output.container]:
        raise InvalidSpec(f"{name}: container {output.container} cannot carry {audio.codec} audio")
    if video.codec == "none" and audio.codec == "none":
        raise InvalidSpec(f"{name}: video and audio are both none; the output would be empty")
    if video.codec in ("copy", "none"):
        given = [f for f in _VIDEO_SETTINGS if getattr(video, f) is not None]
        if given:
            what = "re-uses the input stream" if video.codec == "copy" else "drops the video"
            raise InvalidSpec(f"{name}: video codec {video.codec} {what}; {', '.join(given)} must not be set")
    else:
        _validate_video(name, video, accelerator, live)
        if output.container == "hls" and video.bitrate is None and video.maxrate is None:
            raise InvalidSpec(
                f"{name}: hls outputs need video.bitrate or video.maxrate: the master playlist's "
                "BANDWIDTH comes from it, and ffmpeg leaves variants without one out"
            )
    if audio.loudness is not None and live:
        raise InvalidSpec(f"{name}: loudness normalisation measures the whole input first; a live stream cannot be")
    if audio.codec in ("copy", "none"):
        if audio.loudness is not None:
            raise InvalidSpec(f"{name}: loudness normalisation re-encodes audio: not with codec {audio.codec}")
        if audio.bitrate is not None or audio.channels is not None or audio.sample_rate is not None:
            raise InvalidSpec(f"{name}: audio codec {audio.codec} takes no bitrate, channels or sampleRate")
    elif audio.codec == "opus" and audio.sample_rate is not None and audio.sample_rate not in OPUS_SAMPLE_RATES:
        raise InvalidSpec(f"{name}: opus supports sample rates {', '.join(map(str, OPUS_SAMPLE_RATES))}")
    elif audio.codec == "mp3":
        if audio.sample_rate is not None and audio.sample_rate not in MP3_SAMPLE_RATES:
            raise InvalidSpec(f"{name}: mp3 supports sample rates {', '.join(map(str, MP3_SAMPLE_RATES))}")
        if audio.channels is not None and audio.channels > 2:
            raise InvalidSpec(f"{name}: mp3 carries at most 2 channels")


def _validate_video(name: str, video: VideoSpec, accelerator: str, live: bool) -> None:
    if video.bitrate is not None and video.crf is not None:
        raise InvalidSpec(f"{name}: bitrate and crf are mutually exclusive: set one")
    if video.maxrate is not None and video.bitrate is None and video.crf is None:
        raise InvalidSpec(f"{name}: maxrate needs bitrate or crf")
    if video.bufsize is not None and video.maxrate is None:
        raise InvalidSpec(f"{name}: bufsize needs maxrate")
    if video.crf is not None:
        limit = 63 if video.codec == "av1" and accelerator == "cpu" else MAX_CRF_H26X
        if video.crf > limit:
            raise InvalidSpec(f"{name}: crf {video.crf} is out of range for {video.codec}: 0..{limit}")
        if accelerator == "qsv" and video.crf < 1:
            raise InvalidSpec(f"{name}: qsv quality (crf) ranges 1..{MAX_CRF_H26X}")
    for dimension in ("width", "height"):
        value = getattr(video, dimension)
        if value is not None and value % 2:
            raise InvalidSpec(f"{name}: {dimension} {value} must be even (4:2:0 video)")
    if video.hdr == "passthrough" and video.codec not in ("hevc", "av1"):
        raise InvalidSpec(f"{name}: hdr passthrough needs codec hevc or av1 (10-bit); {video.codec} gets tonemap")
    if video.codec == "av1" and accelerator == "cpu" and video.two_pass:
        raise InvalidSpec(f"{name}: twoPass is supported for h264 and hevc")
    if video.two_pass:
        if accelerator != "cpu":
            raise InvalidSpec(f"{name}: twoPass is CPU-only (libx264/libx265); this job runs on {accelerator}")
        if video.codec not in ("h264", "hevc"):
            raise InvalidSpec(f"{name}: twoPass is supported for h264 and hevc")
        if video.bitrate is None:
            raise InvalidSpec(f"{name}: twoPass needs a bitrate target")
        if live:
            raise InvalidSpec(f"{name}: twoPass needs a file input; a live stream cannot be read twice")
