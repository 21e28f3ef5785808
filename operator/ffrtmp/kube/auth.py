"""The credential of each request: the config's static one, or an exec plugin's, cached until it
expires and dropped after a 401 (client-go's exec authenticator, client.authentication.k8s.io)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ffrtmp.kube.config import ExecConfig, KubeConfig
from ffrtmp.subprocesses import run_captured

log = logging.getLogger(__name__)
EXEC_TIMEOUT_SECONDS = 60.0


class CredentialError(ConnectionError):
    """No credential could be had (an exec plugin failed); never carries the credential itself.
    A ConnectionError, so callers that retry broken connections retry this too."""


@dataclass(frozen=True)
class Credential:
    token: str | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    expires: float | None = None  # seconds since the epoch; None: until a 401 says otherwise

    def __repr__(self) -> str:  # never a token in a log line or a traceback
        return f"Credential(token={'***' if self.token else None}, cert={bool(self.cert_data)}, expires={self.expires})"


def exec_info(cfg: ExecConfig) -> str:
    """KUBERNETES_EXEC_INFO: the ExecCredential request a plugin reads from its environment."""
    spec: dict[str, Any] = {"interactive": False}
    if cfg.cluster is not None:
        spec["cluster"] = dict(cfg.cluster)
    return json.dumps({"apiVersion": cfg.api_version, "kind": "ExecCredential", "spec": spec})


def parse_timestamp(value: str) -> float:
    """An RFC 3339 time (`2026-12-02T15:04:05Z`, fractions and offsets allowed) as epoch seconds."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("no time zone")
    return parsed.timestamp()


def parse_exec_credential(output: bytes, api_version: str, user: str) -> Credential:
    """The credential in a plugin's standard output. Errors name the user, never the output."""
    where = f"user {user!r}: exec plugin"
    try:
        doc = json.loads(output)
    except ValueError:
        raise CredentialError(f"{where} did not print a JSON ExecCredential") from None
    if not isinstance(doc, dict) or doc.get("kind") != "ExecCredential":
        raise CredentialError(f"{where} printed something other than an ExecCredential")
    if doc.get("apiVersion") != api_version:
        raise CredentialError(
            f"{where} answered apiVersion {doc.get('apiVersion')!r}, but {api_version!r} was asked for"
        )
    status = doc.get("status")
    if not isinstance(status, dict):
        raise CredentialError(f"{where} printed an ExecCredential without status")
    token = status.get("token") or None
    cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
    if bool(cert) != bool(key):
        raise CredentialError(f"{where} gave a client certificate without its key, or a key without its certificate")
    if not token and not cert:
        raise CredentialError(f"{where} gave neither a token nor a client certificate")
    expires = None
    if status.get("expirationTimestamp"):
        try:
            expires = parse_timestamp(str(status["expirationTimestamp"]))
        except ValueError:
            raise CredentialError(f"{where} gave an expirationTimestamp that is not RFC 3339") from None
    return Credential(
        token=str(token) if token else None,
        cert_data=str(cert).encode() if cert else None,
        key_data=str(key).encode() if key else None,
        expires=expires,
    )


class Credentials:
    """One process's credentials for one config. Share one between the clients of a process so a
    plugin runs once per expiry, not once per client."""

    def __init__(self, config: KubeConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._cached: Credential | None = None
        self._lock: asyncio.Lock | None = None
        self.exec_runs = 0

    @property
    def refreshable(self) -> bool:
        """Whether another try after a 401 can bring a different credential."""
        return self.config.exec is not None

    def _fresh(self, cred: Credential | None) -> bool:
        return cred is not None and (cred.expires is None or self._clock() < cred.expires)

    async def current(self) -> Credential:
        cfg = self.config
        if cfg.exec is None:
            return Credential(token=cfg.bearer_token(), cert_data=cfg.cert_data, key_data=cfg.key_data)
        if self._fresh(self._cached):
            assert self._cached is not None
            return self._cached
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one plugin run for all the requests that found it expired
            if not self._fresh(self._cached):
                self._cached = await self._run(cfg.exec)
            assert self._cached is not None
            return self._cached

    def invalidate(self, used: Credential) -> bool:
        """A request with `used` got 401: forget it (unless a newer one is cached already). True
        when a retry may succeed."""
        if not self.refreshable:
            return False
        if self._cached is used:
            self._cached = None
        return True

    async def _run(self, cfg: ExecConfig) -> Credential:
        user = self.config.user
        env = {**os.environ, **dict(cfg.env), "KUBERNETES_EXEC_INFO": exec_info(cfg)}
        self.exec_runs += 1
        try:
            # stdin closed (nobody to answer a prompt); stderr shared, as kubectl does.
            finished = await run_captured(
                [cfg.command, *cfg.args], limit_seconds=EXEC_TIMEOUT_SECONDS, env=env, capture_stderr=False
            )
        except OSError as e:
            hint = f"; {cfg.install_hint.strip()}" if cfg.install_hint else ""
            raise CredentialError(
                f"user {user!r}: exec plugin {cfg.command!r} could not be run: {e.strerror}{hint}"
            ) from None
        if finished is None:
            raise CredentialError(
                f"user {user!r}: exec plugin {cfg.command!r} gave no answer in {EXEC_TIMEOUT_SECONDS:.0f}s"
            )
        if finished.returncode != 0:
            raise CredentialError(
                f"user {user!r}: exec plugin {cfg.command!r} exited with status {finished.returncode}"
            )
        out = finished.stdout
        cred = parse_exec_credential(out, cfg.api_version, user)
        if cred.cert_data is None and self.config.cert_data:  # a token plugin beside a static certificate
            cred = Credential(cred.token, self.config.cert_data, self.config.key_data, cred.expires)
        log.info(
            "user %r: exec plugin %s gave a %s%s",
            user,
            os.path.basename(cfg.command),
            "token" if cred.token else "client certificate",
            f" valid for {cred.expires - self._clock():.0f}s" if cred.expires else "",
        )
        return cred
