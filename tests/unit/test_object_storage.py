"""Object storage decisions without a server: s3:// URIs, publishing order, part sizes, content types, the
worker's failures, settings and redaction."""

from __future__ import annotations

from typing import Any

import pytest

from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.redact import redact
from ffrtmp.storage.credentials import FixedCredentials
from ffrtmp.storage.publish import content_type, phases
from ffrtmp.storage.s3 import EgressRefused, Endpoint, S3Error, S3Unreachable
from ffrtmp.storage.sigv4 import Credentials
from ffrtmp.storage.upload import MIB, part_size_for
from ffrtmp.storage.uri import S3Location, parse_object_uri, parse_prefix_uri
from ffrtmp.worker.config import ObjectStorageConfig, WorkerConfig
from ffrtmp.worker.objectstore import check_job, failure, presign_seconds, without_credentials

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("uri", "bucket", "key"),
    [
        ("s3://media/in/trailer.mov", "media", "in/trailer.mov"),
        ("s3://my.bucket-1/a", "my.bucket-1", "a"),
        ("s3://abc/.hidden/x..y/...z", "abc", ".hidden/x..y/...z"),
        ("s3://abc/\u00e9t\u00e9+(1)=&.mp4", "abc", "\u00e9t\u00e9+(1)=&.mp4"),
    ],
)
def test_object_uris(uri: str, bucket: str, key: str) -> None:
    assert parse_object_uri(uri) == S3Location(bucket, key)
    assert str(parse_object_uri(uri)) == uri


@pytest.mark.parametrize(
    "uri",
    ["s3://media/", "s3://media/dir/", "s3://Media/a", "s3://ab/a", "s3://media/a b", "s3://media/a/../b",
     "s3://media/./a", "s3://media//a", "s3:/media/a", "https://media/a", "s3://-media/a", "s3://media/a\x00"],
)  # fmt: skip
def test_bad_object_uris(uri: str) -> None:
    with pytest.raises(ValueError, match="is not an s3://bucket/key URI"):
        parse_object_uri(uri)


def test_prefix_uris() -> None:
    assert parse_prefix_uri("s3://out/") == S3Location("out", "")
    assert parse_prefix_uri("s3://out/jobs/2024/") == S3Location("out", "jobs/2024/")
    assert parse_prefix_uri("s3://out/jobs/").child("hls/master.m3u8") == S3Location("out", "jobs/hls/master.m3u8")
    for bad in ("s3://out", "s3://out/jobs", "s3://out/../", "s3://out/a//", "s3://OUT/"):
        with pytest.raises(ValueError, match="is not an s3://bucket/prefix/ URI"):
            parse_prefix_uri(bad)


def test_keys_longer_than_s3_allows_are_refused() -> None:
    with pytest.raises(ValueError, match="1024 bytes"):
        parse_object_uri("s3://media/" + "\u00e9" * 513)


def test_media_first_then_variant_playlists_then_the_master() -> None:
    files = ["hls/master.m3u8", "hls/720p/index.m3u8", "hls/720p/seg_000.ts", "hls/360p/index.m3u8",
             "hls/360p/init.mp4", "hls/360p/seg_000.m4s", "out.mp4", "thumbs/thumb_0001.jpg"]  # fmt: skip
    assert phases(files, ["hls/master.m3u8"]) == [
        ["hls/360p/init.mp4", "hls/360p/seg_000.m4s", "hls/720p/seg_000.ts", "out.mp4", "thumbs/thumb_0001.jpg"],
        ["hls/360p/index.m3u8", "hls/720p/index.m3u8"],
        ["hls/master.m3u8"],
    ]
    assert phases(["a.mp4"], []) == [["a.mp4"]]
    assert phases([], []) == []


def test_part_size_grows_only_past_ten_thousand_parts() -> None:
    assert part_size_for(1, 8 * MIB) == 8 * MIB
    assert part_size_for(80_000 * MIB, 8 * MIB) == 8 * MIB
    grown = part_size_for(200 * 1024 * MIB, 8 * MIB)  # 200 GiB
    assert grown % MIB == 0 and 200 * 1024 * MIB / grown <= 10_000 and grown == 21 * MIB
    with pytest.raises(ValueError):
        part_size_for(1, 4 * MIB)


@pytest.mark.parametrize(
    ("path", "expected"),
    [("a/index.m3u8", "application/vnd.apple.mpegurl"), ("seg_001.ts", "video/mp2t"), ("s.m4s", "video/iso.segment"),
     ("out.MP4", "video/mp4"), ("out.mkv", "video/x-matroska"), ("t.jpg", "image/jpeg"), ("sprite_1.png", "image/png"),
     ("x.unknownext", "application/octet-stream")],
)  # fmt: skip
def test_content_types(path: str, expected: str) -> None:
    assert content_type(path) == expected


def test_a_presigned_url_in_a_report_becomes_the_s3_uri_and_stray_signatures_are_redacted() -> None:
    url = "http://127.0.0.9:9000/in/a.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20240101&X-Amz-Signature=abc123"
    stderr = f"[http @ 0x1] HTTP error 403\n{url}: Server returned 403 Forbidden (access denied)"
    assert redact(stderr, {url: "s3://in/a.mp4"}) == (
        "[http @ 0x1] HTTP error 403\ns3://in/a.mp4: Server returned 403 Forbidden (access denied)"
    )
    other = "Opening 'http://h/b.ts?X-Amz-Credential=AKID%2Fx&x-amz-signature=beef&X-Amz-Security-Token=t' for reading"
    assert redact(other, {}) == (
        "Opening 'http://h/b.ts?X-Amz-Credential=REDACTED&x-amz-signature=REDACTED&X-Amz-Security-Token=REDACTED' "
        "for reading"
    )


@pytest.mark.parametrize(
    ("error", "reason", "retryable", "words"),
    [
        (S3Error("GetObject", 404, "NoSuchBucket", "", "media", "a.mp4"), "BucketNotFound", False,
         ["reading s3://media/a.mp4", "the bucket media does not exist at minio:9000"]),
        (S3Error("GetObject", 404, "NoSuchKey", "", "media", "a.mp4"), "InputNotFound", False, ["s3://media/a.mp4"]),
        (S3Error("GetObject", 403, "InvalidAccessKeyId", "", "media", "a.mp4"), "ObjectStorageAccessDenied", False,
         ["access key id", "credentialsSecretRef"]),
        (S3Error("GetObject", 403, "AccessDenied", "", "media", "a.mp4"), "ObjectStorageAccessDenied", False,
         ["not allowed to read it"]),
        (S3Error("PutObject", 503, "SlowDown", "Reduce your request rate.", "media", "a.mp4"), "ObjectStorageError",
         True, ["SlowDown (HTTP 503): Reduce your request rate."]),
        (S3Error("PutObject", 400, "EntityTooLarge", "", "media", "a.mp4"), "ObjectStorageError", False, ["HTTP 400"]),
        (S3Unreachable("http://minio:9000", "connection failed"), "ObjectStorageUnreachable", True, ["did not answer"]),
        (EgressRefused("minio:9000"), "DestinationNotAllowed", False, ["minio:9000", "spec.egress.allow"]),
    ],
)  # fmt: skip
def test_storage_errors_become_failures_with_a_reason(
    error: Exception, reason: str, retryable: bool, words: list[str]
) -> None:
    reading = not (isinstance(error, S3Error) and error.operation == "PutObject")
    found = failure(error, S3Location("media", "a.mp4"), reading=reading, endpoint="minio:9000")
    assert (found.reason, found.retryable) == (reason, retryable)
    for word in words:
        assert word in found.message, found.message


def test_the_worker_reads_object_storage_from_its_env_and_keeps_it_from_ffmpeg() -> None:
    env = {"FFRTMP_S3_ENDPOINT": "http://minio:9000", "FFRTMP_S3_PATH_STYLE": "true",
           "FFRTMP_S3_ACCESS_KEY_ID": "AK", "FFRTMP_S3_SECRET_ACCESS_KEY": "SK", "PATH": "/bin"}  # fmt: skip
    config = ObjectStorageConfig.from_env(env)
    assert config is not None and config.endpoint == Endpoint("http://minio:9000", "us-east-1", path_style=True)
    assert config.credentials == FixedCredentials(Credentials("AK", "SK"), "the pool's credentialsSecretRef")
    assert "SK" not in repr(config)
    assert without_credentials(env) == {"PATH": "/bin"}
    assert ObjectStorageConfig.from_env({"PATH": "/bin"}) is None
    with pytest.raises(ValueError, match="FFRTMP_S3_SECRET_ACCESS_KEY is empty") as missing:
        ObjectStorageConfig.from_env({**env, "FFRTMP_S3_SECRET_ACCESS_KEY": ""})
    assert "AK" not in str(missing.value)


def test_a_presigned_input_outlives_the_attempt_by_an_hour_at_most_a_week() -> None:
    assert presign_seconds(None) == 25 * 3600
    assert presign_seconds(600) == 4200
    assert presign_seconds(604800) == 604800


def test_jobs_a_worker_refuses_before_reading_anything() -> None:
    storage = ObjectStorageConfig(
        Endpoint("http://minio:9000", path_style=True), FixedCredentials(Credentials("AK", "SK"), "a Secret")
    )
    plain = WorkerConfig("w", "media", "plain")
    with_storage = WorkerConfig("w", "media", "s3", object_storage=storage)

    def job(uri: str = "s3://in/a.mp4", **spec: Any) -> TranscodeJobSpec:
        return TranscodeJobSpec.model_validate({"input": {"uri": uri}, "outputs": [{"name": "a"}], **spec})

    dest = {"destination": {"uri": "s3://out/j/"}}
    assert check_job(job("/media/a.mp4"), plain) is None
    assert check_job(job(), with_storage) is None and check_job(job("/media/a.mp4", **dest), with_storage) is None
    missing = check_job(job(), plain)
    assert (
        missing is not None and missing.reason == "ObjectStorageNotConfigured" and "WorkerPool plain" in missing.message
    )
    refused = {
        "live": job("rtmp://live.example/app/k", **dest),
        "manifest": TranscodeJobSpec.model_validate(
            {"input": {"uri": "/m/a.mp4"}, "outputs": [{"name": "a", "path": "manifest.json"}], **dest}
        ),
        "streams": TranscodeJobSpec.model_validate(
            {
                "input": {"uri": "/m/a.mp4"},
                **dest,
                "outputs": [{"name": "a", "container": "flv", "url": "rtmp://live.example/app/k"}],
            }
        ),
    }
    for name, spec in refused.items():
        problem = check_job(spec, with_storage)
        assert problem is not None and problem.reason == "InvalidSpec", name
