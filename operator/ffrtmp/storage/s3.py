"""A small S3 client on aiohttp: the requests a worker needs (put, multipart, stat, list, delete,
presigned GETs), SigV4-signed by `sigv4`, to AWS or any S3-compatible endpoint (path-style or
virtual-hosted, any region).

Every request can go through an HTTP proxy (the attempt's egress proxy): its own refusals and
connection failures (`X-Ffrtmp-Egress`) become `EgressRefused` and `S3Unreachable`, never an S3 error.
Connection failures, 5xx and SlowDown are retried with backoff; what is still failing after the
retries is raised. No error message carries a credential or a signature: S3Error names the operation,
the bucket and key, the code and the server's message.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from urllib.parse import urlsplit
from xml.etree import ElementTree

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ffrtmp.egress.proxy import EGRESS_HEADER
from ffrtmp.storage import sigv4
from ffrtmp.storage.sigv4 import Credentials

ERROR_BODY_LIMIT = 64 * 1024
LIST_BODY_LIMIT = 16 * 1024 * 1024
_HASH_IN_THREAD = 1024 * 1024  # bodies above this are hashed off the event loop
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_RETRY_CODES = frozenset({"SlowDown", "InternalError", "RequestTimeout", "ServiceUnavailable"})
_STATUS_CODES = {301: "PermanentRedirect", 400: "BadRequest", 403: "Forbidden", 404: "NotFound"}  # bodyless answers
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=15, sock_connect=15, sock_read=120)


@dataclass(frozen=True)
class Endpoint:
    """Where the storage is: `url` (`https://s3.eu-west-1.amazonaws.com`, `http://minio.media:9000`),
    the signing region, and path-style (`host/bucket/key`) or virtual-hosted (`bucket.host/key`) addressing."""

    url: str
    region: str = "us-east-1"
    path_style: bool = False

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"the object storage endpoint must be an http(s)://host[:port] URL: {self.url}")
        if parts.username or parts.password or parts.path.strip("/") or parts.query or parts.fragment:
            raise ValueError(
                f"the object storage endpoint is scheme://host[:port] only, no path or credentials: {self.url}"
            )

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def netloc(self) -> str:
        """`host[:port]` as the Host header carries it (the port only when not the scheme's default)."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = parts.port
        return host if port in (None, _DEFAULT_PORTS[parts.scheme]) else f"{host}:{port}"

    def address(self, bucket: str, key: str = "") -> tuple[str, str]:
        """(Host header, unencoded path) of `bucket` and `key` (the bucket itself when `key` is empty)."""
        if self.path_style:
            return self.netloc, f"/{bucket}/{key}" if key else f"/{bucket}"
        return f"{bucket}.{self.netloc}", f"/{key}"

    def request_url(self, host: str, path: str, query: Iterable[tuple[str, str]] = ()) -> str:
        text = f"{self.scheme}://{host}{sigv4.uri_encode(path, keep_slash=True)}"
        encoded = sigv4.canonical_query(query)
        return f"{text}?{encoded}" if encoded else text


class S3Error(Exception):
    """The endpoint answered with an error: `code` is S3's (NoSuchBucket, NoSuchKey, AccessDenied,
    InvalidAccessKeyId, SignatureDoesNotMatch, ...), or the HTTP status's name for bodyless answers."""

    def __init__(self, operation: str, status: int, code: str, message: str, bucket: str, key: str) -> None:
        self.operation, self.status, self.code, self.message = operation, status, code, message
        self.bucket, self.key = bucket, key
        where = f"s3://{bucket}/{key}" if key else f"bucket {bucket}"
        detail = f": {message}" if message else ""
        super().__init__(f"{operation} {where}: {code} (HTTP {status}){detail}")


class S3Unreachable(Exception):
    """No answer from the endpoint: connection refused, timed out, name not resolved (retryable)."""

    def __init__(self, endpoint: str, detail: str) -> None:
        self.endpoint, self.detail = endpoint, detail
        super().__init__(f"the object storage endpoint {endpoint} did not answer: {detail}")


class EgressRefused(Exception):
    """The egress proxy refused to connect to the endpoint (the pool's egress policy)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        super().__init__(f"the egress policy refused a connection to the object storage endpoint {endpoint}")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str = ""
    last_modified: str = ""


@dataclass(frozen=True)
class MultipartUpload:
    key: str
    upload_id: str
    initiated: str = ""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml(data: bytes) -> ElementTree.Element:
    return ElementTree.fromstring(data)


def _text(element: ElementTree.Element, name: str) -> str:
    for child in element:
        if _local(child.tag) == name:
            return child.text or ""
    return ""


def _children(element: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    return [child for child in element if _local(child.tag) == name]


def _error(operation: str, status: int, data: bytes, bucket: str, key: str) -> S3Error:
    code, message = _STATUS_CODES.get(status, f"HTTP{status}"), ""
    if data.lstrip().startswith(b"<"):
        try:
            root = _xml(data)
        except ElementTree.ParseError:
            root = None
        if root is not None and _local(root.tag) == "Error":
            code, message = _text(root, "Code") or code, _text(root, "Message")[:300]
    return S3Error(operation, status, code, message, bucket, key)


async def _read(response: aiohttp.ClientResponse, limit: int) -> bytes:
    data = bytearray()
    async for chunk in response.content.iter_chunked(65536):
        data.extend(chunk)
        if len(data) > limit:
            raise S3Error("read", response.status, "ResponseTooLarge", f"more than {limit} bytes", "", "")
    return bytes(data)


@dataclass
class _Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass
class S3Client:
    """`async with S3Client(endpoint, credentials, proxy=...) as s3:`; one aiohttp session for its requests."""

    endpoint: Endpoint
    credentials: Credentials
    proxy: str | None = None
    attempts: int = 4
    backoff_seconds: float = 0.25
    timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> S3Client:
        # One connection per request through the egress proxy anyway (it answers Connection: close).
        self._session = aiohttp.ClientSession(timeout=self.timeout, auto_decompress=False)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- presigned URLs ---------------------------------------------------------------------------
    def presign_get(self, bucket: str, key: str, expires_seconds: int) -> str:
        """A URL that GETs the object (ranged reads too) without credentials until it expires."""
        host, path = self.endpoint.address(bucket, key)
        query = sigv4.presigned_query(
            self.credentials, self.clock(), self.endpoint.region, "s3", "GET", host, path, expires_seconds
        )
        return self.endpoint.request_url(host, path, query)

    # -- objects ----------------------------------------------------------------------------------
    async def put_object(self, bucket: str, key: str, body: bytes, content_type: str) -> str:
        """Store `body` as the object; returns its ETag."""
        answer = await self._request("PutObject", "PUT", bucket, key, body=body, headers={"content-type": content_type})
        return answer.headers.get("ETag", "")

    async def get_object(self, bucket: str, key: str, limit: int = LIST_BODY_LIMIT) -> bytes:
        """The whole object (small ones: at most `limit` bytes)."""
        return (await self._request("GetObject", "GET", bucket, key, limit=limit)).body

    async def stat_object(self, bucket: str, key: str) -> int:
        """The object's size, from a one-byte ranged GET: unlike HEAD, its errors carry S3's code
        (NoSuchBucket and NoSuchKey are both a bodyless 404 to HEAD)."""
        try:
            answer = await self._request("GetObject", "GET", bucket, key, headers={"range": "bytes=0-0"}, limit=0)
        except S3Error as e:
            if e.code == "InvalidRange":  # the object exists and is empty
                return 0
            raise
        total = answer.headers.get("Content-Range", "").rpartition("/")[2]
        if total.isdigit():
            return int(total)
        return int(answer.headers.get("Content-Length", "0"))

    async def delete_object(self, bucket: str, key: str) -> None:
        await self._request("DeleteObject", "DELETE", bucket, key, expect_body=False)

    async def list_objects(self, bucket: str, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with `prefix` (ListObjectsV2, all pages)."""
        found: list[ObjectInfo] = []
        token = ""
        while True:
            query = [("list-type", "2"), ("prefix", prefix)] + ([("continuation-token", token)] if token else [])
            root = _xml((await self._request("ListObjectsV2", "GET", bucket, query=query, limit=LIST_BODY_LIMIT)).body)
            for item in _children(root, "Contents"):
                found.append(ObjectInfo(
                    _text(item, "Key"), int(_text(item, "Size") or 0), _text(item, "ETag"), _text(item, "LastModified")
                ))  # fmt: skip
            token = _text(root, "NextContinuationToken")
            if _text(root, "IsTruncated") != "true" or not token:
                return found

    async def create_bucket(self, bucket: str) -> None:
        body = b""
        if self.endpoint.region != "us-east-1":
            body = (
                f'<CreateBucketConfiguration xmlns="{_NAMESPACE}">'
                f"<LocationConstraint>{self.endpoint.region}</LocationConstraint></CreateBucketConfiguration>"
            ).encode()
        await self._request("CreateBucket", "PUT", bucket, body=body)

    # -- multipart --------------------------------------------------------------------------------
    async def create_multipart_upload(self, bucket: str, key: str, content_type: str) -> str:
        """Start a multipart upload; returns its upload id. Nothing is visible until it completes."""
        answer = await self._request(
            "CreateMultipartUpload", "POST", bucket, key, query=[("uploads", "")],
            headers={"content-type": content_type},
        )  # fmt: skip
        upload_id = _text(_xml(answer.body), "UploadId")
        if not upload_id:
            raise S3Error("CreateMultipartUpload", answer.status, "MalformedResponse", "no UploadId", bucket, key)
        return upload_id

    async def upload_part(self, bucket: str, key: str, upload_id: str, number: int, body: bytes) -> str:
        """Upload part `number` (1..10000); returns its ETag."""
        answer = await self._request(
            "UploadPart", "PUT", bucket, key, query=[("partNumber", str(number)), ("uploadId", upload_id)], body=body
        )
        return answer.headers.get("ETag", "")

    async def complete_multipart_upload(
        self, bucket: str, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> str:
        """Assemble the parts ((number, ETag), in order) into the object; returns its ETag."""
        items = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{_escape(etag)}</ETag></Part>" for n, etag in parts)
        body = f'<CompleteMultipartUpload xmlns="{_NAMESPACE}">{items}</CompleteMultipartUpload>'
        answer = await self._request(
            "CompleteMultipartUpload", "POST", bucket, key, query=[("uploadId", upload_id)], body=body.encode(),
            headers={"content-type": "application/xml"},
        )  # fmt: skip
        root = _xml(answer.body)
        if _local(root.tag) == "Error":  # S3 may answer 200 and report the failure in the body
            raise _error("CompleteMultipartUpload", 200, answer.body, bucket, key)
        return _text(root, "ETag")

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """Drop an upload and its parts (already gone: nothing to do)."""
        try:
            await self._request(
                "AbortMultipartUpload", "DELETE", bucket, key, query=[("uploadId", upload_id)], expect_body=False
            )
        except S3Error as e:
            if e.code != "NoSuchUpload":
                raise

    async def list_multipart_uploads(self, bucket: str, prefix: str = "") -> list[MultipartUpload]:
        """Uploads started and neither completed nor aborted, under `prefix` (all pages)."""
        found: list[MultipartUpload] = []
        markers: list[tuple[str, str]] = []
        while True:
            query = [("uploads", ""), ("prefix", prefix), *markers]
            root = _xml(
                (await self._request("ListMultipartUploads", "GET", bucket, query=query, limit=LIST_BODY_LIMIT)).body
            )
            for item in _children(root, "Upload"):
                found.append(MultipartUpload(_text(item, "Key"), _text(item, "UploadId"), _text(item, "Initiated")))
            key_marker, id_marker = _text(root, "NextKeyMarker"), _text(root, "NextUploadIdMarker")
            if _text(root, "IsTruncated") != "true" or not (key_marker or id_marker):
                return found
            markers = [("key-marker", key_marker), ("upload-id-marker", id_marker)]

    # -- one request, signed and retried ----------------------------------------------------------
    async def _request(
        self,
        operation: str,
        method: str,
        bucket: str,
        key: str = "",
        *,
        query: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        limit: int = ERROR_BODY_LIMIT,
        expect_body: bool = True,
    ) -> _Answer:
        assert self._session is not None, "use S3Client as an async context manager"
        if len(body) > _HASH_IN_THREAD:
            payload_hash = await asyncio.to_thread(lambda: hashlib.sha256(body).hexdigest())
        else:
            payload_hash = hashlib.sha256(body).hexdigest()
        host, path = self.endpoint.address(bucket, key)
        url = URL(self.endpoint.request_url(host, path, query), encoded=True)
        last: Exception | None = None
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(self.backoff_seconds * 2 ** (attempt - 1))
            now = self.clock()
            signed = {"host": host, "x-amz-date": sigv4.amz_date(now), "x-amz-content-sha256": payload_hash,
                      **(headers or {})}  # fmt: skip
            if self.credentials.session_token:
                signed["x-amz-security-token"] = self.credentials.session_token
            signed["Authorization"] = sigv4.authorization(
                self.credentials, now, self.endpoint.region, "s3", method, path, query, signed, payload_hash
            )
            try:
                async with self._session.request(
                    method, url, headers=signed, data=body if body or method in ("PUT", "POST") else None,
                    proxy=self.proxy, allow_redirects=False,
                ) as response:  # fmt: skip
                    marker = response.headers.get(EGRESS_HEADER)
                    if marker == "refused":
                        raise EgressRefused(self.endpoint.netloc)
                    if marker in ("unreachable", "unresolved"):
                        what = "its name does not resolve" if marker == "unresolved" else "connection failed"
                        last = S3Unreachable(self.endpoint.url, what)
                        continue
                    if response.status < 300:
                        data = await _read(response, limit) if expect_body and limit else b""
                        return _Answer(response.status, response.headers, data)
                    error = _error(operation, response.status, await _read(response, ERROR_BODY_LIMIT), bucket, key)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as e:
                last = S3Unreachable(self.endpoint.url, str(e) or type(e).__name__)
                continue
            if response.status not in _RETRY_STATUSES and error.code not in _RETRY_CODES:
                raise error
            last = error
        assert last is not None
        raise last


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
