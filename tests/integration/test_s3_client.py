"""The S3 client against a real S3 server (versitygw, tests/s3server.py): objects, multipart, presigned
URLs, the errors it names, and its requests through the egress proxy."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
from datetime import UTC, datetime

import aiohttp
import pytest

from ffrtmp.dev.cluster import free_port
from ffrtmp.egress.policy import EgressPolicy
from ffrtmp.egress.proxy import EgressProxy
from ffrtmp.storage.s3 import EgressRefused, Endpoint, S3Client, S3Error, S3Unreachable
from ffrtmp.storage.sigv4 import Credentials
from s3server import S3Server

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
AWKWARD_KEYS = ["plain.mp4", "with space/and+plus=eq&amp.ts", "unicode/\u00e9t\u00e9 \u4e2d.m3u8", "a/b/c/deep.jpg"]


async def test_objects_round_trip_with_awkward_keys(s3: S3Client, bucket: str) -> None:
    for i, key in enumerate(AWKWARD_KEYS):
        etag = await s3.put_object(bucket, key, f"body {i}".encode(), "application/octet-stream")
        assert etag.strip('"') == hashlib.md5(f"body {i}".encode()).hexdigest()  # S3's ETag of a single PUT
    for i, key in enumerate(AWKWARD_KEYS):
        assert await s3.get_object(bucket, key) == f"body {i}".encode()
        assert await s3.stat_object(bucket, key) == len(f"body {i}")
    listed = await s3.list_objects(bucket)
    assert sorted(o.key for o in listed) == sorted(AWKWARD_KEYS)
    assert [o.key for o in await s3.list_objects(bucket, "unicode/")] == [AWKWARD_KEYS[2]]
    await s3.put_object(bucket, "empty", b"", "text/plain")
    assert await s3.stat_object(bucket, "empty") == 0
    for key in [*AWKWARD_KEYS, "empty"]:
        await s3.delete_object(bucket, key)
    assert await s3.list_objects(bucket) == []


async def test_a_listing_spans_pages(s3_server: S3Server, bucket: str, s3: S3Client) -> None:
    await asyncio.gather(*(s3.put_object(bucket, f"many/{i:04d}", b"x", "text/plain") for i in range(1003)))
    listed = await s3.list_objects(bucket, "many/")
    assert [o.key for o in listed] == [f"many/{i:04d}" for i in range(1003)]
    pages = [r for r in s3_server.logged() if r.operation == "ListObjectsV2" and r.bucket == bucket]
    assert len(pages) >= 2, "1003 keys take more than one page of 1000"


async def test_multipart_upload_complete_and_abort(s3: S3Client, bucket: str) -> None:
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(123)]
    upload = await s3.create_multipart_upload(bucket, "big.mp4", "video/mp4")
    etags = [(n, await s3.upload_part(bucket, "big.mp4", upload, n, data)) for n, data in enumerate(parts, start=1)]
    assert [u.upload_id for u in await s3.list_multipart_uploads(bucket, "big")] == [upload]
    with pytest.raises(S3Error) as missing:
        await s3.stat_object(bucket, "big.mp4")
    assert missing.value.code == "NoSuchKey", "nothing is visible before the upload completes"
    await s3.complete_multipart_upload(bucket, "big.mp4", upload, etags)
    assert await s3.get_object(bucket, "big.mp4", limit=11 * MIB) == b"".join(parts)
    assert await s3.list_multipart_uploads(bucket) == []

    dropped = await s3.create_multipart_upload(bucket, "dropped.mp4", "video/mp4")
    await s3.upload_part(bucket, "dropped.mp4", dropped, 1, b"x" * 1000)
    await s3.abort_multipart_upload(bucket, "dropped.mp4", dropped)
    await s3.abort_multipart_upload(bucket, "dropped.mp4", dropped)  # gone already: no error
    assert await s3.list_multipart_uploads(bucket) == []
    assert [o.key for o in await s3.list_objects(bucket)] == ["big.mp4"]


async def test_presigned_get_reads_ranges_without_credentials_until_it_expires(
    s3_server: S3Server, s3: S3Client, bucket: str
) -> None:
    key = AWKWARD_KEYS[1]
    await s3.put_object(bucket, key, bytes(range(256)) * 4, "video/mp2t")
    url = s3.presign_get(bucket, key, 60)
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Range": "bytes=10-19"}) as ranged:
            assert ranged.status == 206 and await ranged.read() == bytes(range(10, 20))
        async with http.get(url) as whole:
            assert whole.status == 200 and len(await whole.read()) == 1024
        tampered = url.replace("X-Amz-Expires=60", "X-Amz-Expires=61")
        async with http.get(tampered) as refused:
            assert refused.status == 403 and b"SignatureDoesNotMatch" in await refused.read()
        async with S3Client(s3_server.endpoint, s3_server.credentials, clock=lambda: _ago(3600)) as past:
            expired = past.presign_get(bucket, key, 60)
        async with http.get(expired) as old:
            assert old.status == 403, "a URL that expired an hour ago"


def _ago(seconds: float) -> datetime:
    return datetime.fromtimestamp(time.time() - seconds, UTC)


async def test_errors_name_bucket_and_key_and_carry_no_secret(s3_server: S3Server, bucket: str) -> None:
    good = s3_server.credentials
    stranger = s3_server.add_user(f"STRANGER{secrets.token_hex(4).upper()}", "stranger-" + secrets.token_hex(8))
    cases = [
        (stranger, bucket, "a.mp4", "AccessDenied"),
        (good, "no-such-bucket-ffrtmp", "a.mp4", "NoSuchBucket"),
        (good, bucket, "missing/a.mp4", "NoSuchKey"),
        (Credentials(good.access_key_id, "wrong-secret-value"), bucket, "a.mp4", "SignatureDoesNotMatch"),
        (Credentials("NOSUCHKEYID", good.secret_access_key), bucket, "a.mp4", "InvalidAccessKeyId"),
    ]
    for credentials, in_bucket, key, code in cases:
        async with S3Client(s3_server.endpoint, credentials, backoff_seconds=0.01) as client:
            with pytest.raises(S3Error) as raised:
                await client.stat_object(in_bucket, key)
        error = raised.value
        assert error.code == code, error
        assert f"s3://{in_bucket}/{key}" in str(error)
        assert credentials.secret_access_key not in str(error) and good.secret_access_key not in str(error)


async def test_an_endpoint_that_does_not_answer_is_unreachable_after_retries(s3_server: S3Server) -> None:
    nothing = Endpoint(f"http://127.0.0.1:{free_port()}", path_style=True)
    async with S3Client(nothing, s3_server.credentials, attempts=3, backoff_seconds=0.05) as client:
        started = time.monotonic()
        with pytest.raises(S3Unreachable) as raised:
            await client.stat_object("bucket", "key")
    assert nothing.url in str(raised.value)
    assert time.monotonic() - started >= 0.05 + 0.1, "two waits between three tries"


async def test_requests_go_through_the_egress_proxy(s3_server: S3Server, s3: S3Client, bucket: str) -> None:
    await s3.put_object(bucket, "via-proxy.ts", b"segment", "video/mp2t")
    allowing = EgressPolicy.build([f"{s3_server.host}/32"])
    async with EgressProxy(allowing) as proxy:
        async with S3Client(s3_server.endpoint, s3_server.credentials, proxy=proxy.url) as proxied:
            assert await proxied.get_object(bucket, "via-proxy.ts") == b"segment"
            upload = await proxied.create_multipart_upload(bucket, "proxied.bin", "application/octet-stream")
            part = os.urandom(6 * MIB)
            etag = await proxied.upload_part(bucket, "proxied.bin", upload, 1, part)
            await proxied.complete_multipart_upload(bucket, "proxied.bin", upload, [(1, etag)])
        assert proxy.opened and all(host == s3_server.host for host, _ in proxy.opened)
    assert await s3.get_object(bucket, "proxied.bin", limit=7 * MIB) == part
    async with EgressProxy(EgressPolicy.build([])) as refusing:  # loopback is refused by default
        async with S3Client(s3_server.endpoint, s3_server.credentials, proxy=refusing.url) as refused:
            with pytest.raises(EgressRefused):
                await refused.stat_object(bucket, "via-proxy.ts")
        assert [r.host for r in refusing.refusals] == [s3_server.host]


def test_virtual_hosted_and_path_style_addresses() -> None:
    aws = Endpoint("https://s3.eu-west-1.amazonaws.com", "eu-west-1")
    assert aws.address("media", "in/a b.mp4") == ("media.s3.eu-west-1.amazonaws.com", "/in/a b.mp4")
    assert (
        aws.request_url(*aws.address("media", "in/a b.mp4")) == "https://media.s3.eu-west-1.amazonaws.com/in/a%20b.mp4"
    )
    local = Endpoint("http://[::1]:9000/", path_style=True)
    assert local.address("media", "k") == ("[::1]:9000", "/media/k")
    assert local.address("media") == ("[::1]:9000", "/media")
    assert Endpoint("https://minio.example:443", path_style=True).netloc == "minio.example"
    for bad in ("ftp://h", "https://user:pw@h", "https://h/path", "h:9000"):
        with pytest.raises(ValueError):
            Endpoint(bad)
