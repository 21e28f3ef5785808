"""`kube.client.informer` against a tiny in-process server speaking the list and watch protocol:
a broken watch resumes from the last resourceVersion (bookmarks included) without listing again,
410 Gone lists again (and counts; lists read the watch cache no older than what was seen), a 200 kB
object in one watch line is delivered, and open watches never take the connections requests need.
Also the readiness decision built on the watches."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ffrtmp.controller.watches import not_ready
from ffrtmp.kube.client import KubeClient, informer
from ffrtmp.kube.config import KubeConfig

Obj = dict[str, Any]
PATH = "/api/v1/namespaces/ns/pods"


def _event(kind: str, rv: str, payload: str = "") -> bytes:
    obj = {"metadata": {"name": f"p{rv}", "resourceVersion": rv, "annotations": {"big": payload}}}
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class WatchServer:
    """Answers lists with resourceVersion 10; the first watch sends ADDED 11 and BOOKMARK 12 and
    then drops the connection mid-stream; the second sends one 200 kB object (13) and 410 Gone."""

    def __init__(self) -> None:
        self.requests: list[dict[str, list[str]]] = []
        self.watches = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        target = head.split(b" ")[1].decode()
        query = parse_qs(urlsplit(target).query)
        self.requests.append(query)
        if "watch" not in query:
            body = json.dumps({"items": [], "metadata": {"resourceVersion": "10"}}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            writer.write(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
            writer.close()
            return
        self.watches += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        if self.watches == 1:
            writer.write(_chunk(_event("ADDED", "11")) + _chunk(_event("BOOKMARK", "12")))
        elif self.watches == 2:
            big = _event("ADDED", "13", "x" * 200_000)
            writer.write(_chunk(big[:70_000]) + _chunk(big[70_000:]))
            gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
            writer.write(_chunk(json.dumps(gone).encode() + b"\n") + b"0\r\n\r\n")
        else:
            await asyncio.sleep(3600)
        await writer.drain()
        writer.close()  # the first watch's stream ends without its last chunk: a broken connection


async def test_a_broken_watch_resumes_and_only_410_relists() -> None:
    fake = WatchServer()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    relists: list[int] = []
    seen: list[tuple[str, Obj]] = []
    async with server, KubeClient(KubeConfig(server=url)) as client:
        stream = informer(client, PATH, retry_delay=0.01, on_relist=lambda: relists.append(len(fake.requests)))
        async for event_type, obj in stream:
            seen.append((event_type, obj))
            if event_type == "SYNC" and len(seen) > 1:
                break
    kinds = [event_type for event_type, _ in seen]
    assert kinds == ["SYNC", "ADDED", "ADDED", "SYNC"]
    assert len(seen[2][1]["metadata"]["annotations"]["big"]) == 200_000
    watched_from = [q["resourceVersion"][0] for q in fake.requests if "watch" in q]
    assert watched_from == ["10", "12"]
    assert ["watch" in q for q in fake.requests] == [False, True, True, False]
    assert relists == [3]
    # Lists come from the watch cache: the first at any state, the relist no older than seen.
    lists = [(q.get("resourceVersion"), q.get("resourceVersionMatch")) for q in fake.requests if "watch" not in q]
    assert lists == [(["0"], ["NotOlderThan"]), (["13"], ["NotOlderThan"])]


class HoldingServer:
    """Answers every list at once; every watch sends one event and then holds its connection
    until `release` is set, as the API server holds a watch for minutes."""

    def __init__(self) -> None:
        self.open_watches = 0
        self.release = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"watch=1" not in head.split(b"\r\n", 1)[0]:
            body = json.dumps({"items": [], "metadata": {"resourceVersion": "10"}}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n")
            writer.write(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        else:
            self.open_watches += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(_chunk(_event("ADDED", "11")))
            await writer.drain()
            await self.release.wait()
            self.open_watches -= 1
        await writer.drain()
        writer.close()


async def test_open_watches_never_take_the_connections_requests_need() -> None:
    """Ten held watches on a client whose request pool has two connections: the watches have a
    pool of their own, so every watch opens and a list still gets a connection at once. (When
    they shared one pool, 84 watches of 21 namespaces starved the operator's writes.)"""
    fake = HoldingServer()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server, KubeClient(KubeConfig(server=url), max_connections=2) as client:
        streams = [client.watch(PATH, "10") for _ in range(10)]
        try:
            for stream in streams:
                event = await asyncio.wait_for(anext(stream), 5)
                assert event["type"] == "ADDED"
            assert fake.open_watches == 10
            listed = await asyncio.wait_for(client.get(PATH), 5)
            assert listed["metadata"]["resourceVersion"] == "10"
        finally:
            fake.release.set()
            for stream in streams:
                await stream.aclose()


def test_not_ready_names_each_unlisted_watch_and_its_list_error() -> None:
    synced = {(kind, "a") for kind in ("jobs", "pools", "pods", "leases")} | {("pods", "b")}
    errors = {("jobs", "b"): "403 Forbidden listing /x"}
    assert not_ready(["a", "b"], synced, errors) == [
        "jobs in b: 403 Forbidden listing /x",
        "pools in b: not listed yet",
        "leases in b: not listed yet",
    ]
    assert not_ready([""], {(kind, "") for kind in ("jobs", "pools", "pods", "leases")}, {}) == []
