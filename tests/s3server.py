"""A real S3 server for the tests: versitygw (built by hack/tools.sh from its Go module) with its POSIX
backend in a temp folder, on a free port of a loopback address, with root credentials made for the run.
Not 127.0.0.1: the test API server listens there, and a job's egress policy never reaches the API
server's address; pools allowlist `HOST` (spec.egress.allow) to reach this server.

Its access log (one line per request, in the order the server finished them) lets a test see which
objects were written in which order."""

from __future__ import annotations

import re
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from ffrtmp.dev.cluster import default_bin_dir
from ffrtmp.storage.s3 import Endpoint
from ffrtmp.storage.sigv4 import Credentials
from helpers import Service, start_service

# `owner bucket [time] ip requester request-id OPERATION KEY REQUEST-URI STATUS ERROR-CODE ...`; the key
# is logged as is (spaces too), the request URI encoded.
_ACCESS_LINE = re.compile(r"\] \S+ \S+ \S+ (?P<op>s3_\w+) .*? (?P<uri>/\S*) (?P<status>\d{3}) (?P<error>\S+) ")


HOST = "127.0.0.9"


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Logged:
    operation: str  # e.g. PutObject, CompleteMultipartUpload
    bucket: str
    key: str  # "" for requests on the bucket
    status: int
    error: str  # S3 error code, "-" when none


@dataclass
class S3Server:
    root: Path
    host: str = HOST
    port: int = field(default_factory=free_port)
    access_key: str = field(default_factory=lambda: "FFRTMPTEST" + secrets.token_hex(5).upper())
    secret_key: str = field(default_factory=lambda: "s3secret-" + secrets.token_urlsafe(24))
    region: str = "us-east-1"
    service: Service | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.url, self.region, path_style=True)

    @property
    def credentials(self) -> Credentials:
        return Credentials(self.access_key, self.secret_key)

    @property
    def access_log(self) -> Path:
        return self.root / "access.log"

    def start(self, timeout: float = 30) -> S3Server:
        binary = default_bin_dir() / "versitygw"
        if not binary.exists():
            raise AssertionError(f"no versitygw at {binary}: run hack/tools.sh (make setup does)")
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        iam = self.root / "iam"  # users besides root (add_user): unknown keys are then InvalidAccessKeyId
        iam.mkdir(exist_ok=True)
        argv = [str(binary), "--access", self.access_key, "--secret", self.secret_key, "--region", self.region,
                "--port", f"{self.host}:{self.port}", "--quiet", "--access-log", str(self.access_log),
                "--iam-dir", str(iam), "posix", str(data)]  # fmt: skip
        self.service = start_service("versitygw", argv, self.root)
        deadline = time.monotonic() + timeout
        while True:
            if self.service.proc.poll() is not None:
                raise AssertionError(f"versitygw exited:\n{self.service.tail()}")
            try:
                socket.create_connection((self.host, self.port), 1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"versitygw did not listen within {timeout}s:\n{self.service.tail()}"
                    ) from None
                time.sleep(0.1)

    def add_user(self, access_key: str, secret_key: str) -> Credentials:
        """A user that owns nothing: the root's buckets are AccessDenied to it."""
        subprocess.run(
            [str(default_bin_dir() / "versitygw"), "admin", "--access", self.access_key, "--secret", self.secret_key,
             "--endpoint-url", self.url, "create-user", "--access", access_key, "--secret", secret_key,
             "--role", "user"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        return Credentials(access_key, secret_key)

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

    def logged(self) -> list[Logged]:
        """Every request the server finished so far, in order."""
        if not self.access_log.exists():
            return []
        found = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            m = _ACCESS_LINE.search(line)
            if m:
                bucket, _, key = unquote(m["uri"].split("?", 1)[0]).lstrip("/").partition("/")
                found.append(Logged(m["op"].removeprefix("s3_"), bucket, key, int(m["status"]), m["error"]))
        return found
