"""CloudEvents of job transitions (structured JSON), their HMAC signature checked against a stdlib
reference, and the notification egress checks (the resolver every webhook connection goes through)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest

from ffrtmp.controller.cloudevents import JobFacts, build_event, event_source, signature, verify_signature
from ffrtmp.controller.notifications import NotificationSettings
from ffrtmp.controller.notifier import DestinationRefused, PolicyResolver, literal_refusal
from ffrtmp.egress.policy import IPAddress, parse_address

pytestmark = pytest.mark.unit

JOB = JobFacts(
    namespace="media", name="movie", uid="u-1", phase="Succeeded", attempt=2, pool="cpu", worker="cpu-abc",
    reason=None, message="done", outputs=[{"name": "out", "path": "/out/movie/out.mp4", "bytes": 1234}],
)  # fmt: skip
KEY = b"a signing key \x00\xff from a Secret"


def test_a_succeeded_event_is_a_structured_cloudevent() -> None:
    body = build_event("u-1.succeeded.2", "Succeeded", "2026-12-03T12:00:00Z", 2, JOB)
    event = json.loads(body)
    assert event == {
        "specversion": "1.0",
        "id": "u-1.succeeded.2",
        "source": "/apis/ffmpeg-rtmp.io/v1alpha1/namespaces/media/transcodejobs/movie",
        "type": "io.ffmpeg-rtmp.transcodejob.succeeded",
        "subject": "movie",
        "time": "2026-12-03T12:00:00Z",
        "datacontenttype": "application/json",
        "data": {
            "namespace": "media", "name": "movie", "uid": "u-1", "transition": "Succeeded", "phase": "Succeeded",
            "attempt": 2, "pool": "cpu", "outputs": JOB.outputs,
        },
    }  # fmt: skip
    # The same event is the same bytes: every retry sends exactly what was signed the first time.
    assert build_event("u-1.succeeded.2", "Succeeded", "2026-12-03T12:00:00Z", 2, JOB) == body


def test_each_transition_carries_its_own_data() -> None:
    failed = JobFacts("media", "movie", "u-1", "Failed", 1, reason="InputNotFound", message="no such file")
    data = json.loads(build_event("i", "Failed", "t", 1, failed))["data"]
    assert (data["reason"], data["message"]) == ("InputNotFound", "no such file") and "outputs" not in data
    running = JobFacts("media", "movie", "u-1", "Running", 1, pool="cpu", worker="cpu-abc")
    data = json.loads(build_event("i", "Progress", "t", 1, running, percent=42.5))["data"]
    assert data["progress"] == {"percent": 42.5} and data["worker"] == "cpu-abc"
    assert json.loads(build_event("i", "Queued", "t", 0, running))["type"] == "io.ffmpeg-rtmp.transcodejob.queued"
    assert event_source("ns", "n") == "/apis/ffmpeg-rtmp.io/v1alpha1/namespaces/ns/transcodejobs/n"


def test_the_signature_is_an_hmac_of_the_timestamp_and_the_exact_body() -> None:
    body = build_event("u-1.succeeded.2", "Succeeded", "2026-12-03T12:00:00Z", 2, JOB)
    header = signature(KEY, body, 1_800_000_000)
    reference = hmac.new(KEY, b"1800000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1800000000,v1={reference}"
    assert verify_signature(KEY, header, body, now=1_800_000_010)


@pytest.mark.parametrize(
    "change",
    ["body", "key", "old", "future", "no-t", "two-t", "no-v1"],
)
def test_a_signature_that_does_not_hold_is_refused(change: str) -> None:
    body = build_event("id", "Succeeded", "t", 1, JOB)
    header = signature(KEY, body, 1_800_000_000)
    now, key = 1_800_000_000.0, KEY
    if change == "body":
        body = body.replace(b'"attempt":1', b'"attempt":2')
    elif change == "key":
        key = b"another key"
    elif change == "old":
        now += 301
    elif change == "future":
        now -= 301
    elif change == "no-t":
        header = header.split(",", 1)[1]
    elif change == "two-t":
        header = "t=1800000001," + header
    else:
        header = header.split(",", 1)[0]
    assert not verify_signature(key, header, body, now)


def resolver_answering(*addresses: str) -> PolicyResolver:
    async def resolve(host: str, port: int) -> list[IPAddress]:
        del host, port
        return [a for a in map(parse_address, addresses) if a is not None]

    return PolicyResolver(
        NotificationSettings(allowed_destinations=("10.9.0.0/16",)).policy(("203.0.113.0/24",)), resolve
    )


async def test_the_resolver_hands_out_checked_addresses_only() -> None:
    got = await resolver_answering("93.184.216.34", "2606:2800:220:1::1").resolve("hooks.example.com", 443)
    assert [(r["host"], r["port"]) for r in got] == [("93.184.216.34", 443), ("2606:2800:220:1::1", 443)]
    assert (await resolver_answering("10.9.1.2").resolve("allowed.internal", 80))[0]["host"] == "10.9.1.2"


@pytest.mark.parametrize(
    ("addresses", "why"),
    [
        (("169.254.169.254",), "link-local"),
        (("93.184.216.34", "127.0.0.1"), "loopback"),  # one bad address refuses the name
        (("203.0.113.10",), "cluster"),  # a public range the admin marked as the cluster's
        (("192.168.1.1",), "private"),
        (("::ffff:169.254.169.254",), "link-local"),
    ],
)
async def test_the_resolver_refuses_what_the_policy_forbids(addresses: tuple[str, ...], why: str) -> None:
    with pytest.raises(DestinationRefused, match=why):
        await resolver_answering(*addresses).resolve("hooks.example.com", 443)


def test_literal_addresses_and_odd_schemes_are_checked_before_connecting() -> None:
    policy = NotificationSettings(allowed_destinations=("127.0.0.1",)).policy()
    assert literal_refusal("http://127.0.0.1:8080/hook", policy) is None
    assert literal_refusal("https://hooks.example.com/x", policy) is None  # names: the resolver checks them
    refused = literal_refusal("http://169.254.169.254/latest/meta-data", policy)
    assert refused is not None and "link-local" in refused
    assert literal_refusal("http://[::1]:80/", policy) is not None
    assert literal_refusal("file:///etc/passwd", policy) == "the URL is not an absolute http(s):// URL"
    assert literal_refusal("gopher://hooks.example.com/", policy) is not None


def test_the_readme_verification_snippet_accepts_our_signatures_only() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Notifications", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, Any] = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # the README's own code
    verify = scope["verify"]
    body = build_event("u-1.succeeded.2", "Succeeded", "2026-12-03T12:00:00Z", 2, JOB)
    now = int(time.time())
    assert verify(KEY, signature(KEY, body, now), body)
    assert not verify(KEY, signature(KEY, body, now), body + b" ")
    assert not verify(b"other", signature(KEY, body, now), body)
    assert not verify(KEY, signature(KEY, body, now - 301), body)
