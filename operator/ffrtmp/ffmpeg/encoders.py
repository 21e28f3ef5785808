"""Encoder tables: which encoder, preset scale and codecs each accelerator and container take."""

from __future__ import annotations

from ffrtmp.api.job import NVENC_PRESETS, X264_PRESETS
from ffrtmp.ffmpeg.invalid_spec import InvalidSpec

AV1_CPU_ENCODER = "libsvtav1"  # Debian 12's ffmpeg 5.1 has libsvtav1 and libaom-av1
AV1_CPU_ENCODERS = ("libsvtav1", "libaom-av1")

ENCODERS: dict[str, dict[str, str]] = {
    "cpu": {"h264": "libx264", "hevc": "libx265"},
    "nvenc": {"h264": "h264_nvenc", "hevc": "hevc_nvenc", "av1": "av1_nvenc"},
    "qsv": {"h264": "h264_qsv", "hevc": "hevc_qsv", "av1": "av1_qsv"},
    "vaapi": {"h264": "h264_vaapi", "hevc": "hevc_vaapi", "av1": "av1_vaapi"},
}
VIDEO_CODECS = ("h264", "hevc", "av1")  # the codecs that are encoded (not copy or none)


def video_encoder(accelerator: str, codec: str, av1_cpu_encoder: str = AV1_CPU_ENCODER) -> str:
    """The ffmpeg encoder a worker of `accelerator` uses for `codec` (cpu av1: `av1_cpu_encoder`)."""
    if (accelerator, codec) == ("cpu", "av1"):
        return av1_cpu_encoder
    return ENCODERS[accelerator][codec]


# The encoders of the worker image's ffmpeg (Debian 12, 5.1) that write HDR10 static metadata
# (SMPTE 2086 mastering display, CTA-861.3 content light level) into the stream, and how:
# libx265 and libsvtav1 from the values the planner passes (-x265-params, -svtav1-params
# mastering-display/content-light: SVT-AV1 1.4); hevc_vaapi from the decoded frames' side data
# (`-sei hdr`, vaapi_encode_h265). The others cannot: hevc_nvenc passes only captions, timecode
# and user-data SEI (FFmpeg's doxygen lists no nvenc reader of the HDR side data up to 7.1);
# hevc_qsv gained it in FFmpeg 6.0 (Debian's libavcodec59 has no mfxExtMasteringDisplayColourVolume
# 'DCVS' buffer, only the 'VSIN' colour description); libaom-av1 has no option for it; av1_nvenc,
# av1_qsv and av1_vaapi are not in 5.1 (the self-test keeps jobs off them).
HDR10_METADATA_ENCODERS = ("libx265", "libsvtav1", "hevc_vaapi")


AUDIO_ENCODERS = {"aac": "aac", "opus": "libopus", "mp3": "libmp3lame"}
OPUS_SAMPLE_RATES = (8000, 12000, 16000, 24000, 48000)
MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)

# x264 preset names on other encoders. NVENC: p1 fastest .. p7 best, p4 is NVENC's default
# (as medium is x264's); the two fastest x264 presets share p1 and faster/fast share p3.
NVENC_PRESET_MAP = {
    "ultrafast": "p1", "superfast": "p1", "veryfast": "p2", "faster": "p3", "fast": "p3",
    "medium": "p4", "slow": "p5", "slower": "p6", "veryslow": "p7",
}  # fmt: skip
# Used only when a job asking for NVENC falls back to a CPU pool (hardwarePolicy preferred).
X264_FROM_NVENC = {
    "p1": "superfast", "p2": "veryfast", "p3": "faster", "p4": "medium", "p5": "slow",
    "p6": "slower", "p7": "veryslow",
}  # fmt: skip
# QSV has veryfast..veryslow; the two faster x264 names become veryfast.
QSV_PRESET_MAP = {name: ("veryfast" if name in ("ultrafast", "superfast") else name) for name in X264_PRESETS}
# VAAPI -compression_level: 1 = best quality (slowest) .. 7 = fastest (Intel's TU scale).
VAAPI_COMPRESSION_LEVEL = {
    "ultrafast": 7, "superfast": 7, "veryfast": 7, "faster": 6, "fast": 6, "medium": 4,
    "slow": 2, "slower": 1, "veryslow": 1,
}  # fmt: skip
# SVT-AV1 -preset 0 (best) .. 13 (fastest); libaom -cpu-used 0 (best) .. 8 (fastest).
SVTAV1_PRESET_MAP = {
    "ultrafast": 12, "superfast": 11, "veryfast": 10, "faster": 9, "fast": 8, "medium": 7,
    "slow": 5, "slower": 4, "veryslow": 2,
}  # fmt: skip
AOM_CPU_USED_MAP = {
    "ultrafast": 8, "superfast": 8, "veryfast": 7, "faster": 6, "fast": 5, "medium": 4,
    "slow": 3, "slower": 2, "veryslow": 1,
}  # fmt: skip

VIDEO_CODECS_BY_CONTAINER: dict[str, tuple[str, ...]] = {
    "mp4": ("h264", "hevc", "av1", "copy", "none"),
    "mkv": ("h264", "hevc", "av1", "copy", "none"),
    "mpegts": ("h264", "hevc", "copy", "none"),
    "flv": ("h264", "copy", "none"),
    "hls": ("h264", "hevc", "av1", "copy"),
}
AUDIO_CODECS_BY_CONTAINER: dict[str, tuple[str, ...]] = {
    "mp4": ("aac", "opus", "mp3", "copy", "none"),
    "mkv": ("aac", "opus", "mp3", "copy", "none"),
    "mpegts": ("aac", "opus", "mp3", "copy", "none"),
    "flv": ("aac", "mp3", "copy", "none"),
    "hls": ("aac", "opus", "mp3", "copy", "none"),
}
FILE_EXTENSIONS = {"mp4": "mp4", "mkv": "mkv", "mpegts": "ts", "flv": "flv"}
MUXERS = {"mp4": "mp4", "mkv": "matroska", "mpegts": "mpegts", "flv": "flv", "hls": "hls"}


def resolve_preset(preset: str | None, accelerator: str, spec_accelerator: str) -> str | None:
    if preset is None:
        return None
    if preset in NVENC_PRESETS:
        if accelerator == "nvenc":
            return preset
        if accelerator == "cpu" and spec_accelerator == "nvenc":
            return X264_FROM_NVENC[preset]  # hardwarePolicy preferred fell back to a CPU pool
        raise InvalidSpec(
            f"preset {preset} is an NVENC preset (p1..p7) but this job runs on {accelerator}: use ultrafast..veryslow"
        )
    if accelerator == "nvenc":
        return NVENC_PRESET_MAP[preset]
    if accelerator == "qsv":
        return QSV_PRESET_MAP[preset]
    if accelerator == "vaapi":
        return str(VAAPI_COMPRESSION_LEVEL[preset])
    return preset
