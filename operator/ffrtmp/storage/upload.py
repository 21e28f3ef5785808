"""Uploading one file: a single PUT up to the part size, a multipart upload above it with parts sent in
parallel. Memory stays bounded: a part is read from disk only once a slot of the shared `gate` is free,
so at most (gate's slots) x (part size) bytes are held, however large the file and however many files
are uploaded at once.

A multipart upload that does not complete (an error, a cancellation) is aborted, its parts dropped;
while it runs it is listed in `opened` so that the caller can abort it too.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ffrtmp.storage.s3 import S3Client

log = logging.getLogger(__name__)
MIB = 1024 * 1024
PART_SIZE = 8 * MIB  # and the multipart threshold: a file up to one part goes in a single PUT
MIN_PART_SIZE = 5 * MIB  # S3's smallest part (but the last)
MAX_PARTS = 10_000
PARALLEL_PARTS = 4
_HASH_CHUNK = MIB
T = TypeVar("T")


@dataclass(frozen=True)
class Uploaded:
    """An object written: its key, size, the SHA-256 of its bytes and how many parts it took (0: one PUT)."""

    key: str
    size: int
    sha256: str
    parts: int


def part_size_for(size: int, part_size: int = PART_SIZE) -> int:
    """`part_size`, grown in whole MiB when `size` would need more than S3's 10 000 parts."""
    if part_size < MIN_PART_SIZE:
        raise ValueError(f"parts are at least {MIN_PART_SIZE // MIB} MiB")
    needed = math.ceil(size / MAX_PARTS)
    return max(part_size, math.ceil(needed / MIB) * MIB)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_at(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


async def gather_all(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Run them together; when one fails, cancel the rest, wait for them, and raise the first failure."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def upload_file(
    client: S3Client,
    bucket: str,
    key: str,
    path: Path,
    content_type: str,
    *,
    gate: asyncio.Semaphore,
    opened: dict[str, str],
    part_size: int = PART_SIZE,
) -> Uploaded:
    """Upload `path` to `bucket`/`key`. `gate` bounds the parts in memory across every upload sharing it;
    `opened` (upload id -> key) holds this file's multipart upload while it is not complete."""
    size, sha256 = await asyncio.to_thread(lambda: (path.stat().st_size, file_sha256(path)))
    if size <= part_size:
        async with gate:
            body = await asyncio.to_thread(path.read_bytes)
            await client.put_object(bucket, key, body, content_type)
        return Uploaded(key, size, sha256, 0)
    part = part_size_for(size, part_size)
    count = math.ceil(size / part)
    upload_id = await client.create_multipart_upload(bucket, key, content_type)
    opened[upload_id] = key

    async def send(number: int) -> tuple[int, str]:
        async with gate:
            body = await asyncio.to_thread(_read_at, path, (number - 1) * part, part)
            return number, await client.upload_part(bucket, key, upload_id, number, body)

    try:
        etags = await gather_all(send(n) for n in range(1, count + 1))
        await client.complete_multipart_upload(bucket, key, upload_id, etags)
    except BaseException:
        await abort(client, bucket, {upload_id: key})
        raise
    finally:
        opened.pop(upload_id, None)
    return Uploaded(key, size, sha256, count)


async def abort(client: S3Client, bucket: str, uploads: dict[str, str]) -> None:
    """Abort each upload (id -> key), as far as the endpoint lets us: what fails is logged, not raised (a
    bucket lifecycle rule for incomplete uploads is the backstop, docs/RUNBOOK.md)."""
    for upload_id, key in list(uploads.items()):
        try:
            await client.abort_multipart_upload(bucket, key, upload_id)
        except Exception as e:  # S3Error, S3Unreachable, EgressRefused
            log.warning("could not abort the multipart upload of s3://%s/%s: %s", bucket, key, e)
        uploads.pop(upload_id, None)
