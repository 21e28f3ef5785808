"""Where the input is decoded on an nvenc pool: on the GPU (NVDEC), or in software and uploaded.

nvenc runs decode with `-hwaccel cuda -hwaccel_output_format cuda`, so the filter chains
(`scale_cuda`, `yadif_cuda`) work on frames in GPU memory. NVDEC decodes only some codecs, and
only 4:2:0 chroma at a codec-dependent bit depth; for anything else (ProRes, DNxHD, 4:2:2 or 4:4:4
H.264/HEVC, 10-bit H.264) ffmpeg falls back to software frames that the cuda filters refuse, and
the job fails. So with a probed source NVDEC cannot decode, the input is decoded in software and
the frames go to the GPU once, at the head of the filter graph: `format=nv12`, or `format=p010le`
for HDR sources, then `hwupload_cuda`. Software decoding also turns frames upright
(autorotate), so those chains do not turn them again.

Without a probe (a live stream not up yet when probed) the GPU decodes, as before: the common live codecs are H.264 and
HEVC 4:2:0.
"""

from __future__ import annotations

import re

from ffrtmp.ffmpeg.media import SourceMedia

# Codecs NVDEC decodes through ffmpeg's cuda hwaccel, with the most bits per sample it takes
# (4:2:0 only; 4:4:4 and 4:2:2 need newer GPUs and are not assumed).
NVDEC_MAX_BITS: dict[str, int] = {
    "h264": 8, "hevc": 12, "av1": 10, "vp9": 12, "vp8": 8,
    "mpeg1video": 8, "mpeg2video": 8, "mpeg4": 8, "vc1": 8, "wmv3": 8,
}  # fmt: skip
_PIX_FMT_420 = re.compile(r"^(yuvj?420p(\d+)?(le|be)?|nv12|p010(le|be)?|p016(le|be)?)$")


def pix_fmt_bits(pix_fmt: str | None) -> int | None:
    """Bits per sample of a pixel format name, when it says (`yuv422p10le` 10, `nv12` 8)."""
    if pix_fmt is None:
        return None
    if pix_fmt in ("nv12",):
        return 8
    if pix_fmt.startswith("p010"):
        return 10
    if pix_fmt.startswith("p016"):
        return 16
    match = re.search(r"p(\d+)(le|be)?$", pix_fmt)
    if match:
        return int(match.group(1))
    return 8 if pix_fmt.startswith(("yuv", "yuvj", "gray", "gbrp")) else None


def nvdec_decodes(source: SourceMedia | None) -> bool:
    """Whether NVDEC can decode the source's video (pure). Unknown source or pixel format: yes."""
    if source is None or not source.has_video or source.video_codec is None:
        return True
    max_bits = NVDEC_MAX_BITS.get(source.video_codec)
    if max_bits is None:
        return False
    if source.pix_fmt is None:
        return True
    if not _PIX_FMT_420.match(source.pix_fmt):
        return False  # 4:2:2, 4:4:4, RGB, monochrome
    bits = pix_fmt_bits(source.pix_fmt) or 8
    return bits <= max_bits


def software_upload_filters(source: SourceMedia) -> list[str]:
    """The head of the graph that puts software-decoded frames on the GPU: 10-bit p010le for HDR
    sources (the tone map downloads p010le, passthrough encodes main10), else 8-bit nv12, which
    every nvenc encoder takes (h264_nvenc encodes no 10-bit)."""
    return [f"format={'p010le' if source.hdr is not None else 'nv12'}", "hwupload_cuda"]
