"""The CRDs against a real API server: examples, kubectl output, validation messages, immutability,
and the property that every spec the models accept is accepted by the API server too."""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ffrtmp.api.job import (
    BITRATE_PATTERN,
    FORBIDDEN_FILTER_PATTERN,
    FORBIDDEN_OPTION_PATTERN,
    NVENC_PRESETS,
    QSV_PRESETS,
    RELATIVE_PATH_PATTERN,
    VAAPI_PRESETS,
    X264_PRESETS,
    TranscodeJobSpec,
)
from helpers import REPO, TestCluster, wait_for

pytestmark = pytest.mark.integration

Obj = dict[str, Any]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# Manifests for one setup (several objects a file, cluster-scoped ones too): dry-run only.
SETUP_EXAMPLES = sorted((REPO / "examples" / "kind").glob("*.yaml"))
API = "ffmpeg-rtmp.io/v1alpha1"


@pytest.fixture(scope="module")
def ns(cluster: TestCluster) -> Iterator[str]:
    """One namespace for the whole module: these tests create objects but run no operator."""
    name = f"api-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def words(text: str) -> str:
    """kubectl wraps long lines; compare with whitespace collapsed."""
    return " ".join(text.split())


# --- examples and kubectl output ---------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES + SETUP_EXAMPLES, ids=lambda p: str(p.relative_to(REPO / "examples")))
def test_example_passes_server_side_dry_run(cluster: TestCluster, ns: str, path: Path) -> None:
    out = cluster.kubectl("apply", "--dry-run=server", "-n", ns, "-f", str(path), "-o", "json").stdout
    stored = json.loads(out)
    items = stored["items"] if stored["kind"] == "List" else [stored]
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert [(i["kind"], i["metadata"]["name"]) for i in items] == [(d["kind"], d["metadata"]["name"]) for d in docs]


@pytest.fixture(scope="module")
def applied(cluster: TestCluster, ns: str) -> list[Obj]:
    docs = [yaml.safe_load(p.read_text()) for p in EXAMPLES]
    cluster.apply(docs, ns)
    return docs


def header(text: str) -> list[str]:
    return text.splitlines()[0].split()


def test_get_transcodejobs_columns(cluster: TestCluster, ns: str, applied: list[Obj]) -> None:
    jobs = sorted(d["metadata"]["name"] for d in applied if d["kind"] == "TranscodeJob")
    out = cluster.kubectl("get", "tj", "-n", ns).stdout
    assert header(out) == ["NAME", "STATUS", "PROGRESS", "POOL", "ACCEL", "ATTEMPTS", "CHUNKS", "AGE"]
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert sorted(rows) == jobs
    # No status yet: Accel (from spec) and Age are the only values.
    assert rows["archive-hevc-nvenc"][1] == "nvenc"
    assert rows["clip-qsv"][1] == "qsv"
    wide = cluster.kubectl("get", "transcodejobs", "-n", ns, "-o", "wide").stdout
    assert header(wide) == [
        "NAME", "STATUS", "PROGRESS", "POOL", "ACCEL", "ATTEMPTS", "CHUNKS", "AGE", "WORKER", "NODE", "MESSAGE",
    ]  # fmt: skip


def test_get_workerpools_columns(cluster: TestCluster, ns: str, applied: list[Obj]) -> None:
    out = cluster.kubectl("get", "wp", "-n", ns).stdout
    assert header(out) == ["NAME", "ACCEL", "READY", "DESIRED", "BUSY", "QUEUED", "MAX", "AGE"]
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert sorted(rows) == ["cpu", "cpu-s3", "cpu-s3-irsa", "nvenc", "qsv"]
    # Without status, the row is NAME ACCEL MAX AGE (empty cells print nothing).
    assert rows["cpu"][1:3] == ["cpu", "8"]
    assert rows["qsv"][1:3] == ["qsv", "2"]


def test_get_category_lists_both_kinds(cluster: TestCluster, ns: str, applied: list[Obj]) -> None:
    out = cluster.kubectl("get", "ffmpeg-rtmp", "-n", ns, "-o", "name").stdout.split()
    expected = {f"{d['kind'].lower()}.ffmpeg-rtmp.io/{d['metadata']['name']}" for d in applied}
    assert set(out) == expected
    table = cluster.kubectl("get", "ffmpeg-rtmp", "-n", ns).stdout
    assert "transcodejob.ffmpeg-rtmp.io/lecture-hls" in table
    assert "workerpool.ffmpeg-rtmp.io/nvenc" in table


def test_server_fills_scalar_defaults(cluster: TestCluster, ns: str, applied: list[Obj]) -> None:
    job = cluster.get("tj", "clip-vaapi", ns)["spec"]
    assert job["priority"] == 0 and job["backoffLimit"] == 3 and job["suspend"] is False
    assert job["outputs"][0]["container"] == "mp4"
    assert job["outputs"][0]["audio"] == {"codec": "aac"}
    assert TranscodeJobSpec.model_validate(job).to_api() == job
    pool = cluster.get("wp", "qsv", ns)["spec"]
    assert pool["maxConcurrentJobs"] == 2 and pool["gpusPerWorker"] == 1
    assert pool["imagePullPolicy"] == "IfNotPresent" and pool["outputRoot"] == "/output"
    assert "autoscaling" not in pool and "mediaRoots" not in pool  # objects and lists: the models default those


def explain(cluster: TestCluster, field: str) -> str:
    def attempt() -> str | None:
        proc = cluster.kubectl("explain", field, check=False)
        return proc.stdout if proc.returncode == 0 else None

    text: str = wait_for(attempt, 30, f"kubectl explain {field}", interval=1)
    return words(text)


def test_explain_transcodejob_outputs(cluster: TestCluster) -> None:
    text = explain(cluster, "transcodejob.spec.outputs")
    assert "Renditions made from one decode in a single ffmpeg run; names are unique." in text
    assert "Unique name of the rendition, e.g. `1080p`; also the default file name." in text
    assert "File path relative to the job's output folder" in text
    assert "Publish to this rtmp(s):// URL instead of a file (restream)." in text
    video = explain(cluster, "transcodejob.spec.outputs.video.crf")
    assert "Constant quality (lower is better); excludes bitrate." in video


def test_explain_transcodejob_chunking(cluster: TestCluster) -> None:
    text = explain(cluster, "transcodejob.spec.chunking")
    assert "Encode a long file input in chunks on several workers at once (default Off)." in text
    assert "At most this many chunk tasks queued or running at once" in text
    assert "A cut moves to a source keyframe within a quarter of it" in explain(
        cluster, "transcodejob.spec.chunking.chunkSeconds"
    )
    assert "Chunk boundaries in microseconds of the source timeline" in explain(
        cluster, "transcodejob.status.chunks.plan"
    )
    assert "inputs at least this long (default 600 s) are chunked" in words(
        explain(cluster, "transcodejob.spec.chunking.autoMinSeconds")
    )


def test_explain_workerpool_egress(cluster: TestCluster) -> None:
    text = explain(cluster, "workerpool.spec.egress")
    assert "Which network destinations jobs may reach" in text
    assert "DestinationNotAllowed" in text
    allow = explain(cluster, "workerpool.spec.egress.allow")
    assert "host names" in allow and "CIDRs" in allow
    unproxied = explain(cluster, "workerpool.spec.egress.allowUnproxiedProtocols")
    assert "cannot send through the egress proxy" in unproxied


def test_explain_object_storage(cluster: TestCluster) -> None:
    destination = explain(cluster, "transcodejob.spec.destination.uri")
    assert "media, then variant playlists, then master playlists, then `manifest.json`" in destination
    assert "never deletes what was uploaded" in destination
    storage = explain(cluster, "workerpool.spec.objectStorage")
    assert "egress policy" in storage
    secret = explain(cluster, "workerpool.spec.objectStorage.credentialsSecretRef")
    assert "AWS_ACCESS_KEY_ID" in secret and "rotating" in secret
    ambient = explain(cluster, "workerpool.spec.objectStorage.ambientCredentials")
    assert "IRSA" in ambient and "eks.amazonaws.com/role-arn" in ambient


def test_explain_credentials_from_secrets(cluster: TestCluster) -> None:
    uri_from = explain(cluster, "transcodejob.spec.input.uriFrom")
    assert "a credential itself" in uri_from and "userinfo" in uri_from
    assert "SecretNotFound" in explain(cluster, "transcodejob.spec.input.headersFrom.secretKeyRef")
    assert "stream key" in explain(cluster, "transcodejob.spec.outputs.urlFrom")
    assert "mounted read-only" in explain(cluster, "workerpool.spec.jobSecrets")


def test_explain_transcodejob_notifications(cluster: TestCluster) -> None:
    text = explain(cluster, "transcodejob.spec.notifications")
    assert "CloudEvents webhooks told about this job's transitions" in text and "deadlineSeconds" in text
    assert "notification egress policy" in explain(cluster, "transcodejob.spec.notifications.targets.url")
    assert "X-Ffrtmp-Signature" in explain(cluster, "transcodejob.spec.notifications.targets.signingSecretRef")
    assert "Events given up" in explain(cluster, "transcodejob.status.notifications.givenUp")


def test_explain_workerpool_autoscaling(cluster: TestCluster) -> None:
    text = explain(cluster, "workerpool.spec.autoscaling")
    assert "Queue-driven scaling." in text
    assert "Scale down only to the highest recommendation of this window (no flapping)." in text
    assert "With minWorkers 0: scale to zero after the queue stayed empty this long." in text
    assert "Percent of slots to keep busy" in text


# --- the catalog of invalid manifests ------------------------------------------------------------

VIDEO = {"codec": "h264", "crf": 23, "preset": "fast", "height": 720}
AUDIO = {"codec": "aac", "bitrate": "128k"}


def out(name: str = "720p", **fields: Any) -> Obj:
    return {"name": name, **fields}


def tj(*outputs: Obj, uri: str = "/media/in.mp4", input: Obj | None = None, **spec: Any) -> Obj:
    return {
        "apiVersion": API,
        "kind": "TranscodeJob",
        "metadata": {"name": "job"},
        "spec": {
            "input": input or {"uri": uri},
            "outputs": list(outputs) or [out(video=VIDEO, audio=AUDIO)],
            **spec,
        },
    }


def wp(**spec: Any) -> Obj:
    return {
        "apiVersion": API,
        "kind": "WorkerPool",
        "metadata": {"name": "pool"},
        "spec": {"accelerator": "cpu", **spec},
    }


def hook(**fields: Any) -> Obj:
    """A webhook target of spec.notifications."""
    return {"name": "ops", "signingSecretRef": {"name": "hook", "key": "key"}, **fields}


def without(doc: Obj, *path: str) -> Obj:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return doc


class Bad(NamedTuple):
    id: str
    doc: Obj
    field: str  # the path the error names
    message: str  # what must hold, as the error says it


SHOULD_MATCH = "in body should match"
FROM_SECRET = {"secretKeyRef": {"name": "media-credentials", "key": "url"}}
HLS = out("hls", container="hls", video={"bitrate": "2M"})

INVALID = [
    # enums
    Bad("container-mov", tj(out(container="mov")), "spec.outputs[0].container",
        'Unsupported value: "mov": supported values: "mp4", "mkv", "flv", "hls", "mpegts"'),
    Bad("video-codec-h265", tj(out(video={"codec": "h265"})), "spec.outputs[0].video.codec",
        'Unsupported value: "h265": supported values: "h264", "hevc", "av1", "copy", "none"'),
    Bad("audio-codec-aac-lc", tj(out(audio={"codec": "aac-lc"})), "spec.outputs[0].audio.codec",
        'Unsupported value: "aac-lc": supported values: "aac", "opus", "mp3", "copy", "none"'),
    Bad("accelerator-gpu", tj(accelerator="gpu"), "spec.accelerator",
        'Unsupported value: "gpu": supported values: "auto", "nvenc", "qsv", "vaapi", "cpu"'),
    Bad("hardware-policy-optional", tj(hardwarePolicy="optional"), "spec.hardwarePolicy",
        'supported values: "required", "preferred", "disabled"'),
    Bad("preset-typo", tj(out(video={"preset": "very-fast"})), "spec.outputs[0].video.preset",
        'Unsupported value: "very-fast"'),
    # numbers out of range, wrong types
    Bad("timeout-negative", tj(timeoutSeconds=-5), "spec.timeoutSeconds", "should be greater than or equal to 1"),
    Bad("crf-64", tj(out(video={"crf": 64})), "spec.outputs[0].video.crf", "should be less than or equal to 63"),
    Bad("width-8k", tj(out(video={"width": 8192})), "spec.outputs[0].video.width",
        "should be less than or equal to 7680"),
    Bad("priority-5000", tj(priority=5000), "spec.priority", "should be less than or equal to 1000"),
    Bad("backoff-limit-minus-1", tj(backoffLimit=-1), "spec.backoffLimit", "should be greater than or equal to 0"),
    Bad("priority-string", tj(priority="high"), "spec.priority", "must be of type integer"),
    Bad("crf-float", tj(out(video={"crf": 22.5})), "spec.outputs[0].video.crf", "must be of type integer"),
    Bad("audio-channels-0", tj(out(audio={"channels": 0})), "spec.outputs[0].audio.channels",
        "should be greater than or equal to 1"),
    # strings that must match a pattern
    Bad("bitrate-6-mbps", tj(out(video={"bitrate": "6 Mbps"})), "spec.outputs[0].video.bitrate", SHOULD_MATCH),
    Bad("bitrate-number", tj(out(video={"bitrate": 6000000})), "spec.outputs[0].video.bitrate",
        "must be of type string"),
    Bad("output-name-capitals", tj(out("1080P")), "spec.outputs[0].name", SHOULD_MATCH),
    Bad("output-path-absolute", tj(out(path="/etc/cron.d/x.mp4")), "spec.outputs[0].path", SHOULD_MATCH),
    Bad("output-path-dotdot", tj(out(path="../x.mp4")), "spec.outputs[0].path", SHOULD_MATCH),
    Bad("output-url-http", tj(out(container="flv", url="http://cdn.example.com/live")), "spec.outputs[0].url",
        SHOULD_MATCH),
    Bad("pool-ref-capitals", tj(poolRef={"name": "GPU"}), "spec.poolRef.name", SHOULD_MATCH),
    Bad("memory-4gb", tj(resources={"limits": {"memory": "4GB"}}), "spec.resources.limits.memory", SHOULD_MATCH),
    # lists
    Bad("outputs-empty", tj(outputs=[]), "spec.outputs", "should have at least 1 items"),
    Bad("outputs-11", tj(outputs=[out(f"r{i}") for i in range(11)]), "spec.outputs",
        "Too many: 11: must have at most 10 items"),
    Bad("outputs-duplicate-name", tj(out("720p"), out("720p", container="mkv")), "spec.outputs[1]",
        'Duplicate value: {"name":"720p"}'),
    Bad("extra-args-string", tj(extraArgs="-tune film"), "spec.extraArgs", "must be of type array"),
    # unknown fields (kubectl's default --validate=strict)
    Bad("unknown-field-in-output", tj(out(codec="h264")), "spec.outputs[0].codec", "unknown field"),
    Bad("unknown-field-in-spec", tj(retries=3), "spec.retries", "unknown field"),
    Bad("snake-case-field", tj(backoff_limit=5), "spec.backoff_limit", "unknown field"),
    # required fields
    Bad("input-missing", without(tj(), "spec", "input"), "spec.input", "Required value"),
    Bad("realtime-live-input", tj(input={"uri": "rtmp://h/live/k", "realtime": True}), "spec.input",
        "input.realtime is for file and http(s) inputs: a live input arrives in real time already"),
    Bad("output-name-missing", tj({"container": "mp4"}), "spec.outputs[0].name", "Required value"),
    # extraArgs
    Bad("extra-args-shell-string", tj(extraArgs=["-vf scale=1:1; rm -rf /"]), "spec.extraArgs",
        "extraArgs is an argv list, not a shell string"),
    Bad("extra-args-input", tj(extraArgs=["-i", "http:evil"]), "spec.extraArgs",
        "extraArgs must not set inputs, outputs, formats, log files or devices"),
    Bad("extra-args-format", tj(extraArgs=["-f", "image2"]), "spec.extraArgs",
        "extraArgs must not set inputs, outputs, formats, log files or devices"),
    Bad("extra-args-absolute-path", tj(extraArgs=["-vf", "drawtext=textfile=/etc/passwd"]), "spec.extraArgs",
        "extraArgs must not name files or URLs (no '/')"),
    Bad("extra-args-movie-filter", tj(extraArgs=["-vf", "movie=logo.png,scale=64:64"]), "spec.extraArgs",
        "extraArgs must not use filters that open files"),
    Bad("extra-args-subtitles-filter", tj(extraArgs=["-vf", "scale=1280:-2,subtitles=subs.srt"]), "spec.extraArgs",
        "extraArgs must not use filters that open files"),
    Bad("extra-args-stream-specifier", tj(extraArgs=["-filter_script:v", "graph.txt"]), "spec.extraArgs",
        "extraArgs must not set inputs, outputs, formats, log files or devices"),
    Bad("extra-args-movie-after-blank", tj(extraArgs=["-vf", "scale=1280:-2, movie=logo.png"]), "spec.extraArgs",
        "extraArgs must not use filters that open files"),
    Bad("extra-args-movie-instance", tj(extraArgs=["-vf", "movie@wm=logo.png"]), "spec.extraArgs",
        "extraArgs must not use filters that open files"),
    Bad("extra-args-zmq-between-labels", tj(extraArgs=["-filter_complex", "[0:v]zmq[v]"]), "spec.extraArgs",
        "extraArgs must not use filters that open files"),
    Bad("extra-args-backslash", tj(extraArgs=["-metadata", "title=a\\b"]), "spec.extraArgs",
        "extraArgs is an argv list, not a shell string"),
    # video cross-field rules
    Bad("bitrate-and-crf", tj(out(video={"bitrate": "4M", "crf": 23})), "spec.outputs[0].video",
        "bitrate and crf are mutually exclusive: set one"),
    Bad("copy-with-height", tj(out(video={"codec": "copy", "height": 720})), "spec.outputs[0].video",
        "codec copy re-uses the input stream: width, height, fps, gop, preset, bitrate, maxrate, crf, "
        "deinterlace and hdr must not be set"),
    Bad("copy-with-deinterlace", tj(out(video={"codec": "copy", "deinterlace": "on"})), "spec.outputs[0].video",
        "codec copy re-uses the input stream"),
    Bad("hdr-passthrough-h264", tj(out(video={"codec": "h264", "hdr": "passthrough"})), "spec.outputs[0].video",
        "hdr passthrough needs codec hevc or av1 (10-bit)"),
    Bad("deinterlace-yes", tj(out(video={"deinterlace": "yes"})), "spec.outputs[0].video.deinterlace",
        'Unsupported value: "yes": supported values: "auto", "on", "off"'),
    Bad("maxrate-alone", tj(out(video={"maxrate": "8M"})), "spec.outputs[0].video", "maxrate needs bitrate or crf"),
    Bad("bufsize-alone", tj(out(video={"crf": 20, "bufsize": "8M"})), "spec.outputs[0].video", "bufsize needs maxrate"),
    Bad("two-pass-crf", tj(out(video={"crf": 20, "twoPass": True})), "spec.outputs[0].video",
        "twoPass needs a bitrate target"),
    Bad("two-pass-av1", tj(out(video={"codec": "av1", "bitrate": "2M", "twoPass": True})), "spec.outputs[0].video",
        "twoPass is supported for h264 and hevc"),
    Bad("odd-width", tj(out(video={"crf": 23, "width": 1279})), "spec.outputs[0].video",
        "width and height must be even"),
    Bad("hls-without-bitrate", tj(out(container="hls", video={"crf": 23})), "spec.outputs[0]",
        "hls outputs need video.bitrate or video.maxrate"),
    Bad("two-pass-on-gpu", tj(out(video={"bitrate": "2M", "twoPass": True}), accelerator="auto"), "spec",
        "twoPass runs on CPU encoders"),
    Bad("audio-copy-bitrate", tj(out(audio={"codec": "copy", "bitrate": "128k"})), "spec.outputs[0].audio",
        "audio codec copy or none takes no bitrate, channels or sampleRate"),
    Bad("audio-track-and-language", tj(out(audio={"track": 1, "language": "eng"})), "spec.outputs[0].audio",
        "set audio track or language, not both"),
    Bad("audio-none-with-track", tj(out(audio={"codec": "none", "track": 1})), "spec.outputs[0].audio",
        "audio codec none takes no track or language"),
    Bad("audio-copy-loudness", tj(out(audio={"codec": "copy", "loudness": {}})), "spec.outputs[0].audio",
        "loudness normalisation re-encodes audio: not with codec copy or none"),
    Bad("audio-language-capitals", tj(out(audio={"language": "EN"})), "spec.outputs[0].audio.language",
        SHOULD_MATCH),
    Bad("loudness-true-peak-float", tj(out(audio={"loudness": {"truePeakDb": -1.5}})),
        "spec.outputs[0].audio.loudness.truePeakDb", "must be of type string"),
    Bad("loudness-true-peak-positive", tj(out(audio={"loudness": {"truePeakDb": "1"}})),
        "spec.outputs[0].audio.loudness.truePeakDb", SHOULD_MATCH),
    Bad("loudness-integrated-minus-80", tj(out(audio={"loudness": {"integratedLufs": -80}})),
        "spec.outputs[0].audio.loudness.integratedLufs", "should be greater than or equal to -70"),
    # output rules
    Bad("url-with-mp4", tj(out(url="rtmp://cdn.example.com/app/key")), "spec.outputs[0]",
        "an rtmp:// url output needs container flv"),
    Bad("url-and-path", tj(out(container="flv", url="rtmp://cdn.example.com/app/key", path="copy.flv")),
        "spec.outputs[0]", "set path or url, not both"),
    Bad("hls-with-path", tj(out(container="hls", path="hls/index.m3u8")), "spec.outputs[0]",
        "hls outputs are written under the job's hls folder; path must not be set"),
    Bad("flv-hevc", tj(out(container="flv", video={"codec": "hevc", "bitrate": "4M"})), "spec.outputs[0]",
        "container flv cannot carry hevc"),
    Bad("hls-without-video", tj(out(container="hls", video={"codec": "none"})), "spec.outputs",
        "every hls output needs a video stream"),
    # spec rules
    Bad("p5-on-cpu", tj(out(video={"preset": "p5"}), accelerator="cpu"), "spec",
        "presets p1..p7 are NVENC's: set accelerator nvenc or use ultrafast..veryslow"),
    Bad("p5-on-auto", tj(out(video={"preset": "p5"})), "spec", "presets p1..p7 are NVENC's"),
    Bad("veryslow-on-vaapi", tj(out(video={"preset": "veryslow"}), accelerator="vaapi"), "spec",
        "accelerator vaapi takes presets fast, medium, slow"),
    Bad("ultrafast-on-qsv", tj(out(video={"preset": "ultrafast"}), accelerator="qsv"), "spec",
        "accelerator qsv takes presets veryfast, faster, fast, medium, slow, slower, veryslow"),
    Bad("veryslow-on-nvenc", tj(out(video={"preset": "veryslow"}), accelerator="nvenc"), "spec",
        "accelerator nvenc takes presets p1..p7 or fast, medium, slow"),
    Bad("disabled-with-nvenc", tj(accelerator="nvenc", hardwarePolicy="disabled"), "spec",
        "hardwarePolicy disabled needs accelerator auto or cpu"),
    Bad("hls-settings-without-hls-output", tj(hls={"segmentSeconds": 4}), "spec",
        "hls settings need at least one output with container hls"),
    Bad("restart-policy-on-file", tj(input={"uri": "/media/in.mp4", "restartPolicy": {"maxRestarts": 3}}), "spec",
        "input.restartPolicy applies to live inputs only"),
    # input uri
    Bad("uri-file-scheme", tj(uri="file:///etc/passwd"), "spec.input.uri",
        "input.uri must be an absolute file path or an http(s):// or rtmp(s):// URL"),
    Bad("uri-concat", tj(uri="concat:/media/a.mp4|/media/b.mp4"), "spec.input.uri",
        "input.uri must be an absolute file path or an http(s):// or rtmp(s):// URL"),
    Bad("uri-relative", tj(uri="media/in.mp4"), "spec.input.uri",
        "input.uri must be an absolute file path or an http(s):// or rtmp(s):// URL"),
    Bad("uri-ftp", tj(uri="ftp://files.example.com/in.mp4"), "spec.input.uri",
        "input.uri must be an absolute file path or an http(s):// or rtmp(s):// URL"),
    Bad("uri-dotdot", tj(uri="/media/../etc/shadow"), "spec.input.uri", "input.uri must not contain '..'"),
    Bad("uri-whitespace", tj(uri="/media/my movie.mp4"), "spec.input.uri", "input.uri must not contain whitespace"),
    Bad("uri-empty", tj(uri=""), "spec.input.uri", "should be at least 1 chars long"),
    Bad("uri-s3-playlist", tj(uri="s3://media/shows/master.m3u8"), "spec.input.uri",
        "an HLS playlist cannot be read from s3://"),
    Bad("uri-s3-folder", tj(uri="s3://media/shows/"), "spec.input.uri", "input.uri s3://bucket/key: bucket 3-63"),
    Bad("uri-s3-bucket-capitals", tj(uri="s3://Media/a.mp4"), "spec.input.uri", "input.uri s3://bucket/key"),
    Bad("uri-s3-dot-step", tj(uri="s3://media/./a.mp4"), "spec.input.uri", "a key with no . or .. steps"),
    Bad("input-s3-live", tj(input={"uri": "s3://media/a.mp4", "live": True}), "spec.input",
        "an s3:// input is a stored object, not a live stream"),
    # credentials from Secrets
    Bad("input-uri-and-uri-from", tj(input={"uri": "/media/a.mp4", "uriFrom": FROM_SECRET}), "spec.input",
        "set input.uri or input.uriFrom (one of them)"),
    Bad("input-neither-uri-nor-uri-from", tj(input={"live": True}), "spec.input",
        "set input.uri or input.uriFrom (one of them)"),
    Bad("headers-from-file-input", tj(input={"uri": "/media/a.mp4", "headersFrom": [{"name": "X-Key", **FROM_SECRET}]}),
        "spec.input", "input.headersFrom is for http(s):// inputs"),
    Bad("headers-from-host", tj(input={"uri": "https://cdn.example/a.mp4", "headersFrom": [{"name": "Host",
        **FROM_SECRET}]}), "spec.input.headersFrom[0].name", "headersFrom must not set host"),
    Bad("secret-key-dot-dot", tj(input={"uriFrom": {"secretKeyRef": {"name": "s", "key": ".."}}}),
        "spec.input.uriFrom.secretKeyRef.key", SHOULD_MATCH),
    Bad("url-and-url-from", tj(out(container="flv", url="rtmp://cdn.example.com/app/key", urlFrom=FROM_SECRET)),
        "spec.outputs[0]", "set one of path, url and urlFrom"),
    Bad("url-from-with-mp4", tj(out(urlFrom=FROM_SECRET)), "spec.outputs[0]",
        "an rtmp:// url output needs container flv"),
    Bad("pool-job-secret-capitals", wp(jobSecrets=["Media"]), "spec.jobSecrets[0]", SHOULD_MATCH),
    Bad("pool-volume-named-job-secret", wp(jobSecrets=["media"], volumes=[{"name": "job-secret-0", "emptyDir": {}}]),
        "spec", "are the worker Pod's own: choose another name"),
    # destination
    Bad("destination-not-a-prefix", tj(destination={"uri": "s3://out/a.mp4"}), "spec.destination.uri", SHOULD_MATCH),
    Bad("destination-https", tj(destination={"uri": "https://out.example/a/"}), "spec.destination.uri",
        SHOULD_MATCH),
    Bad("destination-live", tj(uri="rtmp://live.example/app/key", destination={"uri": "s3://out/live/"}), "spec",
        "destination uploads a finished job's files: a live job's playlists change while it runs"),
    Bad("destination-manifest-name", tj(out(path="manifest.json", video=VIDEO), destination={"uri": "s3://out/j/"}),
        "spec", "manifest.json under spec.destination is the job's manifest"),
    Bad("destination-only-streams", tj(out(container="flv", url="rtmp://live.example/app/key", video=VIDEO),
        destination={"uri": "s3://out/j/"}), "spec", "spec.destination uploads files, and every output is an rtmp"),
    # WorkerPool
    Bad("pool-min-above-max", wp(minWorkers=5, maxWorkers=2), "spec", "minWorkers must not exceed maxWorkers"),
    Bad("pool-replicas-above-max", wp(maxWorkers=4, replicas=9), "spec",
        "replicas must lie within minWorkers..maxWorkers"),
    Bad("pool-replicas-below-min", wp(minWorkers=2, replicas=1), "spec",
        "replicas must lie within minWorkers..maxWorkers"),
    Bad("pool-accelerator-auto", wp(accelerator="auto"), "spec.accelerator",
        'Unsupported value: "auto": supported values: "nvenc", "qsv", "vaapi", "cpu"'),
    Bad("pool-accelerator-missing", without(wp(), "spec", "accelerator"), "spec.accelerator", "Required value"),
    Bad("pool-max-concurrent-0", wp(maxConcurrentJobs=0), "spec.maxConcurrentJobs",
        "should be greater than or equal to 1"),
    Bad("pool-media-root-relative", wp(mediaRoots=["media"]), "spec.mediaRoots[0]", SHOULD_MATCH),
    Bad("pool-media-roots-duplicate", wp(mediaRoots=["/media", "/media"]), "spec.mediaRoots[1]",
        'Duplicate value: "/media"'),
    Bad("pool-protocol-ftp", wp(allowedProtocols=["file", "ftp"]), "spec.allowedProtocols[1]",
        'Unsupported value: "ftp"'),
    Bad("pool-egress-bad-cidr", wp(egress={"allow": ["media.lan", "10.0.0.0/99"]}), "spec.egress.allow",
        "spec.egress.allow entries that are addresses must be valid IPs or CIDRs"),
    Bad("pool-egress-bad-name", wp(egress={"allow": ["bad name"]}), "spec.egress.allow[0]", SHOULD_MATCH),
    Bad("pool-egress-unproxied-ftp", wp(egress={"allowUnproxiedProtocols": ["ftp"]}),
        "spec.egress.allowUnproxiedProtocols[0]", 'Unsupported value: "ftp"'),
    Bad("pool-target-utilization-0", wp(autoscaling={"targetUtilization": 0}), "spec.autoscaling.targetUtilization",
        "should be greater than or equal to 10"),
    Bad("pool-toleration-operator", wp(tolerations=[{"key": "gpu", "operator": "In"}]),
        "spec.tolerations[0].operator", 'Unsupported value: "In"'),
    Bad("pool-toleration-seconds-negative", wp(tolerations=[{"operator": "Exists", "tolerationSeconds": -1}]),
        "spec.tolerations[0].tolerationSeconds", "should be greater than or equal to 0"),
    Bad("pool-pull-policy-lowercase", wp(imagePullPolicy="always"), "spec.imagePullPolicy",
        'Unsupported value: "always"'),
    Bad("pool-cpu-request-unit", wp(resources={"requests": {"cpu": "2 cores"}}), "spec.resources.requests.cpu",
        SHOULD_MATCH),
    Bad("pool-storage-media-outside-roots", wp(storage={"media": [{"claimName": "m", "mountPath": "/films"}]}),
        "spec", "every storage.media mountPath must be one of mediaRoots"),
    Bad("pool-storage-media-same-path", wp(mediaRoots=["/media", "/b"], storage={"media": [
        {"claimName": "a", "mountPath": "/media"}, {"claimName": "b", "mountPath": "/media"}]}),
        "spec", "two storage.media claims must not share a mountPath"),
    Bad("pool-storage-media-at-output", wp(mediaRoots=["/output"], storage={
        "media": [{"claimName": "a", "mountPath": "/output"}], "output": {"claimName": "o"}}),
        "spec", "no storage.media claim may use that mountPath"),
    Bad("pool-volume-mount-at-output", wp(storage={"output": {"claimName": "o"}},
        volumes=[{"name": "x", "emptyDir": {}}], volumeMounts=[{"name": "x", "mountPath": "/output"}]),
        "spec", "a volumeMounts entry must not use a mountPath that spec.storage mounts"),
    Bad("pool-storage-output-at-scratch", wp(outputRoot="/tmp", storage={"output": {"claimName": "o"}}),
        "spec", "/tmp is the worker's scratch volume: spec.storage cannot mount a claim there"),
    Bad("pool-volume-named-scratch", wp(volumes=[{"name": "scratch", "emptyDir": {}}]),
        "spec", "spec.volumes names 'scratch', 'output' (with storage.output), 'media-<n>' (with storage.media) "
        "and 'job-secret-<n>' (with jobSecrets) are the worker Pod's own"),
    Bad("pool-volume-named-output", wp(storage={"output": {"claimName": "o"}}, volumes=[{"name": "output"}]),
        "spec", "are the worker Pod's own: choose another name"),
    Bad("pool-volume-mount-without-path", wp(volumes=[{"name": "x", "emptyDir": {}}], volumeMounts=[{"name": "x"}]),
        "spec.volumeMounts[0].mountPath", "Required value"),
    Bad("pool-storage-subpath-dotdot", wp(storage={"output": {"claimName": "o", "subPath": "../etc"}}),
        "spec.storage.output.subPath", SHOULD_MATCH),
    Bad("pool-storage-claim-capitals", wp(storage={"output": {"claimName": "Out"}}),
        "spec.storage.output.claimName", SHOULD_MATCH),
    Bad("pool-object-storage-endpoint-path", wp(objectStorage={"endpoint": "https://s3.example/bucket",
        "credentialsSecretRef": {"name": "s3"}}), "spec.objectStorage.endpoint", SHOULD_MATCH),
    Bad("pool-object-storage-without-credentials", wp(objectStorage={"endpoint": "https://s3.example"}),
        "spec.objectStorage", "needs exactly one of credentialsSecretRef (an access key in a Secret) and "
        "ambientCredentials"),
    Bad("pool-object-storage-secret-and-ambient", wp(objectStorage={"endpoint": "https://s3.example",
        "credentialsSecretRef": {"name": "s3"}, "ambientCredentials": {}}), "spec.objectStorage",
        "needs exactly one of credentialsSecretRef"),
    Bad("pool-object-storage-short-session", wp(objectStorage={"endpoint": "https://s3.example",
        "ambientCredentials": {"sessionSeconds": 60}}), "spec.objectStorage.ambientCredentials.sessionSeconds",
        "should be greater than or equal to 900"),
    Bad("pool-object-storage-region-capitals", wp(objectStorage={"endpoint": "https://s3.example",
        "region": "EU-West-1", "credentialsSecretRef": {"name": "s3"}}), "spec.objectStorage.region", SHOULD_MATCH),
    Bad("pool-render-group-negative", wp(accelerator="vaapi", renderGroupId=-1), "spec.renderGroupId",
        "should be greater than or equal to 0"),
    Bad("chunking-rtmp-input", tj(uri="rtmp://10.0.0.1/live/cam", chunking={"mode": "On"}), "spec",
        "chunking needs a file input: live, rtmp(s), http(s) and s3 inputs are not supported with chunking"),
    Bad("chunking-live-input", tj(input={"uri": "/media/in.ts", "live": True}, chunking={"mode": "On"}), "spec",
        "chunking needs a file input"),
    Bad("chunking-mkv", tj(out(container="mkv", video=VIDEO), chunking={"mode": "On"}), "spec",
        "chunking writes mp4 files and hls ladders: rtmp/flv, mkv and mpegts outputs are not supported with chunking"),
    Bad("chunking-rtmp-output", tj(out(container="flv", url="rtmp://10.0.0.1/app/key"), chunking={"mode": "On"}),
        "spec", "chunking writes mp4 files and hls ladders"),
    Bad("chunking-hls-default-lengths", tj(HLS, chunking={"mode": "On"}), "spec",
        "chunking.chunkSeconds 10 is not a whole multiple of hls.segmentSeconds 6: chunks are cut at segment "
        "boundaries"),
    Bad("chunking-hls-segment", tj(HLS, hls={"segmentSeconds": 4}, chunking={"mode": "On", "chunkSeconds": 18}),
        "spec", "chunking.chunkSeconds 18 is not a whole multiple of hls.segmentSeconds 4"),
    Bad("chunking-two-pass",
        tj(out(video={"bitrate": "2M", "twoPass": True}), accelerator="cpu", chunking={"mode": "On"}), "spec",
        "twoPass is not supported with chunking: a first pass would measure each chunk, not the whole input"),
    Bad("chunking-fps", tj(out(video={"crf": 23, "fps": 30}), chunking={"mode": "On"}), "spec",
        "fps is not supported with chunking yet"),
    Bad("chunking-realtime", tj(input={"uri": "/media/in.mp4", "realtime": True}, chunking={"mode": "On"}), "spec",
        "input.startSeconds, input.durationSeconds and input.realtime are not supported with chunking yet"),
    Bad("chunking-destination", tj(destination={"uri": "s3://bucket/film/"}, chunking={"mode": "On"}), "spec",
        "spec.destination is not supported with chunking yet"),
    Bad("chunking-one-second", tj(chunking={"mode": "On", "chunkSeconds": 1}), "spec.chunking.chunkSeconds",
        "should be greater than or equal to 2"),
    Bad("chunking-mode", tj(chunking={"mode": "Sometimes"}), "spec.chunking.mode",
        'Unsupported value: "Sometimes": supported values: "Off", "On", "Auto"'),
    Bad("chunking-auto-min-zero", tj(chunking={"mode": "Auto", "autoMinSeconds": 0}),
        "spec.chunking.autoMinSeconds", "should be greater than or equal to 1"),
    # notifications
    Bad("webhook-url-and-secret", tj(notifications={"targets": [hook(url="https://h.example/x",
        urlSecretRef={"name": "hook", "key": "url"})]}), "spec.notifications.targets[0]",
        "set exactly one of url and urlSecretRef"),
    Bad("webhook-no-url", tj(notifications={"targets": [hook()]}), "spec.notifications.targets[0]",
        "set exactly one of url and urlSecretRef"),
    Bad("webhook-ftp", tj(notifications={"targets": [hook(url="ftp://h.example/x")]}),
        "spec.notifications.targets[0].url", SHOULD_MATCH),
    Bad("webhook-password-in-url", tj(notifications={"targets": [hook(url="https://user:pw@h.example/x")]}),
        "spec.notifications.targets[0].url", SHOULD_MATCH),
    Bad("webhook-unknown-event", tj(notifications={"targets": [hook(url="https://h.example/x", events=["Done"])]}),
        "spec.notifications.targets[0].events[0]", 'Unsupported value: "Done"'),
    Bad("webhook-interval-without-progress", tj(notifications={"targets": [hook(url="https://h.example/x",
        progressIntervalSeconds=30)]}), "spec.notifications.targets[0]",
        "progressIntervalSeconds needs Progress in events"),
    Bad("webhook-no-signing-key", tj(notifications={"targets": [without(hook(url="https://h.example/x"),
        "signingSecretRef")]}), "spec.notifications.targets[0].signingSecretRef", "Required value"),
]  # fmt: skip


def test_catalog_ids_are_unique() -> None:
    assert len({b.id for b in INVALID}) == len(INVALID) >= 35


@pytest.mark.parametrize("bad", INVALID, ids=[b.id for b in INVALID])
def test_invalid_manifest_is_refused_with_a_clear_message(cluster: TestCluster, ns: str, bad: Bad) -> None:
    doc = copy.deepcopy(bad.doc)
    doc["metadata"]["name"] = bad.id
    proc = cluster.apply(doc, ns, check=False)
    assert proc.returncode != 0, f"{bad.id} was accepted:\n{proc.stdout}"
    message = words(proc.stderr)
    assert bad.field in message, message
    assert bad.message in message, message
    # One mistake, one error: the message is about this field (CEL rules run only once the schema passed).
    assert re.search(rf"(^|[\s\[\"]){re.escape(bad.field)}([:\[.\"]|\s)", message), message
    assert cluster.kubectl("get", doc["kind"], bad.id, "-n", ns, check=False).returncode != 0


def test_immutable_fields(cluster: TestCluster, ns: str) -> None:
    doc = tj(out("a", video={"crf": 30}), priority=1)
    doc["metadata"]["name"] = "immutable"
    cluster.apply(doc, ns)

    changed_uri = copy.deepcopy(doc)
    changed_uri["spec"]["input"]["uri"] = "/media/other.mp4"
    proc = cluster.apply(changed_uri, ns, check=False)
    assert proc.returncode != 0
    assert "input is immutable" in words(proc.stderr)

    changed_outputs = copy.deepcopy(doc)
    changed_outputs["spec"]["outputs"][0]["video"]["crf"] = 20
    proc = cluster.apply(changed_outputs, ns, check=False)
    assert proc.returncode != 0
    assert "outputs are immutable" in words(proc.stderr)

    added_output = copy.deepcopy(doc)
    added_output["spec"]["outputs"].append(out("b"))
    proc = cluster.apply(added_output, ns, check=False)
    assert proc.returncode != 0
    assert "outputs are immutable" in words(proc.stderr)

    changed_accel = copy.deepcopy(doc)
    changed_accel["spec"]["accelerator"] = "cpu"
    proc = cluster.apply(changed_accel, ns, check=False)
    assert proc.returncode != 0
    assert "accelerator is immutable" in words(proc.stderr)

    allowed = copy.deepcopy(doc)
    allowed["spec"]["priority"] = 50
    allowed["spec"]["suspend"] = True
    cluster.apply(allowed, ns)
    spec = cluster.get("tj", "immutable", ns)["spec"]
    assert spec["priority"] == 50
    assert spec["suspend"] is True
    assert spec["input"]["uri"] == "/media/in.mp4"
    assert spec["outputs"][0]["video"]["crf"] == 30


def test_pool_accelerator_is_immutable_but_size_is_not(cluster: TestCluster, ns: str) -> None:
    doc = wp(maxWorkers=4)
    doc["metadata"]["name"] = "immutable-pool"
    cluster.apply(doc, ns)
    proc = cluster.apply({**doc, "spec": {**doc["spec"], "accelerator": "nvenc"}}, ns, check=False)
    assert proc.returncode != 0
    assert "accelerator is immutable: create another pool" in words(proc.stderr)
    cluster.apply({**doc, "spec": {**doc["spec"], "maxWorkers": 6, "autoscaling": {"enabled": False}}}, ns)
    cluster.kubectl("scale", "wp/immutable-pool", "-n", ns, "--replicas=3")
    assert cluster.get("wp", "immutable-pool", ns)["spec"]["replicas"] == 3
    proc = cluster.kubectl("scale", "wp/immutable-pool", "-n", ns, "--replicas=9", check=False)
    assert proc.returncode != 0
    assert "replicas must lie within minWorkers..maxWorkers" in words(proc.stderr)


# --- property: whatever the models accept, the API server accepts ------------------------------

PRESETS_BY_ACCELERATOR = {
    "auto": X264_PRESETS,
    "cpu": X264_PRESETS,
    "nvenc": (*NVENC_PRESETS, "fast", "medium", "slow"),
    "qsv": QSV_PRESETS,
    "vaapi": VAAPI_PRESETS,
}
# The CEL rules of extraArgs, mirrored with Python's re (the same regexes: that RE2 agrees is under test).
FORBIDDEN_OPTION = re.compile(FORBIDDEN_OPTION_PATTERN)
FORBIDDEN_FILTER = re.compile(FORBIDDEN_FILTER_PATTERN)
SHELL = set(";&|$`<>\\\n\r")

names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?", fullmatch=True)
bitrates = st.from_regex(BITRATE_PATTERN.strip("^$"), fullmatch=True)
rel_paths = st.from_regex(RELATIVE_PATH_PATTERN.strip("^$"), fullmatch=True).filter(lambda p: len(p) <= 255)
rtmp_urls = st.from_regex(r"rtmps?://[^\s/]+/\S+", fullmatch=True).filter(lambda u: len(u) <= 2048)
# Any printable character but the separators: unicode file names are fine for both sides.
segment_chars = st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters="/")
segments = st.text(segment_chars, min_size=1, max_size=12).filter(lambda s: s != "..")
quantities = st.from_regex(r"[1-9][0-9]{0,3}(\.[0-9]{1,2})?(m|Mi|Gi|k|M|G)?", fullmatch=True)
REALISTIC_ARGS = [
    "-tune", "film", "-profile:v", "high", "-level", "4.1", "-bf", "2", "-sc_threshold", "0",
    "-x264-params", "keyint=60:min-keyint=60:scenecut=0", "-vf", "scale=1280:-2,format=yuv420p",
    "-movflags", "+faststart", "-metadata", "title=Season 1, episode 2 (rerun)", "-pix_fmt", "yuv420p10le",
    "-af", "loudnorm=I=-16:TP=-1.5", "-ac", "2", "-threads", "4", "-rc-lookahead", "32", "-map_metadata", "-1",
    "-tag:v", "hvc1", "-colorspace", "bt709", "-g", "48", "-aspect", "16:9", "-strict", "experimental",
    "-metadata", "title=My movie, part 2", "-nr", "-ignore_unknown", "-fflags", "+genpts", "-filter:v",
    "-map_chapters", "-1", "-sn", "-dn", "-vsync", "cfr", "-id3v2_version", "3", "-write_tmcd", "0",
]  # fmt: skip
# Fragments that put filter names and option names next to the characters the rules look at.
FRAGMENTS = ["movie", "amovie", "ass", "pass", "zmq", "scale", "-i", "-f", "-n", "ilter_script", ":v", "@wm", "=",
             ",", "[", "]", "'", '"', " ", "\t", ":", "1", "_", "-", "é"]  # fmt: skip
arg_tokens = st.one_of(
    st.sampled_from(REALISTIC_ARGS),
    st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"), min_size=1, max_size=24),
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=6).map("".join),
).filter(lambda a: not (SHELL & set(a)) and not FORBIDDEN_OPTION.search(a) and not FORBIDDEN_FILTER.search(a))


def maybe(draw: st.DrawFn, strategy: st.SearchStrategy[Any]) -> Any:
    return draw(strategy) if draw(st.booleans()) else None


def put(target: Obj, key: str, value: Any) -> None:
    if value is not None:
        target[key] = value


@st.composite
def videos(draw: st.DrawFn, accelerator: str, container: str) -> Obj:
    codecs = ["h264", "hevc", "av1", "copy", "none"]
    if container == "flv":
        codecs = ["h264", "copy", "none"]
    if container == "hls":
        codecs.remove("none")
    codec = draw(st.sampled_from(codecs))
    video: Obj = {} if codec == "h264" and draw(st.booleans()) else {"codec": codec}
    if codec == "copy":
        put(video, "twoPass", maybe(draw, st.just(False)))
        return video
    # An HLS variant needs a BANDWIDTH for the master playlist: a bitrate or a maxrate.
    rate = draw(st.sampled_from(["bitrate", "crf", None] if container != "hls" else ["bitrate"]))
    if rate == "bitrate":
        video["bitrate"] = draw(bitrates)
    elif rate == "crf":
        video["crf"] = draw(st.integers(0, 63))
    if rate and draw(st.booleans()):
        video["maxrate"] = draw(bitrates)
        put(video, "bufsize", maybe(draw, bitrates))
    put(video, "preset", maybe(draw, st.sampled_from(PRESETS_BY_ACCELERATOR[accelerator])))
    put(video, "width", maybe(draw, st.integers(8, 3840).map(lambda w: 2 * w)))
    put(video, "height", maybe(draw, st.integers(8, 2160).map(lambda h: 2 * h)))
    put(video, "fps", maybe(draw, st.integers(1, 240)))
    put(video, "gop", maybe(draw, st.integers(1, 1200)))
    two_pass_ok = rate == "bitrate" and codec in ("h264", "hevc") and accelerator == "cpu"
    put(video, "twoPass", maybe(draw, st.booleans() if two_pass_ok else st.just(False)))
    return video


@st.composite
def audios(draw: st.DrawFn) -> Obj:
    codec = draw(st.sampled_from(["aac", "opus", "mp3", "copy", "none"]))
    audio: Obj = {} if codec == "aac" and draw(st.booleans()) else {"codec": codec}
    if codec not in ("copy", "none"):
        put(audio, "bitrate", maybe(draw, bitrates))
        put(audio, "channels", maybe(draw, st.integers(1, 8)))
        put(audio, "sampleRate", maybe(draw, st.integers(8000, 192000)))
    return audio


@st.composite
def outputs(draw: st.DrawFn, name: str, accelerator: str) -> Obj:
    container = draw(st.sampled_from(["mp4", "mkv", "flv", "hls", "mpegts", None]))
    o: Obj = {"name": name}
    put(o, "container", container)
    container = container or "mp4"
    if container != "hls":
        target = draw(st.sampled_from(["path", "url", None] if container == "flv" else ["path", None]))
        if target == "path":
            o["path"] = draw(rel_paths)
        elif target == "url":
            o["url"] = draw(rtmp_urls)
    video = draw(videos(accelerator, container)) if container == "hls" else maybe(draw, videos(accelerator, container))
    put(o, "video", video)
    put(o, "audio", maybe(draw, audios()))
    return o


@st.composite
def inputs(draw: st.DrawFn) -> Obj:
    kind = draw(st.sampled_from(["file", "http", "rtmp"]))
    if kind == "file":
        uri = "/media/" + "/".join(draw(st.lists(segments, min_size=1, max_size=4)))
    elif kind == "http":
        uri = draw(st.sampled_from(["http", "https"])) + "://media.example.com/" + draw(rel_paths)
    else:
        uri = draw(st.sampled_from(["rtmp", "rtmps"])) + "://ingest.example.com/live/" + draw(names)
    spec: Obj = {"uri": uri}
    put(spec, "startSeconds", maybe(draw, st.integers(0, 604800)))
    put(spec, "durationSeconds", maybe(draw, st.integers(1, 604800)))
    live = maybe(draw, st.booleans())
    put(spec, "live", live)
    if live or uri.startswith("rtmp"):
        policy: Obj = {}
        put(policy, "maxRestarts", maybe(draw, st.integers(0, 1000)))
        put(policy, "backoffSeconds", maybe(draw, st.integers(1, 300)))
        put(policy, "maxBackoffSeconds", maybe(draw, st.integers(1, 3600)))
        put(spec, "restartPolicy", maybe(draw, st.just(policy)))
    return spec


@st.composite
def job_specs(draw: st.DrawFn) -> Obj:
    accelerator = draw(st.sampled_from(["auto", "nvenc", "qsv", "vaapi", "cpu"]))
    spec: Obj = {"input": draw(inputs())}
    rendition_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    spec["outputs"] = [draw(outputs(n, accelerator)) for n in rendition_names]
    if accelerator != "auto" or draw(st.booleans()):
        spec["accelerator"] = accelerator
    policies = ["required", "preferred"] + (["disabled"] if accelerator in ("auto", "cpu") else [])
    put(spec, "hardwarePolicy", maybe(draw, st.sampled_from(policies)))
    if any(o.get("container") == "hls" for o in spec["outputs"]) and draw(st.booleans()):
        hls: Obj = {}
        put(hls, "segmentSeconds", maybe(draw, st.integers(1, 60)))
        put(hls, "segmentType", maybe(draw, st.sampled_from(["ts", "fmp4"])))
        put(hls, "playlistType", maybe(draw, st.sampled_from(["vod", "event", "live"])))
        put(hls, "listSize", maybe(draw, st.integers(1, 100)))
        put(
            hls, "masterPlaylist", maybe(draw, st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,40}\.m3u8", fullmatch=True))
        )
        spec["hls"] = hls
    if draw(st.booleans()):
        thumbs: Obj = {}
        put(thumbs, "intervalSeconds", maybe(draw, st.integers(1, 3600)))
        put(thumbs, "width", maybe(draw, st.integers(16, 3840)))
        put(thumbs, "format", maybe(draw, st.sampled_from(["jpg", "png"])))
        put(thumbs, "sprite", maybe(draw, st.fixed_dictionaries({}, optional={
            "columns": st.integers(1, 20), "rows": st.integers(1, 20)})))  # fmt: skip
        spec["thumbnails"] = thumbs
    put(spec, "poolRef", maybe(draw, st.builds(lambda n: {"name": n}, names)))
    put(spec, "priority", maybe(draw, st.integers(-1000, 1000)))
    put(spec, "timeoutSeconds", maybe(draw, st.integers(1, 604800)))
    put(spec, "backoffLimit", maybe(draw, st.integers(0, 20)))
    put(spec, "ttlSecondsAfterFinished", maybe(draw, st.integers(0, 31536000)))
    put(spec, "slaSeconds", maybe(draw, st.integers(1, 604800)))
    put(spec, "suspend", maybe(draw, st.booleans()))
    put(spec, "extraArgs", maybe(draw, st.lists(arg_tokens, max_size=8)))
    if draw(st.booleans()):
        spec["resources"] = {
            "limits": draw(st.fixed_dictionaries({}, optional={"cpu": quantities, "memory": quantities}))
        }
    return spec


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(batch=st.lists(job_specs(), min_size=1, max_size=5))
def test_what_the_models_accept_the_api_server_accepts(cluster: TestCluster, ns: str, batch: list[Obj]) -> None:
    expected = []
    for spec in batch:
        try:
            expected.append(TranscodeJobSpec.model_validate(spec).to_api())
        except ValidationError:
            reject()  # outside the models' domain: not what this property is about
    items = [
        {"apiVersion": API, "kind": "TranscodeJob", "metadata": {"name": f"prop-{i}"}, "spec": spec}
        for i, spec in enumerate(batch)
    ]
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    proc = cluster.kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-", "-o", "json", input=doc, check=False)
    assert proc.returncode == 0, f"the API server refused what the models accept:\n{proc.stderr}\n{doc}"
    stored = json.loads(proc.stdout)
    stored_items = stored["items"] if stored.get("kind") == "List" else [stored]
    # And both sides agree on the defaults: the server stores exactly what the models would write.
    assert [i["spec"] for i in stored_items] == expected
