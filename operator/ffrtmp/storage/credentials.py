"""Where a worker's object storage credentials come from: the pool's Secret (a fixed access key) or the
worker Pod's own identity (`spec.objectStorage.ambientCredentials`), as the AWS SDKs find it:

1. EKS Pod Identity: `AWS_CONTAINER_CREDENTIALS_FULL_URI`, answered with temporary credentials for the
   bearer token in `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (or `AWS_CONTAINER_AUTHORIZATION_TOKEN`).
2. IAM Roles for Service Accounts (IRSA) and any OIDC web identity federation: `AWS_ROLE_ARN` and
   `AWS_WEB_IDENTITY_TOKEN_FILE` (the Pod's projected ServiceAccount token), exchanged at STS with
   `AssumeRoleWithWebIdentity` (no request signing: the token is the proof).
3. `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (/ `AWS_SESSION_TOKEN`) in the Pod's environment.

The webhooks of EKS set (1) or (2) on Pods whose ServiceAccount is annotated (`eks.amazonaws.com/
role-arn` for IRSA, an association for Pod Identity); `WorkerPool.spec.serviceAccountName` picks it.
Temporary credentials are fetched again `REFRESH_BEFORE` their expiry, and the token file is read
on every fetch (the kubelet rotates it). Nothing here logs or reports a token or a key.

Parsing and the refresh decision are pure; `AmbientCredentials` does the HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import aiohttp

from ffrtmp.storage.sigv4 import Credentials

REFRESH_BEFORE = timedelta(minutes=5)
STS_VERSION = "2011-06-15"
DEFAULT_SESSION_SECONDS = 3600  # STS's default; a role's maximum may allow up to 12 h
FETCH_TIMEOUT_SECONDS = 10
_STS_NS = {"sts": "https://sts.amazonaws.com/doc/2011-06-15/"}


class CredentialsUnavailable(Exception):
    """The Pod's identity gave no credentials. The message names what was tried, never a token or key;
    `retryable` is False where trying again cannot help (a refused token, a missing variable)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Temporary:
    credentials: Credentials
    expires: datetime | None  # None: does not expire (a fixed key)


class CredentialSource(Protocol):
    async def get(self, lasting: int = 0) -> Temporary:
        """Credentials good for at least `lasting` seconds where a fresh fetch can give that."""
        ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class FixedCredentials:
    """A fixed access key (the pool's Secret, or the Pod's AWS_ACCESS_KEY_ID)."""

    credentials: Credentials
    origin: str

    async def get(self, lasting: int = 0) -> Temporary:
        return Temporary(self.credentials, None)

    def describe(self) -> str:
        return self.origin


@dataclass(frozen=True)
class WebIdentity:
    role_arn: str
    token_file: Path
    sts_endpoint: str
    session_name: str
    session_seconds: int = DEFAULT_SESSION_SECONDS


@dataclass(frozen=True)
class ContainerEndpoint:
    uri: str
    token_file: Path | None
    token: str | None


AmbientKind = WebIdentity | ContainerEndpoint | FixedCredentials


def sts_endpoint_for(region: str, env: Mapping[str, str], configured: str | None) -> str:
    """The pool's `ambientCredentials.stsEndpoint`, else AWS_ENDPOINT_URL_STS, else the region's STS."""
    return (configured or env.get("AWS_ENDPOINT_URL_STS") or f"https://sts.{region}.amazonaws.com").rstrip("/")


def choose_ambient(
    env: Mapping[str, str], *, region: str, sts_endpoint: str | None, session_name: str,
    session_seconds: int = DEFAULT_SESSION_SECONDS,
) -> AmbientKind:  # fmt: skip
    """Which of the Pod's identities to use, in the AWS SDKs' order; CredentialsUnavailable if none."""
    if env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        token_file = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
        return ContainerEndpoint(
            env["AWS_CONTAINER_CREDENTIALS_FULL_URI"], Path(token_file) if token_file else None,
            env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        )  # fmt: skip
    role, token_file = env.get("AWS_ROLE_ARN"), env.get("AWS_WEB_IDENTITY_TOKEN_FILE")
    if role and token_file:
        return WebIdentity(
            role, Path(token_file), sts_endpoint_for(region, env, sts_endpoint),
            env.get("AWS_ROLE_SESSION_NAME") or session_name, session_seconds,
        )  # fmt: skip
    if role or token_file:
        names = ("AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")
        have, lack = names if role else names[::-1]
        raise CredentialsUnavailable(f"the worker Pod has {have} but not {lack}", retryable=False)
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        key_of_pod = Credentials(key, secret, env.get("AWS_SESSION_TOKEN") or None)
        return FixedCredentials(key_of_pod, "the Pod's AWS_ACCESS_KEY_ID")
    raise CredentialsUnavailable(
        "spec.objectStorage.ambientCredentials: the worker Pod has no AWS identity (none of "
        "AWS_CONTAINER_CREDENTIALS_FULL_URI, AWS_ROLE_ARN with AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ACCESS_KEY_ID "
        "is set): is the pool's spec.serviceAccountName a ServiceAccount set up for IRSA or EKS Pod Identity?",
        retryable=False,
    )


def parse_expiration(text: str) -> datetime:
    """An ISO 8601 instant as STS and the container endpoint write it (`2026-12-03T13:00:00Z`)."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_sts_answer(status: int, body: bytes) -> Temporary:
    """AssumeRoleWithWebIdentity's XML answer: the credentials, or CredentialsUnavailable with STS's code."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise CredentialsUnavailable(f"STS answered HTTP {status} with no XML", retryable=status >= 500) from None
    if status == 200:
        found = root.find(".//sts:Credentials", _STS_NS)
        if found is None:
            found = root.find(".//Credentials")
        if found is not None:
            values = {child.tag.rsplit("}", 1)[-1]: (child.text or "") for child in found}
            if all(values.get(k) for k in ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")):
                return Temporary(
                    Credentials(values["AccessKeyId"], values["SecretAccessKey"], values["SessionToken"]),
                    parse_expiration(values["Expiration"]),
                )
        raise CredentialsUnavailable("STS answered without credentials", retryable=True)
    code = next((e.text for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Code"), None) or f"HTTP {status}"
    message = next((e.text for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Message"), None)
    retryable = status >= 500 or code in ("IDPCommunicationError", "Throttling", "ServiceUnavailable")
    return _raise(f"STS refused AssumeRoleWithWebIdentity: {code}" + (f": {message}" if message else ""), retryable)


def parse_container_answer(status: int, body: bytes) -> Temporary:
    """The container credentials endpoint's JSON answer (EKS Pod Identity, ECS)."""
    if status != 200:
        return _raise(f"the container credentials endpoint answered HTTP {status}", status >= 500 or status == 429)
    try:
        doc = json.loads(body)
        return Temporary(
            Credentials(doc["AccessKeyId"], doc["SecretAccessKey"], doc.get("Token") or None),
            parse_expiration(doc["Expiration"]) if doc.get("Expiration") else None,
        )
    except (ValueError, KeyError, TypeError):
        raise CredentialsUnavailable(
            "the container credentials endpoint answered without AccessKeyId, SecretAccessKey", retryable=True
        ) from None


def _raise(message: str, retryable: bool) -> Temporary:
    raise CredentialsUnavailable(message, retryable=retryable)


def needs_refresh(current: Temporary | None, now: datetime) -> bool:
    return current is None or (current.expires is not None and now >= current.expires - REFRESH_BEFORE)


def usable_seconds(current: Temporary, now: datetime) -> int | None:
    """How long a URL presigned with these credentials can work (None: no limit of theirs)."""
    return None if current.expires is None else max(int((current.expires - now).total_seconds()), 0)


class AmbientCredentials:
    """Temporary credentials from the Pod's identity, fetched when first needed and again before they
    expire; concurrent callers share one fetch."""

    def __init__(self, kind: WebIdentity | ContainerEndpoint, clock: Callable[[], datetime] | None = None) -> None:
        self.kind = kind
        self._clock = clock or (lambda: datetime.now(UTC))
        self._current: Temporary | None = None
        self._fetched_at: datetime | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    def describe(self) -> str:
        if isinstance(self.kind, WebIdentity):
            return f"web identity ({self.kind.role_arn} at {self.kind.sts_endpoint})"
        return f"the container credentials endpoint {self.kind.uri}"

    async def get(self, lasting: int = 0) -> Temporary:
        """The current credentials, fetched again when they expire within REFRESH_BEFORE or `lasting`
        seconds (a presigned URL cannot outlive them: an input URL asks for as long as a session gives)."""
        async with self._lock:
            now = self._clock()
            left = None if self._current is None else usable_seconds(self._current, now)
            if needs_refresh(self._current, now) or (left is not None and left < lasting and not self._fresh(now)):
                self._current = await self._fetch()
                self._fetched_at = self._clock()
                self.fetches += 1
            assert self._current is not None
            return self._current

    def _fresh(self, now: datetime) -> bool:
        """Fetched within the last minute: another fetch would not last longer."""
        return self._fetched_at is not None and now - self._fetched_at < timedelta(minutes=1)

    async def _fetch(self) -> Temporary:
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS)
        try:
            async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as http:
                if isinstance(self.kind, WebIdentity):
                    form = {
                        "Action": "AssumeRoleWithWebIdentity", "Version": STS_VERSION, "RoleArn": self.kind.role_arn,
                        "RoleSessionName": self.kind.session_name, "DurationSeconds": str(self.kind.session_seconds),
                        "WebIdentityToken": _read_token(self.kind.token_file, "AWS_WEB_IDENTITY_TOKEN_FILE"),
                    }  # fmt: skip
                    async with http.post(self.kind.sts_endpoint + "/", data=form) as resp:
                        return parse_sts_answer(resp.status, await resp.read())
                token = (
                    _read_token(self.kind.token_file, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
                    if self.kind.token_file is not None
                    else self.kind.token
                )
                headers = {"Authorization": token} if token else {}
                async with http.get(self.kind.uri, headers=headers) as resp:
                    return parse_container_answer(resp.status, await resp.read())
        except (aiohttp.ClientError, TimeoutError) as e:
            raise CredentialsUnavailable(f"{self.describe()} unreachable: {type(e).__name__}", retryable=True) from None


def _read_token(path: Path, variable: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as e:
        raise CredentialsUnavailable(f"cannot read {variable} ({path}): {e.strerror}", retryable=False) from None


@dataclass(frozen=True)
class NoIdentity:
    """A Pod without a usable identity: each use fails with why (the worker still starts and runs the
    jobs that do not use object storage)."""

    why: str

    async def get(self, lasting: int = 0) -> Temporary:
        raise CredentialsUnavailable(self.why, retryable=False)

    def describe(self) -> str:
        return "no identity"


def session_name_for(pod_name: str) -> str:
    """STS's RoleSessionName (2-64 of `[\\w+=,.@-]`): shows in CloudTrail which worker Pod acted."""
    return re.sub(r"[^\w+=,.@-]", "-", f"ffrtmp-{pod_name}")[:64]


def ambient_source(
    env: Mapping[str, str] | None = None, *, region: str, sts_endpoint: str | None = None, session_name: str,
    session_seconds: int = DEFAULT_SESSION_SECONDS,
) -> CredentialSource:  # fmt: skip
    try:
        kind = choose_ambient(
            os.environ if env is None else env, region=region, sts_endpoint=sts_endpoint, session_name=session_name,
            session_seconds=session_seconds,
        )  # fmt: skip
    except CredentialsUnavailable as e:
        return NoIdentity(str(e))
    return kind if isinstance(kind, FixedCredentials) else AmbientCredentials(kind)
