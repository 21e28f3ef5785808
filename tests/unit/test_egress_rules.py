"""How an attempt applies the egress policy: ffmpeg's environment and refusals as job failures."""

from __future__ import annotations

from ipaddress import ip_address

from ffrtmp.egress.policy import EgressPolicy, IPAddress, parse_address
from ffrtmp.egress.rules import (
    UnproxiedCheck,
    check_unproxied,
    destination_refusal,
    guard_refusal,
    proxy_env,
    url_refusal,
)

POLICY = EgressPolicy.build(["127.0.0.2/32"])


async def resolve(host: str, port: int) -> list[IPAddress]:
    table = {"public.example": "203.0.113.5", "internal.example": "10.1.2.3", "allowed.example": "127.0.0.2"}
    address = parse_address(table.get(host, host))
    if address is None:
        raise OSError("does not resolve")
    return [address]


def test_ffmpeg_gets_the_proxy_and_no_way_around_it() -> None:
    env = {"PATH": "/bin", "no_proxy": "*", "NO_PROXY": "*", "HTTPS_PROXY": "http://x", "http_proxy": "http://y"}
    assert proxy_env(env, "http://127.0.0.1:5000") == {"PATH": "/bin", "http_proxy": "http://127.0.0.1:5000"}


def test_a_connect_guard_refusal_names_no_address() -> None:
    failure = guard_refusal()
    assert failure.reason == "DestinationNotAllowed" and not failure.retryable
    assert "egress policy does not allow" in failure.message and not any(c.isdigit() for c in failure.message)


def test_the_refusal_message_names_host_and_port_only() -> None:
    failure = destination_refusal("internal.example", 8080)
    assert failure.reason == "DestinationNotAllowed" and not failure.retryable
    assert "internal.example:8080" in failure.message and "10." not in failure.message


async def test_rtmp_needs_the_pool_to_allow_it_and_then_its_host_is_checked_and_pinned() -> None:
    refused = (await check_unproxied("rtmp://public.example/live/a", POLICY, (), resolve)).refused
    assert refused is not None and "spec.egress.allowUnproxiedProtocols" in refused.message
    public = await check_unproxied("rtmp://public.example/live/a", POLICY, ("rtmp",), resolve)
    assert public == UnproxiedCheck(None, ((ip_address("203.0.113.5"), 1935),))
    inside = await check_unproxied("rtmp://internal.example:1936/live/a", POLICY, ("rtmp",), resolve)
    assert inside.refused is not None and "internal.example:1936" in inside.refused.message and inside.pinned == ()
    allowed = await check_unproxied("rtmp://allowed.example:1940/live/a", POLICY, ("rtmp",), resolve)
    assert allowed == UnproxiedCheck(None, ((ip_address("127.0.0.2"), 1940),))
    # A name that does not resolve pins nothing: ffmpeg's connection is refused by the connect guard.
    assert await check_unproxied("rtmp://nowhere.example/live/a", POLICY, ("rtmp",), resolve) == UnproxiedCheck()
    # rtmps, http(s) and files go through the proxy (or nowhere): nothing to decide here.
    for url in ("rtmps://internal.example/live/a", "http://internal.example/a.mp4", "/media/a.mp4"):
        assert await check_unproxied(url, POLICY, (), resolve) == UnproxiedCheck()


async def test_a_url_on_a_refused_host_is_a_destination_refusal() -> None:
    refused = await url_refusal("https://internal.example/seg.ts", POLICY, resolve)
    assert refused is not None and "internal.example:443" in refused.message
    assert await url_refusal("http://public.example/seg.ts", POLICY, resolve) is None
    assert await url_refusal("http://nowhere.example/seg.ts", POLICY, resolve) is None  # does not resolve
