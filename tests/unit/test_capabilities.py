"""Capabilities: what a Lease says a worker can encode, the codecs a job needs, NVENC session
slots, and the nvenc argv when NVDEC cannot decode the input (golden argv)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.api.pool import WorkerPoolSpec
from ffrtmp.controller.pods import build_worker_pod
from ffrtmp.controller.settings import OperatorSettings
from ffrtmp.controller.state import encoded_codecs, parse_lease
from ffrtmp.ffmpeg.argv import EncodePlan, build_encode_plan
from ffrtmp.ffmpeg.decode import nvdec_decodes
from ffrtmp.ffmpeg.media import SourceMedia, source_media_from_probe
from ffrtmp.worker.selftest import CapabilityReport, SelfTestResult, parse_encoders, self_test_argv

pytestmark = pytest.mark.unit

HEAD = ["ffmpeg", "-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-progress", "pipe:1", "-nostats"]
IN = "/media/in.mov"
OUT = "/out/ns/job"
TAGS_709 = [
    "-color_primaries:v", "bt709", "-color_trc:v", "bt709", "-colorspace:v", "bt709", "-color_range:v", "tv",
]  # fmt: skip


# -- the Lease and the job ------------------------------------------------------------------------


def lease(annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "ffrtmp-worker-w1", "namespace": "media", "annotations": annotations},
        "spec": {"holderIdentity": "w1", "leaseDurationSeconds": 15},
    }


def test_the_lease_annotation_is_the_worker_encoder_set() -> None:
    view = parse_lease(
        lease(
            {"ffmpeg-rtmp.io/encoder-self-test": "ok: h264_nvenc", "ffmpeg-rtmp.io/encoders": "h264_nvenc,hevc_nvenc"}
        )
    )
    assert view.encoders == frozenset({"h264_nvenc", "hevc_nvenc"})
    assert parse_lease(lease({"ffmpeg-rtmp.io/encoders": ""})).encoders == frozenset()


def test_a_lease_without_the_annotation_says_nothing_about_codecs() -> None:
    assert parse_lease(lease({"ffmpeg-rtmp.io/encoder-self-test": "ok: libx264"})).encoders is None


def test_the_codecs_a_job_encodes() -> None:
    spec = {
        "outputs": [
            {"name": "a"},  # default video: h264
            {"name": "b", "video": {"codec": "av1"}},
            {"name": "c", "video": {"codec": "copy"}},
            {"name": "d", "video": {"codec": "none"}},
            {"name": "e", "video": {"codec": "av1"}},
        ]
    }
    assert encoded_codecs(spec) == ("av1", "h264")
    assert encoded_codecs({"outputs": [{"name": "a", "video": {"codec": "copy"}}]}) == ()


# -- the self-test ----------------------------------------------------------------------------------

ENCODERS_LISTING = """Encoders:
 V..... = Video
 A..... = Audio
 ------
 V....D libx264              libx264 H.264 / AVC / MPEG-4 AVC / MPEG-4 part 10 (codec h264)
 V....D libx265              libx265 H.265 / HEVC (codec hevc)
 V....D h264_nvenc           NVIDIA NVENC H.264 encoder (codec h264)
 A....D aac                  AAC (Advanced Audio Coding)
"""


def test_parse_encoders_reads_the_names_below_the_rule() -> None:
    assert parse_encoders(ENCODERS_LISTING) == frozenset({"libx264", "libx265", "h264_nvenc", "aac"})
    assert parse_encoders("") == frozenset()


@pytest.mark.parametrize(
    ("accelerator", "codec", "encoder"),
    [
        ("cpu", "av1", "libsvtav1"),
        ("cpu", "hevc", "libx265"),
        ("nvenc", "av1", "av1_nvenc"),
        ("qsv", "hevc", "hevc_qsv"),
    ],
)
def test_each_codec_is_tried_with_the_accelerators_encoder(accelerator: str, codec: str, encoder: str) -> None:
    argv = self_test_argv(accelerator, codec=codec)
    assert argv[argv.index("-c:v") + 1] == encoder
    assert argv[argv.index("-frames:v") + 1] == "1"


def test_the_report_publishes_what_passed_in_codec_order() -> None:
    report = CapabilityReport(
        SelfTestResult(True, "h264_nvenc", "", 0.1),
        (
            SelfTestResult(True, "h264_nvenc", "", 0.1),
            SelfTestResult(True, "hevc_nvenc", "", 0.1),
            SelfTestResult(False, "av1_nvenc", "not in this ffmpeg (ffmpeg -encoders)", 0.0),
        ),
    )
    assert report.encoders_annotation() == "h264_nvenc,hevc_nvenc"
    assert "failed: av1_nvenc: not in this ffmpeg" in report.summary()


# -- NVENC sessions ---------------------------------------------------------------------------------


def pool(**spec: Any) -> WorkerPoolSpec:
    return WorkerPoolSpec.model_validate({"accelerator": "nvenc", **spec})


@pytest.mark.parametrize(
    ("spec", "slots"),
    [
        ({"maxConcurrentJobs": 8}, 8),
        ({"maxConcurrentJobs": 8, "nvencSessionsPerGpu": 3}, 3),
        ({"maxConcurrentJobs": 8, "nvencSessionsPerGpu": 3, "gpusPerWorker": 2}, 6),
        ({"maxConcurrentJobs": 4, "nvencSessionsPerGpu": 3, "gpusPerWorker": 2}, 4),
    ],
)
def test_worker_slots_respect_the_nvenc_session_limit(spec: dict[str, Any], slots: int) -> None:
    s = pool(**spec)
    assert s.worker_slots() == slots
    pod = build_worker_pod("gpu", "media", "uid", s, OperatorSettings())
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["FFRTMP_SLOTS"] == str(slots)


def test_nvenc_sessions_are_for_nvenc_pools_only() -> None:
    with pytest.raises(ValidationError, match="nvencSessionsPerGpu applies to nvenc pools only"):
        WorkerPoolSpec.model_validate({"accelerator": "cpu", "nvencSessionsPerGpu": 3})


# -- NVDEC or software decode -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "pix_fmt", "gpu"),
    [
        ("h264", "yuv420p", True),
        ("h264", "yuvj420p", True),
        ("hevc", "yuv420p10le", True),
        ("av1", "yuv420p10le", True),
        ("vp9", "yuv420p", True),
        ("mpeg2video", "yuv420p", True),
        ("h264", None, True),  # not said: as before
        ("prores", "yuv422p10le", False),
        ("prores", "yuv444p12le", False),
        ("dnxhd", "yuv422p", False),
        ("h264", "yuv422p", False),  # 4:2:2 H.264 (XAVC, broadcast)
        ("h264", "yuv420p10le", False),  # High 10: NVDEC decodes 8-bit H.264 only
        ("hevc", "yuv444p", False),
        ("hevc", "yuv422p10le", False),
        ("mjpeg", "yuvj422p", False),
    ],
)
def test_nvdec_decodes(codec: str, pix_fmt: str | None, gpu: bool) -> None:
    assert nvdec_decodes(SourceMedia(width=1920, height=1080, pix_fmt=pix_fmt, video_codec=codec)) is gpu


def test_an_unprobed_input_is_decoded_on_the_gpu() -> None:
    assert nvdec_decodes(None)
    assert nvdec_decodes(SourceMedia(width=1920, height=1080))


def test_the_probe_keeps_the_video_codec() -> None:
    doc = {"streams": [{"codec_type": "video", "codec_name": "prores", "width": 1920, "height": 1080}]}
    assert source_media_from_probe(doc).video_codec == "prores"


def plan(outputs: list[dict[str, Any]], source: SourceMedia, **spec: Any) -> EncodePlan:
    s = TranscodeJobSpec.model_validate({"input": {"uri": IN}, "outputs": outputs, **spec})
    return build_encode_plan(
        s, "nvenc", input_url=IN, output_dir=OUT, scratch_dir="/s", allowed_protocols=["file"], source=source
    )


PRORES = SourceMedia(width=1920, height=1080, pix_fmt="yuv422p10le", video_codec="prores")


def test_prores_on_nvenc_decodes_in_software_and_uploads_once() -> None:
    p = plan([{"name": "720p", "video": {"height": 720, "crf": 23}}], PRORES)
    assert p.passes == [
        [
            *HEAD, "-protocol_whitelist", "file", "-i", IN,
            "-filter_complex", "[0:v:0]format=nv12,hwupload_cuda,scale_cuda=w=1280:h=720,setsar=1[v0]",
            "-map", "[v0]", "-c:v", "h264_nvenc", "-rc:v", "vbr", "-cq:v", "23", "-b:v", "0", *TAGS_709,
            "-an", "-f", "mp4", "-movflags", "+faststart", f"{OUT}/720p.mp4",
        ]
    ]  # fmt: skip


def test_a_rotated_422_source_is_uploaded_upright_and_not_turned_again() -> None:
    phone = SourceMedia(width=1080, height=1920, rotation=90, pix_fmt="yuv422p", video_codec="h264")
    p = plan([{"name": "a", "video": {"width": 720}}], phone, thumbnails={})
    graph = p.passes[0][p.passes[0].index("-filter_complex") + 1]
    assert graph == (
        "[0:v:0]format=nv12,hwupload_cuda,split=2[s0][s1];[s0]scale_cuda=w=720:h=1280,setsar=1[v0];"
        "[s1]fps=1/10,hwdownload,format=nv12|p010le,scale=w=320:h=568:out_color_matrix=bt601:out_range=pc,setsar=1[thumbs]"
    )
    assert "-hwaccel" not in p.passes[0]


def test_hdr_prores_uploads_10_bit_for_the_tone_map() -> None:
    hdr = SourceMedia(
        width=3840, height=2160, pix_fmt="yuv422p10le", video_codec="prores",
        color_transfer="smpte2084", color_primaries="bt2020", color_space="bt2020nc",
    )  # fmt: skip
    p = plan([{"name": "a", "video": {"height": 1080}}], hdr)
    graph = p.passes[0][p.passes[0].index("-filter_complex") + 1]
    assert graph.startswith("[0:v:0]format=p010le,hwupload_cuda,scale_cuda=w=1920:h=1080,setsar=1,hwdownload,")


def test_a_source_nvdec_decodes_keeps_the_cuda_decode() -> None:
    h264 = SourceMedia(width=1920, height=1080, pix_fmt="yuv420p", video_codec="h264")
    argv = plan([{"name": "a", "video": {"height": 720}}], h264).passes[0]
    assert argv[argv.index("-hwaccel") : argv.index("-i")] == ["-hwaccel", "cuda", "-hwaccel_output_format", "cuda"]
    assert argv[argv.index("-filter_complex") + 1] == "[0:v:0]scale_cuda=w=1280:h=720,setsar=1[v0]"


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"podLabels": {"bad key": "x"}}, "podLabels key 'bad key'"),
        ({"podLabels": {"team": "not ok!"}}, "podLabels value 'not ok!'"),
        ({"podAnnotations": {"/x": "y"}}, "podAnnotations key '/x'"),
    ],
)
def test_pod_metadata_keys_and_label_values_are_checked_like_the_api_server(
    fields: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ValidationError, match=needle):
        WorkerPoolSpec.model_validate({"accelerator": "cpu", **fields})
    ok = {"podLabels": {"example.com/tier": "gpu", "empty": ""}, "podAnnotations": {"a.b/c": "any text at all"}}
    assert WorkerPoolSpec.model_validate({"accelerator": "cpu", **ok}).pod_labels == ok["podLabels"]


def test_a_pool_publishes_the_encoders_all_its_ready_workers_have() -> None:
    from ffrtmp.controller.pools import pool_encoders

    nvenc = frozenset({"h264_nvenc", "hevc_nvenc", "av1_nvenc"})
    assert pool_encoders([nvenc, nvenc - {"av1_nvenc"}, None]) == "h264_nvenc,hevc_nvenc"
    assert pool_encoders([None]) is None
    assert pool_encoders([]) is None
