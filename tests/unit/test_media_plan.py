"""Planning for real-world sources: the probe summary, the size rule, deinterlace, colour,
HDR, audio track choice and two-pass loudness; golden argv for every accelerator."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.ffmpeg.argv import EncodePlan, InvalidSpec, PlannedOutput, build_encode_plan
from ffrtmp.ffmpeg.filters import svtav1_master_display
from ffrtmp.ffmpeg.loudness import (
    LoudnessMeasurement,
    LoudnessParseError,
    apply_measurements,
    parse_loudnorm_output,
)
from ffrtmp.ffmpeg.media import AudioStream, SourceMedia, nearest_even, output_size, source_media_from_probe

pytestmark = pytest.mark.unit

HEAD = ["ffmpeg", "-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-progress", "pipe:1", "-nostats"]
IN = "/media/in.mp4"
OUT = "/out/ns/job"
TAGS_709 = [
    "-color_primaries:v", "bt709", "-color_trc:v", "bt709", "-colorspace:v", "bt709", "-color_range:v", "tv",
]  # fmt: skip
AUDIO = ["-c:a", "aac", "-b:a", "128k"]
MP4 = ["-f", "mp4", "-movflags", "+faststart"]
HW_INPUT = {
    "cpu": [],
    "nvenc": ["-hwaccel", "cuda", "-hwaccel_output_format", "cuda"],
    "vaapi": ["-vaapi_device", "/dev/dri/renderD128", "-hwaccel", "vaapi", "-hwaccel_output_format", "vaapi"],
    "qsv": ["-qsv_device", "/dev/dri/renderD128", "-hwaccel", "qsv", "-hwaccel_output_format", "qsv"],
}
# A DVD-style NTSC source: 720x480 anamorphic 16:9, top field first, BT.601, two audio tracks.
DVD = SourceMedia(
    width=720,
    height=480,
    sample_aspect=Fraction(32, 27),
    field_order="tt",
    color_space="smpte170m",
    audio_streams=(AudioStream(0, "ac3", 6, "eng"), AudioStream(1, "ac3", 2, "deu")),
)
MASTER_DISPLAY = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)"
HDR10 = SourceMedia(
    width=3840,
    height=2160,
    pix_fmt="yuv420p10le",
    color_transfer="smpte2084",
    color_primaries="bt2020",
    color_space="bt2020nc",
    audio_streams=(AudioStream(0, "aac", 2, None),),
    mastering_display=MASTER_DISPLAY,
    content_light="1000,400",
)
HLG = SourceMedia(width=1920, height=1080, color_transfer="arib-std-b67", color_primaries="bt2020")
TONEMAP = (
    "zscale=t=linear:npl=100,format=gbrpf32le,zscale=p=bt709,tonemap=tonemap=hable:desat=0,"
    "zscale=t=bt709:m=bt709:r=tv,format=yuv420p"
)


def plan(outputs: list[dict[str, Any]], accelerator: str = "cpu", **kwargs: Any) -> EncodePlan:
    s = TranscodeJobSpec.model_validate({"input": {"uri": IN}, "outputs": outputs})
    return build_encode_plan(
        s, accelerator, input_url=IN, output_dir=OUT, scratch_dir="/scratch/job", allowed_protocols=["file"], **kwargs
    )


# -- the probe summary ------------------------------------------------------------------------


def test_source_media_from_ffprobe_json() -> None:
    document = {
        "format": {"start_time": "10000.040000", "duration": "2.0"},
        "streams": [
            {"codec_type": "video", "disposition": {"attached_pic": 1}, "width": 300, "height": 300},
            {
                "codec_type": "video", "width": 720, "height": 480, "sample_aspect_ratio": "32:27",
                "field_order": "bb", "pix_fmt": "yuv420p10le", "color_range": "tv", "color_transfer": "smpte2084",
                "color_primaries": "bt2020", "color_space": "bt2020nc",
                "side_data_list": [
                    {
                        "side_data_type": "Mastering display metadata",
                        "red_x": "34000/50000", "red_y": "16000/50000", "green_x": "13250/50000",
                        "green_y": "34500/50000", "blue_x": "7500/50000", "blue_y": "3000/50000",
                        "white_point_x": "15635/50000", "white_point_y": "16450/50000",
                        "min_luminance": "1/10000", "max_luminance": "10000000/10000",
                    },
                    {"side_data_type": "Content light level metadata", "max_content": 1000, "max_average": 400},
                ],
            },
            {"codec_type": "audio", "codec_name": "ac3", "channels": 6, "tags": {"language": "eng"}},
            {"codec_type": "audio", "codec_name": "aac", "channels": 2},
        ],
    }  # fmt: skip
    media = source_media_from_probe(document)
    assert media == SourceMedia(
        width=720,
        height=480,
        sample_aspect=Fraction(32, 27),
        field_order="bb",
        pix_fmt="yuv420p10le",
        color_range="tv",
        color_transfer="smpte2084",
        color_primaries="bt2020",
        color_space="bt2020nc",
        audio_streams=(AudioStream(0, "ac3", 6, "eng"), AudioStream(1, "aac", 2, None)),
        start_seconds=10000.04,
        mastering_display=MASTER_DISPLAY,
        content_light="1000,400",
    )
    assert (media.interlaced, media.hdr, media.display_aspect) == (True, "pq", Fraction(16, 9))


@pytest.mark.parametrize(
    ("stream", "interlaced", "hdr", "full_range"),
    [
        ({"field_order": "progressive", "color_transfer": "bt709"}, False, None, False),
        ({"field_order": "tb", "color_transfer": "arib-std-b67"}, True, "hlg", False),
        ({"pix_fmt": "yuvj420p"}, False, None, True),
        ({"color_range": "pc", "sample_aspect_ratio": "0:1"}, False, None, True),
    ],
)
def test_source_media_flags(stream: dict[str, str], interlaced: bool, hdr: str | None, full_range: bool) -> None:
    media = source_media_from_probe({"streams": [{"codec_type": "video", "width": 640, "height": 360, **stream}]})
    assert (media.interlaced, media.hdr, media.full_range, media.sample_aspect) == (
        interlaced,
        hdr,
        full_range,
        Fraction(1),
    )


# -- the size rule ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "sar", "requested", "expected"),
    [
        (1079, 1917, Fraction(1), (None, None), (1080, 1918)),
        (1917, 1079, Fraction(1), (None, None), (1918, 1080)),
        (1917, 1079, Fraction(1), (None, 720), (1280, 720)),
        (1079, 1917, Fraction(1), (360, None), (360, 640)),
        (720, 480, Fraction(32, 27), (None, None), (854, 480)),
        (720, 480, Fraction(8, 9), (None, None), (640, 480)),  # 4:3 NTSC
        (720, 576, Fraction(64, 45), (640, None), (640, 360)),  # 16:9 PAL
        (720, 480, Fraction(32, 27), (640, 480), (640, 480)),  # both given: as asked
    ],
)
def test_output_size(
    width: int, height: int, sar: Fraction, requested: tuple[int | None, int | None], expected: tuple[int, int]
) -> None:
    source = SourceMedia(width=width, height=height, sample_aspect=sar)
    size = output_size(source, *requested)
    assert size == expected
    w, h = size
    assert w % 2 == 0 and h % 2 == 0
    if None in requested:
        assert abs(Fraction(w, h) / Fraction(width * sar, height) - 1) < Fraction(1, 100)


def test_output_size_unknown_without_a_probe() -> None:
    assert output_size(SourceMedia(), 640, None) is None
    assert output_size(SourceMedia(), 640, 360) == (640, 360)


def test_nearest_even_rounds_halves_up_and_never_below_two() -> None:
    assert [nearest_even(x) for x in (0.4, 3, 5, 539.5 * 2, 853.33)] == [2, 4, 6, 1080, 854]


# -- golden argv per accelerator: interlaced anamorphic SD, second audio track by language -----

SD_FILTERS = {
    "cpu": "bwdif=mode=send_frame:parity=auto:deint=all,scale=w=854:h=480:out_color_matrix=bt709,setsar=1",
    "nvenc": "yadif_cuda=mode=send_frame:parity=auto:deint=all,scale_cuda=w=854:h=480,setsar=1",
    "vaapi": "deinterlace_vaapi=rate=frame,scale_vaapi=w=854:h=480:out_color_matrix=bt709,setsar=1",
    "qsv": "vpp_qsv=deinterlace=2,vpp_qsv=w=854:h=480,setsar=1",
}
SD_ENCODER = {
    "cpu": ["-c:v", "libx264", "-crf:v", "23", "-pix_fmt:v", "yuv420p"],
    "nvenc": ["-c:v", "h264_nvenc", "-rc:v", "vbr", "-cq:v", "23", "-b:v", "0"],
    "vaapi": ["-c:v", "h264_vaapi", "-rc_mode:v", "CQP", "-qp:v", "23"],
    "qsv": ["-c:v", "h264_qsv", "-global_quality:v", "23"],
}


# nvenc and qsv scale without converting the matrix: their tags keep the source's BT.601
TAGS_601 = [*TAGS_709[:5], "smpte170m", *TAGS_709[6:]]
SD_TAGS = {"cpu": TAGS_709, "vaapi": TAGS_709, "nvenc": TAGS_601, "qsv": TAGS_601}


@pytest.mark.parametrize("accelerator", ["cpu", "nvenc", "vaapi", "qsv"])
def test_interlaced_anamorphic_source_on_every_accelerator(accelerator: str) -> None:
    p = plan([{"name": "sd", "video": {"crf": 23}, "audio": {"language": "deu"}}], accelerator, source=DVD)
    assert p.passes == [
        [
            *HEAD, "-protocol_whitelist", "file", *HW_INPUT[accelerator], "-i", IN,
            "-filter_complex", f"[0:v:0]{SD_FILTERS[accelerator]}[v0]",
            "-map", "[v0]", "-map", "0:a:1",
            *SD_ENCODER[accelerator], *SD_TAGS[accelerator], *AUDIO, *MP4, f"{OUT}/sd.mp4",
        ]
    ]  # fmt: skip
    assert p.outputs == [PlannedOutput("sd", "file", "sd.mp4", 854, 480)]


@pytest.mark.parametrize(("mode", "source", "deinterlaced"), [("off", DVD, False), ("on", HDR10, True)])
def test_deinterlace_can_be_forced(mode: str, source: SourceMedia, deinterlaced: bool) -> None:
    p = plan([{"name": "a", "video": {"deinterlace": mode}}], source=source)
    graph = p.passes[0][p.passes[0].index("-filter_complex") + 1]
    assert ("bwdif=mode=send_frame" in graph) is deinterlaced


def test_without_a_probe_the_plan_is_as_before() -> None:
    p = plan([{"name": "a", "video": {"width": 1280}}])
    assert p.passes[0][p.passes[0].index("-filter_complex") + 1] == "[0:v:0]scale=w=1280:h=-2[v0]"
    assert "-color_primaries:v" not in p.passes[0]


@pytest.mark.parametrize(
    ("source", "accelerator", "graph"),
    [
        (SourceMedia(width=1920, height=1080, pix_fmt="yuvj420p", color_range="pc"), "cpu", "scale=out_range=tv"),
        (SourceMedia(width=1920, height=1080, color_space="bt709", color_range="tv"), "cpu", "null"),
        (SourceMedia(width=1920, height=1080), "cpu", "null"),  # untagged HD is BT.709
        (SourceMedia(width=640, height=480), "cpu", "scale=out_color_matrix=bt709"),  # untagged SD is BT.601
        (
            SourceMedia(width=640, height=480, color_space="bt470bg", pix_fmt="yuvj420p"),
            "vaapi",
            "scale_vaapi=out_color_matrix=bt709:out_range=tv",
        ),
        # nvenc cannot convert: the tags say what the pixels are
        (SourceMedia(width=640, height=480, color_range="pc"), "nvenc", "null"),
    ],
)
def test_same_size_source_is_only_converted_where_its_colour_differs(
    source: SourceMedia, accelerator: str, graph: str
) -> None:
    p = plan([{"name": "a"}], accelerator, source=source)
    argv = p.passes[0]
    assert argv[argv.index("-filter_complex") + 1] == f"[0:v:0]{graph}[v0]"
    assert p.outputs[0] == PlannedOutput("a", "file", "a.mp4", source.width, source.height)
    converted = accelerator != "nvenc"
    assert argv[argv.index("-colorspace:v") + 1] == ("bt709" if converted else "smpte170m")
    assert argv[argv.index("-color_range:v") + 1] == ("tv" if converted else "pc")


# -- HDR ---------------------------------------------------------------------------------------

HDR_FILTERS = {
    "cpu": f"scale=w=1280:h=720,setsar=1,{TONEMAP}",
    "nvenc": f"scale_cuda=w=1280:h=720,setsar=1,hwdownload,format=p010le,{TONEMAP},hwupload_cuda",
    "vaapi": "scale_vaapi=w=1280:h=720,setsar=1,tonemap_vaapi=format=nv12:t=bt709:m=bt709:p=bt709",
}


@pytest.mark.parametrize("accelerator", ["cpu", "nvenc", "vaapi"])
def test_hdr10_is_tone_mapped_to_sdr_bt709(accelerator: str) -> None:
    p = plan([{"name": "hd", "video": {"width": 1280, "crf": 23}}], accelerator, source=HDR10)
    assert p.passes == [
        [
            *HEAD, "-protocol_whitelist", "file", *HW_INPUT[accelerator], "-i", IN,
            "-filter_complex", f"[0:v:0]{HDR_FILTERS[accelerator]}[v0]",
            "-map", "[v0]", "-map", "0:a:0",
            *SD_ENCODER[accelerator], *TAGS_709, *AUDIO, *MP4, f"{OUT}/hd.mp4",
        ]
    ]  # fmt: skip


def test_qsv_cannot_tone_map() -> None:
    with pytest.raises(InvalidSpec, match="output hd: qsv cannot tone-map HDR"):
        plan([{"name": "hd", "video": {"width": 1280}}], "qsv", source=HDR10)


def test_hdr10_passthrough_on_libx265_keeps_the_signalling() -> None:
    p = plan([{"name": "hdr", "video": {"codec": "hevc", "crf": 23, "hdr": "passthrough"}}], source=HDR10)
    assert p.passes == [
        [
            *HEAD, "-protocol_whitelist", "file", "-i", IN,
            "-filter_complex", "[0:v:0]null[v0]",
            "-map", "[v0]", "-map", "0:a:0",
            "-c:v", "libx265", "-crf:v", "23", "-pix_fmt:v", "yuv420p10le",
            "-color_primaries:v", "bt2020", "-color_trc:v", "smpte2084", "-colorspace:v", "bt2020nc",
            "-color_range:v", "tv", "-tag:v", "hvc1",
            "-x265-params:v",
            "log-level=error:colorprim=bt2020:transfer=smpte2084:colormatrix=bt2020nc:range=limited:hdr10=1:"
            f"repeat-headers=1:master-display={MASTER_DISPLAY}:max-cll=1000,400",
            *AUDIO, *MP4, f"{OUT}/hdr.mp4",
        ]
    ]  # fmt: skip
    assert p.outputs == [PlannedOutput("hdr", "file", "hdr.mp4", 3840, 2160)]


def test_hlg_passthrough_on_nvenc_is_main10_with_hlg_tags() -> None:
    p = plan([{"name": "hlg", "video": {"codec": "hevc", "hdr": "passthrough"}}], "nvenc", source=HLG)
    argv = p.passes[0]
    assert argv[argv.index("-c:v") : argv.index("-an")] == [
        "-c:v", "hevc_nvenc", "-profile:v", "main10", "-color_primaries:v", "bt2020",
        "-color_trc:v", "arib-std-b67", "-colorspace:v", "bt2020nc", "-color_range:v", "tv", "-tag:v", "hvc1",
    ]  # fmt: skip


def test_hdr_passthrough_needs_hevc_or_av1() -> None:
    with pytest.raises(InvalidSpec, match="hdr passthrough needs codec hevc or av1"):
        plan([{"name": "a", "video": {"codec": "h264", "hdr": "passthrough"}}], source=HDR10)


def test_hdr10_passthrough_on_svtav1_writes_mastering_display_and_content_light() -> None:
    p = plan([{"name": "hdr", "video": {"codec": "av1", "crf": 30, "hdr": "passthrough"}}], source=HDR10)
    argv = p.passes[0]
    assert argv[argv.index("-c:v") : argv.index("-c:a")] == [
        "-c:v", "libsvtav1", "-crf:v", "30", "-pix_fmt:v", "yuv420p10le",
        "-color_primaries:v", "bt2020", "-color_trc:v", "smpte2084", "-colorspace:v", "bt2020nc",
        "-color_range:v", "tv",
        "-svtav1-params:v",
        "mastering-display=G(0.265,0.69)B(0.15,0.06)R(0.68,0.32)WP(0.3127,0.329)L(1000,0.0001):content-light=1000,400",
    ]  # fmt: skip


def test_hdr10_passthrough_on_vaapi_hevc_writes_the_hdr_sei_from_the_frames() -> None:
    p = plan([{"name": "hdr", "video": {"codec": "hevc", "hdr": "passthrough"}}], "vaapi", source=HDR10)
    argv = p.passes[0]
    assert argv[argv.index("-c:v") : argv.index("-c:a")] == [
        "-c:v", "hevc_vaapi", "-profile:v", "main10", "-color_primaries:v", "bt2020",
        "-color_trc:v", "smpte2084", "-colorspace:v", "bt2020nc", "-color_range:v", "tv", "-tag:v", "hvc1",
        "-sei:v", "hdr",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("accelerator", "codec", "encoder", "kwargs"),
    [
        ("nvenc", "hevc", "hevc_nvenc", {}),
        ("nvenc", "av1", "av1_nvenc", {}),
        ("qsv", "hevc", "hevc_qsv", {}),
        ("qsv", "av1", "av1_qsv", {}),
        ("vaapi", "av1", "av1_vaapi", {}),
        ("cpu", "av1", "libaom-av1", {"av1_cpu_encoder": "libaom-av1"}),
    ],
)
def test_hdr10_passthrough_is_refused_where_the_encoder_would_drop_the_metadata(
    accelerator: str, codec: str, encoder: str, kwargs: dict[str, str]
) -> None:
    outputs = [{"name": "hdr", "video": {"codec": codec, "hdr": "passthrough"}}]
    with pytest.raises(InvalidSpec, match=f"output hdr: {encoder} cannot write the source's HDR10 mastering display"):
        plan(outputs, accelerator, source=HDR10, **kwargs)
    # nothing to carry (HLG, or PQ without static metadata): the colour description is enough
    for source in (
        SourceMedia(width=1920, height=1080, color_transfer="arib-std-b67"),
        SourceMedia(width=1920, height=1080, color_transfer="smpte2084"),
    ):
        argv = plan(outputs, accelerator, source=source, **kwargs).passes[0]
        assert argv[argv.index("-color_trc:v") + 1] == source.color_transfer


def test_svtav1_master_display_is_in_chromaticity_and_nits() -> None:
    assert (
        svtav1_master_display(MASTER_DISPLAY) == "G(0.265,0.69)B(0.15,0.06)R(0.68,0.32)WP(0.3127,0.329)L(1000,0.0001)"
    )
    assert svtav1_master_display("G(1,2)B(3,4)") is None


# -- audio -------------------------------------------------------------------------------------


def test_audio_track_errors_name_what_the_input_has() -> None:
    with pytest.raises(InvalidSpec, match=r"no audio in language fra \(deu, eng\)"):
        plan([{"name": "a", "audio": {"language": "fra"}}], source=DVD)
    with pytest.raises(InvalidSpec, match=r"audio track 2 does not exist \(the input has 2\)"):
        plan([{"name": "a", "audio": {"track": 2}}], source=DVD)


def test_audio_language_without_a_probe_uses_the_metadata_specifier() -> None:
    p = plan([{"name": "a", "audio": {"language": "deu", "channels": 2}}])
    argv = p.passes[0]
    assert argv[argv.index("-map", argv.index("-map") + 1) + 1] == "0:a:m:language:deu?"
    assert argv[argv.index("-ac:a") + 1] == "2"  # 5.1/7.1 -> stereo with ffmpeg's default downmix


def test_loudness_adds_one_measuring_pass_per_source_stream() -> None:
    loud = {"integratedLufs": -16, "truePeakDb": "-1.5", "loudnessRangeLu": 11}
    p = plan(
        [
            {"name": "a", "video": {"codec": "none"}, "audio": {"language": "deu", "loudness": loud}},
            {"name": "b", "video": {"codec": "none"}, "audio": {"track": 1, "loudness": {}}},
        ],
        source=DVD,
    )
    assert [(m.stream, m.argv) for m in p.loudness_measure_passes] == [
        (
            "0:a:1",
            [
                "ffmpeg", "-hide_banner", "-nostdin", "-y", "-loglevel", "info", "-progress", "pipe:1", "-nostats",
                "-protocol_whitelist", "file", "-i", IN,
                "-map", "0:a:1", "-filter:a", "loudnorm=I=-16:TP=-1.5:LRA=11:print_format=json",
                "-vn", "-f", "null", "-",
            ],
        )
    ]  # fmt: skip
    measured = LoudnessMeasurement("-30.52", "-12.01", "3.40", "-40.83")
    (encode,) = apply_measurements(p.passes, {"0:a:1": measured})
    assert encode == [
        *HEAD, "-protocol_whitelist", "file", "-i", IN,
        "-map", "0:a:1", "-vn", *AUDIO,
        "-filter:a",
        "loudnorm=I=-16:TP=-1.5:LRA=11:measured_I=-30.52:measured_TP=-12.01:measured_LRA=3.40:"
        "measured_thresh=-40.83:linear=true:print_format=none,aformat=sample_rates=48000",
        *MP4, f"{OUT}/a.mp4",
        "-map", "0:a:1", "-vn", *AUDIO,
        "-filter:a",
        "loudnorm=I=-23:TP=-1:LRA=11:measured_I=-30.52:measured_TP=-12.01:measured_LRA=3.40:"
        "measured_thresh=-40.83:linear=true:print_format=none,aformat=sample_rates=48000",
        *MP4, f"{OUT}/b.mp4",
    ]  # fmt: skip


def test_loudness_needs_a_file_input() -> None:
    s = TranscodeJobSpec.model_validate(
        {
            "input": {"uri": "rtmp://src/live/a"},
            "outputs": [{"name": "a", "container": "flv", "audio": {"loudness": {}}}],
        }
    )
    with pytest.raises(InvalidSpec, match="loudness normalisation measures the whole input first"):
        build_encode_plan(
            s, "cpu", input_url="rtmp://src/live/a", output_dir=OUT, scratch_dir="/s", allowed_protocols=["rtmp"]
        )


LOUDNORM_STDERR = """Output #0, null, to 'pipe:':
size=N/A time=00:00:02.00 bitrate=N/A speed= 104x
video:0kB audio:94kB subtitle:0kB other streams:0kB global headers:0kB muxing overhead: unknown
[Parsed_loudnorm_0 @ 0x55d0c6a4b4c0]
{
	"input_i" : "-35.41",
	"input_tp" : "-31.47",
	"input_lra" : "0.00",
	"input_thresh" : "-45.41",
	"output_i" : "-16.48",
	"output_tp" : "-12.54",
	"output_lra" : "0.00",
	"output_thresh" : "-26.48",
	"normalization_type" : "linear",
	"target_offset" : "0.48"
}
"""


def test_parse_loudnorm_output() -> None:
    assert parse_loudnorm_output(LOUDNORM_STDERR) == LoudnessMeasurement("-35.41", "-31.47", "0.00", "-45.41")
    with pytest.raises(LoudnessParseError):
        parse_loudnorm_output("Output #0, null, to 'pipe:':\n{ not json }")


def test_silence_gets_single_pass_loudnorm() -> None:
    silent = LoudnessMeasurement("-inf", "-inf", "0.00", "-70.00")
    filled = apply_measurements(
        [["-filter:a", "loudnorm=I=-23:TP=-1:LRA=11:@measured(0:a:0)@:print_format=none"]], {"0:a:0": silent}
    )
    assert filled == [["-filter:a", "loudnorm=I=-23:TP=-1:LRA=11:print_format=none"]]


def test_a_missing_measurement_is_an_error() -> None:
    with pytest.raises(LoudnessParseError, match="no loudness measurement"):
        apply_measurements([["loudnorm=I=-23:@measured(0:a:0)@"]], {})


def test_hdr10_metadata_from_the_first_frame() -> None:
    document = {
        "streams": [{"codec_type": "video", "width": 64, "height": 64, "color_transfer": "smpte2084"}],
        "frames": [
            {"side_data_list": [{"side_data_type": "Content light level metadata", "max_content": 0, "max_average": 0}]}
        ],
    }
    assert source_media_from_probe(document).content_light == "0,0"


DOWNLOAD = "hwdownload,format=nv12|p010le"
HD_THUMB = "scale=w=320:h=180:out_color_matrix=bt601:out_range=pc,setsar=1"  # JPEG: full-range BT.601


@pytest.mark.parametrize(
    ("accelerator", "source", "filters"),
    [
        ("cpu", DVD, f"bwdif=mode=send_frame:parity=auto:deint=all,fps=1/10,{HD_THUMB}"),
        ("cpu", HDR10, f"fps=1/10,{TONEMAP},{HD_THUMB}"),
        ("cpu", None, "fps=1/10,scale=w=320:h=-2:out_color_matrix=bt601:out_range=pc"),
        # hardware frames: their own deinterlacer before fps, then only the kept frames come down
        ("nvenc", DVD, f"yadif_cuda=mode=send_frame:parity=auto:deint=all,fps=1/10,{DOWNLOAD},{HD_THUMB}"),
        ("vaapi", DVD, f"deinterlace_vaapi=rate=frame,fps=1/10,{DOWNLOAD},{HD_THUMB}"),
        ("qsv", DVD, f"vpp_qsv=deinterlace=2,fps=1/10,{DOWNLOAD},{HD_THUMB}"),
        # and an HDR source is tone-mapped on the CPU after the download, like the cpu renditions
        ("nvenc", HDR10, f"fps=1/10,{DOWNLOAD},{TONEMAP},{HD_THUMB}"),
        ("vaapi", HDR10, f"fps=1/10,{DOWNLOAD},{TONEMAP},{HD_THUMB}"),
        ("qsv", HLG, f"fps=1/10,{DOWNLOAD},{TONEMAP},{HD_THUMB}"),
    ],
)
def test_thumbnails_get_the_renditions_deinterlace_and_tone_map(
    accelerator: str, source: SourceMedia | None, filters: str
) -> None:
    # qsv cannot tone-map its renditions: they pass HLG through, the thumbnails are still SDR
    video = {"codec": "hevc", "hdr": "passthrough"} if accelerator == "qsv" and source is HLG else {}
    s = TranscodeJobSpec.model_validate(
        {"input": {"uri": IN}, "outputs": [{"name": "a", "video": video}], "thumbnails": {}}
    )
    p = build_encode_plan(
        s, accelerator, input_url=IN, output_dir=OUT, scratch_dir="/s", allowed_protocols=["file"], source=source
    )
    graph = p.passes[0][p.passes[0].index("-filter_complex") + 1]
    assert graph.endswith(f"[s1]{filters}[thumbs]")


@pytest.mark.parametrize(
    ("stream", "size", "sar"),
    [
        ({"side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}]}, (1080, 1920), Fraction(1)),
        ({"tags": {"rotate": "270"}, "sample_aspect_ratio": "4:3"}, (1080, 1920), Fraction(3, 4)),
        ({"side_data_list": [{"side_data_type": "Display Matrix", "rotation": 180}]}, (1920, 1080), Fraction(1)),
    ],
)
def test_rotated_sources_are_described_upright(stream: dict[str, Any], size: tuple[int, int], sar: Fraction) -> None:
    media = source_media_from_probe({"streams": [{"codec_type": "video", "width": 1920, "height": 1080, **stream}]})
    assert ((media.width, media.height), media.sample_aspect) == (size, sar)


def test_the_loudness_measuring_pass_reads_at_full_speed_when_the_encode_is_realtime() -> None:
    s = TranscodeJobSpec.model_validate(
        {"input": {"uri": IN, "realtime": True}, "outputs": [{"name": "a", "audio": {"loudness": {}}}]}
    )
    p = build_encode_plan(s, "cpu", input_url=IN, output_dir=OUT, scratch_dir="/s", allowed_protocols=["file"])
    (measure,) = p.loudness_measure_passes
    assert "-re" not in measure.argv
    assert p.passes[0][p.passes[0].index("-i") - 1] == "-re"


PHONE = SourceMedia(width=1080, height=1920, rotation=90)  # stored 1920x1080, shown turned
ROTATED_FILTERS = {
    "cpu": "",  # ffmpeg's autorotate turns software frames before the graph
    "nvenc": "hwdownload,format=nv12|p010le,transpose=cclock,hwupload_cuda,scale_cuda=w=720:h=1280,setsar=1",
    "vaapi": "transpose_vaapi=dir=cclock,scale_vaapi=w=720:h=1280,setsar=1",
    "qsv": "vpp_qsv=transpose=cclock,vpp_qsv=w=720:h=1280,setsar=1",
}


@pytest.mark.parametrize("accelerator", ["cpu", "nvenc", "vaapi", "qsv"])
def test_hardware_chains_turn_rotated_sources_themselves(accelerator: str) -> None:
    p = plan([{"name": "a", "video": {"width": 720}}], accelerator, source=PHONE)
    chain = ROTATED_FILTERS[accelerator] or "scale=w=720:h=1280,setsar=1"
    assert p.passes[0][p.passes[0].index("-filter_complex") + 1] == f"[0:v:0]{chain}[v0]"
    assert p.outputs[0] == PlannedOutput("a", "file", "a.mp4", 720, 1280)


def test_thumbnails_of_downloaded_hardware_frames_are_turned() -> None:
    s = TranscodeJobSpec.model_validate({"input": {"uri": IN}, "outputs": [{"name": "a"}], "thumbnails": {}})
    upside_down = SourceMedia(width=1920, height=1080, rotation=180)
    p = build_encode_plan(
        s, "vaapi", input_url=IN, output_dir=OUT, scratch_dir="/s", allowed_protocols=["file"], source=upside_down
    )
    graph = p.passes[0][p.passes[0].index("-filter_complex") + 1]
    assert graph.endswith(f"[s1]fps=1/10,hwdownload,format=nv12|p010le,hflip,vflip,{HD_THUMB}[thumbs]")
