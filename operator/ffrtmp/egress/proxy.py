"""The worker's loopback egress proxy: every http(s) connection of a job goes through the policy.

ffmpeg and ffprobe run with `http_proxy` pointing here (and without `no_proxy`), the worker's own
playlist check uses it too. For each request the proxy

1. takes the destination from the request itself (an absolute `http://` URL, or `CONNECT
   host:port` for https), never from a Host header;
2. resolves the name itself and asks the policy about EVERY resolved address: one refused
   address refuses the request;
3. connects to an address it checked (no second resolution, so DNS rebinding gains nothing).

A refused request gets the same answer whatever listens (or does not) at the destination, since
the proxy never tries to connect: `403` with a fixed body. Each refusal is recorded, so the worker
can tell "the egress policy refused" from any other failure (reason DestinationNotAllowed). The
proxy's own answers carry `X-Ffrtmp-Egress` (refused, unresolved, unreachable, bad-request), so a
client of the worker (the S3 client) tells them from the destination's own 403 or 502.

One request per client connection: plain-http responses are passed on with `Connection: close`
(ffmpeg opens a new connection for its next request, and that one is checked again); CONNECT
tunnels carry one TLS session to the checked address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ffrtmp.egress.policy import EgressPolicy, IPAddress, normalize_host, parse_address

log = logging.getLogger(__name__)

LISTEN_ADDRESS = ipaddress.IPv4Address("127.0.0.1")
HEAD_LIMIT = 64 * 1024
HEAD_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 15.0
REFUSED_BODY = b"Destination not allowed by the egress policy.\n"
EGRESS_HEADER = "X-Ffrtmp-Egress"
BODY_CHUNK = 64 * 1024
_HOP_BY_HOP = ("connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate", "te",
               "trailer", "upgrade")  # fmt: skip

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


@dataclass(frozen=True)
class Refusal:
    """One destination the policy refused: what the client asked for and (for the log) why."""

    host: str
    port: int
    why: str


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (TCP), in the resolver's order; an IP literal is itself."""
    literal = parse_address(host)
    if literal is not None:
        return [literal]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for info in infos:
        address = parse_address(str(info[4][0]))
        if address is not None and address not in found:
            found.append(address)
    return found


class _BadRequest(Exception):
    pass


def parse_connect_target(target: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` of a CONNECT request."""
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = target.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _BadRequest(f"bad CONNECT target {target!r}")
    return host, int(port_text)


def parse_absolute_http(target: str) -> tuple[str, int, str]:
    """(host, port, origin-form path) of an absolute `http://` request target."""
    parts = urlsplit(target)
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise _BadRequest(f"only absolute http:// URLs and CONNECT are proxied, not {target[:100]!r}")
    try:
        port = parts.port or 80
    except ValueError:
        raise _BadRequest(f"bad port in {target[:100]!r}") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, port, path


@dataclass
class EgressProxy:
    """An HTTP forward proxy on 127.0.0.1 that enforces `policy` at connect time."""

    policy: EgressPolicy
    resolver: Resolver = system_resolver
    label: str = ""  # for the log: whose connections these are (the job)
    refusals: list[Refusal] = field(default_factory=list)
    received: int = 0  # bytes received from the destinations (response heads and bodies, tunnelled bytes)
    opened: list[tuple[str, int]] = field(default_factory=list)  # (host, port) of each connection made
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def endpoint(self) -> tuple[IPAddress, int]:
        """The address and port it listens on."""
        assert self._server is not None, "the proxy is not started"
        return LISTEN_ADDRESS, self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{LISTEN_ADDRESS}:{self.endpoint[1]}"

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, str(LISTEN_ADDRESS), 0)
        return self.url

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> EgressProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- one client connection -------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # the proxy is closing (the attempt ended): this connection ends with it
        except _BadRequest as e:
            await _answer(writer, 400, "Bad Request", f"{e}\n".encode(), "bad-request")
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(HEAD_TIMEOUT_SECONDS):
            head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > HEAD_LIMIT:
            raise _BadRequest("request head too large")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = request_line.split(" ")
        except ValueError:
            raise _BadRequest("malformed request line") from None
        if method.upper() == "CONNECT":
            host, port = parse_connect_target(target)
            upstream = await self._open(host, port, writer)
            if upstream is None:
                return
            up_reader, up_writer = upstream
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await _pipe_both(reader, writer, up_reader, up_writer, self._count)
            return
        host, port, path = parse_absolute_http(target)
        if any(h.split(":", 1)[0].strip().lower() == "transfer-encoding" for h in header_lines):
            raise _BadRequest("chunked request bodies are not proxied")
        upstream = await self._open(host, port, writer)
        if upstream is None:
            return
        up_reader, up_writer = upstream
        try:
            headers = [h for h in header_lines if h and h.split(":", 1)[0].strip().lower() not in _HOP_BY_HOP]
            out = "\r\n".join([f"{method} {path} {version}", *headers, "Connection: close", "", ""])
            up_writer.write(out.encode("latin-1"))
            await up_writer.drain()
            # The request body, if any (ffmpeg sends none when reading; the worker's S3 uploads do), passed on
            # as it arrives: Content-Length bytes, never held whole.
            remaining = _content_length(header_lines)
            while remaining:
                chunk = await reader.readexactly(min(remaining, BODY_CHUNK))
                up_writer.write(chunk)
                await up_writer.drain()
                remaining -= len(chunk)
            async with asyncio.timeout(HEAD_TIMEOUT_SECONDS):
                response = await up_reader.readuntil(b"\r\n\r\n")
            self._count(len(response))
            status_line, *response_headers = response.decode("latin-1").split("\r\n")
            kept = [h for h in response_headers if h and h.split(":", 1)[0].strip().lower() not in _HOP_BY_HOP]
            writer.write("\r\n".join([status_line, *kept, "Connection: close", "", ""]).encode("latin-1"))
            await writer.drain()
            await _pipe(up_reader, writer, self._count)
        finally:
            up_writer.close()

    def _count(self, size: int) -> None:
        self.received += size

    async def _open(
        self, host: str, port: int, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to a checked address of host:port, or None after answering the client."""
        name = normalize_host(host)
        try:
            addresses = await self.resolver(name, port)
        except (OSError, UnicodeError):
            addresses = []
        if not addresses:
            # Names the resolver does not know: not a policy refusal (nothing was checked).
            await _answer(writer, 502, "Bad Gateway", b"The destination name does not resolve.\n", "unresolved")
            return None
        for address in addresses:
            why = self.policy.denied_because(name, address)
            if why is not None:
                self.refusals.append(Refusal(name, port, why))
                log.info("%s egress refused: %s:%d (%s)", self.label, name, port, why)
                await _answer(writer, 403, "Forbidden", REFUSED_BODY, "refused")
                return None
        last: Exception | None = None
        for address in addresses:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                    connection = await asyncio.open_connection(str(address), port)
                self.opened.append((name, port))
                return connection
            except (OSError, TimeoutError) as e:
                last = e
        log.info("%s egress to %s:%d failed: %r", self.label, name, port, last)
        await _answer(writer, 502, "Bad Gateway", b"The destination did not accept the connection.\n", "unreachable")
        return None


def _content_length(header_lines: list[str]) -> int:
    for line in header_lines:
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-length" and value.strip().isdigit():
            return int(value.strip())
    return 0


async def _answer(writer: asyncio.StreamWriter, code: int, text: str, body: bytes, what: str) -> None:
    head = (
        f"HTTP/1.1 {code} {text}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        f"{EGRESS_HEADER}: {what}\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(ConnectionError):
        writer.write(head.encode() + body)
        await writer.drain()


async def _pipe(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, count: Callable[[int], None] | None = None
) -> None:
    with contextlib.suppress(OSError):
        while chunk := await source.read(65536):
            if count is not None:
                count(len(chunk))
            sink.write(chunk)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()


async def _pipe_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    count: Callable[[int], None],
) -> None:
    try:
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer, count))
    finally:
        up_writer.close()


async def api_server_addresses(server_url: str, service_host: str | None = None) -> tuple[str, ...]:
    """Every address of the API server the worker talks to (its URL's host, resolved) and of the
    in-cluster `kubernetes` Service (`KUBERNETES_SERVICE_HOST`): jobs may never connect to them."""
    found: list[str] = []
    for host in (urlsplit(server_url).hostname, service_host):
        if not host:
            continue
        try:
            addresses = await system_resolver(host, 443)
        except OSError:
            log.warning("cannot resolve the API server host %s: its addresses are not in the egress deny list", host)
            continue
        found += [str(a) for a in addresses if str(a) not in found]
    return tuple(found)
