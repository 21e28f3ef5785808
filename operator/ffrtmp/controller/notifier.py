"""The notification sender: the leader's webhook deliveries, off the reconcile pass.

The reconcile pass decides (controller/notifications.py) and offers each job's plan here; a few worker
tasks take plans from a bounded queue, one job at a time each (a job never has two plans out). For a
plan they send the due events, each with a timeout, and write the record (newly recorded events and what
came of the attempts) into the job's status in one merge patch, so that a new leader continues from it.
A full queue refuses the plan: the next pass offers it again. A receiver that never answers holds one worker for the
timeout and delays nothing else; scheduling never waits for a delivery.

Only the leader sends: every send and every status write checks, right before, that this replica
still leads. Destinations obey the notification egress policy: the host's every resolved address is
checked (loopback, private, link-local, multicast, reserved and the cluster's CIDRs are refused unless
--notification-allowed-destinations lists them) and the connection goes to a checked address (no second
lookup). No redirect is followed. A URL read from a Secret is never written anywhere: errors name the
target, never the URL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from ffrtmp import __version__
from ffrtmp.api.notifications import PendingEvent, TargetDelivery, WebhookSecretRef, WebhookTarget
from ffrtmp.controller.cloudevents import CONTENT_TYPE, SIGNATURE_HEADER, JobFacts, build_event, signature
from ffrtmp.controller.lifecycle import JobEvent
from ffrtmp.controller.metrics import OperatorMetrics
from ffrtmp.controller.notifications import NotificationPlan, NotificationSettings, Outcome, Send, after_delivery
from ffrtmp.controller.state import JobView, Store
from ffrtmp.egress.policy import EgressPolicy, parse_address
from ffrtmp.egress.proxy import Resolver, system_resolver
from ffrtmp.kube.client import ApiError, KubeClient, resource_path
from ffrtmp.redact import redact

log = logging.getLogger(__name__)
Obj = dict[str, Any]
SECRET_CACHE_SECONDS = 30.0
URL_FROM_SECRET = "<the URL from the Secret>"
REFUSED = (
    "the destination is not allowed by the operator's notification egress policy (loopback, private, "
    "link-local and cluster addresses are refused unless --notification-allowed-destinations lists them)"
)


class DestinationRefused(OSError):
    """The egress policy refused every way to the destination."""


class SecretError(Exception):
    """A Secret (key) a target names cannot be read; the message names the Secret and key, never a value."""


class PolicyResolver(AbstractResolver):
    """aiohttp's resolver: every address of the host must pass the policy; the connection goes to those."""

    def __init__(self, policy: EgressPolicy, resolve: Resolver = system_resolver) -> None:
        self.policy = policy
        self._resolve = resolve

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await self._resolve(host, port)
        if not addresses:
            raise OSError(f"no address for the host (port {port})")
        for address in addresses:
            why = self.policy.denied_because(host, address)
            if why is not None:
                raise DestinationRefused(why)
        return [
            {
                "hostname": host, "host": str(a), "port": port, "proto": 0, "flags": socket.AI_NUMERICHOST,
                "family": socket.AF_INET6 if a.version == 6 else socket.AF_INET,
            }
            for a in addresses
        ]  # fmt: skip

    async def close(self) -> None:
        return None


def literal_refusal(url: str, policy: EgressPolicy) -> str | None:
    """Why the policy refuses a URL whose host is an IP address (aiohttp connects to those without asking the
    resolver), or a URL that is not http(s) (a URL from a Secret is not checked by the CRD)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "the URL is not an absolute http(s):// URL"
    address = parse_address(parts.hostname)
    if address is None:
        return None
    return policy.denied_because(parts.hostname, address)


class SecretReader:
    """Secret keys, read with GET (the only verb the chart grants) and kept for SECRET_CACHE_SECONDS."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client
        self._cache: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}

    async def read(self, namespace: str, ref: WebhookSecretRef) -> bytes:
        cached = self._cache.get((namespace, ref.name))
        if cached is None or time.monotonic() - cached[0] > SECRET_CACHE_SECONDS:
            path = resource_path("", "v1", "secrets", namespace, ref.name)
            try:
                secret = await self.client.get(path)
            except ApiError as e:
                if e.not_found:
                    raise SecretError(f"Secret {namespace}/{ref.name} not found") from None
                if e.status == 403:
                    raise SecretError(
                        f"the operator may not read Secret {namespace}/{ref.name} (the chart grants it for the "
                        "names in notifications.secretNames)"
                    ) from None
                raise SecretError(f"reading Secret {namespace}/{ref.name}: {e.status} {e.reason}") from None
            cached = (time.monotonic(), dict(secret.get("data") or {}))
            self._cache[(namespace, ref.name)] = cached
        value = cached[1].get(ref.key)
        if value is None:
            raise SecretError(f"Secret {namespace}/{ref.name} has no key {ref.key}")
        return base64.b64decode(value)


def job_facts(job: JobView) -> JobFacts:
    return JobFacts(
        namespace=job.namespace, name=job.name, uid=job.uid, phase=job.phase, attempt=job.attempt, pool=job.pool,
        worker=job.worker, reason=job.reason, message=job.message, outputs=json.loads(job.outputs_json or "[]"),
    )  # fmt: skip


class Notifier:
    def __init__(
        self,
        client: KubeClient,
        settings: NotificationSettings,
        policy: EgressPolicy,
        metrics: OperatorMetrics,
        store: Store,
        leading: Callable[[], bool],
        wake: Callable[[], None],
        warn: Callable[[JobView, JobEvent], None],
    ) -> None:
        self.client = client
        self.settings = settings
        self.policy = policy
        self.metrics = metrics
        self.store = store
        self.leading = leading
        self.wake = wake
        self.warn = warn
        self.secrets = SecretReader(client)
        self.busy: set[str] = set()  # job keys with a plan queued or in flight
        self._queue: asyncio.Queue[tuple[str, NotificationPlan]] = asyncio.Queue(settings.queue_size)
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=PolicyResolver(self.policy), use_dns_cache=False, limit=self.settings.workers * 4,
            force_close=True,
        )  # fmt: skip
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False)
        self._tasks = [
            asyncio.create_task(self._work(), name=f"notifier-{i}") for i in range(max(self.settings.workers, 1))
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def offer(self, key: str, plan: NotificationPlan) -> bool:
        """Queue a job's plan; False when the job has one out already or the queue is full."""
        if key in self.busy:
            return False
        try:
            self._queue.put_nowait((key, plan))
        except asyncio.QueueFull:
            return False
        self.busy.add(key)
        return True

    async def _work(self) -> None:
        while True:
            key, plan = await self._queue.get()
            try:
                await self._carry_out(key, plan)
            except Exception:
                log.exception("notifications of %s failed", key)
                self.metrics.reconcile_errors.labels("Notification").inc()
            finally:
                self.busy.discard(key)
                self.wake()

    async def _carry_out(self, key: str, plan: NotificationPlan) -> None:
        job = self.store.jobs.get(key)
        if job is None or job.notifications is None:
            return
        spec = job.notifications
        records = plan.records
        if plan.changed and not plan.sends:
            # With sends, the new records go out with their outcomes in one write: were this replica to die
            # before it, the next leader derives the same transitions (same ids) from the job's state.
            job = await self._write(job, records)
            if job is None:
                return
        for message in plan.given_up:
            self.metrics.notification_deliveries.labels("given_up").inc()
            self.warn(job, JobEvent("Warning", "NotificationGivenUp", message))
        if not plan.sends or not self.leading():
            return
        targets = {t.name: t for t in spec.targets}
        sends = [s for s in plan.sends if s.target in targets]
        outcomes = await asyncio.gather(*(self._deliver(job, targets[s.target], s.event) for s in sends))
        now = time.time()
        for send, outcome in zip(sends, outcomes, strict=True):
            records = after_delivery(records, send.target, send.event.id, outcome, now, self.settings.retry)
            if not outcome.delivered and not outcome.retryable:
                self.metrics.notification_deliveries.labels("given_up").inc()
                self.warn(job, JobEvent("Warning", "NotificationGivenUp", _given_up_message(send, outcome)))
        await self._write(self.store.jobs.get(key) or job, records)

    async def _write(self, job: JobView, records: list[TargetDelivery]) -> JobView | None:
        """status.notifications := records (a merge patch of that field only, for this uid); None when the job
        is gone or this replica stopped leading."""
        if not self.leading():
            log.warning("not leading any more: the notification record of %s dropped unsent", job.key)
            self.metrics.fenced_writes.labels("Notification").inc()
            return None
        body: Obj = {"metadata": {"uid": job.uid}, "status": {"notifications": [r.to_api() for r in records]}}
        path = resource_path("ffmpeg-rtmp.io", "v1alpha1", "transcodejobs", job.namespace, job.name, "status")
        try:
            updated = await self.client.merge_patch(path, body)
        except ApiError as e:
            if not (e.not_found or e.conflict):  # gone, or another job of that name now
                log.warning("writing the notification record of %s failed: %s", job.key, e)
                self.metrics.reconcile_errors.labels("Notification").inc()
            return None
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            log.warning("writing the notification record of %s failed: %r", job.key, e)
            self.metrics.reconcile_errors.labels("Notification").inc()
            return None
        return self.store.put_job(updated)

    async def _deliver(self, job: JobView, target: WebhookTarget, event: PendingEvent) -> Outcome:
        started = time.monotonic()
        url = ""
        outcome = Outcome(False, "not sent")
        try:
            if target.url is not None:
                url = target.url
            elif target.url_secret_ref is not None:
                url = (await self.secrets.read(job.namespace, target.url_secret_ref)).decode().strip()
            key = await self.secrets.read(job.namespace, target.signing_secret_ref)
            refused = literal_refusal(url, self.policy)
            if refused is not None:
                outcome = self._refused(job, target, refused)
            else:
                outcome = await self._post(url, key, event, job)
        except SecretError as e:
            outcome = Outcome(False, str(e))
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.os_error, DestinationRefused):
                outcome = self._refused(job, target, str(e.os_error))
            else:
                outcome = Outcome(False, f"could not connect: {e.os_error.strerror or type(e.os_error).__name__}")
        except TimeoutError:
            outcome = Outcome(False, f"no answer within {self.settings.timeout_seconds:g}s")
        except (aiohttp.ClientError, OSError, UnicodeError, ValueError) as e:
            outcome = Outcome(False, f"delivery failed: {type(e).__name__}")
        finally:
            self.metrics.notification_seconds.observe(time.monotonic() - started)
        if not outcome.delivered and url:
            outcome = Outcome(False, redact(outcome.error, {url: _url_label(target, url)}), outcome.retryable)
        result = "delivered" if outcome.delivered else ("refused" if not outcome.retryable else "failed")
        self.metrics.notification_deliveries.labels(result).inc()
        if not outcome.delivered:
            log.info("notification %s of %s to target %s: %s", event.id, job.key, target.name, outcome.error)
        return outcome

    async def _post(self, url: str, key: bytes, event: PendingEvent, job: JobView) -> Outcome:
        body = build_event(event.id, event.type, event.time, event.attempt, job_facts(job), event.percent)
        headers = {
            "Content-Type": CONTENT_TYPE,
            SIGNATURE_HEADER: signature(key, body, int(time.time())),
            "User-Agent": f"ffmpeg-rtmp-operator/{__version__}",
        }
        assert self._session is not None, "the notifier is not started"
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_seconds)
        post = self._session.post(url, data=body, headers=headers, allow_redirects=False, timeout=timeout)
        async with post as answer:
            if 200 <= answer.status < 300:
                return Outcome(True)
            return Outcome(False, f"HTTP {answer.status} {answer.reason or ''}".strip())

    def _refused(self, job: JobView, target: WebhookTarget, why: str) -> Outcome:
        # The resolved address says where a Secret's URL points: only the log of a literal URL names it.
        if target.url is not None:
            log.warning("notification target %s of %s refused: %s", target.name, job.key, why)
        return Outcome(False, REFUSED, retryable=False)


def _url_label(target: WebhookTarget, url: str) -> str:
    return url if target.url is not None else URL_FROM_SECRET


def _given_up_message(send: Send, outcome: Outcome) -> str:
    return f"target {send.target}: gave up on the {send.event.type} event {send.event.id}: {outcome.error}"
