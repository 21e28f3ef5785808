"""Job notifications end to end: CloudEvents webhooks to a real aiohttp receiver in the test, sent by the
operator's leader (two replicas, one killed mid-retry), retried through 500s and a timeout, signed, each
transition accepted once; a destination the egress policy forbids is refused; a URL from a Secret shows up
nowhere; and a receiver that never answers does not slow scheduling (submit -> Running p99 printed)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import secrets
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from statistics import median
from typing import Any

import pytest
from aiohttp import web
from test_replicas import holder, identity, start_replica

from conftest import Farm
from helpers import make_clip, wait_for

# Background: mostly waiting (backoff, timeouts, a Lease takeover, three rounds of 30 jobs).
pytestmark = [pytest.mark.integration, pytest.mark.background]

KEY = b"whsec-" + secrets.token_hex(16).encode()
TIMEOUT = 1.5
NOTIFY_ARGS = (
    "--notification-allowed-destinations", "127.0.0.1", "--notification-timeout-seconds", str(TIMEOUT),
    "--notification-retry-base-seconds", "0.2", "--notification-retry-max-seconds", "2",
)  # fmt: skip
EVENTS = ["Queued", "Running", "Succeeded"]


@dataclass
class Attempt:
    path: str
    id: str
    answer: str  # "500", "503", "timeout" or "200"
    signed: bool
    event: dict[str, Any]


@dataclass
class Receiver:
    """A real HTTP server (aiohttp) on 127.0.0.1, in a thread with its own loop. Paths:
    /flaky/...: per event id, 500, 500, then no answer for longer than the operator's timeout, then 200;
    /down/...: 503 while `down` is set, then 200. Beside it a TCP server that accepts and never answers."""

    attempts: list[Attempt] = field(default_factory=list)
    down: threading.Event = field(default_factory=threading.Event)
    hung_connections: int = 0
    port: int = 0
    hung_port: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def accepted(self, prefix: str = "") -> list[str]:
        return [a.id for a in self.attempts if a.answer == "200" and a.id.startswith(prefix)]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        event = json.loads(body)
        # The reference check (stdlib only, as README's snippet): HMAC-SHA256 of "<t>." + the exact body.
        parts = dict(p.split("=", 1) for p in request.headers.get("X-Ffrtmp-Signature", "").split(","))
        expected = hmac.new(KEY, parts.get("t", "").encode() + b"." + body, hashlib.sha256).hexdigest()
        signed = (
            hmac.compare_digest(expected, parts.get("v1", ""))
            and abs(time.time() - int(parts["t"])) < 300
            and request.content_type == "application/cloudevents+json"
        )
        mode = request.match_info["mode"]
        self._counts[event["id"]] += 1
        n = self._counts[event["id"]]
        if mode == "flaky":
            answer = {1: "500", 2: "500", 3: "timeout"}.get(n, "200")
        else:
            answer = "503" if self.down.is_set() else "200"
        self.attempts.append(Attempt(request.path, event["id"], answer, signed, event))
        if answer == "timeout":
            await asyncio.sleep(TIMEOUT * 3)
            return web.Response(status=200)  # to a client that gave up long ago
        return web.Response(status=int(answer))

    async def _hang(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.hung_connections += 1
        await reader.read(1 << 16)  # the request; then nothing, until the operator hangs up
        await reader.read()
        writer.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{mode}/{rest:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._hung = await asyncio.start_server(self._hang, "127.0.0.1", 0)
        self.hung_port = self._hung.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        self._hung.close()
        await self._runner.cleanup()

    def start(self) -> None:
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


def webhook(name: str, events: list[str], url: str | None = None, url_key: str | None = None) -> dict[str, Any]:
    target: dict[str, Any] = {"name": name, "events": events, "signingSecretRef": {"name": "hook", "key": "key"}}
    if url is not None:
        target["url"] = url
    else:
        target["urlSecretRef"] = {"name": "hook", "key": url_key}
    return {"targets": [target]}


def hook_secret(farm: Farm, **urls: str) -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hook"},
        "stringData": {"key": KEY.decode(), **urls},
    }
    farm.cluster.apply(doc, farm.namespace)


def record(job: dict[str, Any]) -> dict[str, Any]:
    (rec,) = (job.get("status") or {}).get("notifications") or [{}]
    return rec  # type: ignore[no-any-return]


def uid(job: dict[str, Any]) -> str:
    return str(job["metadata"]["uid"])


def test_webhooks_retry_until_accepted_signed_once_per_transition_by_the_leader(farm: Farm, receiver: Receiver) -> None:
    clip = make_clip(farm.media / "clip.mp4", seconds=1, size="160x120")
    token = secrets.token_hex(12)
    secret_url = f"{receiver.url}/down/hook-{token}"
    hook_secret(farm, url=secret_url)
    farm.pool("cpu", minWorkers=1, maxConcurrentJobs=4, autoscaling={"enabled": False})
    a = start_replica(farm, "operator-a", extra=NOTIFY_ARGS)
    wait_for(lambda: holder(farm) == identity(a), 60, "operator-a to lead")
    b = start_replica(farm, "operator-b", extra=NOTIFY_ARGS)
    farm.start_workers()
    wait_for(
        lambda: (farm.cluster.get("wp", "cpu", farm.namespace).get("status") or {}).get("readyWorkers"), 90, "a worker"
    )

    # 1. Three jobs whose receiver fails every event's first attempts (500, 500, no answer), one whose
    #    destination the policy forbids (cloud metadata).
    started = time.monotonic()
    for i in range(3):
        farm.job(f"flaky-{i}", str(clip), notifications=webhook("ops", EVENTS, f"{receiver.url}/flaky/job-{i}"))
    farm.job("metadata", str(clip), notifications=webhook("ops", ["Succeeded"], "http://169.254.169.254/latest/"))
    failures_seen: set[str] = set()

    def all_accepted() -> bool:
        for j in farm.jobs():
            rec = record(j)
            if rec.get("consecutiveFailures"):
                failures_seen.add(str(rec.get("lastError")))
        return len(receiver.accepted()) == 9 and farm.phase("metadata") == "Succeeded"

    wait_for(all_accepted, 120, "9 events accepted", interval=0.3)
    print(f"3 jobs x 3 events through 500, 500 and a timeout each: {time.monotonic() - started:.1f}s")
    for i in range(3):
        job = farm.get_job(f"flaky-{i}")
        ids = [f"{uid(job)}.queued.0", f"{uid(job)}.running.1", f"{uid(job)}.succeeded.1"]
        assert sorted(receiver.accepted(uid(job))) == sorted(ids)  # each once
        for event_id in ids:
            answers = [x.answer for x in receiver.attempts if x.id == event_id]
            assert answers == ["500", "500", "timeout", "200"], (event_id, answers)
        wait_for(lambda name=f"flaky-{i}": record(farm.get_job(name)).get("delivered") == 3, 30, "the record")
        rec = record(farm.get_job(f"flaky-{i}"))
        assert rec["consecutiveFailures"] == 0 and "pending" not in rec and rec["lastEventType"] == "Succeeded"
        assert rec["lastEventId"] == ids[2] and rec["lastError"] == f"no answer within {TIMEOUT:g}s"
    assert any(e.startswith("HTTP 500") for e in failures_seen), failures_seen  # the failures, while they lasted
    assert all(x.signed for x in receiver.attempts), [x for x in receiver.attempts if not x.signed]
    done = next(x.event for x in receiver.attempts if x.answer == "200" and x.id.endswith(".succeeded.1"))
    assert done["specversion"] == "1.0" and done["type"] == "io.ffmpeg-rtmp.transcodejob.succeeded"
    assert done["source"].startswith(f"/apis/ffmpeg-rtmp.io/v1alpha1/namespaces/{farm.namespace}/transcodejobs/flaky-")
    assert done["data"]["outputs"][0]["bytes"] > 0 and done["data"]["phase"] == "Succeeded"
    # The forbidden destination: given up at once, with the reason in the status and an Event.
    wait_for(lambda: record(farm.get_job("metadata")).get("givenUp") == 1, 30, "the refusal recorded")
    refused = record(farm.get_job("metadata"))
    assert "notification egress policy" in refused["lastError"] and "delivered" not in refused
    assert any(e["reason"] == "NotificationGivenUp" for e in farm.events("metadata"))

    # 2. The leader is killed while a receiver (its URL in a Secret) answers 503: the standby takes over
    #    and sends what is still undelivered.
    receiver.down.set()
    farm.job("takeover", str(clip), notifications=webhook("ops", EVENTS, url_key="url"))
    wait_for(lambda: any(x.answer == "503" for x in receiver.attempts), 60, "a refused delivery")
    a.kill()
    receiver.down.clear()
    wait_for(lambda: holder(farm) == identity(b), 60, "operator-b to take over")
    job = farm.wait_phase("takeover", "Succeeded")
    wait_for(lambda: len(receiver.accepted(uid(job))) == 3, 60, "the takeover job's 3 events")
    accepted = receiver.accepted(uid(job))
    assert sorted(accepted) == sorted(f"{uid(job)}.{t}" for t in ("queued.0", "running.1", "succeeded.1"))
    # No id was accepted twice anywhere (a retry only ever followed a non-2xx answer).
    everything = receiver.accepted()
    assert len(everything) == len(set(everything)) == 12
    # The Secret's URL is in no status, Event or operator log.
    wait_for(lambda: record(farm.get_job("takeover")).get("delivered") == 3, 30, "the takeover record")
    seen = json.dumps([j.get("status") for j in farm.jobs()]) + json.dumps(farm.events("takeover"))
    seen += a.log.read_text(errors="replace") + b.log.read_text(errors="replace")
    assert token not in seen and secret_url not in seen


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[max(math.ceil(0.99 * len(ordered)) - 1, 0)]


class SeenRunning:
    """This test's own watch of the namespace's jobs (`kubectl get --watch-only`): when it first saw each job
    (its creation) and first saw it Running, both on the test's clock to the millisecond; the API's own
    times have whole seconds."""

    def __init__(self, farm: Farm) -> None:
        kubectl = [str(farm.cluster.bin_dir / "kubectl"), "--kubeconfig", str(farm.cluster.kubeconfig)]
        self.process = subprocess.Popen(
            [*kubectl, "get", "tj", "-n", farm.namespace, "--watch-only", "-o",
             'jsonpath={.metadata.name} {.status.phase}{"\\n"}'],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.created: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            name, _, phase = line.strip().partition(" ")
            now = time.monotonic()
            self.created.setdefault(name, now)
            if phase == "Running":
                self.running.setdefault(name, now)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def submit_to_running(farm: Farm, prefix: str, clip: str, count: int, **spec: Any) -> list[float]:
    """Seconds from creation to Running of `count` jobs submitted at once, as this test's watch saw both."""
    seen = SeenRunning(farm)
    try:
        time.sleep(0.5)  # the watch is open before the first create
        farm.cluster.apply([farm.job_doc(f"{prefix}-{i:02d}", clip, **spec) for i in range(count)], farm.namespace)
        names = [f"{prefix}-{i:02d}" for i in range(count)]
        wait_for(lambda: all(n in seen.running for n in names), 180, f"{count} {prefix} jobs seen Running")
        return [seen.running[n] - seen.created[n] for n in names]
    finally:
        seen.stop()


def test_a_receiver_that_never_answers_does_not_slow_scheduling(farm: Farm, receiver: Receiver) -> None:
    """The same 30 jobs at once three times: no notifications, notifications to a receiver that answers at once
    (the cost of the deliveries' status writes), and to one that never answers (the hang's cost, the issue's
    question: none expected, since deliveries run off the reconcile pass)."""
    clip = str(make_clip(farm.media / "clip.mp4", seconds=1, size="160x120"))
    hook_secret(farm)
    farm.pool("cpu", minWorkers=3, maxWorkers=3, maxConcurrentJobs=10, autoscaling={"enabled": False})
    farm.start_operator(*NOTIFY_ARGS)
    farm.start_workers()
    ready = lambda: (farm.cluster.get("wp", "cpu", farm.namespace).get("status") or {}).get("readyWorkers") == 3  # noqa: E731
    wait_for(ready, 90, "3 ready workers")
    count = 30
    plain = submit_to_running(farm, "plain", clip, count)
    farm.wait_all(timeout=180)
    answering = submit_to_running(
        farm, "answered", clip, count, notifications=webhook("ops", EVENTS, f"{receiver.url}/down/ok")
    )
    farm.wait_all(timeout=180)
    hung_url = f"http://127.0.0.1:{receiver.hung_port}/never"
    hung = submit_to_running(farm, "hung", clip, count, notifications=webhook("ops", EVENTS, hung_url))
    print(
        f"submit -> Running, {count} jobs at once, p50 / p99 (s): no notifications {median(plain):.2f} / "
        f"{p99(plain):.2f}; a receiver that answers {median(answering):.2f} / {p99(answering):.2f}; "
        f"one that never answers {median(hung):.2f} / {p99(hung):.2f}"
    )
    assert p99(hung) <= 2 * p99(answering) + 1, (answering, hung)
    wait_for(lambda: receiver.hung_connections > 0, 30, "a connection to the receiver that never answers")
    # The deliveries did time out (they were tried, not skipped), and nothing was lost: they wait in the status.
    wait_for(
        lambda: any(record(j).get("lastError") == f"no answer within {TIMEOUT:g}s" for j in farm.jobs()),
        60,
        "a timed out delivery in a status",
    )
