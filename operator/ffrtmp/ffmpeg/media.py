"""What the planner needs to know about a source, and the pure rules that follow from it.

`SourceMedia` is a typed summary of ffprobe's `-show_streams -show_format` JSON: the first
video stream's size, sample aspect ratio, field order and colour tags, and every audio
stream with its language and channel count. The planner takes it (or None when the input
cannot be probed, e.g. a live stream not up yet) and decides sizes, deinterlacing and tone mapping.

Size rule (`output_size`): every encoded output is square-pixel (`setsar=1`) with even
width and height (4:2:0 chroma needs both). The source's display aspect ratio (DAR =
width * SAR / height) is kept:

* no size given: the source height is kept and the width becomes height * DAR (for square
  pixels, the source width), each rounded to the nearest even number, halves up
  (1079x1917 -> 1080x1918; 720x480 SAR 32:27 -> 854x480);
* one dimension given: the other is the given one over (or times) the DAR, nearest even;
* both given: used as they are (the caller asked for that frame).

A phone clip stored 1920x1080 with a 90-degree display rotation is 1080x1920 to the planner:
ffmpeg rotates decoded frames upright (autorotate) before the filter graph sees them, so the
summary swaps width and height (and inverts the SAR) for rotations of 90 and 270 degrees.

Rounding to the nearest even size moves the aspect by at most one pixel in each dimension
(under 1 % for anything 100 pixels or larger).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

INTERLACED_FIELD_ORDERS = ("tt", "bb", "tb", "bt")
TOP_FIELD_FIRST_ORDERS = ("tt", "tb")
PQ_TRANSFER = "smpte2084"
HLG_TRANSFER = "arib-std-b67"
HdrKind = Literal["pq", "hlg"]


@dataclass(frozen=True)
class AudioStream:
    """One audio stream of the source; `position` is its index among audio streams (`0:a:N`)."""

    position: int
    codec: str | None
    channels: int | None
    language: str | None


@dataclass(frozen=True)
class SourceMedia:
    """The parts of a probed source that change the plan."""

    width: int | None = None
    height: int | None = None
    sample_aspect: Fraction = Fraction(1)
    field_order: str | None = None
    pix_fmt: str | None = None
    video_codec: str | None = None  # ffprobe's codec_name of the video stream (h264, prores, ...)
    color_range: str | None = None
    color_transfer: str | None = None
    color_primaries: str | None = None
    color_space: str | None = None
    audio_streams: tuple[AudioStream, ...] = ()
    start_seconds: float | None = None
    rotation: int = 0  # display rotation in degrees; width/height above are already upright
    mastering_display: str | None = None  # x265 `master-display` syntax, when ffprobe reported it
    content_light: str | None = None  # x265 `max-cll` syntax "MaxCLL,MaxFALL"

    @property
    def has_video(self) -> bool:
        return self.width is not None and self.height is not None

    @property
    def interlaced(self) -> bool:
        return self.field_order in INTERLACED_FIELD_ORDERS

    @property
    def hdr(self) -> HdrKind | None:
        if self.color_transfer == PQ_TRANSFER:
            return "pq"
        if self.color_transfer == HLG_TRANSFER:
            return "hlg"
        return None

    @property
    def full_range(self) -> bool:
        return self.color_range == "pc" or (self.pix_fmt or "").startswith("yuvj")

    @property
    def display_aspect(self) -> Fraction | None:
        if self.width is None or self.height is None or self.height == 0:
            return None
        return Fraction(self.width, self.height) * self.sample_aspect


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _ratio(value: object) -> Fraction:
    """ffprobe's `sample_aspect_ratio` ("32:27"); 1 when absent, unknown ("0:1") or malformed."""
    num, sep, den = str(value or "").partition(":")
    if not sep:
        return Fraction(1)
    n, d = _int(num), _int(den)
    if n is None or d is None or n <= 0 or d <= 0:
        return Fraction(1)
    return Fraction(n, d)


def _finite_number(value: object) -> float | None:
    try:
        number = float(str(value))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _x265_master_display(side: dict[str, Any]) -> str | None:
    """Mastering display side data as x265's `G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)` in its units
    (chromaticities in 1/50000, luminance in 1/10000 cd/m2)."""

    def scaled(key: str, unit: int) -> int | None:
        num, _, den = str(side.get(key, "")).partition("/")
        n, d = _int(num), _int(den or "1")
        return None if n is None or not d else round(Fraction(n, d) * unit)

    keys = ["green_x", "green_y", "blue_x", "blue_y", "red_x", "red_y", "white_point_x", "white_point_y"]
    chroma = [scaled(k, 50000) for k in keys]
    light = [scaled("max_luminance", 10000), scaled("min_luminance", 10000)]
    if any(v is None for v in (*chroma, *light)):
        return None
    g = f"G({chroma[0]},{chroma[1]})B({chroma[2]},{chroma[3]})R({chroma[4]},{chroma[5]})"
    return f"{g}WP({chroma[6]},{chroma[7]})L({light[0]},{light[1]})"


def _rotation(video: dict[str, Any]) -> int:
    """Display rotation in degrees, 0..359: the display matrix side data, else the old `rotate` tag."""
    value: object = (video.get("tags") or {}).get("rotate", 0)
    for side in video.get("side_data_list") or []:
        if side.get("side_data_type") == "Display Matrix" and side.get("rotation") is not None:
            value = side["rotation"]
    degrees = _finite_number(value)  # a number, possibly written as a float ("-90.00")
    return round(degrees) % 360 if degrees is not None else 0


def source_media_from_probe(document: dict[str, Any]) -> SourceMedia:
    """A SourceMedia from ffprobe's `-show_format -show_streams` JSON (plus, optionally, the
    first video frame's `frames` entry, where HEVC's mastering display metadata appears)."""
    streams: list[dict[str, Any]] = document.get("streams") or []
    fmt: dict[str, Any] = document.get("format") or {}
    video = next(
        (s for s in streams if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")),
        None,
    )
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    mastering = content_light = None
    # HEVC carries HDR10 metadata in SEI: ffprobe shows it on frames (`-show_frames`), not streams
    frames: list[dict[str, Any]] = document.get("frames") or []
    side_data = [
        *((video or {}).get("side_data_list") or []),
        *(frames[0].get("side_data_list") or [] if frames else []),
    ]
    for side in side_data:
        kind = side.get("side_data_type", "")
        if kind == "Mastering display metadata":
            mastering = _x265_master_display(side)
        elif kind == "Content light level metadata":
            max_cll, max_fall = _int(side.get("max_content")), _int(side.get("max_average"))
            if max_cll is not None and max_fall is not None:
                content_light = f"{max_cll},{max_fall}"
    v = video or {}
    rotation = _rotation(v)
    width, height = (_int(v.get("width")), _int(v.get("height"))) if video else (None, None)
    sample_aspect = _ratio(v.get("sample_aspect_ratio"))
    if rotation % 180 == 90:  # autorotate turns the frames: the filter graph sees them upright
        width, height, sample_aspect = height, width, 1 / sample_aspect
    return SourceMedia(
        width=width,
        height=height,
        sample_aspect=sample_aspect,
        field_order=v.get("field_order"),
        pix_fmt=v.get("pix_fmt"),
        video_codec=v.get("codec_name"),
        color_range=v.get("color_range"),
        color_transfer=v.get("color_transfer"),
        color_primaries=v.get("color_primaries"),
        color_space=v.get("color_space"),
        audio_streams=tuple(
            AudioStream(
                position=i,
                codec=s.get("codec_name"),
                channels=_int(s.get("channels")),
                language=(s.get("tags") or {}).get("language"),
            )
            for i, s in enumerate(audio)
        ),
        start_seconds=_finite_number(fmt.get("start_time")),
        rotation=rotation,
        mastering_display=mastering,
        content_light=content_light,
    )


def nearest_even(value: Fraction | float) -> int:
    """The nearest even integer, halves rounded up, at least 2."""
    return max(2, 2 * math.floor(Fraction(value) / 2 + Fraction(1, 2)))


def output_size(source: SourceMedia, width: int | None, height: int | None) -> tuple[int, int] | None:
    """The square-pixel, even output size for the requested width/height (see the module doc);
    None when the source size is unknown and the request does not fix both dimensions."""
    if width is not None and height is not None:
        return width, height
    aspect = source.display_aspect
    if aspect is None or source.height is None:
        return None
    if width is not None:
        return width, nearest_even(width / aspect)
    if height is not None:
        return nearest_even(height * aspect), height
    return nearest_even(source.height * aspect), nearest_even(source.height)
