"""Video filter graphs: per-rendition chains (deinterlace, fps, size, colour) and the split.

`video_processing` decides, from the rendition's VideoSpec and the probed source, what a
rendition's picture needs; `rendition_filters` and `colour_options` turn that into filters
and encoder options for an accelerator. Order in a chain: rotate (hardware frames only),
deinterlace, fps, scale (+ `setsar=1`), tone map.

* Rotation (display matrix / rotate tag): ffmpeg turns software frames upright itself
  (autorotate) but leaves hardware frames as stored, so hardware chains start with the
  turn: vaapi `transpose_vaapi`, qsv `vpp_qsv=transpose`, nvenc (no CUDA transpose in
  ffmpeg 5.1) download, `transpose`, upload. ffprobe's rotation 90 is `cclock`, 270 `clock`.

* Deinterlace (`deinterlace` auto/on/off; auto = the probe's field order is tt, bb, tb or
  bt): one frame out per frame in, both fields' order taken from the stream. CPU
  `bwdif=mode=send_frame:parity=auto:deint=all`, nvenc `yadif_cuda` (same options), vaapi
  `deinterlace_vaapi=rate=frame`, qsv `vpp_qsv=deinterlace=2` (advanced).
* Size: see `media.output_size`; with a probed source every output is even and square-pixel.
  Live inputs are probed briefly too, so their output size is fixed by the first picture (a
  size change mid-stream is scaled to it: encoders and players keep one size). Without a probe
  (a stream not up yet when the attempt started): the given dimension, the other `-2`; none
  given, `2*round(iw/2)` x `2*round(ih/2)`, the nearest even size of each frame (SAR kept).
* Colour, with a probed SDR source or an HDR source being tone-mapped: outputs are tagged
  BT.709 (`-color_primaries/-color_trc/-colorspace bt709`) and limited range (`-color_range
  tv`). The scaler (cpu `scale`, vaapi `scale_vaapi`) converts what differs: full-range
  (yuvj / pc) input to limited range (`out_range=tv`), another matrix to BT.709
  (`out_color_matrix=bt709`). An untagged matrix is taken as BT.601 below 720 lines (what
  swscale assumes for untagged frames, and what SD is) and BT.709 from 720 lines up. The nvenc
  and qsv scalers cannot convert either, so there the tags say what the pixels still are: the
  source's matrix, and full range (`pc`) for a full-range source.
* HDR (PQ `smpte2084`, HLG `arib-std-b67`), `hdr` tonemap (default): to SDR BT.709 by
  linearising with zscale (nominal peak 100 nits), converting primaries to BT.709 in float,
  the `hable` curve (`tonemap=hable:desat=0`), then BT.709 transfer and matrix in limited
  range. On nvenc the frames are downloaded for this and uploaded again; vaapi uses
  `tonemap_vaapi`; qsv has no tone mapper in ffmpeg 5.1 (InvalidSpec: use passthrough or
  another pool). `hdr` passthrough (hevc/av1): 10-bit output keeping BT.2020 primaries and
  matrix and the source transfer; HDR10 static metadata the probe reported goes to libx265
  (`hdr10`, `master-display`, `max-cll`), libsvtav1 (`mastering-display`, `content-light` in
  SVT-AV1's units) and hevc_vaapi (`-sei hdr`); other encoders would drop it: InvalidSpec
  (`encoders.HDR10_METADATA_ENCODERS`).
* Unknown source (no probe): no deinterlace in auto, no colour tags, nothing tone-mapped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from ffrtmp.api.job import ThumbnailSpec, VideoSpec
from ffrtmp.ffmpeg.encoders import HDR10_METADATA_ENCODERS
from ffrtmp.ffmpeg.media import HdrKind, SourceMedia, nearest_even, output_size

HW_DOWNLOAD = "hwdownload,format=nv12|p010le"
TONEMAP_OPERATOR = "hable"
TONEMAP_PEAK_NITS = 100
CPU_TONEMAP = (
    f"zscale=t=linear:npl={TONEMAP_PEAK_NITS}",
    "format=gbrpf32le",
    "zscale=p=bt709",
    f"tonemap=tonemap={TONEMAP_OPERATOR}:desat=0",
    "zscale=t=bt709:m=bt709:r=tv",
    "format=yuv420p",
)
DEINTERLACE_FILTERS = {
    "cpu": "bwdif=mode=send_frame:parity=auto:deint=all",
    "nvenc": "yadif_cuda=mode=send_frame:parity=auto:deint=all",
    "vaapi": "deinterlace_vaapi=rate=frame",
    "qsv": "vpp_qsv=deinterlace=2",
}
HDR_TRANSFERS: dict[HdrKind, str] = {"pq": "smpte2084", "hlg": "arib-std-b67"}
BT709_TAGS = ("bt709", "bt709", "bt709")  # primaries, transfer, matrix
BT709_MATRICES = ("bt709",)
UNTAGGED = (None, "unknown", "")
SD_MAX_HEIGHT = 719  # untagged sources up to this height are taken as BT.601
TRANSPOSE_DIRECTIONS = {90: "cclock", 180: "reversal", 270: "clock"}  # by ffprobe's rotation


class UnsupportedProcessing(ValueError):
    """The accelerator cannot do what the rendition needs (the planner raises InvalidSpec)."""


@dataclass(frozen=True)
class VideoProcessing:
    """What one encoded rendition's picture needs."""

    size: tuple[int, int] | None  # exact output size; None: the request's own w/h (-2 rule)
    deinterlace: bool
    tonemap: bool
    hdr_passthrough: HdrKind | None
    tag_bt709: bool  # tag BT.709 limited range
    rescale: bool = True  # False: `size` is the source's own (even, square pixels): no scaler
    to_bt709_matrix: bool = False  # the source's matrix is another (BT.601, ...): convert
    to_limited_range: bool = False  # the source is full range: convert
    rotation: int = 0  # the source's display rotation (0, 90, 180, 270): hardware chains turn it
    source_matrix: str = "bt709"  # the source's YCbCr matrix (tagged, or inferred: see source_matrix)


def video_processing(video: VideoSpec, source: SourceMedia | None) -> VideoProcessing:
    """The decisions for one rendition (see the module doc)."""
    mode = video.deinterlace or "auto"
    deinterlace = mode == "on" or (mode == "auto" and source is not None and source.interlaced)
    if source is None or not source.has_video:
        return VideoProcessing(None, deinterlace, False, None, False)
    size = output_size(source, video.width, video.height)
    rescale = size != (source.width, source.height) or source.sample_aspect != 1
    hdr = source.hdr
    passthrough = hdr if hdr is not None and video.hdr == "passthrough" else None
    converts = passthrough is None and hdr is None  # the tone map chain does its own conversion
    return VideoProcessing(
        size=size,
        deinterlace=deinterlace,
        tonemap=hdr is not None and passthrough is None,
        hdr_passthrough=passthrough,
        tag_bt709=passthrough is None,
        rescale=rescale,
        to_bt709_matrix=converts and source_matrix(source) not in BT709_MATRICES,
        to_limited_range=converts and source.full_range,
        rotation=source.rotation if source.rotation in TRANSPOSE_DIRECTIONS else 0,
        source_matrix=source_matrix(source),
    )


def rotation_filters(accelerator: str, rotation: int, *, downloaded: bool = False) -> list[str]:
    """Turn frames upright where ffmpeg's autorotate does not (hardware frames, or frames
    downloaded from them); nothing for software decoding."""
    direction = TRANSPOSE_DIRECTIONS.get(rotation)
    if direction is None or (accelerator == "cpu" and not downloaded):
        return []
    software = ["hflip", "vflip"] if rotation == 180 else [f"transpose={direction}"]
    if downloaded:
        return software
    if accelerator == "vaapi":
        return [f"transpose_vaapi=dir={direction}"]
    if accelerator == "qsv":
        return [f"vpp_qsv=transpose={direction}"]
    return ["hwdownload", "format=nv12|p010le", *software, "hwupload_cuda"]


def source_matrix(source: SourceMedia) -> str:
    """The source's YCbCr matrix; untagged: BT.601 (smpte170m) for SD, BT.709 from 720 lines."""
    if source.color_space not in UNTAGGED and source.color_space is not None:
        return source.color_space
    return "smpte170m" if (source.height or 0) <= SD_MAX_HEIGHT else "bt709"


def _colour_conversion(p: VideoProcessing) -> str:
    options = ":out_color_matrix=bt709" if p.to_bt709_matrix else ""
    return options + (":out_range=tv" if p.to_limited_range else "")


# Without a probe (a live stream that was not up yet) and no size asked: the nearest even size
# by expression, evaluated on the frames themselves (a pass-through for an even source).
UNPROBED_EVEN_SIZE = ("2*round(iw/2)", "2*round(ih/2)")


def _scale_filter(
    accelerator: str, width: int | str | None, height: int | str | None, *, conversion: str
) -> str | None:
    if conversion and accelerator in ("cpu", "vaapi") and width is None and height is None:
        return f"{'scale' if accelerator == 'cpu' else 'scale_vaapi'}={conversion.lstrip(':')}"
    if width is None and height is None:
        return None
    if accelerator == "qsv":  # vpp_qsv refuses -2; round to even by expression
        w = str(width) if width is not None else "trunc(oh*iw/ih/2)*2"
        h = str(height) if height is not None else "trunc(ow*ih/iw/2)*2"
        return f"vpp_qsv=w={w}:h={h}"
    name = {"cpu": "scale", "nvenc": "scale_cuda", "vaapi": "scale_vaapi"}[accelerator]
    scale = f"{name}=w={width if width is not None else -2}:h={height if height is not None else -2}"
    return scale + conversion if accelerator in ("cpu", "vaapi") else scale


def _tonemap_filters(accelerator: str) -> list[str]:
    if accelerator == "cpu":
        return list(CPU_TONEMAP)
    if accelerator == "nvenc":
        return ["hwdownload", "format=p010le", *CPU_TONEMAP, "hwupload_cuda"]
    if accelerator == "vaapi":
        return ["tonemap_vaapi=format=nv12:t=bt709:m=bt709:p=bt709"]
    raise UnsupportedProcessing(
        "qsv cannot tone-map HDR to SDR in this ffmpeg: set video.hdr passthrough (hevc/av1) or use a cpu pool"
    )


def rendition_filters(video: VideoSpec, accelerator: str, processing: VideoProcessing | None = None) -> list[str]:
    """The filter chain of one encoded rendition."""
    p = processing or VideoProcessing(None, False, False, None, False)
    filters = rotation_filters(accelerator, p.rotation)
    if p.deinterlace:
        filters.append(DEINTERLACE_FILTERS[accelerator])
    if video.fps is not None:
        filters.append(f"fps={video.fps}")
    width: int | str | None
    height: int | str | None
    if p.size is None:
        width, height = video.width, video.height
        if width is None and height is None:
            width, height = UNPROBED_EVEN_SIZE
    else:
        width, height = p.size if p.rescale else (None, None)
    scale = _scale_filter(accelerator, width, height, conversion=_colour_conversion(p))
    if scale is not None:
        filters.append(scale)
    if p.size is not None and p.rescale:
        filters.append("setsar=1")
    if p.tonemap:
        filters += _tonemap_filters(accelerator)
    return filters


SCALERS_CONVERTING_COLOUR = ("cpu", "vaapi")


def colour_options(processing: VideoProcessing, spec_suffix: str, accelerator: str = "cpu") -> list[str]:
    """Colour tags of the encoded stream: BT.709 limited range, or the HDR source's own; where
    the accelerator's scaler cannot convert, the matrix and range the pixels still have."""
    s = spec_suffix
    if processing.hdr_passthrough is not None:
        transfer = HDR_TRANSFERS[processing.hdr_passthrough]
        return [
            f"-color_primaries{s}", "bt2020", f"-color_trc{s}", transfer,
            f"-colorspace{s}", "bt2020nc", f"-color_range{s}", "tv",
        ]  # fmt: skip
    if not processing.tag_bt709:
        return []
    primaries, transfer, matrix = BT709_TAGS
    colour_range = "tv"
    if accelerator not in SCALERS_CONVERTING_COLOUR and not processing.tonemap:
        matrix = processing.source_matrix if processing.to_bt709_matrix else matrix
        colour_range = "pc" if processing.to_limited_range else colour_range
    return [
        f"-color_primaries{s}", primaries, f"-color_trc{s}", transfer,
        f"-colorspace{s}", matrix, f"-color_range{s}", colour_range,
    ]  # fmt: skip


def x265_hdr_params(processing: VideoProcessing, source: SourceMedia | None) -> list[str]:
    """x265 parameters that write the HDR signalling (VUI and SEI) into the stream."""
    if processing.hdr_passthrough is None:
        return []
    transfer = HDR_TRANSFERS[processing.hdr_passthrough]
    params = ["colorprim=bt2020", f"transfer={transfer}", "colormatrix=bt2020nc", "range=limited"]
    if processing.hdr_passthrough == "pq":
        params += ["hdr10=1", "repeat-headers=1"]
        if source is not None and source.mastering_display is not None:
            params.append(f"master-display={source.mastering_display}")
        if source is not None and source.content_light is not None:
            params.append(f"max-cll={source.content_light}")
    return params


MASTER_DISPLAY_RE = re.compile(r"G\((\d+),(\d+)\)B\((\d+),(\d+)\)R\((\d+),(\d+)\)WP\((\d+),(\d+)\)L\((\d+),(\d+)\)")
X265_CHROMA_UNIT = 50000  # x265 master-display chromaticities are in 1/50000
X265_LUMINANCE_UNIT = 10000  # and luminances in 1/10000 cd/m2


def _decimal(value: Fraction) -> str:
    return f"{float(value):.6f}".rstrip("0").rstrip(".")


def svtav1_master_display(x265: str) -> str | None:
    """x265's `G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)` in SVT-AV1's units: the same order, in
    chromaticity coordinates and cd/m2 (SVT-AV1 reads integers as those units, not x265's)."""
    match = MASTER_DISPLAY_RE.fullmatch(x265)
    if match is None:
        return None
    n = [int(v) for v in match.groups()]
    chroma = [_decimal(Fraction(v, X265_CHROMA_UNIT)) for v in n[:8]]
    light = [_decimal(Fraction(v, X265_LUMINANCE_UNIT)) for v in n[8:]]
    return (
        f"G({chroma[0]},{chroma[1]})B({chroma[2]},{chroma[3]})R({chroma[4]},{chroma[5]})"
        f"WP({chroma[6]},{chroma[7]})L({light[0]},{light[1]})"
    )


def carries_hdr10_metadata(processing: VideoProcessing, source: SourceMedia | None) -> bool:
    """The rendition passes a PQ source through and the probe found static metadata to carry."""
    return (
        processing.hdr_passthrough == "pq"
        and source is not None
        and (source.mastering_display is not None or source.content_light is not None)
    )


def check_hdr10_metadata(encoder: str, processing: VideoProcessing, source: SourceMedia | None) -> None:
    """UnsupportedProcessing where the encoder would drop the source's HDR10 static metadata."""
    if carries_hdr10_metadata(processing, source) and encoder not in HDR10_METADATA_ENCODERS:
        raise UnsupportedProcessing(
            f"{encoder} cannot write the source's HDR10 mastering display and content light metadata in this "
            "ffmpeg (5.1), and HDR10 without it is shown with guessed brightness: use a cpu pool (libx265 or "
            "libsvtav1), hevc on vaapi, or video.hdr tonemap"
        )


def svtav1_hdr_params(processing: VideoProcessing, source: SourceMedia | None) -> list[str]:
    """SVT-AV1 parameters carrying HDR10 static metadata (the colour description comes from
    ffmpeg's -color_* options, which libsvtav1 passes on)."""
    if not carries_hdr10_metadata(processing, source) or source is None:
        return []
    params = []
    if source.mastering_display is not None:
        mastering = svtav1_master_display(source.mastering_display)
        if mastering is not None:
            params.append(f"mastering-display={mastering}")
    if source.content_light is not None:
        params.append(f"content-light={source.content_light}")
    return params


def thumbnail_filters(
    thumbs: ThumbnailSpec, frames: str, *, sprite: bool, source: SourceMedia | None = None
) -> list[str]:
    """Stills every N seconds, `thumbs.width` wide, from frames of the accelerator `frames`
    ("cpu": software frames). With a probed source they get the renditions' treatment: an
    interlaced source is deinterlaced before `fps` (a deinterlacer needs the neighbouring
    frames) by the frames' own deinterlacer (bwdif, yadif_cuda, deinterlace_vaapi, vpp_qsv);
    hardware frames are then downloaded (only the kept ones) and turned upright; an HDR source
    is tone-mapped on the CPU like the cpu renditions (zscale + tonemap hable, whatever the pool:
    a few frames); the still has the display aspect in square pixels, and a JPEG is converted to
    the full-range BT.601 that JFIF readers assume."""
    filters: list[str] = []
    if source is not None and source.interlaced:
        filters.append(DEINTERLACE_FILTERS[frames])
    filters.append(f"fps=1/{thumbs.interval_seconds}")
    if frames != "cpu":
        filters.append(HW_DOWNLOAD)
        if source is not None:
            filters += rotation_filters("cpu", source.rotation, downloaded=True)
    if source is not None and source.hdr is not None:
        filters += CPU_TONEMAP
    aspect = source.display_aspect if source is not None else None
    # JPEG (JFIF) is full-range BT.601 whatever the source: convert, or readers shift the hues
    jfif = ":out_color_matrix=bt601:out_range=pc" if thumbs.format == "jpg" else ""
    if aspect is None:
        filters.append(f"scale=w={thumbs.width}:h=-2{jfif}")
    else:
        filters += [f"scale=w={thumbs.width}:h={nearest_even(thumbs.width / aspect)}{jfif}", "setsar=1"]
    if sprite and thumbs.sprite is not None:
        filters.append(f"tile={thumbs.sprite.columns}x{thumbs.sprite.rows}")
    return filters


def filter_graph(branches: Sequence[tuple[str, list[str]]], head: Sequence[str] = ()) -> str:
    """One decode of `0:v:0`, through `head` (e.g. an upload to the GPU), split into one labelled
    chain per branch."""
    if len(branches) == 1:
        label, filters = branches[0]
        return f"[0:v:0]{','.join([*head, *filters]) or 'null'}[{label}]"
    heads: list[str] = []
    chains: list[str] = []
    for index, (label, filters) in enumerate(branches):
        if filters:
            heads.append(f"[s{index}]")
            chains.append(f"[s{index}]{','.join(filters)}[{label}]")
        else:
            heads.append(f"[{label}]")
    return ";".join([f"[0:v:0]{''.join(f'{f},' for f in head)}split={len(branches)}{''.join(heads)}", *chains])
