"""AWS Signature Version 4 (pure): canonical requests, signing keys, the Authorization header and
presigned query strings, as AWS documents them for S3.

S3's flavour: the path is URI-encoded once and never normalised (`a//b/../c` is a key, not a path to
tidy), every request carries `x-amz-content-sha256`. The generic test suite's vectors hold for the
requests they share with S3 (tests/unit/test_sigv4.py checks both).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 presigned URLs live at most a week
_SPACES = re.compile(r" +")

Query = Iterable[tuple[str, str]]


@dataclass(frozen=True)
class Credentials:
    """An access key; the secret and session token never appear in repr (logs, tracebacks)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """RFC 3986 percent-encoding of UTF-8 bytes, all but the unreserved characters (and `/` in paths)."""
    return quote(text, safe="-_.~/" if keep_slash else "-_.~")


def canonical_query(query: Query) -> str:
    """Encoded `key=value` pairs sorted by key, then value."""
    return "&".join(f"{k}={v}" for k, v in sorted((uri_encode(k), uri_encode(v)) for k, v in query))


def canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """(canonical headers block, signed headers list): lower-case names in order, values trimmed with
    runs of spaces collapsed to one."""
    folded: dict[str, str] = {}
    for name, value in headers.items():
        key = name.strip().lower()
        clean = _SPACES.sub(" ", value.strip())
        folded[key] = f"{folded[key]},{clean}" if key in folded else clean
    names = sorted(folded)
    return "".join(f"{n}:{folded[n]}\n" for n in names), ";".join(names)


def canonical_request(
    method: str, path: str, query: Query, headers: Mapping[str, str], payload_hash: str
) -> tuple[str, str]:
    """(canonical request, signed headers) for an unencoded `path` such as `/bucket/my key.mp4`."""
    block, signed = canonical_headers(headers)
    text = "\n".join(
        [method.upper(), uri_encode(path, keep_slash=True), canonical_query(query), block, signed, payload_hash]
    )
    return text, signed


def amz_date(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def scope(now: datetime, region: str, service: str) -> str:
    return f"{now.astimezone(UTC):%Y%m%d}/{region}/{service}/aws4_request"


def string_to_sign(now: datetime, credential_scope: str, request: str) -> str:
    return "\n".join([ALGORITHM, amz_date(now), credential_scope, hashlib.sha256(request.encode()).hexdigest()])


def signing_key(secret: str, now: datetime, region: str, service: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (f"{now.astimezone(UTC):%Y%m%d}", region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def signature(credentials: Credentials, now: datetime, region: str, service: str, request: str) -> str:
    key = signing_key(credentials.secret_access_key, now, region, service)
    text = string_to_sign(now, scope(now, region, service), request)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def authorization(
    credentials: Credentials,
    now: datetime,
    region: str,
    service: str,
    method: str,
    path: str,
    query: Query,
    headers: Mapping[str, str],
    payload_hash: str,
) -> str:
    """The Authorization header of a request whose `headers` already hold `host` and `x-amz-date` (and, for
    S3, `x-amz-content-sha256`): every header given is signed."""
    request, signed = canonical_request(method, path, query, headers, payload_hash)
    sig = signature(credentials, now, region, service, request)
    return (
        f"{ALGORITHM} Credential={credentials.access_key_id}/{scope(now, region, service)}, "
        f"SignedHeaders={signed}, Signature={sig}"
    )


def presigned_query(
    credentials: Credentials,
    now: datetime,
    region: str,
    service: str,
    method: str,
    host: str,
    path: str,
    expires_seconds: int,
    query: Query = (),
) -> list[tuple[str, str]]:
    """The query parameters (the request's own first) that make `method host path` a presigned URL, signing
    the host header only and an unsigned payload, as S3 presigns. `host` as the client will send it
    (with `:port` unless the scheme's default)."""
    if not 1 <= expires_seconds <= MAX_PRESIGN_SECONDS:
        raise ValueError(f"a presigned URL lives 1 s to 7 days, not {expires_seconds} s")
    params = [
        *query,
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{credentials.access_key_id}/{scope(now, region, service)}"),
        ("X-Amz-Date", amz_date(now)),
        ("X-Amz-Expires", str(expires_seconds)),
        ("X-Amz-SignedHeaders", "host"),
    ]
    if credentials.session_token:
        params.append(("X-Amz-Security-Token", credentials.session_token))
    request, _ = canonical_request(method, path, params, {"host": host}, UNSIGNED_PAYLOAD)
    return [*params, ("X-Amz-Signature", signature(credentials, now, region, service, request))]
