"""One rendition as the planner sees it, and its stream choices: maps, audio options, size."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ffrtmp.api.job import AudioSpec, OutputSpec, VideoSpec
from ffrtmp.ffmpeg.encoders import AUDIO_ENCODERS
from ffrtmp.ffmpeg.filters import VideoProcessing
from ffrtmp.ffmpeg.invalid_spec import InvalidSpec
from ffrtmp.ffmpeg.loudness import apply_filter
from ffrtmp.ffmpeg.media import SourceMedia

DEFAULT_AUDIO_BITRATE = "128k"


@dataclass
class Rendition:
    """One output being planned: its spec parts, where it goes, and what the planner decided."""

    output: OutputSpec
    video: VideoSpec
    audio: AudioSpec
    path: str  # relative to the output folder, or the URL
    target: str  # what ffmpeg writes to
    branch: str | None = None  # filter-graph label of the encoded video
    preset: str | None = None  # resolved for the accelerator
    processing: VideoProcessing | None = None  # for encoded video
    audio_stream: str = "0:a:0"  # the source audio stream it maps
    filters: list[str] = field(default_factory=list)


# Encoder options of a rendition's video:
# (rendition, stream specifier suffix, pass number or None, inside the hls output) -> options
VideoArgs = Callable[[Rendition, str, int | None, bool], list[str]]


def audio_args(r: Rendition, spec_suffix: str) -> list[str]:
    audio, s = r.audio, spec_suffix
    if audio.codec == "none":
        return ["-an"]
    if audio.codec == "copy":
        return [f"-c{s}", "copy"]
    args = [f"-c{s}", AUDIO_ENCODERS[audio.codec], f"-b{s}", audio.bitrate or DEFAULT_AUDIO_BITRATE]
    if audio.channels is not None:
        args += [f"-ac{s}", str(audio.channels)]
    if audio.sample_rate is not None:
        args += [f"-ar{s}", str(audio.sample_rate)]
    if audio.loudness is not None:
        args += [f"-filter{s}", apply_filter(audio.loudness, r.audio_stream, audio.sample_rate)]
    return args


def audio_stream(output_name: str, audio: AudioSpec, source: SourceMedia | None) -> str:
    """The source audio stream a rendition maps: by `track`, by `language`, else the first.

    With a probed source a track or language that is not there is InvalidSpec; without one a
    language becomes ffmpeg's metadata specifier `0:a:m:language:<lang>`.
    """
    if audio.track is not None:
        if source is not None and audio.track >= len(source.audio_streams):
            count = len(source.audio_streams)
            raise InvalidSpec(f"output {output_name}: audio track {audio.track} does not exist (the input has {count})")
        return f"0:a:{audio.track}"
    if audio.language is not None:
        if source is None:
            return f"0:a:m:language:{audio.language}"
        for stream in source.audio_streams:
            if stream.language == audio.language:
                return f"0:a:{stream.position}"
        found = ", ".join(sorted({s.language for s in source.audio_streams if s.language})) or "none tagged"
        raise InvalidSpec(f"output {output_name}: the input has no audio in language {audio.language} ({found})")
    return "0:a:0"


def video_map(r: Rendition) -> list[str]:
    if r.video.codec == "none":
        return []
    if r.video.codec == "copy":
        return ["-map", "0:v:0"]
    return ["-map", f"[{r.branch}]"]


def audio_map(r: Rendition, *, required: bool) -> list[str]:
    if r.audio.codec == "none":
        return []
    return ["-map", r.audio_stream if required else f"{r.audio_stream}?"]


def expected_size(r: Rendition) -> tuple[int | None, int | None]:
    if r.video.codec in ("copy", "none"):
        return None, None
    if r.processing is not None and r.processing.size is not None:
        return r.processing.size
    return r.video.width, r.video.height
