"""Jobs that read s3:// inputs and upload to an s3:// prefix, end to end: the operator and stand-in workers on
the local control plane, real ffmpeg, and a real S3 server (versitygw, tests/s3server.py) reached through
each attempt's egress proxy."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import signal
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Farm
from ffrtmp.storage.s3 import S3Client
from ffrtmp.storage.sigv4 import Credentials
from helpers import ffprobe, make_clip, wait_for
from s3server import S3Server, free_port

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
FAST = {"codec": "h264", "preset": "ultrafast"}


def status(job: dict[str, Any]) -> dict[str, Any]:
    return job.get("status") or {}


def s3(server: S3Server, credentials: Credentials | None = None) -> S3Client:
    return S3Client(server.endpoint, credentials or server.credentials, backoff_seconds=0.05)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _make_bucket(server: S3Server, name: str) -> None:
    async with s3(server) as client:
        await client.create_bucket(name)


async def _put(server: S3Server, bucket: str, key: str, body: bytes) -> None:
    async with s3(server) as client:
        await client.put_object(bucket, key, body, "video/mp4")


def noisy_clip(path: Path, seconds: int = 6) -> Path:
    """A 640x360 clip with film-grain noise: about 4 MB a second, so its copy is uploaded in parts."""
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=640x360:rate=25:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
         "-vf", "noise=alls=30:allf=t", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "16",
         "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)],
        check=True, timeout=120,
    )  # fmt: skip
    return path


def secret(name: str, credentials: Credentials) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "Opaque",
        "data": {
            "AWS_ACCESS_KEY_ID": base64.b64encode(credentials.access_key_id.encode()).decode(),
            "AWS_SECRET_ACCESS_KEY": base64.b64encode(credentials.secret_access_key.encode()).decode(),
        },
    }


def object_storage(endpoint: str, secret_name: str) -> dict[str, Any]:
    return {"endpoint": endpoint, "pathStyle": True, "credentialsSecretRef": {"name": secret_name}}


@pytest.fixture
def s3_farm(farm: Farm, s3_server: S3Server) -> Iterator[Farm]:
    """The farm's pool `cpu` with the S3 server as its object storage (egress allowlisted by the admin and the
    pool), the operator and the workers running."""
    farm.cluster.apply(secret("s3-credentials", s3_server.credentials), farm.namespace)
    egress = {"allow": [f"{s3_server.host}/32"]}
    farm.pool("cpu", minWorkers=1, maxWorkers=1, autoscaling={"enabled": False}, egress=egress,
              objectStorage=object_storage(s3_server.url, "s3-credentials"))  # fmt: skip
    farm.start_operator(f"--pool-allowed-egress-destinations={s3_server.host}/32")
    farm.start_workers()
    wait_for(lambda: status(farm.cluster.get("wp", "cpu", farm.namespace)).get("readyWorkers") == 1, 90, "a worker")
    yield farm


async def _objects(server: S3Server, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under `prefix`, by key."""
    async with s3(server) as client:
        listed = await client.list_objects(bucket, prefix)
        return {o.key: await client.get_object(bucket, o.key, limit=64 * MIB) for o in listed}


def writes(server: S3Server, bucket: str, prefix: str) -> list[str]:
    """Keys under `prefix` in the order the server made them visible (PUT, multipart complete)."""
    return [
        r.key.removeprefix(prefix)
        for r in server.logged()
        if r.bucket == bucket and r.key.startswith(prefix) and r.status == 200
        and r.operation in ("PutObject", "CompleteMultipartUpload")
    ]  # fmt: skip


def test_mp4_and_hls_ladder_from_s3_to_s3(s3_farm: Farm, s3_server: S3Server) -> None:
    farm = s3_farm
    source, out = f"in-{secrets.token_hex(3)}", f"out-{secrets.token_hex(3)}"
    run(_make_bucket(s3_server, source))
    run(_make_bucket(s3_server, out))
    clip = noisy_clip(farm.root / "noisy.mp4")
    key = "uploads/\u00e9t\u00e9+clip.mp4"  # encoded in the presigned URL as ffmpeg sends it
    run(_put(s3_server, source, key, clip.read_bytes()))
    uri = f"s3://{source}/{key}"

    farm.job("mp4", uri, [
        {"name": "copy", "video": {"codec": "copy"}, "audio": {"codec": "copy"}},
        {"name": "sd", "video": {**FAST, "crf": 30, "height": 180}, "audio": {"codec": "aac", "bitrate": "64k"}},
    ], destination={"uri": f"s3://{out}/mp4/"})  # fmt: skip
    ladder = [
        {"name": name, "container": "hls",
         "video": {**FAST, "bitrate": rate, "height": height, "gop": 25}, "audio": {"codec": "aac", "bitrate": "64k"}}
        for name, rate, height in (("360p", "800k", 360), ("240p", "400k", 240), ("180p", "200k", 180))
    ]  # fmt: skip
    farm.job("ladder", uri, ladder, hls={"segmentSeconds": 2}, thumbnails={"intervalSeconds": 2, "width": 160},
             destination={"uri": f"s3://{out}/shows/ladder/"})  # fmt: skip
    for name in ("mp4", "ladder"):
        s = status(farm.wait_phase(name, "Succeeded", "Failed", timeout=240))
        assert s["phase"] == "Succeeded", s
        assert s["attempt"] == 1 and s["message"].startswith(f"{len(s['outputs'])} output(s) uploaded to s3://{out}/")

    async def objects(prefix: str) -> dict[str, bytes]:
        return await _objects(s3_server, out, prefix)

    for name, prefix, masters in (("mp4", "mp4/", []), ("ladder", "shows/ladder/", ["hls/master.m3u8"])):
        stored = run(objects(prefix))
        manifest = json.loads(stored[f"{prefix}manifest.json"])
        job = farm.get_job(name)
        assert manifest["job"] == {"namespace": farm.namespace, "name": name, "uid": job["metadata"]["uid"]}
        assert manifest["attempt"] == 1 and manifest["worker"] == status(job)["worker"]
        listed = {e["key"]: e for e in manifest["files"]}
        assert set(listed) | {f"{prefix}manifest.json"} == set(stored), "every object, and no other"
        for key, entry in listed.items():
            assert entry["sha256"] == hashlib.sha256(stored[key]).hexdigest() and entry["bytes"] == len(stored[key])
        order = writes(s3_server, out, prefix)
        assert order[-1] == "manifest.json" and sorted(order) == sorted(k.removeprefix(prefix) for k in stored)
        playlists = [i for i, k in enumerate(order) if k.endswith(".m3u8")]
        media = [i for i, k in enumerate(order) if not k.endswith((".m3u8", ".json"))]
        assert not playlists or max(media) < min(playlists), order
        for master in masters:
            assert order.index(master) == max(playlists), "the master playlist comes after every variant"
        for result in status(job)["outputs"]:
            assert result["path"].startswith(f"s3://{out}/{prefix}"), result

    ladder_keys = {k.removeprefix("shows/ladder/") for k in run(objects("shows/ladder/"))}
    for rendition in ("360p", "240p", "180p"):
        assert f"hls/{rendition}/index.m3u8" in ladder_keys
        assert any(k.startswith(f"hls/{rendition}/") and k.endswith(".ts") for k in ladder_keys)
    assert "hls/master.m3u8" in ladder_keys and any(k.startswith("thumbs/thumb_") for k in ladder_keys)

    logged = s3_server.logged()
    parts = [r for r in logged if r.bucket == out and r.key == "mp4/copy.mp4" and r.operation == "UploadPart"]
    assert clip.stat().st_size > 8 * MIB and len(parts) >= 2, f"{len(parts)} part(s) for the copy"
    reads = [r for r in logged if r.bucket == source and r.operation == "GetObject"]
    print(f"input reads: {len(reads)}; parts of mp4/copy.mp4: {len(parts)}")

    async def presigned(key: str) -> str:
        async with s3(s3_server) as client:
            return client.presign_get(out, key, 300)

    # Read back through presigned URLs, as a player without credentials would (a playlist's relative entries
    # would lose the signature: HLS from a private bucket needs signed cookies or a CDN, see docs/RUNBOOK.md).
    copied = ffprobe(run(presigned("mp4/copy.mp4")))
    assert {st["codec_type"] for st in copied["streams"]} == {"video", "audio"}
    assert abs(float(copied["format"]["duration"]) - 6) < 0.5
    sd = ffprobe(run(presigned("mp4/sd.mp4")))
    assert next(st for st in sd["streams"] if st["codec_type"] == "video")["height"] == 180
    segment = sorted(k for k in ladder_keys if k.startswith("hls/240p/") and k.endswith(".ts"))[0]
    probed = ffprobe(run(presigned(f"shows/ladder/{segment}")))
    assert next(st for st in probed["streams"] if st["codec_type"] == "video")["height"] == 240

    (info,) = farm.workers_state().values()
    url = f"http://127.0.0.1:{info['env']['FFRTMP_METRICS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        metrics = response.read().decode()
    uploaded = sum(len(b) for b in run(objects("mp4/")).values()) + sum(len(b) for b in run(objects("shows/")).values())
    manifests = sum(len(run(objects(p))[f"{p}manifest.json"]) for p in ("mp4/", "shows/ladder/"))
    assert metric(metrics, "ffrtmp_job_upload_bytes_total") == uploaded - manifests, "every output byte, counted once"
    assert metric(metrics, "ffrtmp_job_input_bytes_total") == 2 * clip.stat().st_size
    assert metric(metrics, "ffrtmp_job_upload_seconds_count") == 2

    said = farm.everything_said() + metrics
    assert s3_server.secret_key not in said
    assert "X-Amz-Signature" not in said


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples (all label sets) in Prometheus text."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith((name + "{", name + " ")))


def test_storage_failures_have_their_reason_name_bucket_and_key_and_leak_no_secret(
    farm: Farm, s3_server: S3Server
) -> None:
    source = f"in-{secrets.token_hex(3)}"
    run(_make_bucket(s3_server, source))
    clip = farm.root / "clip.mp4"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=25:duration=1", "-c:v", "libx264", "-preset", "ultrafast", str(clip)],
                   check=True, timeout=60)  # fmt: skip
    run(_put(s3_server, source, "clip.mp4", clip.read_bytes()))
    wrong = Credentials(s3_server.access_key, "not-the-secret-" + secrets.token_hex(8))
    farm.cluster.apply([secret("good", s3_server.credentials), secret("wrong", wrong)], farm.namespace)
    allowed = {"allow": [f"{s3_server.host}/32"]}
    down = f"http://{s3_server.host}:{free_port(s3_server.host)}"  # nothing listens there
    for pool, endpoint, key, egress in (
        ("cpu", s3_server.url, "good", allowed),
        ("wrong", s3_server.url, "wrong", allowed),
        ("down", down, "good", allowed),
        ("closed", s3_server.url, "good", {}),
    ):
        farm.pool(pool, minWorkers=1, maxWorkers=1, autoscaling={"enabled": False}, egress=egress,
                  objectStorage=object_storage(endpoint, key))  # fmt: skip
    farm.pool("plain", minWorkers=1, maxWorkers=1, autoscaling={"enabled": False})
    farm.start_operator(f"--pool-allowed-egress-destinations={s3_server.host}/32")
    farm.start_workers()

    good_input = f"s3://{source}/clip.mp4"
    cases = {  # job: (input, pool, destination, reason, words in the message)
        "no-bucket": ("s3://no-such-bucket-ffrtmp/clip.mp4", "cpu", None, "BucketNotFound",
                      ["no-such-bucket-ffrtmp", "NoSuchBucket"]),
        "no-key": (f"s3://{source}/missing/clip.mp4", "cpu", None, "InputNotFound",
                   [f"s3://{source}/missing/clip.mp4", "NoSuchKey"]),
        "no-out-bucket": (good_input, "cpu", "s3://no-such-out-ffrtmp/x/", "BucketNotFound",
                          ["uploading s3://no-such-out-ffrtmp/x/", "NoSuchBucket"]),
        "wrong-key": (good_input, "wrong", None, "ObjectStorageAccessDenied",
                      [f"reading {good_input}", "SignatureDoesNotMatch", "credentialsSecretRef"]),
        "closed": (good_input, "closed", None, "DestinationNotAllowed", [s3_server.host, "spec.egress.allow"]),
        "down": (good_input, "down", None, "ObjectStorageUnreachable", [down, "did not answer"]),
    }  # fmt: skip
    for name, (uri, pool, destination, _, _) in cases.items():
        extra: dict[str, Any] = {"destination": {"uri": destination}} if destination else {}
        farm.job(name, uri, poolRef={"name": pool}, backoffLimit=1, **extra)
    for name, (_, _, _, reason, words) in cases.items():
        s = status(farm.wait_phase(name, "Failed", "Succeeded", timeout=240))
        assert s["phase"] == "Failed", (name, s)
        assert s["result"]["reason"] == reason, (name, s["result"])
        for word in words:
            assert word in s["result"]["message"], (name, word, s["result"]["message"])
        retried = reason == "ObjectStorageUnreachable"
        assert s["attempt"] == (2 if retried else 1), (name, s["attempt"])
        assert s["result"]["retryable"] is retried, (name, s["result"])

    # A job that names a pool without object storage is not sent there: it waits, saying why.
    farm.job("no-storage", good_input, poolRef={"name": "plain"})
    queued = wait_for(
        lambda: next((c for c in status(farm.get_job("no-storage")).get("conditions", []) if c["type"] == "Queued"
                      and c["reason"] == "NoMatchingPool"), None),
        60, "no-storage Queued with NoMatchingPool",
    )  # fmt: skip
    assert queued["message"].startswith("WorkerPool plain (poolRef) has no spec.objectStorage"), queued
    assert status(farm.get_job("no-storage"))["phase"] == "Queued"

    said = farm.everything_said()
    for value in (s3_server.secret_key, wrong.secret_access_key):
        assert value not in said
    assert "X-Amz-Signature" not in said
    assert not list(farm.output.rglob("*.mp4")), "nothing reached the output volume"


class SlowLink:
    """A TCP relay in front of the S3 server that, while `slow` is set, passes what the worker sends at `rate`
    bytes a second per connection (a real slow network, not a pause in the code): an upload is still in
    flight when the test kills the worker."""

    def __init__(self, server: S3Server, rate: int) -> None:
        self.server, self.rate = server, rate
        self.slow = threading.Event()
        self.slow.set()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        self._listener = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._relay, server.host, 0), self._loop
        ).result(10)
        self.url = f"http://{server.host}:{self._listener.sockets[0].getsockname()[1]}"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.server.host, self.server.port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer, paced=True), self._pipe(up_reader, writer, paced=False))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, paced: bool) -> None:
        try:
            while data := await reader.read(16384):
                writer.write(data)
                await writer.drain()
                if paced and self.slow.is_set():
                    await asyncio.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            writer.close()

    def close(self) -> None:
        self._listener.close()
        self._loop.call_soon_threadsafe(self._loop.stop)


def test_a_worker_killed_mid_upload_publishes_once_on_the_next_attempt(farm: Farm, s3_server: S3Server) -> None:
    """The worker process is SIGKILLed while its multipart upload is in flight: no partial object is visible,
    the next attempt aborts the upload the dead one left open and publishes every object exactly once."""
    bucket = f"kill-{secrets.token_hex(3)}"
    run(_make_bucket(s3_server, bucket))
    clip = noisy_clip(farm.media / "noisy.mp4", seconds=5)  # about 20 MB: a multipart upload of 3 parts
    link = SlowLink(s3_server, rate=512 * 1024)
    try:
        farm.cluster.apply(secret("s3-credentials", s3_server.credentials), farm.namespace)
        farm.pool(
            "cpu",
            minWorkers=1,
            maxWorkers=1,
            autoscaling={"enabled": False},
            egress={"allow": [f"{s3_server.host}/32"]},
            objectStorage=object_storage(link.url, "s3-credentials"),
        )
        farm.start_operator(f"--pool-allowed-egress-destinations={s3_server.host}/32")
        farm.start_workers("--restart-delay", "1")
        farm.job("copy", str(clip), [{"name": "copy", "video": {"codec": "copy"}, "audio": {"codec": "copy"}}],
                 destination={"uri": f"s3://{bucket}/film/"})  # fmt: skip

        async def open_uploads() -> list[str]:
            async with s3(s3_server) as client:
                return [u.upload_id for u in await client.list_multipart_uploads(bucket)]

        stale = wait_for(lambda: run(open_uploads()), 120, "the multipart upload in flight", interval=0.1)
        assert len(stale) == 1, "the copy's upload: one multipart upload in flight"
        (info,) = farm.workers_state().values()
        os.kill(info["pid"], signal.SIGKILL)
        link.slow.clear()

        async def listed() -> list[str]:
            async with s3(s3_server) as client:
                return [o.key for o in await client.list_objects(bucket, "film/")]

        assert run(listed()) == [], "nothing of the killed attempt is visible"
        done = status(farm.wait_phase("copy", "Succeeded", "Failed", timeout=180))
    finally:
        link.close()
    assert done["phase"] == "Succeeded" and done["attempt"] == 2 and not done.get("failed"), done
    assert run(open_uploads()) == [], "the stale multipart upload was aborted"
    aborted = [r.key for r in s3_server.logged() if r.operation == "AbortMultipartUpload" and r.bucket == bucket]
    assert aborted == ["film/copy.mp4"], "the next attempt aborted what the dead one left open"
    assert writes(s3_server, bucket, "film/") == ["copy.mp4", "manifest.json"], "each object published once"
    objects = {k.removeprefix("film/"): v for k, v in run(_objects(s3_server, bucket, "film/")).items()}
    assert set(objects) == {"copy.mp4", "manifest.json"}
    manifest = json.loads(objects["manifest.json"])
    (entry,) = [f for f in manifest["files"] if f["key"].endswith("copy.mp4")]
    assert hashlib.sha256(objects["copy.mp4"]).hexdigest() == entry["sha256"] and manifest["attempt"] == 2


def test_mkv_thumbnails_and_sprites_to_s3(s3_farm: Farm, s3_server: S3Server) -> None:
    """The output kinds the mp4/HLS test does not cover: an MKV file, thumbnails and a sprite sheet, each
    uploaded whole under the prefix, listed in the manifest and in the job's outputs as s3:// paths."""
    out = f"extras-{secrets.token_hex(3)}"
    run(_make_bucket(s3_server, out))
    clip = make_clip(s3_farm.media / "clip.mp4", seconds=3)
    s3_farm.job("extras", str(clip), [{"name": "archive", "container": "mkv", "video": FAST}],
                thumbnails={"intervalSeconds": 1, "width": 160, "sprite": {"columns": 2, "rows": 2}},
                destination={"uri": f"s3://{out}/extras/"})  # fmt: skip
    s = status(s3_farm.wait_phase("extras", "Succeeded", "Failed", timeout=180))
    assert s["phase"] == "Succeeded", s
    stored = {k.removeprefix("extras/"): v for k, v in run(_objects(s3_server, out, "extras/")).items()}
    thumbs = sorted(k for k in stored if k.startswith("thumbs/thumb_") and k.endswith(".jpg"))
    sprites = sorted(k for k in stored if k.startswith("thumbs/sprite_") and k.endswith(".jpg"))
    assert len(thumbs) == 3 and len(sprites) == 1, sorted(stored)
    assert set(stored) == {"archive.mkv", "manifest.json", *thumbs, *sprites}
    manifest = json.loads(stored["manifest.json"])
    for entry in manifest["files"]:
        body = stored[entry["key"].removeprefix("extras/")]
        assert entry["sha256"] == hashlib.sha256(body).hexdigest() and entry["bytes"] == len(body)
    assert {e["key"] for e in manifest["files"]} == {f"extras/{k}" for k in stored if k != "manifest.json"}
    outputs = {o["name"]: o for o in s["outputs"]}
    assert outputs["archive"]["path"] == f"s3://{out}/extras/archive.mkv" and outputs["archive"]["codec"] == "h264"
    assert outputs["thumbnails"]["path"] == f"s3://{out}/extras/thumbs" and outputs["thumbnails"]["count"] == 3
    assert outputs["sprite"]["count"] == 1
    (info,) = s3_farm.workers_state().values()
    url = f"http://127.0.0.1:{info['env']['FFRTMP_METRICS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        uploaded = metric(response.read().decode(), "ffrtmp_job_upload_bytes_total")
    assert uploaded == sum(len(v) for k, v in stored.items() if k != "manifest.json")
