"""Publishing a folder of outputs to a real S3 server: order, manifest, parts, bounded memory, aborts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tracemalloc
from pathlib import Path

import pytest

from ffrtmp.storage.publish import ManifestHeader, publish
from ffrtmp.storage.s3 import S3Client, S3Unreachable
from ffrtmp.storage.upload import MIB, upload_file
from ffrtmp.storage.uri import S3Location
from s3server import S3Server

pytestmark = pytest.mark.integration

HEADER = ManifestHeader("media", "lecture", "uid-1", 2, "cpu-worker-abc")


def ladder(folder: Path, big: int = 0) -> dict[str, bytes]:
    """An HLS ladder's files (and `big` bytes of out.mp4), written under `folder`."""
    files = {"hls/master.m3u8": b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n720p/index.m3u8\n"}
    for rendition in ("360p", "720p"):
        files[f"hls/{rendition}/index.m3u8"] = b"#EXTM3U\n#EXTINF:2,\nseg_000.ts\n#EXTINF:2,\nseg_001.ts\n"
        for n in range(2):
            files[f"hls/{rendition}/seg_{n:03d}.ts"] = os.urandom(3000)
    files["thumbs/thumb_0001.jpg"] = os.urandom(500)
    if big:
        files["out.mp4"] = os.urandom(big)
    for path, data in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    return files


async def test_media_then_variants_then_master_then_manifest(
    s3_server: S3Server, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    files = ladder(tmp_path, big=20 * MIB)
    destination = S3Location(bucket, "jobs/lecture/")
    fenced: list[str] = []

    async def fence(message: str) -> None:
        fenced.append(message)

    done = await publish(s3, tmp_path, destination, HEADER, masters=["hls/master.m3u8"], fence=fence)
    assert len(fenced) == 4, fenced  # before each of the three steps and before the manifest

    writes = [r for r in s3_server.logged() if r.bucket == bucket and r.status == 200
              and r.operation in ("PutObject", "CompleteMultipartUpload")]  # fmt: skip
    order = [w.key.removeprefix("jobs/lecture/") for w in writes]
    assert sorted(order) == sorted([*files, "manifest.json"])
    media = [f for f in files if not f.endswith(".m3u8")]
    last_media = max(order.index(f) for f in media)
    variants = [order.index(f"hls/{r}/index.m3u8") for r in ("360p", "720p")]
    assert last_media < min(variants) and max(variants) < order.index("hls/master.m3u8")
    assert order[-1] == "manifest.json"

    parts = [r for r in s3_server.logged() if r.bucket == bucket and r.operation == "UploadPart"]
    assert len(parts) == 3, "20 MiB in 8 MiB parts"
    assert await s3.list_multipart_uploads(bucket) == []

    manifest = json.loads(await s3.get_object(bucket, "jobs/lecture/manifest.json"))
    assert manifest["job"] == {"namespace": "media", "name": "lecture", "uid": "uid-1"}
    assert manifest["attempt"] == 2 and manifest["destination"] == f"s3://{bucket}/jobs/lecture/"
    listed = {o.key: o.size for o in await s3.list_objects(bucket, "jobs/lecture/")}
    for entry in manifest["files"]:
        body = await s3.get_object(bucket, entry["key"], limit=21 * MIB)
        assert entry["sha256"] == hashlib.sha256(body).hexdigest() == hashlib.sha256(files[entry["path"]]).hexdigest()
        assert entry["bytes"] == listed[entry["key"]] == len(files[entry["path"]])
    assert {e["path"] for e in manifest["files"]} == set(files)
    assert done.bytes == sum(len(b) for b in files.values())


async def test_parts_held_in_memory_are_bounded(s3: S3Client, bucket: str, tmp_path: Path) -> None:
    size, part, parallel = 64 * MIB, 8 * MIB, 2
    (tmp_path / "big.mkv").write_bytes(os.urandom(size))
    tracemalloc.start()
    try:
        uploaded = await upload_file(s3, bucket, "big.mkv", tmp_path / "big.mkv", "video/x-matroska",
                                     gate=asyncio.Semaphore(parallel), opened={}, part_size=part)  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert uploaded.parts == 8 and await s3.stat_object(bucket, "big.mkv") == size
    print(f"64 MiB in 8 MiB parts, 2 at a time: peak traced memory {peak / MIB:.1f} MiB")
    assert peak < 2 * parallel * part + 4 * MIB, f"{peak / MIB:.1f} MiB held for a 64 MiB file"


async def test_a_publish_stopped_mid_upload_leaves_no_upload_and_no_manifest(
    s3_server: S3Server, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    ladder(tmp_path, big=48 * MIB)
    destination = S3Location(bucket, "stopped/")

    async def fence(message: str) -> None:
        return None

    task = asyncio.create_task(
        publish(s3, tmp_path, destination, HEADER, masters=["hls/master.m3u8"], fence=fence, parallel_parts=1)
    )
    for _ in range(200):  # until the big file's parts are on their way
        if any(r.operation == "UploadPart" and r.bucket == bucket for r in s3_server.logged()):
            break
        await asyncio.sleep(0.05)
    task.cancel()  # what a superseded attempt's stop does to it
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await s3.list_multipart_uploads(bucket) == [], "its multipart upload was aborted"
    keys = {o.key for o in await s3.list_objects(bucket)}
    assert "stopped/out.mp4" not in keys and "stopped/manifest.json" not in keys
    assert not any(k.endswith(".m3u8") for k in keys), "no playlist before its media"


async def test_a_superseded_attempt_stops_before_the_next_step(s3: S3Client, bucket: str, tmp_path: Path) -> None:
    ladder(tmp_path)

    class Superseded(Exception):
        pass

    steps: list[str] = []

    async def fence(message: str) -> None:
        steps.append(message)
        if len(steps) == 2:
            raise Superseded("attempt 3 took over")

    with pytest.raises(Superseded):
        await publish(s3, tmp_path, S3Location(bucket, "p/"), HEADER, masters=["hls/master.m3u8"], fence=fence)
    keys = {o.key for o in await s3.list_objects(bucket)}
    assert keys and not any(k.endswith((".m3u8", "manifest.json")) for k in keys)


async def test_uploads_an_earlier_attempt_left_open_are_aborted(s3: S3Client, bucket: str, tmp_path: Path) -> None:
    ladder(tmp_path, big=10 * MIB)
    stale = await s3.create_multipart_upload(bucket, "job/out.mp4", "video/mp4")  # a worker killed mid-upload
    await s3.upload_part(bucket, "job/out.mp4", stale, 1, os.urandom(5 * MIB))
    other = await s3.create_multipart_upload(bucket, "job/not-ours.bin", "application/octet-stream")

    async def fence(message: str) -> None:
        return None

    done = await publish(s3, tmp_path, S3Location(bucket, "job/"), HEADER, masters=["hls/master.m3u8"], fence=fence)
    assert done.stale_uploads_aborted == 1
    assert [(u.key, u.upload_id) for u in await s3.list_multipart_uploads(bucket)] == [("job/not-ours.bin", other)]
    assert await s3.stat_object(bucket, "job/out.mp4") == 10 * MIB


async def test_an_output_named_like_the_manifest_is_refused(s3: S3Client, bucket: str, tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{}")

    async def fence(message: str) -> None:
        return None

    with pytest.raises(ValueError, match=r"manifest\.json"):
        await publish(s3, tmp_path, S3Location(bucket, "m/"), HEADER, masters=[], fence=fence)
    assert await s3.list_objects(bucket) == []


async def test_a_server_restart_mid_upload_is_retried_and_shows_no_partial_object(tmp_path: Path) -> None:
    server = S3Server(tmp_path / "server").start()
    try:
        async with S3Client(server.endpoint, server.credentials, attempts=6, backoff_seconds=0.2) as client:
            await client.create_bucket("restart")
            ladder(tmp_path / "out", big=40 * MIB)

            async def fence(message: str) -> None:
                return None

            task = asyncio.create_task(publish(client, tmp_path / "out", S3Location("restart", "j/"), HEADER,
                                               masters=["hls/master.m3u8"], fence=fence, parallel_parts=1))  # fmt: skip
            for _ in range(400):
                if any(r.operation == "UploadPart" for r in server.logged()):
                    break
                await asyncio.sleep(0.02)
            server.stop()  # mid-upload: parts 2..5 of out.mp4 are still to go
            async with S3Client(server.endpoint, server.credentials, attempts=1) as once:
                with pytest.raises(S3Unreachable):
                    await once.stat_object("restart", "j/out.mp4")
            server.start()  # within the publish's retries (0.2 + 0.4 + 0.8 + 1.6 + 3.2 s)
            assert not task.done()
            done = await task
            assert await client.stat_object("restart", "j/out.mp4") == 40 * MIB
            assert await client.list_multipart_uploads("restart") == []
            stored = {o.key: o.size for o in await client.list_objects("restart")}
            assert stored.pop("j/manifest.json") > 0
            assert stored == {f"j/{path}": u.size for path, u in done.objects}, "each object once, whole"
        lines = server.access_log.read_text().splitlines()
        restarted = [i for i, line in enumerate(lines) if line.startswith("log starts")][1]
        parts = [i for i, line in enumerate(lines) if "s3_UploadPart " in line]
        assert parts[0] < restarted < parts[-1], "the upload went on after the restart"
    finally:
        server.stop()
