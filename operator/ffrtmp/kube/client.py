"""Async REST calls to the API server: get, list, create, patch (fenced), delete, watch."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import aiohttp

from ffrtmp import __version__
from ffrtmp.kube.auth import Credential, Credentials
from ffrtmp.kube.config import KubeConfig

log = logging.getLogger(__name__)
Obj = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


def merge_patched(target: Any, patch: Any) -> Any:
    """`target` with the JSON merge patch `patch` applied (RFC 7386), as the API server applies a merge
    patch: objects merge key by key, null deletes the key, anything else (lists too) replaces. The
    arguments are not changed; the result may share unchanged parts with them."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patched(out.get(key), value)
    return out


class ApiError(Exception):
    """A non-2xx answer of the API server."""

    def __init__(self, status: int, reason: str, message: str, body: Obj | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def gone(self) -> bool:
        return self.status == 410


def resource_path(
    group: str,
    version: str,
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """`/api/v1/...` for the core group, `/apis/<group>/<version>/...` otherwise."""
    path = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


class KubeClient:
    """Two aiohttp sessions to one API server: one for requests, capped at `max_connections`, and
    an unlimited one for watches. Each watch holds its connection for minutes, so in a shared pool
    84 watches (21 namespaces x 4 kinds) took every connection and writes and watches timed out.
    Use as an async context manager."""

    def __init__(
        self,
        config: KubeConfig,
        *,
        max_connections: int = 64,
        timeout: float = 30.0,
        component: str = "ffrtmp",
        credentials: Credentials | None = None,
    ) -> None:
        """`component` names the caller to the API server: the User-Agent (`<component>/<version>`)
        and the fieldManager of every write, so managedFields show who wrote what. `credentials`:
        shared with other clients of the process (default: the client's own)."""
        self.config = config
        self.credentials = credentials or Credentials(config)
        self._tls: tuple[tuple[bytes | None, bytes | None], ssl.SSLContext] | None = None
        self._component = component
        self._user_agent = f"{component}/{__version__}"
        self._timeout = timeout
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._watch_session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _new_session(self, limit: int) -> aiohttp.ClientSession:
        # TLS per request (_tls): an exec plugin may hand out a new client certificate.
        connector = aiohttp.TCPConnector(limit=limit)
        return aiohttp.ClientSession(base_url=self.config.server, connector=connector)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = self._new_session(self._max_connections)
        return self._session

    def _get_watch_session(self) -> aiohttp.ClientSession:
        if self._watch_session is None or self._watch_session.closed:
            self._watch_session = self._new_session(0)  # 0: no limit
        return self._watch_session

    async def close(self) -> None:
        for session in (self._session, self._watch_session):
            if session is not None:
                await session.close()
        self._session = self._watch_session = None

    def _tls_for(self, cred: Credential) -> ssl.SSLContext:
        """The TLS context for a credential's client certificate, rebuilt only when it changes."""
        key = (cred.cert_data, cred.key_data)
        if self._tls is None or self._tls[0] != key:
            self._tls = (key, self.config.ssl_context(cred.cert_data, cred.key_data))
        return self._tls[1]

    @asynccontextmanager
    async def _send(
        self, session: aiohttp.ClientSession, method: str, path: str, content_type: str | None, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request with the current credential, through the config's proxy and TLS name. A 401
        to a refreshable credential (an exec plugin's) drops it and tries once more with a new one."""
        for attempt in (1, 2):
            cred = await self.credentials.current()
            headers = {"Accept": "application/json", "User-Agent": self._user_agent}
            if cred.token:
                headers["Authorization"] = f"Bearer {cred.token}"
            if content_type:
                headers["Content-Type"] = content_type
            async with session.request(
                method,
                path,
                headers=headers,
                ssl=self._tls_for(cred),
                server_hostname=self.config.tls_server_name,
                proxy=self.config.proxy,
                **kwargs,
            ) as resp:
                if resp.status == 401 and attempt == 1 and self.credentials.invalidate(cred):
                    log.info("%s %s: 401 Unauthorized; fetching a new credential and trying again", method, path)
                    continue
                yield resp
                return

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: object = None,
        content_type: str = "application/json",
        request_timeout: float | None = None,
    ) -> Obj:
        data = None if body is None else json.dumps(body)
        query = {k: str(v) for k, v in (params or {}).items()}
        if method in ("POST", "PUT", "PATCH"):
            query.setdefault("fieldManager", self._component)
        async with self._send(
            self._get_session(),
            method,
            path,
            content_type if data is not None else None,
            params=query,
            data=data,
            timeout=aiohttp.ClientTimeout(total=request_timeout or self._timeout),
        ) as resp:
            text = await resp.text()
            payload: Obj = json.loads(text) if text and text[0] == "{" else {}
            if resp.status >= 400:
                raise ApiError(
                    resp.status,
                    str(payload.get("reason", resp.reason or "")),
                    str(payload.get("message", text[:500])),
                    payload,
                )
            return payload

    async def get(self, path: str, **params: str | int) -> Obj:
        return await self.request("GET", path, params=params)

    async def create(self, path: str, body: Obj, *, request_timeout: float | None = None, **params: str | int) -> Obj:
        return await self.request("POST", path, body=body, params=params, request_timeout=request_timeout)

    async def replace(self, path: str, body: Obj) -> Obj:
        return await self.request("PUT", path, body=body)

    async def merge_patch(
        self, path: str, body: Obj, *, request_timeout: float | None = None, **params: str | int
    ) -> Obj:
        """JSON merge patch. Put `metadata.resourceVersion` in the body to make it conditional."""
        return await self.request(
            "PATCH", path, body=body, content_type=MERGE_PATCH, params=params, request_timeout=request_timeout
        )

    async def json_patch(self, path: str, ops: list[Obj]) -> Obj:
        """RFC 6902 patch; a `test` op makes it conditional on current values."""
        return await self.request("PATCH", path, body=ops, content_type=JSON_PATCH)

    async def strategic_patch(self, path: str, body: Obj) -> Obj:
        return await self.request("PATCH", path, body=body, content_type=STRATEGIC_PATCH)

    async def delete(self, path: str, body: Obj | None = None, **params: str | int) -> Obj:
        return await self.request("DELETE", path, body=body, params=params)

    async def delete_ignore_missing(self, path: str, body: Obj | None = None) -> bool:
        try:
            await self.delete(path, body)
        except ApiError as e:
            if e.not_found:
                return False
            raise
        return True

    async def list_all(
        self,
        path: str,
        params: Mapping[str, str | int] | None = None,
        *,
        page_size: int = 500,
        not_older_than: str | None = None,
    ) -> tuple[list[Obj], str]:
        """Every item (paged), and the list's resourceVersion to start a watch from.

        `not_older_than`: None reads the newest state (a quorum read); "0" any state the API
        server's watch cache holds; a resourceVersion, a state at least that new. Both of the
        latter are answered from the watch cache without waiting for it to catch up with etcd."""
        items: list[Obj] = []
        cont: str | None = None
        while True:
            query: dict[str, str | int] = {**(params or {}), "limit": page_size}
            if cont:
                query["continue"] = cont  # a continued list carries no resourceVersion
            elif not_older_than is not None:
                query["resourceVersion"] = not_older_than
                query["resourceVersionMatch"] = "NotOlderThan"
            page = await self.request("GET", path, params=query)
            items.extend(page.get("items", []))
            cont = page.get("metadata", {}).get("continue")
            if not cont:
                return items, str(page.get("metadata", {}).get("resourceVersion", ""))

    async def watch(
        self,
        path: str,
        resource_version: str,
        params: Mapping[str, str | int] | None = None,
        *,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[Obj]:
        """Events after `resource_version` until the server ends the watch. Raises ApiError(410)."""
        query = {
            **{k: str(v) for k, v in (params or {}).items()},
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        async with self._send(
            self._get_watch_session(),
            "GET",
            path,
            None,
            params=query,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + 30),
        ) as resp:
            if resp.status >= 400:
                text = await resp.text()
                raise ApiError(resp.status, resp.reason or "", text[:500])
            async for line in lines(resp.content):
                event: Obj = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    raise ApiError(
                        int(status.get("code", 500)),
                        str(status.get("reason", "")),
                        str(status.get("message", "")),
                    )
                yield event


async def lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Non-blank lines of any length. aiohttp's own line iteration raises on lines over its
    buffer's limit (tens of KiB), and one watch event is one line holding a whole object."""
    pending: list[bytes] = []  # the start of a line not ended yet; each chunk is split once
    async for chunk in stream.iter_any():
        *complete, rest = chunk.split(b"\n")
        if complete:
            complete[0] = b"".join([*pending, complete[0]])
            pending = []
            for line in complete:
                if line.strip():
                    yield line
        if rest:
            pending.append(rest)
    last = b"".join(pending)
    if last.strip():
        yield last


async def informer(
    client: KubeClient,
    path: str,
    params: Mapping[str, str | int] | None = None,
    *,
    retry_delay: float = 0.5,
    max_retry_delay: float = 5.0,
    on_relist: Callable[[], None] | None = None,
    on_list_error: Callable[[ApiError], None] | None = None,
) -> AsyncIterator[tuple[str, Obj]]:
    """List, then watch forever. Yields (type, object).

    A broken stream or a failed watch resumes from the last resourceVersion seen (bookmarks
    included); only 410 Gone, or a list that never succeeded, lists again. `on_relist` is called
    before every list after the first, `on_list_error` with every error answer to a list. Lists
    are answered from the API server's watch cache, as client-go's reflector lists: the first with
    resourceVersion 0, a relist with the last resourceVersion seen (no older state than the
    consumer has; after a refused list, the newest state). A thousand workers relisting their
    filtered job watches together then cost a cache lookup each, not a read and decode of every
    job from etcd (BENCHMARKS.md, figure 9).

    After each (re)list it yields ("SYNC", {"items": [...], "metadata": {"resourceVersion": rv}}) so
    the consumer can replace its view: objects deleted while the watch was down disappear then.
    Failures are retried after `retry_delay`, doubling up to `max_retry_delay` until a call succeeds,
    each delay jittered by +-50 %: a thousand workers whose watches broke together must not all list
    again at the same instant.
    """
    resource_version = ""
    seen: str | None = "0"  # the newest resourceVersion seen, kept across relists
    delay = retry_delay
    listed = False
    while True:
        try:
            if not resource_version:
                if listed and on_relist is not None:
                    on_relist()
                listed = True
                items, resource_version = await client.list_all(path, params, not_older_than=seen)
                seen = resource_version or seen
                delay = retry_delay
                yield "SYNC", {"items": items, "metadata": {"resourceVersion": resource_version}}
            async for event in client.watch(path, resource_version, params):
                obj = event.get("object", {})
                rv = obj.get("metadata", {}).get("resourceVersion")
                if rv:
                    resource_version = seen = rv
                delay = retry_delay
                if event["type"] != "BOOKMARK":
                    yield event["type"], obj
        except ApiError as e:
            if not resource_version:
                # A refused cache read (a resourceVersion this server's cache has not reached,
                # behind a load balancer) is retried as a quorum read, as client-go does.
                seen = None
                if on_list_error is not None:
                    on_list_error(e)
            if e.gone:
                resource_version = ""
                log.info("watch of %s expired (410 Gone); relisting", path)
                continue
            log.warning("watch of %s failed: %s; retrying in about %.1fs", path, e, delay)
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
            log.warning("watch of %s broke: %r; resuming in about %.1fs", path, e, delay)
        await asyncio.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, max_retry_delay)
