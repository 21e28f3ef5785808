"""How an attempt applies the egress policy: ffmpeg's environment and refusals as job failures."""

from __future__ import annotations

from ffrtmp.egress.policy import EgressPolicy, IPAddress, parse_address
from ffrtmp.egress.rules import destination_refusal, proxy_env, unproxied_refusal, url_refusal

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


def test_the_refusal_message_names_host_and_port_only() -> None:
    failure = destination_refusal("internal.example", 8080)
    assert failure.reason == "DestinationNotAllowed" and not failure.retryable
    assert "internal.example:8080" in failure.message and "10." not in failure.message


async def test_rtmp_needs_the_pool_to_allow_it_and_then_its_host_is_checked() -> None:
    refused = await unproxied_refusal("rtmp://public.example/live/a", POLICY, (), resolve)
    assert refused is not None and "spec.egress.allowUnproxiedProtocols" in refused.message
    assert await unproxied_refusal("rtmp://public.example/live/a", POLICY, ("rtmp",), resolve) is None
    inside = await unproxied_refusal("rtmp://internal.example:1936/live/a", POLICY, ("rtmp",), resolve)
    assert inside is not None and "internal.example:1936" in inside.message
    assert await unproxied_refusal("rtmp://allowed.example/live/a", POLICY, ("rtmp",), resolve) is None
    # rtmps, http(s) and files go through the proxy (or nowhere): nothing to decide here.
    for url in ("rtmps://internal.example/live/a", "http://internal.example/a.mp4", "/media/a.mp4"):
        assert await unproxied_refusal(url, POLICY, (), resolve) is None


async def test_a_url_on_a_refused_host_is_a_destination_refusal() -> None:
    refused = await url_refusal("https://internal.example/seg.ts", POLICY, resolve)
    assert refused is not None and "internal.example:443" in refused.message
    assert await url_refusal("http://public.example/seg.ts", POLICY, resolve) is None
    assert await url_refusal("http://nowhere.example/seg.ts", POLICY, resolve) is None  # does not resolve
