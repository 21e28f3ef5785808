"""Publishing a job's outputs from a local folder to `s3://bucket/prefix/`, in an order players and
consumers can rely on:

1. media: files, HLS segments and init sections, thumbnails, sprites;
2. variant playlists (their segments are all there);
3. master playlists (their variants are all there);
4. `manifest.json`: every object's path, size and SHA-256, and the attempt that wrote them. It comes
   last, and only from an attempt that published everything: it marks a complete set.

Each object appears whole or not at all (a PUT, or a multipart upload that becomes visible when it
completes). Before each phase `fence` runs: it raises when this attempt is no longer the job's current
one, and the publish stops there, aborting its open multipart uploads. Once everything is written,
multipart uploads that earlier attempts left open on the same keys (a worker killed mid-upload) are
aborted.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ffrtmp.storage.s3 import S3Client
from ffrtmp.storage.upload import PARALLEL_PARTS, PART_SIZE, Uploaded, abort, gather_all, upload_file
from ffrtmp.storage.uri import S3Location

MANIFEST = "manifest.json"
PLAYLIST_SUFFIXES = (".m3u8", ".mpd")
CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".mkv": "video/x-matroska",
    ".flv": "video/x-flv",
    ".json": "application/json",
}
Fence = Callable[[str], Awaitable[None]]


def content_type(path: str) -> str:
    suffix = Path(path).suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"


def phases(files: Iterable[str], masters: Iterable[str]) -> list[list[str]]:
    """The relative paths in publishing order: media, then variant playlists, then master playlists
    (empty phases dropped). `masters`: the playlists that name other playlists."""
    top = set(masters)
    media = sorted(f for f in files if not f.endswith(PLAYLIST_SUFFIXES))
    variants = sorted(f for f in files if f.endswith(PLAYLIST_SUFFIXES) and f not in top)
    last = sorted(f for f in files if f in top)
    return [p for p in (media, variants, last) if p]


def local_files(folder: Path) -> list[str]:
    """Every regular file under `folder`, as a relative path with `/`."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@dataclass(frozen=True)
class ManifestHeader:
    """Who wrote the objects: the job, its uid, the attempt and the worker."""

    namespace: str
    name: str
    uid: str
    attempt: int
    worker: str


def manifest(header: ManifestHeader, destination: S3Location, objects: list[tuple[str, Uploaded]]) -> bytes:
    """`manifest.json`: the job and attempt, and each object (path relative to the prefix, key, bytes, sha256)."""
    doc: dict[str, Any] = {
        "apiVersion": "ffmpeg-rtmp.io/v1alpha1",
        "kind": "TranscodeOutputManifest",
        "job": {"namespace": header.namespace, "name": header.name, "uid": header.uid},
        "attempt": header.attempt,
        "worker": header.worker,
        "destination": str(destination),
        "files": [
            {"path": path, "key": u.key, "bytes": u.size, "sha256": u.sha256, "contentType": content_type(path)}
            for path, u in objects
        ],
    }
    return json.dumps(doc, indent=1, sort_keys=False).encode() + b"\n"


@dataclass
class Publication:
    """What a publish wrote: each object (path relative to the prefix) and the manifest's key."""

    objects: list[tuple[str, Uploaded]] = field(default_factory=list)
    manifest_key: str = ""
    stale_uploads_aborted: int = 0

    @property
    def bytes(self) -> int:
        return sum(u.size for _, u in self.objects)


async def publish(
    client: S3Client,
    folder: Path,
    destination: S3Location,
    header: ManifestHeader,
    *,
    masters: Iterable[str],
    fence: Fence,
    part_size: int = PART_SIZE,
    parallel_parts: int = PARALLEL_PARTS,
) -> Publication:
    """Upload every file under `folder` below `destination` (a prefix), in `phases` order, then the manifest."""
    files = await asyncio.to_thread(local_files, folder)
    if MANIFEST in files:
        raise ValueError(f"an output is named {MANIFEST}, the name of the job's manifest object")
    gate = asyncio.Semaphore(parallel_parts)
    opened: dict[str, str] = {}
    done = Publication()
    try:
        for number, phase in enumerate(phases(files, masters), start=1):
            await fence(f"uploading {len(phase)} object(s) to {destination} (step {number})")
            results = await gather_all(
                upload_file(client, destination.bucket, destination.child(path).key, folder / path,
                            content_type(path), gate=gate, opened=opened, part_size=part_size)
                for path in phase
            )  # fmt: skip
            done.objects += list(zip(phase, results, strict=True))
        await fence(f"writing {destination.child(MANIFEST)}")
        done.manifest_key = destination.child(MANIFEST).key
        done.stale_uploads_aborted = await _abort_stale(
            client, destination, {u.key for _, u in done.objects} | {done.manifest_key}
        )
        body = manifest(header, destination, done.objects)
        await client.put_object(destination.bucket, done.manifest_key, body, "application/json")
    except BaseException:
        await abort(client, destination.bucket, opened)
        raise
    return done


async def _abort_stale(client: S3Client, destination: S3Location, keys: set[str]) -> int:
    """Abort the open multipart uploads on `keys` (this attempt's are all complete by now: any left are
    an earlier attempt's); uploads of other keys under the prefix are none of this job's business."""
    stale = {u.upload_id: u.key for u in await client.list_multipart_uploads(destination.bucket, destination.key)
             if u.key in keys}  # fmt: skip
    count = len(stale)
    await abort(client, destination.bucket, stale)
    return count
