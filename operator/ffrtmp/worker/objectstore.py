"""How an attempt uses its pool's object storage (spec.objectStorage):

- an `s3://bucket/key` input is checked (a one-byte GET) and handed to ffmpeg as a presigned URL, which
  ffmpeg reads with ranged GETs through the attempt's egress proxy;
- a job with `spec.destination` writes its outputs to the attempt's scratch folder, and they are published
  (`ffrtmp.storage.publish`) once the attempt succeeded, the fence checked before each step.

The worker's own requests go through the egress proxy too, so the endpoint must be allowed by the pool's
egress policy; that is checked first, with a message that says so. S3's answers become job failures naming
the bucket and key and never a credential (`failure`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.egress.policy import EgressPolicy
from ffrtmp.egress.rules import url_refusal
from ffrtmp.ffmpeg.argv import is_live
from ffrtmp.ffmpeg.errors import Failure
from ffrtmp.ffmpeg.inputs import is_playlist
from ffrtmp.storage.credentials import CredentialsUnavailable, Temporary, usable_seconds
from ffrtmp.storage.publish import MANIFEST, Fence, ManifestHeader, Publication, publish
from ffrtmp.storage.s3 import EgressRefused, S3Client, S3Error, S3Unreachable
from ffrtmp.storage.sigv4 import MAX_PRESIGN_SECONDS
from ffrtmp.storage.uri import S3Location, is_s3, parse_object_uri, parse_prefix_uri
from ffrtmp.worker.config import OBJECT_STORAGE_ENV_PREFIX, ObjectStorageConfig, WorkerConfig

log = logging.getLogger(__name__)
# A presigned input URL outlives the attempt: its timeout (or a day without one), plus an hour.
PRESIGN_MARGIN_SECONDS = 3600
PRESIGN_DEFAULT_SECONDS = 24 * 3600
_DENIED = {
    "AccessDenied": "the pool's credentials are not allowed to {verb} it",
    "AllAccessDisabled": "all access to the bucket is disabled",
    "InvalidAccessKeyId": "the endpoint does not know the pool's access key id: check the Secret named by the "
    "WorkerPool's spec.objectStorage.credentialsSecretRef",
    "SignatureDoesNotMatch": "the secret access key does not match the access key id: check the Secret named by "
    "the WorkerPool's spec.objectStorage.credentialsSecretRef (and spec.objectStorage.region)",
    "InvalidToken": "the session token is not valid",
    "ExpiredToken": "the session token has expired",
}
_RETRYABLE_CODES = ("SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout")


def without_credentials(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without the pool's object storage settings and access key, and without the Pod's AWS identity
    (IRSA, Pod Identity, a key): ffmpeg and ffprobe never need them."""
    return {k: v for k, v in env.items() if not k.startswith((OBJECT_STORAGE_ENV_PREFIX, "AWS_"))}


def uses_object_storage(spec: TranscodeJobSpec) -> bool:
    return is_s3(spec.input.uri) or spec.destination is not None


def check_job(spec: TranscodeJobSpec, config: WorkerConfig) -> Failure | None:
    """Why this worker cannot run a job that uses object storage (None: it can, or the job does not use it):
    no spec.objectStorage on its pool, or a spec.destination the CRD's rules refuse (for specs that did
    not pass the API server)."""
    if not uses_object_storage(spec):
        return None
    if config.object_storage is None:
        return not_configured(spec, config.pool)
    if spec.destination is None:
        return None
    if is_live(spec):
        problem = "spec.destination uploads a finished job's files: a live job's playlists change while it runs"
    elif any(o.path == MANIFEST for o in spec.outputs):
        problem = f"{MANIFEST} under spec.destination is the job's manifest: give the output another path"
    elif spec.thumbnails is None and all(o.url for o in spec.outputs):
        problem = "spec.destination uploads files, and every output is an rtmp:// url stream"
    else:
        return None
    return Failure("InvalidSpec", problem, False)


def not_configured(spec: TranscodeJobSpec, pool: str) -> Failure:
    what = "reads an s3:// input" if is_s3(spec.input.uri) else "uploads to spec.destination"
    return Failure(
        "ObjectStorageNotConfigured",
        f"the job {what}, and WorkerPool {pool} has no spec.objectStorage (endpoint, region, credentials): "
        "was it removed after the job was scheduled?",
        False,
    )


def presign_seconds(timeout_seconds: int | None) -> int:
    """How long ffmpeg's input URL stays valid: the job's timeout (else a day) plus a margin, at most a week."""
    return min((timeout_seconds or PRESIGN_DEFAULT_SECONDS) + PRESIGN_MARGIN_SECONDS, MAX_PRESIGN_SECONDS)


def failure(error: Exception, location: S3Location, *, reading: bool, endpoint: str) -> Failure:
    """The job's failure for what S3 (or the way there) answered about `location`."""
    doing = f"reading {location}" if reading else f"uploading {location}"
    if isinstance(error, EgressRefused):
        return Failure(
            "DestinationNotAllowed",
            f"{doing}: the pool's object storage endpoint {error.endpoint} is not allowed by its egress policy; "
            "list it in the WorkerPool's spec.egress.allow (loopback, private, link-local and cluster addresses "
            "are refused unless listed)",
            False,
        )
    if isinstance(error, S3Unreachable):
        return Failure("ObjectStorageUnreachable", f"{doing}: {error}", True)
    if not isinstance(error, S3Error):
        return Failure("ObjectStorageError", f"{doing}: {type(error).__name__}: {error}", True)
    if error.code == "NoSuchBucket":
        missing = f"the bucket {location.bucket} does not exist at {endpoint} (NoSuchBucket)"
        return Failure("BucketNotFound", f"{doing}: {missing}", False)
    if error.code == "NoSuchKey" and reading:
        return Failure("InputNotFound", f"the input {location} does not exist (NoSuchKey)", False)
    if error.code in _DENIED:
        why = _DENIED[error.code].format(verb="read" if reading else "write")
        return Failure("ObjectStorageAccessDenied", f"{doing} was refused ({error.code}): {why}", False)
    retryable = error.status >= 500 or error.code in _RETRYABLE_CODES
    detail = f": {error.message}" if error.message else ""
    return Failure("ObjectStorageError", f"{doing}: {error.code} (HTTP {error.status}){detail}", retryable)


class StorageFailed(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass
class AttemptStorage:
    """The pool's object storage for one attempt, reached through the attempt's egress proxy."""

    config: ObjectStorageConfig
    policy: EgressPolicy
    proxy: str

    async def _client(self, location: S3Location, reading: bool, lasting: int = 0) -> tuple[S3Client, Temporary]:
        """A client signing with the pool's credentials as they are now (temporary ones fetched again
        before they expire, or to last `lasting` seconds), or StorageFailed naming their source."""
        try:
            current = await self.config.credentials.get(lasting)
        except CredentialsUnavailable as e:
            doing = f"reading {location}" if reading else f"uploading {location}"
            raise StorageFailed(Failure("ObjectStorageCredentialsUnavailable", f"{doing}: {e}", e.retryable)) from None
        return S3Client(self.config.endpoint, current.credentials, proxy=self.proxy), current

    async def _check_egress(self, location: S3Location, reading: bool) -> None:
        if await url_refusal(self.config.endpoint.url, self.policy) is not None:
            raise StorageFailed(self._failure(EgressRefused(self.config.endpoint.netloc), location, reading))

    def _failure(self, error: Exception, location: S3Location, reading: bool) -> Failure:
        return failure(error, location, reading=reading, endpoint=self.config.endpoint.netloc)

    async def input_url(self, uri: str, timeout_seconds: int | None) -> tuple[str, int]:
        """(presigned URL for ffmpeg, the object's size) of an `s3://` input, or StorageFailed."""
        try:
            location = parse_object_uri(uri)
        except ValueError as e:
            raise StorageFailed(Failure("InputNotAllowed", str(e), False)) from None
        if is_playlist(uri):
            raise StorageFailed(Failure(
                "InputNotAllowed", f"{uri}: an HLS playlist cannot be read from s3://; read it over https", False
            ))  # fmt: skip
        await self._check_egress(location, True)
        seconds = presign_seconds(timeout_seconds)
        client, current = await self._client(location, True, lasting=seconds)
        async with client as s3:
            try:
                size = await s3.stat_object(location.bucket, location.key)
            except (S3Error, S3Unreachable, EgressRefused) as e:
                raise StorageFailed(self._failure(e, location, True)) from None
            # A URL signed with temporary credentials stops working when they expire, whatever it says.
            limit = usable_seconds(current, datetime.now(UTC))
            if limit is not None and limit < seconds:
                log.info("reading %s: the input URL lives %ds, as long as the credentials of %s", location, limit,
                         self.config.credentials.describe())  # fmt: skip
                seconds = max(limit, 1)
            return s3.presign_get(location.bucket, location.key, seconds), size

    async def publish(
        self, folder: Path, destination: str, header: ManifestHeader, masters: Iterable[str], fence: Fence
    ) -> Publication:
        """Upload the attempt's outputs under `destination`, or StorageFailed (the fence's exception passes)."""
        prefix = parse_prefix_uri(destination)
        await self._check_egress(prefix, False)
        started = time.monotonic()
        client, _ = await self._client(prefix, False)
        async with client as s3:
            try:
                done = await publish(s3, folder, prefix, header, masters=masters, fence=fence)
            except (S3Error, S3Unreachable, EgressRefused) as e:
                where = S3Location(e.bucket, e.key) if isinstance(e, S3Error) and e.bucket else prefix
                raise StorageFailed(self._failure(e, where, False)) from None
            except ValueError as e:  # an output named like the manifest
                raise StorageFailed(Failure("InvalidSpec", str(e), False)) from None
        log.info("%s/%s attempt %d: %d object(s), %d bytes uploaded to %s in %.1fs (%d stale upload(s) aborted)",
                 header.namespace, header.name, header.attempt, len(done.objects), done.bytes, destination,
                 time.monotonic() - started, done.stale_uploads_aborted)  # fmt: skip
        return done
