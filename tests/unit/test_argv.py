"""Golden argv tests for ffrtmp.ffmpeg.argv: whole command lines, compared list to list."""

from __future__ import annotations

from typing import Any

import pytest

from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.ffmpeg.argv import (
    NVENC_PRESET_MAP,
    EncodePlan,
    InvalidSpec,
    PlannedOutput,
    build_encode_plan,
    default_output_path,
    protocol_whitelist,
)
from ffrtmp.ffmpeg.inputs import InputNotAllowed

pytestmark = pytest.mark.unit

HEAD = ["ffmpeg", "-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-progress", "pipe:1", "-nostats"]
IN = "/media/in.mp4"
OUT = "/out/ns/job"
SCRATCH = "/scratch/job"
ALL_PROTOCOLS = ["file", "http", "https", "rtmp", "rtmps"]
FILE_INPUT = [*HEAD, "-protocol_whitelist", "file", "-i", IN]


def spec(outputs: list[dict[str, Any]], **extra: Any) -> TranscodeJobSpec:
    return TranscodeJobSpec.model_validate({"input": {"uri": IN}, "outputs": outputs, **extra})


def plan(s: TranscodeJobSpec, accelerator: str = "cpu", *, input_url: str = IN, **kwargs: Any) -> EncodePlan:
    return build_encode_plan(
        s,
        accelerator,
        input_url=input_url,
        output_dir=OUT,
        scratch_dir=SCRATCH,
        allowed_protocols=kwargs.pop("allowed_protocols", ALL_PROTOCOLS),
        **kwargs,
    )


def test_single_mp4_h264_cpu_crf() -> None:
    p = plan(spec([{"name": "720p", "video": {"width": 1280, "crf": 23, "preset": "fast"}}]))
    assert p.passes == [
        [
            *FILE_INPUT,
            "-filter_complex",
            "[0:v:0]scale=w=1280:h=-2[v0]",
            "-map",
            "[v0]",
            "-map",
            "0:a:0?",
            "-c:v",
            "libx264",
            "-preset:v",
            "fast",
            "-crf:v",
            "23",
            "-pix_fmt:v",
            "yuv420p",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            "-f",
            "mp4",
            "-movflags",
            "+faststart",
            f"{OUT}/720p.mp4",
        ]
    ]
    assert p.outputs == [PlannedOutput("720p", "file", "720p.mp4", 1280, None)]
    assert p.live is False
    assert p.duration_seconds is None
    assert p.directories == []
    assert p.env == {}


def test_bitrate_with_maxrate_defaults_bufsize_to_twice_maxrate() -> None:
    p = plan(
        spec(
            [
                {
                    "name": "hd",
                    "path": "renders/hd.mp4",
                    "video": {"width": 1920, "height": 1080, "bitrate": "5M", "maxrate": "2.5M", "gop": 48},
                    "audio": {"bitrate": "192k", "channels": 2, "sampleRate": 48000},
                }
            ]
        )
    )
    assert p.passes == [
        [
            *FILE_INPUT,
            "-filter_complex",
            "[0:v:0]scale=w=1920:h=1080[v0]",
            "-map",
            "[v0]",
            "-map",
            "0:a:0?",
            "-c:v",
            "libx264",
            "-b:v",
            "5M",
            "-maxrate:v",
            "2.5M",
            "-bufsize:v",
            "5M",
            "-g:v",
            "48",
            "-pix_fmt:v",
            "yuv420p",
            "-c:a",
            "aac",
            "-b:a",
            "192k",
            "-ac:a",
            "2",
            "-ar:a",
            "48000",
            "-f",
            "mp4",
            "-movflags",
            "+faststart",
            f"{OUT}/renders/hd.mp4",
        ]
    ]
    assert p.outputs == [PlannedOutput("hd", "file", "renders/hd.mp4", 1920, 1080)]
    assert p.directories == ["renders"]


def test_explicit_bufsize_and_kilobit_maxrate() -> None:
    p = plan(spec([{"name": "a", "container": "mkv", "video": {"crf": 20, "maxrate": "800k"}}]))
    assert "-bufsize:v" in p.passes[0]
    assert p.passes[0][p.passes[0].index("-bufsize:v") + 1] == "1600k"
    p = plan(spec([{"name": "a", "video": {"crf": 20, "maxrate": "800k", "bufsize": "400k"}}]))
    assert p.passes[0][p.passes[0].index("-bufsize:v") + 1] == "400k"


def test_hls_ladder_with_thumbnails_and_sprite_cpu() -> None:
    s = spec(
        [
            {
                "name": "720p",
                "container": "hls",
                "video": {"width": 1280, "bitrate": "3M", "preset": "veryfast"},
            },
            {"name": "480p", "container": "hls", "video": {"height": 480, "bitrate": "1.5M", "gop": 48}},
            {
                "name": "240p",
                "container": "hls",
                "video": {"width": 426, "height": 240, "bitrate": "400k", "fps": 15},
                "audio": {"bitrate": "64k"},
            },
        ],
        hls={"segmentSeconds": 4, "masterPlaylist": "index.m3u8"},
        thumbnails={"intervalSeconds": 10, "width": 160, "sprite": {"columns": 4, "rows": 3}},
    )
    p = plan(s)
    graph = (
        "[0:v:0]split=5[s0][s1][s2][s3][s4];"
        "[s0]scale=w=1280:h=-2[v0];"
        "[s1]scale=w=-2:h=480[v1];"
        "[s2]fps=15,scale=w=426:h=240[v2];"
        "[s3]fps=1/10,scale=w=160:h=-2:out_color_matrix=bt601:out_range=pc[thumbs];"
        "[s4]fps=1/10,scale=w=160:h=-2:out_color_matrix=bt601:out_range=pc,tile=4x3[sprite]"
    )
    keyframes = "expr:gte(t,n_forced*4)"
    assert p.passes == [
        [
            *FILE_INPUT,
            "-filter_complex",
            graph,
            "-map",
            "[v0]",
            "-map",
            "0:a:0",
            "-map",
            "[v1]",
            "-map",
            "0:a:0",
            "-map",
            "[v2]",
            "-map",
            "0:a:0",
            "-c:v:0",
            "libx264",
            "-preset:v:0",
            "veryfast",
            "-b:v:0",
            "3M",
            "-force_key_frames:v:0",
            keyframes,
            "-pix_fmt:v:0",
            "yuv420p",
            "-c:a:0",
            "aac",
            "-b:a:0",
            "128k",
            "-c:v:1",
            "libx264",
            "-b:v:1",
            "1.5M",
            "-g:v:1",
            "48",
            "-keyint_min:v:1",
            "48",
            "-sc_threshold:v:1",
            "0",
            "-force_key_frames:v:1",
            keyframes,
            "-pix_fmt:v:1",
            "yuv420p",
            "-c:a:1",
            "aac",
            "-b:a:1",
            "128k",
            "-c:v:2",
            "libx264",
            "-b:v:2",
            "400k",
            "-force_key_frames:v:2",
            keyframes,
            "-pix_fmt:v:2",
            "yuv420p",
            "-c:a:2",
            "aac",
            "-b:a:2",
            "64k",
            "-f",
            "hls",
            "-hls_time",
            "4",
            "-hls_playlist_type",
            "vod",
            "-hls_list_size",
            "0",
            "-hls_flags",
            "independent_segments",
            "-hls_segment_filename",
            f"{OUT}/hls/%v/seg_%05d.ts",
            "-master_pl_name",
            "index.m3u8",
            "-var_stream_map",
            "v:0,a:0,name:720p v:1,a:1,name:480p v:2,a:2,name:240p",
            f"{OUT}/hls/%v/index.m3u8",
            "-map",
            "[thumbs]",
            "-c:v",
            "mjpeg",
            "-q:v",
            "3",
            "-f",
            "image2",
            f"{OUT}/thumbs/thumb_%05d.jpg",
            "-map",
            "[sprite]",
            "-c:v",
            "mjpeg",
            "-q:v",
            "3",
            "-f",
            "image2",
            f"{OUT}/thumbs/sprite_%03d.jpg",
        ]
    ]
    assert p.outputs == [
        PlannedOutput("720p", "hls-variant", "hls/720p/index.m3u8", 1280, None),
        PlannedOutput("480p", "hls-variant", "hls/480p/index.m3u8", None, 480),
        PlannedOutput("240p", "hls-variant", "hls/240p/index.m3u8", 426, 240),
        PlannedOutput("master", "hls-master", "hls/index.m3u8"),
        PlannedOutput("thumbnails", "thumbnails", "thumbs/thumb_%05d.jpg", 160, None),
        PlannedOutput("sprite", "sprite", "thumbs/sprite_%03d.jpg", 640, None),
    ]
    assert p.directories == ["hls", "hls/240p", "hls/480p", "hls/720p", "thumbs"]


def test_fmp4_live_hls_from_rtmp_input() -> None:
    url = "rtmp://ingest.example.com/live/key"
    s = TranscodeJobSpec.model_validate(
        {
            "input": {"uri": url},
            "outputs": [
                {"name": "src", "container": "hls", "video": {"codec": "copy"}, "audio": {"codec": "copy"}},
                {
                    "name": "low",
                    "container": "hls",
                    "video": {"codec": "hevc", "height": 360, "crf": 28, "maxrate": "1M"},
                },
            ],
            "hls": {"segmentType": "fmp4", "playlistType": "live", "listSize": 5, "segmentSeconds": 2},
        }
    )
    p = plan(s, input_url=url)
    assert p.live is True
    assert p.passes == [
        [
            *HEAD,
            "-protocol_whitelist",
            "rtmp,tcp",
            "-rw_timeout",
            "15000000",
            "-i",
            url,
            "-filter_complex",
            "[0:v:0]scale=w=-2:h=360[v0]",
            "-map",
            "0:v:0",
            "-map",
            "0:a:0",
            "-map",
            "[v0]",
            "-map",
            "0:a:0",
            "-c:v:0",
            "copy",
            "-c:a:0",
            "copy",
            "-c:v:1",
            "libx265",
            "-crf:v:1",
            "28",
            "-maxrate:v:1",
            "1M",
            "-bufsize:v:1",
            "2M",
            "-force_key_frames:v:1",
            "expr:gte(t,n_forced*2)",
            "-forced-idr:v:1",
            "1",
            "-pix_fmt:v:1",
            "yuv420p",
            "-tag:v:1",
            "hvc1",
            "-x265-params:v:1",
            "log-level=error",
            "-c:a:1",
            "aac",
            "-b:a:1",
            "128k",
            "-f",
            "hls",
            "-hls_time",
            "2",
            "-hls_list_size",
            "5",
            "-hls_segment_type",
            "fmp4",
            "-hls_flags",
            "independent_segments+delete_segments",
            "-hls_segment_filename",
            f"{OUT}/hls/%v/seg_%05d.m4s",
            "-master_pl_name",
            "master.m3u8",
            "-var_stream_map",
            "v:0,a:0,name:src v:1,a:1,name:low",
            f"{OUT}/hls/%v/index.m3u8",
        ]
    ]
    assert [o.kind for o in p.outputs] == ["hls-variant", "hls-variant", "hls-master"]
    assert p.outputs[0] == PlannedOutput("src", "hls-variant", "hls/src/index.m3u8", None, None)


def test_event_playlist() -> None:
    p = plan(spec([{"name": "a", "container": "hls", "video": {"bitrate": "1M"}}], hls={"playlistType": "event"}))
    argv = p.passes[0]
    i = argv.index("-hls_playlist_type")
    assert argv[i : i + 4] == ["-hls_playlist_type", "event", "-hls_list_size", "0"]


def test_nvenc() -> None:
    s = spec(
        [
            {"name": "1080p", "video": {"height": 1080, "crf": 23, "preset": "slow"}},
            {
                "name": "720p",
                "container": "mkv",
                "video": {"codec": "hevc", "width": 1280, "bitrate": "3M", "maxrate": "4M", "preset": "p6"},
            },
        ],
        accelerator="nvenc",
        thumbnails={"intervalSeconds": 5},
    )
    p = plan(s, "nvenc")
    assert p.passes == [
        [
            *HEAD, "-protocol_whitelist", "file", "-hwaccel", "cuda", "-hwaccel_output_format", "cuda",
            "-i", IN,
            "-filter_complex",
            "[0:v:0]split=3[s0][s1][s2];[s0]scale_cuda=w=-2:h=1080[v0];[s1]scale_cuda=w=1280:h=-2[v1];"
            "[s2]fps=1/5,hwdownload,format=nv12|p010le,scale=w=320:h=-2:out_color_matrix=bt601:out_range=pc[thumbs]",
            "-map", "[v0]", "-map", "0:a:0?",
            "-c:v", "h264_nvenc", "-preset:v", "p5", "-rc:v", "vbr", "-cq:v", "23", "-b:v", "0",
            "-c:a", "aac", "-b:a", "128k",
            "-f", "mp4", "-movflags", "+faststart", f"{OUT}/1080p.mp4",
            "-map", "[v1]", "-map", "0:a:0?",
            "-c:v", "hevc_nvenc", "-preset:v", "p6", "-rc:v", "vbr", "-b:v", "3M",
            "-maxrate:v", "4M", "-bufsize:v", "8M",
            "-c:a", "aac", "-b:a", "128k",
            "-f", "matroska", f"{OUT}/720p.mkv",
            "-map", "[thumbs]", "-c:v", "mjpeg", "-q:v", "3", "-f", "image2", f"{OUT}/thumbs/thumb_%05d.jpg",
        ]
    ]  # fmt: skip


def test_nvenc_hls_forces_idr_keyframes() -> None:
    p = plan(spec([{"name": "a", "container": "hls", "video": {"bitrate": "2M"}}]), "nvenc")
    argv = p.passes[0]
    assert argv[argv.index("-c:v:0") : argv.index("-c:a:0")] == [
        "-c:v:0",
        "h264_nvenc",
        "-rc:v:0",
        "vbr",
        "-b:v:0",
        "2M",
        "-force_key_frames:v:0",
        "expr:gte(t,n_forced*6)",
        "-forced-idr:v:0",
        "1",
    ]
    # unprobed, no size asked: the CUDA scaler makes each frame the nearest even size
    assert argv[argv.index("-filter_complex") + 1] == "[0:v:0]scale_cuda=w=2*round(iw/2):h=2*round(ih/2)[v0]"


def test_qsv() -> None:
    s = spec(
        [
            {"name": "a", "video": {"width": 1280, "crf": 25, "preset": "ultrafast"}},
            {
                "name": "b",
                "video": {"height": 480, "bitrate": "1M", "preset": "slower"},
                "audio": {"codec": "none"},
            },
            {"name": "c", "video": {"codec": "hevc", "width": 640, "height": 360, "fps": 30}},
        ]
    )
    p = plan(s, "qsv")
    assert p.passes == [
        [
            *HEAD, "-protocol_whitelist", "file", "-qsv_device", "/dev/dri/renderD128", "-hwaccel", "qsv",
            "-hwaccel_output_format", "qsv",
            "-i", IN,
            "-filter_complex",
            "[0:v:0]split=3[s0][s1][s2];[s0]vpp_qsv=w=1280:h=trunc(ow*ih/iw/2)*2[v0];"
            "[s1]vpp_qsv=w=trunc(oh*iw/ih/2)*2:h=480[v1];[s2]fps=30,vpp_qsv=w=640:h=360[v2]",
            "-map", "[v0]", "-map", "0:a:0?",
            "-c:v", "h264_qsv", "-preset:v", "veryfast", "-global_quality:v", "25",
            "-c:a", "aac", "-b:a", "128k",
            "-f", "mp4", "-movflags", "+faststart", f"{OUT}/a.mp4",
            "-map", "[v1]",
            "-c:v", "h264_qsv", "-preset:v", "slower", "-b:v", "1M",
            "-an",
            "-f", "mp4", "-movflags", "+faststart", f"{OUT}/b.mp4",
            "-map", "[v2]", "-map", "0:a:0?",
            "-c:v", "hevc_qsv", "-tag:v", "hvc1",
            "-c:a", "aac", "-b:a", "128k",
            "-f", "mp4", "-movflags", "+faststart", f"{OUT}/c.mp4",
        ]
    ]  # fmt: skip


def test_vaapi() -> None:
    s = spec(
        [
            {"name": "a", "container": "mpegts", "video": {"width": 1280, "crf": 24, "preset": "slow"}},
            {"name": "b", "container": "mkv", "video": {"codec": "av1", "bitrate": "2M", "preset": "fast"}},
        ],
        accelerator="vaapi",
    )
    p = plan(s, "vaapi")
    assert p.passes == [
        [
            *HEAD, "-protocol_whitelist", "file",
            "-vaapi_device", "/dev/dri/renderD128", "-hwaccel", "vaapi", "-hwaccel_output_format", "vaapi",
            "-i", IN,
            "-filter_complex",
            "[0:v:0]split=2[s0][s1];[s0]scale_vaapi=w=1280:h=-2[v0];[s1]scale_vaapi=w=2*round(iw/2):h=2*round(ih/2)[v1]",
            "-map", "[v0]", "-map", "0:a:0?",
            "-c:v", "h264_vaapi", "-compression_level:v", "2", "-rc_mode:v", "CQP", "-qp:v", "24",
            "-c:a", "aac", "-b:a", "128k",
            "-f", "mpegts", f"{OUT}/a.ts",
            "-map", "[v1]", "-map", "0:a:0?",
            "-c:v", "av1_vaapi", "-compression_level:v", "6", "-b:v", "2M",
            "-c:a", "aac", "-b:a", "128k",
            "-f", "matroska", f"{OUT}/b.mkv",
        ]
    ]  # fmt: skip


def test_vaapi_device_is_a_parameter() -> None:
    p = plan(spec([{"name": "a"}]), "vaapi", render_device="/dev/dri/renderD129")
    assert p.passes[0][p.passes[0].index("-vaapi_device") + 1] == "/dev/dri/renderD129"


def test_two_pass_runs_every_two_pass_rendition_in_one_first_pass() -> None:
    s = spec(
        [
            {"name": "hi", "video": {"width": 1280, "bitrate": "2M", "twoPass": True, "preset": "slow"}},
            {"name": "mid", "video": {"width": 854, "crf": 23}},
            {
                "name": "lo",
                "container": "mkv",
                "video": {"codec": "hevc", "width": 640, "bitrate": "600k", "twoPass": True},
            },
        ]
    )
    p = plan(s)
    hi_stats = f"{SCRATCH}/2pass-hi"
    lo_stats = f"{SCRATCH}/2pass-lo"
    first, second = p.passes
    assert first == [
        *FILE_INPUT,
        "-filter_complex",
        "[0:v:0]split=2[s0][s1];[s0]scale=w=1280:h=-2[v0];[s1]scale=w=640:h=-2[v2]",
        "-map",
        "[v0]",
        "-c:v",
        "libx264",
        "-preset:v",
        "slow",
        "-b:v",
        "2M",
        "-pix_fmt:v",
        "yuv420p",
        "-pass:v",
        "1",
        "-passlogfile:v",
        hi_stats,
        "-x264-params:v",
        f"stats={hi_stats}.log",
        "-an",
        "-f",
        "null",
        "-",
        "-map",
        "[v2]",
        "-c:v",
        "libx265",
        "-b:v",
        "600k",
        "-pix_fmt:v",
        "yuv420p",
        "-x265-params:v",
        f"log-level=error:pass=1:stats={lo_stats}.log",
        "-an",
        "-f",
        "null",
        "-",
    ]
    assert second == [
        *FILE_INPUT,
        "-filter_complex",
        "[0:v:0]split=3[s0][s1][s2];[s0]scale=w=1280:h=-2[v0];[s1]scale=w=854:h=-2[v1];[s2]scale=w=640:h=-2[v2]",
        "-map", "[v0]", "-map", "0:a:0?",
        "-c:v", "libx264", "-preset:v", "slow", "-b:v", "2M", "-pix_fmt:v", "yuv420p",
        "-pass:v", "2", "-passlogfile:v", hi_stats, "-x264-params:v", f"stats={hi_stats}.log",
        "-c:a", "aac", "-b:a", "128k",
        "-f", "mp4", "-movflags", "+faststart", f"{OUT}/hi.mp4",
        "-map", "[v1]", "-map", "0:a:0?",
        "-c:v", "libx264", "-crf:v", "23", "-pix_fmt:v", "yuv420p",
        "-c:a", "aac", "-b:a", "128k",
        "-f", "mp4", "-movflags", "+faststart", f"{OUT}/mid.mp4",
        "-map", "[v2]", "-map", "0:a:0?",
        "-c:v", "libx265", "-b:v", "600k", "-pix_fmt:v", "yuv420p",
        "-x265-params:v", f"log-level=error:pass=2:stats={lo_stats}.log",
        "-c:a", "aac", "-b:a", "128k",
        "-f", "matroska", f"{OUT}/lo.mkv",
    ]  # fmt: skip


def test_two_pass_inside_hls_ladder_uses_stream_specifiers() -> None:
    s = spec([{"name": "a", "container": "hls", "video": {"bitrate": "1M", "twoPass": True}}])
    first, second = plan(s).passes
    keyframes = ["-force_key_frames:v", "expr:gte(t,n_forced*6)"]
    assert first[first.index("-c:v") : first.index("-an")] == [
        "-c:v",
        "libx264",
        "-b:v",
        "1M",
        *keyframes,
        "-pix_fmt:v",
        "yuv420p",
        "-pass:v",
        "1",
        "-passlogfile:v",
        f"{SCRATCH}/2pass-a",
        "-x264-params:v",
        f"stats={SCRATCH}/2pass-a.log",
    ]
    assert second[second.index("-c:v:0") : second.index("-c:a:0")] == [
        "-c:v:0", "libx264", "-b:v:0", "1M", "-force_key_frames:v:0", "expr:gte(t,n_forced*6)",
        "-pix_fmt:v:0", "yuv420p", "-pass:v:0", "2", "-passlogfile:v:0", f"{SCRATCH}/2pass-a",
        "-x264-params:v:0", f"stats={SCRATCH}/2pass-a.log",
    ]  # fmt: skip


def test_two_pass_repeats_extra_args_in_the_first_pass() -> None:
    s = spec([{"name": "a", "video": {"bitrate": "1M", "twoPass": True}}], extraArgs=["-tune", "film"])
    first, second = plan(s).passes
    assert first[-5:] == ["-tune", "film", "-f", "null", "-"]
    assert second[-3:] == ["-tune", "film", f"{OUT}/a.mp4"]
    s = spec([{"name": "a", "video": {"bitrate": "1M", "twoPass": True}}], extraArgs=["-x264-params", "bframes=2"])
    with pytest.raises(InvalidSpec, match="twoPass"):
        plan(s)


def test_copy_codec_needs_no_filter_graph() -> None:
    p = plan(spec([{"name": "remux", "container": "mkv", "video": {"codec": "copy"}, "audio": {"codec": "copy"}}]))
    assert p.passes == [
        [
            *FILE_INPUT,
            "-map",
            "0:v:0",
            "-map",
            "0:a:0?",
            "-c:v",
            "copy",
            "-c:a",
            "copy",
            "-f",
            "matroska",
            f"{OUT}/remux.mkv",
        ]
    ]
    assert p.outputs == [PlannedOutput("remux", "file", "remux.mkv", None, None)]


def test_audio_none_and_audio_only() -> None:
    p = plan(
        spec(
            [
                {"name": "silent", "video": {"crf": 30}, "audio": {"codec": "none"}},
                {
                    "name": "sound",
                    "container": "mkv",
                    "video": {"codec": "none"},
                    "audio": {"codec": "opus", "bitrate": "96k", "sampleRate": 48000},
                },
                {"name": "mp3", "container": "mp4", "video": {"codec": "none"}, "audio": {"codec": "mp3"}},
            ]
        )
    )
    assert p.passes == [
        [
            *FILE_INPUT,
            "-filter_complex", "[0:v:0]scale=w=2*round(iw/2):h=2*round(ih/2)[v0]",
            "-map", "[v0]", "-c:v", "libx264", "-crf:v", "30", "-pix_fmt:v", "yuv420p", "-an",
            "-f", "mp4", "-movflags", "+faststart", f"{OUT}/silent.mp4",
            "-map", "0:a:0?", "-vn", "-c:a", "libopus", "-b:a", "96k", "-ar:a", "48000",
            "-f", "matroska", f"{OUT}/sound.mkv",
            "-map", "0:a:0?", "-vn", "-c:a", "libmp3lame", "-b:a", "128k",
            "-f", "mp4", "-movflags", "+faststart", f"{OUT}/mp3.mp4",
        ]
    ]  # fmt: skip


def test_input_without_audio_drops_audio_everywhere() -> None:
    s = spec(
        [
            {"name": "a", "container": "hls", "video": {"crf": 23, "maxrate": "1M"}},
            {"name": "b", "audio": {"codec": "copy"}},
        ]
    )
    argv = plan(s, input_has_audio=False).passes[0]
    assert "0:a:0" not in argv
    assert "0:a:0?" not in argv
    assert argv[argv.index("-var_stream_map") + 1] == "v:0,name:a"
    argv = plan(s, input_has_audio=True).passes[0]
    assert argv.count("0:a:0") == 2


def test_rtmp_restream_output() -> None:
    url = "rtmp://live.example.com/app/streamkey"
    s = spec([{"name": "yt", "container": "flv", "url": url, "video": {"bitrate": "4M", "gop": 60,
                                                                       "preset": "veryfast"}}])  # fmt: skip
    p = plan(s)
    assert p.passes == [
        [
            *HEAD,
            "-protocol_whitelist",
            "file",
            "-re",
            "-i",
            IN,  # a recorded input is restreamed in real time
            "-filter_complex",
            "[0:v:0]scale=w=2*round(iw/2):h=2*round(ih/2)[v0]",
            "-map",
            "[v0]",
            "-map",
            "0:a:0?",
            "-c:v",
            "libx264",
            "-preset:v",
            "veryfast",
            "-b:v",
            "4M",
            "-g:v",
            "60",
            "-pix_fmt:v",
            "yuv420p",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            "-f",
            "flv",
            "-flvflags",
            "no_duration_filesize",
            url,
        ]
    ]
    assert p.outputs == [PlannedOutput("yt", "stream", url, None, None)]
    assert p.directories == []


def test_http_input_seek_and_duration() -> None:
    url = "https://cdn.example.com/media/in.mp4"
    s = TranscodeJobSpec.model_validate(
        {
            "input": {"uri": url, "startSeconds": 30, "durationSeconds": 10},
            "outputs": [{"name": "clip", "video": {"codec": "copy"}, "audio": {"codec": "copy"}}],
        }
    )
    p = plan(s, input_url=url)
    assert p.duration_seconds == 10.0
    assert p.live is False
    assert p.passes == [
        [
            *HEAD, "-protocol_whitelist", "http,https,tcp,tls,httpproxy,crypto",
            "-rw_timeout", "15000000", "-reconnect", "1", "-reconnect_on_network_error", "1",
            "-reconnect_delay_max", "10",
            "-ss", "30", "-t", "10", "-i", url,
            "-map", "0:v:0", "-map", "0:a:0?", "-c:v", "copy", "-c:a", "copy",
            "-f", "mp4", "-movflags", "+faststart", f"{OUT}/clip.mp4",
        ]
    ]  # fmt: skip


def test_live_http_input_reconnects_streams() -> None:
    url = "http://cam.example.com/live.flv"
    s = TranscodeJobSpec.model_validate({"input": {"uri": url, "live": True}, "outputs": [{"name": "a"}]})
    p = plan(s, input_url=url, allowed_protocols=["http"])
    argv = p.passes[0]
    assert p.live
    assert argv[argv.index("-protocol_whitelist") + 1] == "http,tcp,crypto"
    assert argv[argv.index("-i") - 2 : argv.index("-i")] == ["-reconnect_streamed", "1"]


def test_threads() -> None:
    s = spec(
        [
            {"name": "a", "video": {"width": 640}},
            {"name": "b", "container": "hls", "video": {"bitrate": "1M"}},
        ],
        thumbnails={"intervalSeconds": 60},
    )
    p = plan(s, threads=2)
    assert p.passes == [
        [
            *HEAD, "-protocol_whitelist", "file", "-threads", "2", "-i", IN,
            "-filter_complex_threads", "2",
            "-filter_complex",
            "[0:v:0]split=3[s0][s1][s2];[s0]scale=w=640:h=-2[v0];[s1]scale=w=2*round(iw/2):h=2*round(ih/2)[v1];"
            "[s2]fps=1/60,scale=w=320:h=-2:out_color_matrix=bt601:out_range=pc[thumbs]",
            "-map", "[v0]", "-map", "0:a:0?", "-c:v", "libx264", "-pix_fmt:v", "yuv420p",
            "-c:a", "aac", "-b:a", "128k", "-threads", "2",
            "-f", "mp4", "-movflags", "+faststart", f"{OUT}/a.mp4",
            "-map", "[v1]", "-map", "0:a:0",
            "-c:v:0", "libx264", "-b:v:0", "1M", "-force_key_frames:v:0", "expr:gte(t,n_forced*6)",
            "-pix_fmt:v:0", "yuv420p",
            "-c:a:0", "aac", "-b:a:0", "128k", "-threads", "2",
            "-f", "hls", "-hls_time", "6", "-hls_playlist_type", "vod", "-hls_list_size", "0",
            "-hls_flags", "independent_segments", "-hls_segment_filename", f"{OUT}/hls/%v/seg_%05d.ts",
            "-master_pl_name", "master.m3u8", "-var_stream_map", "v:0,a:0,name:b", f"{OUT}/hls/%v/index.m3u8",
            "-map", "[thumbs]", "-c:v", "mjpeg", "-q:v", "3", "-f", "image2", f"{OUT}/thumbs/thumb_%05d.jpg",
        ]
    ]  # fmt: skip


def test_extra_args_go_on_every_rendition_output_but_not_thumbnails() -> None:
    s = spec(
        [
            {"name": "a"},
            {"name": "b", "container": "hls", "video": {"bitrate": "1M"}},
            {"name": "c", "container": "hls", "video": {"bitrate": "500k"}},
        ],
        extraArgs=["-tune", "film"],
        thumbnails={"format": "png"},
    )
    argv = plan(s).passes[0]
    assert argv.count("-tune") == 2  # one file output, one hls muxer output
    a = argv.index(f"{OUT}/a.mp4")
    assert argv[a - 2 : a] == ["-tune", "film"]
    hls = argv.index(f"{OUT}/hls/%v/index.m3u8")
    assert argv[hls - 2 : hls] == ["-tune", "film"]
    assert argv[-7:] == ["-map", "[thumbs]", "-c:v", "png", "-f", "image2", f"{OUT}/thumbs/thumb_%05d.png"]


def test_av1_on_cpu_uses_svt_av1_with_quiet_logging() -> None:
    s = spec([{"name": "a", "container": "mkv", "video": {"codec": "av1", "crf": 35, "preset": "medium"}}])
    p = plan(s)
    argv = p.passes[0]
    assert argv[argv.index("-c:v") : argv.index("-c:a")] == [
        "-c:v",
        "libsvtav1",
        "-preset:v",
        "7",
        "-crf:v",
        "35",
        "-pix_fmt:v",
        "yuv420p",
    ]
    assert p.env == {"SVT_LOG": "1"}
    p = plan(s, av1_cpu_encoder="libaom-av1")
    argv = p.passes[0]
    assert argv[argv.index("-c:v") : argv.index("-c:a")] == [
        "-c:v",
        "libaom-av1",
        "-cpu-used:v",
        "4",
        "-crf:v",
        "35",
        "-b:v",
        "0",
        "-pix_fmt:v",
        "yuv420p",
    ]
    assert p.env == {}


def test_nvenc_presets_fall_back_to_x264_names_on_cpu() -> None:
    s = spec([{"name": "a", "video": {"preset": "p7"}}], accelerator="nvenc")
    argv = plan(s, "cpu").passes[0]
    assert argv[argv.index("-preset:v") + 1] == "veryslow"


@pytest.mark.parametrize(("x264", "nvenc"), sorted(NVENC_PRESET_MAP.items()))
def test_x264_presets_map_to_nvenc(x264: str, nvenc: str) -> None:
    argv = plan(spec([{"name": "a", "video": {"preset": x264}}]), "nvenc").passes[0]
    assert argv[argv.index("-preset:v") + 1] == nvenc


def test_output_file_paths_and_defaults() -> None:
    s = spec(
        [
            {"name": "a", "container": "mpegts"},
            {"name": "b", "container": "flv"},
            {"name": "c", "container": "mkv", "path": "x/y/c.mkv"},
            {"name": "d", "container": "hls", "video": {"bitrate": "1M"}},
            {"name": "e", "container": "flv", "url": "rtmps://x.example.com/app/k"},
        ]
    )
    assert [default_output_path(o) for o in s.outputs] == [
        "a.ts",
        "b.flv",
        "x/y/c.mkv",
        "hls/d/index.m3u8",
        "rtmps://x.example.com/app/k",
    ]
    assert plan(s).directories == ["hls", "hls/d", "x/y"]


@pytest.mark.parametrize(
    ("url", "allowed", "expected"),
    [
        ("/media/a.mp4", ["file"], "file"),
        ("/media/a.m3u8", ALL_PROTOCOLS, "file"),
        ("http://h/a.m3u8", ["http"], "http,tcp,crypto"),
        ("https://h/a.m3u8", ["https"], "https,tcp,tls,httpproxy,crypto"),
        ("https://h/a.m3u8", ["file", "http", "https"], "http,https,tcp,tls,httpproxy,crypto"),
        ("rtmp://h/app/key", ALL_PROTOCOLS, "rtmp,tcp"),
        ("rtmps://h/app/key", ["rtmps"], "rtmps,tls,httpproxy,tcp"),
    ],
)
def test_protocol_whitelist(url: str, allowed: list[str], expected: str) -> None:
    assert protocol_whitelist(url, allowed) == expected


def test_protocol_not_allowed_by_pool() -> None:
    with pytest.raises(InputNotAllowed):
        protocol_whitelist("/media/a.mp4", ["http", "https"])
    with pytest.raises(InputNotAllowed):
        plan(spec([{"name": "a"}]), allowed_protocols=["rtmp"])


def _invalid(outputs: list[dict[str, Any]], accelerator: str, extra: dict[str, Any]) -> str:
    with pytest.raises(InvalidSpec) as error:
        plan(spec(outputs, **extra), accelerator)
    return error.value.message


@pytest.mark.parametrize(
    ("outputs", "accelerator", "extra", "words"),
    [
        ([{"name": "a", "video": {"preset": "p3"}}], "cpu", {}, "NVENC"),
        ([{"name": "a", "video": {"preset": "p3"}}], "qsv", {"accelerator": "nvenc"}, "NVENC"),
        ([{"name": "a", "video": {"bitrate": "1M", "twoPass": True}}], "nvenc", {}, "CPU-only"),
        ([{"name": "a", "video": {"bitrate": "1M", "twoPass": True}}], "vaapi", {}, "CPU-only"),
        ([{"name": "a", "video": {"crf": 20, "twoPass": True}}], "cpu", {}, "bitrate"),
        (
            [{"name": "a", "video": {"codec": "av1", "bitrate": "1M", "twoPass": True}}],
            "cpu",
            {},
            "h264 and hevc",
        ),
        ([{"name": "a", "container": "flv", "video": {"codec": "av1"}}], "cpu", {}, "flv cannot carry av1"),
        ([{"name": "a", "container": "flv", "video": {"codec": "hevc"}}], "cpu", {}, "flv cannot carry hevc"),
        ([{"name": "a", "container": "flv", "audio": {"codec": "opus"}}], "cpu", {}, "flv cannot carry opus"),
        (
            [{"name": "a", "container": "mpegts", "video": {"codec": "av1"}}],
            "cpu",
            {},
            "mpegts cannot carry av1",
        ),
        ([{"name": "a", "video": {"codec": "copy", "width": 640}}], "cpu", {}, "width"),
        ([{"name": "a", "video": {"codec": "copy", "preset": "fast"}}], "cpu", {}, "re-uses the input"),
        ([{"name": "a", "video": {"codec": "none", "crf": 20}}], "cpu", {}, "drops the video"),
        ([{"name": "a", "video": {"codec": "none"}, "audio": {"codec": "none"}}], "cpu", {}, "empty"),
        ([{"name": "a", "audio": {"codec": "copy", "bitrate": "128k"}}], "cpu", {}, "no bitrate"),
        ([{"name": "a", "audio": {"codec": "opus", "sampleRate": 44100}}], "cpu", {}, "opus supports"),
        ([{"name": "a", "audio": {"codec": "mp3", "channels": 6}}], "cpu", {}, "2 channels"),
        ([{"name": "a", "video": {"crf": 20, "bitrate": "1M"}}], "cpu", {}, "mutually exclusive"),
        ([{"name": "a", "video": {"maxrate": "1M"}}], "cpu", {}, "maxrate needs"),
        (
            [
                {"name": "a", "video": {"crf": 20, "maxrate": "1M", "bufsize": "1M"}, "path": "x"},
                {"name": "b", "path": "x"},
            ],
            "cpu",
            {},
            "already writes",
        ),
        ([{"name": "a", "video": {"crf": 20, "bufsize": "1M"}}], "cpu", {}, "bufsize needs maxrate"),
        ([{"name": "a", "video": {"crf": 60}}], "cpu", {}, "out of range"),
        ([{"name": "a", "video": {"crf": 0}}], "qsv", {}, "1..51"),
        ([{"name": "a", "video": {"width": 641}}], "cpu", {}, "even"),
        ([{"name": "a", "container": "hls", "video": {"codec": "none"}}], "cpu", {}, "needs a video"),
        ([{"name": "a", "container": "hls", "video": {"codec": "av1"}}], "cpu", {}, "fmp4"),
        ([{"name": "a", "container": "hls", "video": {"crf": 23}}], "cpu", {}, "BANDWIDTH"),
        ([{"name": "a", "container": "hls"}], "nvenc", {}, "BANDWIDTH"),
        ([{"name": "a", "container": "mp4", "url": "rtmp://h/app/k"}], "cpu", {}, "needs container flv"),
        ([{"name": "a", "path": "hls/x.mp4"}], "cpu", {}, "reserved"),
        ([{"name": "a"}, {"name": "a", "container": "mkv"}], "cpu", {}, "unique"),
        ([{"name": "a"}], "cpu", {"hls": {"segmentSeconds": 4}}, "at least one output with container hls"),
        ([{"name": "a"}], "amf", {}, "unknown accelerator"),
        ([{"name": "a", "container": "mpegts", "tags": {"title": "t"}}], "cpu", {}, "tags are written into"),
    ],
)
def test_invalid_specs(outputs: list[dict[str, Any]], accelerator: str, extra: dict[str, Any], words: str) -> None:
    assert words in _invalid(outputs, accelerator, extra)


def test_two_pass_refused_for_live_input() -> None:
    url = "rtmp://h/live/k"
    s = TranscodeJobSpec.model_validate(
        {"input": {"uri": url}, "outputs": [{"name": "a", "video": {"bitrate": "1M", "twoPass": True}}]}
    )
    with pytest.raises(InvalidSpec, match="live stream"):
        plan(s, input_url=url)


def test_output_must_not_overwrite_the_input() -> None:
    s = spec([{"name": "in", "path": "in.mp4"}])
    with pytest.raises(InvalidSpec, match="overwrite"):
        plan(s, input_url=f"{OUT}/in.mp4")


def test_unsafe_folders_are_programming_errors() -> None:
    s = spec([{"name": "a"}])
    with pytest.raises(ValueError, match="output_dir"):
        build_encode_plan(
            s, "cpu", input_url=IN, output_dir="/out/100%", scratch_dir=SCRATCH, allowed_protocols=["file"]
        )
    with pytest.raises(ValueError, match="scratch_dir"):
        build_encode_plan(s, "cpu", input_url=IN, output_dir=OUT, scratch_dir="/tmp/a:b", allowed_protocols=["file"])


def test_invalid_spec_is_a_value_error_with_a_message() -> None:
    error = InvalidSpec("container flv cannot carry av1")
    assert isinstance(error, ValueError)
    assert str(error) == error.message == "container flv cannot carry av1"


def test_argv_items_are_plain_strings_without_shell_quoting() -> None:
    s = spec(
        [
            {"name": "a", "container": "hls", "video": {"bitrate": "1M"}},
            {"name": "b", "container": "hls", "video": {"bitrate": "2M"}},
        ],
        extraArgs=["-metadata", "title=My Film"],
        thumbnails={"sprite": {}},
    )
    for argv in plan(s).passes:
        assert all(isinstance(item, str) and item for item in argv)
        assert "title=My Film" in argv


def test_realtime_input_reads_at_native_rate_in_the_final_pass_only() -> None:
    s = spec([{"name": "a", "video": {"bitrate": "1M", "twoPass": True}}], input={"uri": IN, "realtime": True})
    first, final = plan(s).passes
    assert "-re" not in first
    assert final[final.index("-re") + 1 : final.index("-re") + 3] == ["-i", IN]


def test_realtime_defaults_on_only_for_a_recorded_input_restreamed_to_rtmp() -> None:
    restream = {"name": "yt", "container": "flv", "url": "rtmp://h/app/k"}
    assert "-re" in plan(spec([restream])).passes[0]
    assert "-re" not in plan(spec([{"name": "file"}])).passes[0]
    live = spec([restream], input={"uri": "rtmp://h/live/in"})
    assert "-re" not in plan(live, input_url="rtmp://h/live/in").passes[0]
    assert "-re" not in plan(spec([restream], input={"uri": IN, "realtime": False})).passes[0]


def test_tags_are_written_into_their_output_only() -> None:
    tags = {"title": "Évening news = 20:00", "copyright": "(c) Station"}
    main = plan(spec([{"name": "a", "tags": tags}, {"name": "b", "container": "mkv"}])).passes[-1]
    a_end = main.index(f"{OUT}/a.mp4")
    pairs = [main[i + 1] for i, x in enumerate(main) if x == "-metadata"]
    assert pairs == ["title=Évening news = 20:00", "copyright=(c) Station"]
    assert main.index("-metadata") < a_end
