"""Credentials from Secrets end to end: the operator and stand-in workers on the local control plane, real
ffmpeg, an http input on a real aiohttp server that wants basic auth, a token query parameter and an API key
header, and an RTMP restream to a real nginx-rtmp under a stream key, every one of them from a Secret the pool
lists in spec.jobSecrets. Nothing any part of the system says (job status, Events, operator, kubelet and worker
logs, metrics) carries a secret value, on success and on failure."""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from conftest import Farm
from helpers import RTMP_HOST, make_clip, nginx_rtmp, wait_for
from s3server import free_port

pytestmark = pytest.mark.integration

# Not 127.0.0.1 (the test API server: never reachable by jobs); the pool allowlists this address.
MEDIA_HOST = "127.0.0.2"
BLOCKED_HOST = "127.0.0.3"  # loopback, not allowlisted: the egress proxy refuses it


def distinctive(what: str) -> str:
    return f"{what}{secrets.token_hex(12)}"


@dataclass
class MediaServer:
    """A real aiohttp server on MEDIA_HOST serving `clip` at /clip.mp4 (with Range) only to requests with basic
    auth `user`:`password`, query `token` and header X-Api-Key `api_key`; a 401 with a Basic challenge
    otherwise. Records every response: (token it was asked with, status, Content-Length)."""

    clip: Path
    user: str
    password: str
    token: str
    api_key: str
    responses: list[tuple[str, int, int]] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None

    async def _clip(self, request: web.Request) -> web.StreamResponse:
        basic = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if (request.headers.get("Authorization") == basic and request.query.get("token") == self.token
                and request.headers.get("X-Api-Key") == self.api_key):  # fmt: skip
            return web.FileResponse(self.clip)
        return web.Response(status=401, text="unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="media"'})

    async def _record(self, request: web.Request, response: web.StreamResponse) -> None:
        length = int(response.headers.get("Content-Length", "0"))
        self.responses.append((request.query.get("token", ""), response.status, length))

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/clip.mp4", self._clip)
        app.on_response_prepare.append(self._record)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port(MEDIA_HOST)
        await web.TCPSite(self._runner, MEDIA_HOST, self.port).start()

    def __enter__(self) -> MediaServer:
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def url(self, user: str, password: str, token: str) -> str:
        return f"http://{user}:{password}@{MEDIA_HOST}:{self.port}/clip.mp4?v=1&token={token}"


def secret(name: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }  # fmt: skip


def ref(name: str, key: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": name, "key": key}}


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not in the metrics")


@pytest.fixture
def rtmp_port(tmp_path: Path) -> Iterator[int]:
    with nginx_rtmp(tmp_path / "nginx", RTMP_HOST) as port:
        yield port


def test_credentials_from_secrets_reach_the_servers_and_nothing_said_carries_them(
    farm: Farm, rtmp_port: int, tmp_path: Path
) -> None:
    clip = make_clip(tmp_path / "clip.mp4", seconds=2)
    user, password, token, api_key = "viewer", distinctive("pw"), distinctive("tok"), distinctive("key")
    stream_key = distinctive("sk")
    wrong_password, wrong_token = distinctive("wrongpw"), distinctive("wrongtok")
    with MediaServer(clip, user, password, token, api_key) as media:
        good_url = media.url(user, password, token)
        wrong_url = media.url(user, wrong_password, wrong_token)
        stream_url = f"rtmp://{RTMP_HOST}:{rtmp_port}/restream/{stream_key}"
        values = (password, token, api_key, stream_key, wrong_password, wrong_token, good_url, wrong_url, stream_url)
        farm.cluster.apply([
            secret("media", url=good_url, api=api_key + "\n"), secret("stream", url=stream_url),
            secret("wrong", url=wrong_url), secret("not-listed", url=good_url),
            # The same credentials at an address the pool's egress policy does not allow.
            secret("blocked", url=good_url.replace(f"@{MEDIA_HOST}:", f"@{BLOCKED_HOST}:")),
        ], farm.namespace)  # fmt: skip
        egress = {"allow": [f"{MEDIA_HOST}/32", f"{RTMP_HOST}/32"], "allowUnproxiedProtocols": ["rtmp"]}
        farm.pool("cpu", minWorkers=1, maxWorkers=1, autoscaling={"enabled": False}, egress=egress,
                  jobSecrets=["media", "stream", "wrong", "blocked"])  # fmt: skip
        operator_port = free_port()
        farm.start_operator(
            "--metrics-port", str(operator_port), f"--pool-allowed-egress-destinations={MEDIA_HOST}/32,{RTMP_HOST}/32",
            "--pool-allowed-unproxied-protocols=rtmp",
        )  # fmt: skip
        farm.start_workers()
        wait_for(lambda: (farm.cluster.get("wp", "cpu", farm.namespace).get("status") or {}).get("readyWorkers") == 1,
                 90, "a ready worker")  # fmt: skip

        key_header = [{"name": "X-Api-Key", **ref("media", "api")}]
        file_out = {"name": "file", "video": {"codec": "h264", "preset": "ultrafast", "crf": 32}}
        restream = {"name": "live", "container": "flv", "urlFrom": ref("stream", "url"),
                    "video": {"codec": "h264", "preset": "ultrafast"}}  # fmt: skip
        jobs = {
            "good": {"uriFrom": ref("media", "url"), "headersFrom": key_header},
            "wrong": {"uriFrom": ref("wrong", "url"), "headersFrom": key_header},
            "no-key": {"uriFrom": ref("media", "nope")},
            "blocked": {"uriFrom": ref("blocked", "url"), "headersFrom": key_header},
        }
        for name, job_input in jobs.items():
            doc = farm.job_doc(name, "/unused", [file_out, restream], backoffLimit=0)
            doc["spec"]["input"] = job_input
            farm.cluster.apply(doc, farm.namespace)
        done = {j["metadata"]["name"]: j["status"] for j in farm.wait_all(timeout=180)}

    good = done["good"]
    assert good["phase"] == "Succeeded", good
    (written,) = [o for o in good["outputs"] if o["name"] == "file"]
    assert abs(written["durationSeconds"] - 2) < 0.3
    # The restream reached nginx-rtmp under the stream key from the Secret.
    nginx_log = (tmp_path / "nginx" / "logs" / "error.log").read_text()
    assert f"publish: name='{stream_key}'" in nginx_log
    served = [r for r in media.responses if r[0] == token]
    assert any(status in (200, 206) for _, status, _ in served), "the server saw the right credentials"

    wrong = done["wrong"]
    assert wrong["phase"] == "Failed" and wrong["result"]["reason"] == "InputNotFound", wrong
    assert "The input server refused the request (HTTP 401)" in wrong["result"]["message"]
    assert "REDACTED" in wrong["result"]["message"], "the URL is there, its credentials are not"
    assert "401" in wrong["result"]["stderrTail"]
    assert any(r[0] == wrong_token and r[1] == 401 for r in media.responses), "the wrong credential was sent"

    # The egress policy applies to the resolved URL: nothing reaches the refused address.
    blocked = done["blocked"]
    assert blocked["phase"] == "Failed" and blocked["result"]["reason"] == "DestinationNotAllowed", blocked
    assert f"The job tried to connect to {BLOCKED_HOST}:{media.port}" in blocked["result"]["message"]

    no_key = done["no-key"]
    assert no_key["result"]["reason"] == "SecretNotFound", no_key
    assert "input.uriFrom: Secret media in namespace" in no_key["result"]["message"]
    assert "has no key nope" in no_key["result"]["message"]
    # A Secret no pool lists: the job is not sent to a worker, it waits saying why.
    doc = farm.job_doc("not-listed", "/unused", [file_out])
    doc["spec"]["input"] = {"uriFrom": ref("not-listed", "url")}
    farm.cluster.apply(doc, farm.namespace)

    def queued() -> dict[str, Any] | None:
        conditions = (farm.get_job("not-listed").get("status") or {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == "Queued" and c["reason"] == "NoMatchingPool"), None)

    waiting = wait_for(queued, 60, "not-listed Queued with NoMatchingPool")
    assert waiting["message"] == ("no WorkerPool in namespace " + farm.namespace + " lists Secret not-listed in "
                                  "spec.jobSecrets, and the job's credentials come from them"), waiting  # fmt: skip
    reasons = {e["reason"] for e in farm.events("wrong")} | {e["reason"] for e in farm.events("no-key")}
    assert {"InputNotFound", "SecretNotFound"} <= reasons, reasons

    (info,) = farm.workers_state().values()
    worker = metrics(int(info["env"]["FFRTMP_METRICS_PORT"]))
    said = farm.everything_said() + worker + metrics(operator_port)
    leaked = [v for v in values if v in said]
    assert not leaked, f"{len(leaked)} secret value(s) found in what the system said"
    assert re.search(r"Secret (media|wrong|stream)", said), "the search covered the failure messages"

    # Input bytes: what the egress proxy received from the media server for the good job: every byte of the
    # clip at least once, at most every response's body in full plus its head.
    labels = {"namespace": farm.namespace, "pool": "cpu"}
    input_bytes = sample(worker, "ffrtmp_job_input_bytes_total", **labels)
    assert clip.stat().st_size <= input_bytes <= sum(length + 1024 for _, _, length in served), (input_bytes, served)
    # Output bytes: the file written (the restream is not a file).
    assert sample(worker, "ffrtmp_job_output_bytes_total", **labels) == written["bytes"]
