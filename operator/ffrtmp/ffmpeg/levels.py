"""The H.264 level a single pass declares, for the stitch of a chunked job's CBR-like renditions.

A libx264 chunk with a bitrate is encoded CBR-like (`chunks.chunk_rate_control`): maxrate = bitrate,
a buffer of 2 s of it. x264 picks the level it writes in the SPS (and so the CODECS of an HLS master
playlist) as the lowest of H.264 Table A-1 whose limits the encode's parameters fit: frame size,
macroblock rate and decoded picture buffer (the same in a chunk and in a single pass of the same
output), and the VBV's maxrate and buffer. A single pass in plain ABR has no VBV, and x264 checks the
level against maxrate = 2 x bitrate then (measured: 320x240 25 fps at 500k, preset ultrafast: level
2.0 in one pass, 1.3 in a CBR-like chunk, whose maxrate is 500k). At every level the buffer limit is at
least the bitrate limit (kbit against kbit/s), so a chunk's VBV never needs a higher level than the
single pass's, and the single pass's level is the higher of the chunk's and the level its own VBV
parameters need (`single_pass_level`). The stitch writes that level into the stream it copies
(`h264_metadata`): a higher level only loosens what a decoder must allow.
"""

from __future__ import annotations

from ffrtmp.api.job import VideoSpec
from ffrtmp.ffmpeg.argv import bitrate_bps, vbv_bufsize

# (level_idc as x264 writes it, MaxBR kbit/s, MaxCPB kbit) of Table A-1, in x264's order; the limits
# are for Baseline/Main/Extended, High's are 5/4 of them (x264's cbp_factor). Level 1b is left out:
# a single pass needs it only under 64 kbit/s.
H264_LEVELS: tuple[tuple[int, int, int], ...] = (
    (10, 64, 175), (11, 192, 500), (12, 384, 1000), (13, 768, 2000),
    (20, 2000, 2000), (21, 4000, 4000), (22, 4000, 4000),
    (30, 10000, 10000), (31, 14000, 14000), (32, 20000, 20000),
    (40, 20000, 25000), (41, 50000, 62500), (42, 50000, 62500),
    (50, 135000, 135000), (51, 240000, 240000), (52, 240000, 240000),
    (60, 240000, 240000), (61, 480000, 480000), (62, 800000, 800000),
)  # fmt: skip
HIGH_PROFILES = ("High", "High 10", "High 4:2:2", "High 4:4:4 Predictive")


def vbv_level(maxrate_bps: int, bufsize_bits: int, profile: str) -> int:
    """The lowest level whose bitrate and buffer limits fit a VBV of `maxrate_bps` and `bufsize_bits`."""
    factor = 5 if profile in HIGH_PROFILES else 4
    for idc, max_br, max_cpb in H264_LEVELS:
        if maxrate_bps <= max_br * 1000 * factor // 4 and bufsize_bits <= max_cpb * 1000 * factor // 4:
            return idc
    return H264_LEVELS[-1][0]


def single_pass_level(video: VideoSpec, chunk_level: int, profile: str) -> int:
    """The level x264 declares in a single pass of `video`, given the level (and profile) a CBR-like
    chunk of it declared: the higher of that and what the single pass's own VBV parameters need
    (plain ABR: maxrate 2 x bitrate, no buffer; with the user's maxrate: theirs, and the buffer the
    single pass's argv sets, `argv.vbv_bufsize`)."""
    bufsize_option = vbv_bufsize(video)
    if video.maxrate is not None and bufsize_option is not None:
        maxrate, bufsize = bitrate_bps(video.maxrate), bitrate_bps(bufsize_option)
    elif video.bitrate is not None:
        maxrate, bufsize = 2 * bitrate_bps(video.bitrate), 0
    else:
        return chunk_level
    return max(chunk_level, vbv_level(maxrate, bufsize, profile))
