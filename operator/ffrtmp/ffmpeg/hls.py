"""The HLS packaging: one hls muxer output carrying every hls rendition as a variant stream.

The same muxer options package a single-pass encode (`hls_output`, fed by the encoders) and a
chunked job's stitch (`ffmpeg.chunks`, fed by stream copies of the joined chunks), so both write
the same segments, variant playlists and master playlist.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ffrtmp.api.job import HlsSpec
from ffrtmp.ffmpeg.rendition import Rendition, VideoArgs, audio_args, audio_map, video_map

HLS_DIR = "hls"


def hls_muxer(hls: HlsSpec, output_dir: str, variants: Sequence[str]) -> list[str]:
    """The hls muxer's options and target: `variants` are the `-var_stream_map` entries
    (`v:0,a:0,name:720p`), in the order of the output's streams."""
    extension = "m4s" if hls.segment_type == "fmp4" else "ts"
    muxer = ["-f", "hls", "-hls_time", str(hls.segment_seconds)]
    flags = "independent_segments"
    if hls.playlist_type == "live":
        muxer += ["-hls_list_size", str(hls.list_size)]
        flags += "+delete_segments"
    else:
        muxer += ["-hls_playlist_type", hls.playlist_type, "-hls_list_size", "0"]
    if hls.segment_type == "fmp4":
        muxer += ["-hls_segment_type", "fmp4"]
    return [
        *muxer,
        "-hls_flags", flags,
        "-hls_segment_filename", os.path.join(output_dir, HLS_DIR, "%v", f"seg_%05d.{extension}"),
        "-master_pl_name", hls.master_playlist,
        "-var_stream_map", " ".join(variants),
        os.path.join(output_dir, HLS_DIR, "%v", "index.m3u8"),
    ]  # fmt: skip


def hls_output(
    renditions: Sequence[Rendition],
    hls: HlsSpec,
    output_dir: str,
    *,
    video_opts: VideoArgs,
    thread_args: list[str],
    extra: list[str],
) -> list[str]:
    """The one hls muxer output carrying every hls rendition as a variant stream."""
    members = [r for r in renditions if r.output.container == "hls"]
    maps: list[str] = []
    codecs: list[str] = []
    variants: list[str] = []
    audio_index = 0
    for video_index, r in enumerate(members):
        maps += video_map(r)
        codecs += video_opts(r, f":v:{video_index}", 2 if r.video.two_pass else None, True)
        entry = f"v:{video_index}"
        if r.audio.codec != "none":
            maps += audio_map(r, required=True)  # the variant map needs it to exist
            codecs += audio_args(r, f":a:{audio_index}")
            entry += f",a:{audio_index}"
            audio_index += 1
        variants.append(f"{entry},name:{r.output.name}")
    muxer = hls_muxer(hls, output_dir, variants)
    # extraArgs go before the target, after the muxer's own options (as they always did)
    return [*maps, *codecs, *thread_args, *muxer[:-1], *extra, muxer[-1]]
