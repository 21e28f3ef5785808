"""CloudEvents 1.0 of a TranscodeJob's transitions, structured JSON mode, and their signature (pure).

The body is made once per event and sent byte for byte on every retry; the signature covers a
timestamp and those bytes (Stripe / Standard Webhooks style), so a receiver can refuse a replayed
delivery and de-duplicate retries by the event id:

    X-Ffrtmp-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(key, "<t>." + body)>
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from ffrtmp.api.constants import GROUP, JOB_PLURAL, VERSION

CONTENT_TYPE = "application/cloudevents+json"
SIGNATURE_HEADER = "X-Ffrtmp-Signature"
TYPE_PREFIX = "io.ffmpeg-rtmp.transcodejob."
# How old a signature timestamp a receiver should accept (verify_signature's default).
SIGNATURE_TOLERANCE_SECONDS = 300


@dataclass(frozen=True, slots=True)
class JobFacts:
    """What an event tells about the job, read from its status when the event is sent."""

    namespace: str
    name: str
    uid: str
    phase: str | None
    attempt: int
    pool: str | None = None
    worker: str | None = None
    reason: str | None = None
    message: str | None = None
    outputs: list[dict[str, Any]] | None = None


def event_type(transition: str) -> str:
    """`Succeeded` -> `io.ffmpeg-rtmp.transcodejob.succeeded`."""
    return TYPE_PREFIX + transition.lower()


def event_source(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{JOB_PLURAL}/{name}"


def build_event(
    event_id: str, transition: str, time: str, attempt: int, job: JobFacts, percent: float | None = None
) -> bytes:
    """The CloudEvent as the exact bytes to send (compact JSON, keys in a fixed order)."""
    data: dict[str, Any] = {
        "namespace": job.namespace,
        "name": job.name,
        "uid": job.uid,
        "transition": transition,
        "phase": job.phase,
        "attempt": attempt,
    }
    if job.pool:
        data["pool"] = job.pool
    if job.worker and transition in ("Running", "Progress"):
        data["worker"] = job.worker
    if transition == "Failed":
        data["reason"] = job.reason
        data["message"] = job.message
    if transition == "Succeeded":
        data["outputs"] = job.outputs or []
    if transition == "Progress":
        data["progress"] = {"percent": percent}
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": event_source(job.namespace, job.name),
        "type": event_type(transition),
        "subject": job.name,
        "time": time,
        "datacontenttype": "application/json",
        "data": data,
    }
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def signature(key: bytes, body: bytes, timestamp: int) -> str:
    """The X-Ffrtmp-Signature header value for `body` sent at `timestamp`."""
    digest = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    key: bytes, header: str, body: bytes, now: float, tolerance: float = SIGNATURE_TOLERANCE_SECONDS
) -> bool:
    """What a receiver checks: a v1 HMAC of `<t>.<body>` under `key`, with `t` within `tolerance` of now."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        k, sep, v = item.strip().partition("=")
        if sep:
            parts.setdefault(k, []).append(v)
    stamps = parts.get("t") or []
    if len(stamps) != 1 or not stamps[0].isdigit() or abs(now - int(stamps[0])) > tolerance:
        return False
    expected = hmac.new(key, f"{stamps[0]}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, v) for v in parts.get("v1") or [])
