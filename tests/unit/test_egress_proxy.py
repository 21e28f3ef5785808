"""The loopback egress proxy, over real sockets: what it forwards, what it refuses, and that a
refusal looks the same whatever listens at the destination.

Test servers listen on distinct loopback addresses; the policy allowlists 127.0.0.2 only, so
127.0.0.3 stands for "a forbidden host" (loopback, refused by default)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest

from ffrtmp.egress.policy import EgressPolicy, IPAddress, parse_address
from ffrtmp.egress.proxy import EGRESS_HEADER, EgressProxy, api_server_addresses, parse_connect_target
from ffrtmp.ffmpeg.inputs import InputNotAllowed, InputUnavailable, check_playlist

ALLOWED, FORBIDDEN, SILENT = "127.0.0.2", "127.0.0.3", "127.0.0.4"
POLICY = EgressPolicy.build([f"{ALLOWED}/32"])


@dataclass
class Origin:
    """A tiny HTTP server that records every request line and answers from `routes`."""

    host: str
    routes: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> Origin:
        self.server = await asyncio.start_server(self._serve, self.host, 0)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        line = head.split("\r\n", 1)[0]
        self.requests.append(head)
        if line.startswith("ECHO"):  # raw tunnel check: echo one line back
            writer.write(b"echo:" + head.encode())
        else:
            path = line.split(" ")[1]
            code, headers, body = self.routes.get(path, (404, {}, b"not found"))
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(
                f"HTTP/1.1 {code} X\r\nContent-Length: {len(body)}\r\nConnection: keep-alive\r\n{extra}\r\n".encode()
                + body
            )
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def origins() -> AsyncIterator[tuple[Origin, Origin]]:
    allowed, forbidden = await Origin(ALLOWED).start(), await Origin(FORBIDDEN).start()
    yield allowed, forbidden
    await allowed.stop()
    await forbidden.stop()


async def raw(proxy: EgressProxy, request: bytes) -> bytes:
    """Send `request` to the proxy and read everything it answers."""
    port = int(proxy.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return data


async def test_plain_http_is_forwarded_in_origin_form_with_connection_close(origins: tuple[Origin, Origin]) -> None:
    allowed, _ = origins
    allowed.routes["/a.ts?x=1"] = (200, {}, b"segment")
    async with EgressProxy(POLICY) as proxy:
        answer = await raw(proxy, f"GET {allowed.base}/a.ts?x=1 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n"
                                  f"Proxy-Connection: keep-alive\r\n\r\n".encode())  # fmt: skip
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and body == b"segment"
    assert b"Connection: close" in head and b"keep-alive" not in head
    request = allowed.requests[0]
    assert request.startswith("GET /a.ts?x=1 HTTP/1.1\r\n")
    assert "Proxy-Connection" not in request and "Connection: close" in request
    assert proxy.refusals == []


async def test_a_refusal_is_the_same_whatever_listens_and_nothing_is_contacted(origins: tuple[Origin, Origin]) -> None:
    _, forbidden = origins
    async with EgressProxy(POLICY) as proxy:
        listening = await raw(proxy, f"GET {forbidden.base}/x HTTP/1.1\r\n\r\n".encode())
        nothing = await raw(proxy, f"GET http://{SILENT}:9/x HTTP/1.1\r\n\r\n".encode())
        connect_listening = await raw(proxy, f"CONNECT {FORBIDDEN}:{forbidden.port} HTTP/1.1\r\n\r\n".encode())
        connect_nothing = await raw(proxy, f"CONNECT {SILENT}:9 HTTP/1.1\r\n\r\n".encode())
    assert listening.startswith(b"HTTP/1.1 403 ")
    assert listening == nothing == connect_listening == connect_nothing
    assert forbidden.connections == 0
    assert [(r.host, r.port) for r in proxy.refusals] == [
        (FORBIDDEN, forbidden.port), (SILENT, 9), (FORBIDDEN, forbidden.port), (SILENT, 9)
    ]  # fmt: skip
    assert all("loopback" in r.why for r in proxy.refusals)


async def test_connect_tunnels_to_an_allowed_destination(origins: tuple[Origin, Origin]) -> None:
    allowed, _ = origins
    async with EgressProxy(POLICY) as proxy:
        answer = await raw(proxy, f"CONNECT {ALLOWED}:{allowed.port} HTTP/1.1\r\n\r\nECHO hello\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200 Connection established\r\n\r\necho:ECHO hello")


async def test_the_bytes_received_from_destinations_are_counted(origins: tuple[Origin, Origin]) -> None:
    allowed, forbidden = origins
    allowed.routes["/seg.ts"] = (200, {}, b"x" * 100_000)
    async with EgressProxy(POLICY) as proxy:
        await raw(proxy, f"GET {allowed.base}/seg.ts HTTP/1.1\r\n\r\n".encode())
        head = b"HTTP/1.1 200 X\r\nContent-Length: 100000\r\nConnection: keep-alive\r\n\r\n"
        assert proxy.received == len(head) + 100_000, "the origin's head and body as it sent them"
        tunnelled = await raw(proxy, f"CONNECT {ALLOWED}:{allowed.port} HTTP/1.1\r\n\r\nECHO hi\r\n\r\n".encode())
        echoed = len(tunnelled) - len(b"HTTP/1.1 200 Connection established\r\n\r\n")
        assert proxy.received == len(head) + 100_000 + echoed
        await raw(proxy, f"GET {forbidden.base}/x HTTP/1.1\r\n\r\n".encode())
        assert proxy.received == len(head) + 100_000 + echoed, "a refusal receives nothing"


async def test_every_resolved_address_is_checked_and_only_the_checked_one_is_used(
    origins: tuple[Origin, Origin],
) -> None:
    allowed, forbidden = origins
    allowed.routes["/ok"] = (200, {}, b"ok")
    calls: list[str] = []

    async def mixed(host: str, port: int) -> list[IPAddress]:
        calls.append(host)
        if host == "mixed.test":  # one good, one forbidden address: refused
            return [a for a in (parse_address(ALLOWED), parse_address(FORBIDDEN)) if a]
        # DNS rebinding: the first answer is allowed, every later one forbidden.
        address = ALLOWED if calls.count(host) == 1 else FORBIDDEN
        return [a for a in (parse_address(address),) if a]

    async with EgressProxy(POLICY, resolver=mixed) as proxy:
        refused = await raw(proxy, f"GET http://mixed.test:{allowed.port}/ok HTTP/1.1\r\n\r\n".encode())
        fine = await raw(
            proxy, f"GET http://rebind.test:{allowed.port}/ok HTTP/1.1\r\nHost: rebind.test\r\n\r\n".encode()
        )
    assert refused.startswith(b"HTTP/1.1 403")
    assert fine.startswith(b"HTTP/1.1 200") and fine.endswith(b"ok")
    assert calls == ["mixed.test", "rebind.test"]  # resolved once per request, by the proxy
    assert allowed.connections == 1 and forbidden.connections == 0


async def test_a_name_that_resolves_to_loopback_is_refused() -> None:
    async with EgressProxy(POLICY) as proxy:
        answer = await raw(proxy, b"GET http://localhost:9/x HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403")
    assert [r.host for r in proxy.refusals] == ["localhost"]


async def test_requests_the_proxy_does_not_speak_are_bad_requests() -> None:
    async with EgressProxy(POLICY) as proxy:
        https_form = await raw(proxy, b"GET https://8.8.8.8/ HTTP/1.1\r\n\r\n")
        origin_form = await raw(proxy, b"GET /etc/passwd HTTP/1.1\r\n\r\n")
        bad_connect = await raw(proxy, b"CONNECT 8.8.8.8 HTTP/1.1\r\n\r\n")
        chunked = await raw(proxy, b"POST http://8.8.8.8/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert all(a.startswith(b"HTTP/1.1 400") for a in (https_form, origin_form, bad_connect, chunked))
    assert proxy.refusals == []


async def test_a_request_body_reaches_the_destination_whole() -> None:
    """An upload's body (the worker's S3 parts) is passed on as it arrives, Content-Length bytes exactly."""
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        length = int(next(h for h in head.split("\r\n") if h.lower().startswith("content-length:")).split(":")[1])
        received.append(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, ALLOWED, 0)
    port = server.sockets[0].getsockname()[1]
    body = hashlib.sha256(b"seed").digest() * (3 * 1024 * 1024 // 32 + 7)
    try:
        async with (
            EgressProxy(POLICY) as proxy,
            aiohttp.ClientSession() as session,
            session.put(f"http://{ALLOWED}:{port}/part", data=body, proxy=proxy.url) as response,
        ):
            assert response.status == 200 and await response.read() == b"ok"
            assert EGRESS_HEADER not in response.headers
    finally:
        server.close()
        await server.wait_closed()
    assert received == [body]


async def test_the_proxy_marks_its_own_answers() -> None:
    async with EgressProxy(POLICY) as proxy, aiohttp.ClientSession() as session:
        async with session.get(f"http://{FORBIDDEN}:9/x", proxy=proxy.url) as refused:
            assert (refused.status, refused.headers[EGRESS_HEADER]) == (403, "refused")
        async with session.get(f"http://{ALLOWED}:9/x", proxy=proxy.url) as unreachable:  # nothing listens
            assert (unreachable.status, unreachable.headers[EGRESS_HEADER]) == (502, "unreachable")
        async with session.get("http://no-such-name.invalid/x", proxy=proxy.url) as unresolved:
            assert (unresolved.status, unresolved.headers[EGRESS_HEADER]) == (502, "unresolved")


def test_connect_targets() -> None:
    assert parse_connect_target("example.org:443") == ("example.org", 443)
    assert parse_connect_target("[::1]:8443") == ("::1", 8443)


async def test_the_playlist_check_goes_through_the_proxy_redirects_included(origins: tuple[Origin, Origin]) -> None:
    allowed, forbidden = origins
    allowed.routes["/r.m3u8"] = (302, {"Location": f"{forbidden.base}/p.m3u8"}, b"")
    forbidden.routes["/p.m3u8"] = (200, {}, b"#EXTM3U\n")
    async with EgressProxy(POLICY) as proxy, aiohttp.ClientSession() as session:
        with pytest.raises(InputUnavailable):
            await check_playlist(f"{forbidden.base}/p.m3u8", allowed_protocols=["http"], media_roots=[],
                                 session=session, proxy=proxy.url)  # fmt: skip
        with pytest.raises((InputUnavailable, InputNotAllowed)):  # the redirect was followed, and refused
            await check_playlist(f"{allowed.base}/r.m3u8", allowed_protocols=["http"], media_roots=[],
                                 session=session, proxy=proxy.url)  # fmt: skip
    assert forbidden.requests == [] and forbidden.connections == 0
    assert [r.host for r in proxy.refusals] == [FORBIDDEN, FORBIDDEN]
    assert [r.split(" ")[1] for r in allowed.requests] == ["/r.m3u8"]


async def test_api_server_addresses_come_from_the_worker_endpoint() -> None:
    assert await api_server_addresses("https://127.0.0.1:6443", None) == ("127.0.0.1",)
    both = await api_server_addresses("https://[::1]:6443", "10.96.0.1")
    assert both == ("::1", "10.96.0.1")
