"""Input safety: which files and URLs a job may read, and what an HLS playlist may point at.

`check_input` is pure (apart from resolving symlinks) and runs before ffmpeg starts; it
returns the URL to hand to ffmpeg. `check_playlist` reads `.m3u8` inputs (and their variant
playlists) and refuses entries that would make ffmpeg read local files or other hosts.
The `-protocol_whitelist` that `argv` puts on the command line is the second line of defence:
it stops ffmpeg itself from following `file:`/`concat:`/... references a check missed.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp

NETWORK_SCHEMES = ("http", "https", "rtmp", "rtmps")
HTTP_SCHEMES = ("http", "https")
PLAYLIST_EXTENSIONS = (".m3u8", ".m3u")
PLAYLIST_MAX_BYTES = 1 << 20
PLAYLIST_MAX_DEPTH = 2
PLAYLIST_MAX_COUNT = 64
PLAYLIST_TIMEOUT_SECONDS = 10.0
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_URI_ATTRIBUTE_RE = re.compile(r'URI="([^"]*)"')
# Tags whose URI attribute names another playlist (the rest name segments, keys, init sections).
_PLAYLIST_URI_TAGS = ("#EXT-X-MEDIA:", "#EXT-X-I-FRAME-STREAM-INF:")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class InputNotAllowed(Exception):
    """The input is outside what the worker pool allows (reason InputNotAllowed, not retryable).

    `destination`: the URL on another host that a playlist entry or redirect named, when that is
    why (the worker then asks the egress policy whether the reason is DestinationNotAllowed)."""

    def __init__(self, message: str, destination: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.destination = destination


class InputUnavailable(Exception):
    """A playlist could not be read: missing file, HTTP error, timeout (reason InputNotFound)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _has_control_characters(text: str) -> bool:
    return any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text)


def _real_roots(media_roots: Iterable[str]) -> list[str]:
    return [os.path.realpath(root) for root in media_roots]


def resolve_media_path(path: str, media_roots: Iterable[str]) -> str:
    """The real path of `path` (symlinks resolved) if it lies inside one of `media_roots`."""
    roots = list(media_roots)
    if not path.startswith("/"):
        raise InputNotAllowed(f"The input path must be absolute: {path}")
    real = os.path.realpath(path)
    for root in _real_roots(roots):
        if real != root and os.path.commonpath([real, root]) == root:
            return real
    where = ", ".join(roots) if roots else "(none configured)"
    resolved = "" if real == os.path.normpath(path) else f" (it resolves to {real})"
    raise InputNotAllowed(f"The input file {path}{resolved} is not under the pool's media roots: {where}.")


def check_input(uri: str, *, allowed_protocols: Iterable[str], media_roots: Iterable[str]) -> str:
    """The URL to give ffmpeg for `uri`, or InputNotAllowed.

    Absolute paths must resolve (symlinks followed) inside one of `media_roots` and need
    `file` in `allowed_protocols`. URLs must be `scheme://host/...` with a scheme among
    http, https, rtmp, rtmps that the pool allows. Every other form (`file:`, `concat:`,
    `data:`, `subfile,...:`, `pipe:`, relative paths, ...) is refused.
    """
    allowed = set(allowed_protocols)
    if not uri:
        raise InputNotAllowed("The input URI is empty.")
    if _has_control_characters(uri):
        raise InputNotAllowed("The input URI must not contain whitespace or control characters.")
    if uri.startswith("/"):
        if "file" not in allowed:
            raise InputNotAllowed(f"This worker pool does not accept file inputs (allowed: {_list(allowed)}): {uri}")
        return resolve_media_path(uri, media_roots)
    match = _SCHEME_RE.match(uri)
    if match is None:
        raise InputNotAllowed(f"The input must be an absolute file path or an http(s):// or rtmp(s):// URL: {uri}")
    scheme = match.group(1)
    if scheme not in NETWORK_SCHEMES:
        raise InputNotAllowed(
            f"The input scheme '{scheme}:' is not allowed; use an absolute file path or an "
            f"http(s):// or rtmp(s):// URL."
        )
    if scheme not in allowed:
        raise InputNotAllowed(f"This worker pool does not accept {scheme} inputs (allowed: {_list(allowed)}): {uri}")
    if not uri.startswith(f"{scheme}://") or not urlsplit(uri).hostname:
        raise InputNotAllowed(f"The input URL must look like {scheme}://host/path: {uri}")
    return uri


def _list(items: Iterable[str]) -> str:
    return ", ".join(sorted(items)) or "none"


def is_playlist(uri: str) -> bool:
    """Whether `uri` names an HLS playlist by its extension (query and fragment ignored)."""
    path = urlsplit(uri).path if _SCHEME_RE.match(uri) else uri
    return path.lower().endswith(PLAYLIST_EXTENSIONS)


@dataclass(frozen=True)
class PlaylistReference:
    """One URI a playlist refers to."""

    uri: str
    playlist: bool


def playlist_references(text: str) -> list[PlaylistReference]:
    """Every URI an HLS playlist refers to: segments, variant playlists, keys, init sections.

    Empty list when `text` is not an HLS playlist (no `#EXTM3U` header): ffmpeg's HLS
    demuxer would not read it as one either.
    """
    body = text.lstrip("\ufeff \t\r\n")
    if not body.startswith("#EXTM3U"):
        return []
    references: list[PlaylistReference] = []
    next_is_variant = False
    for raw in body.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if line.startswith("#EXT-X-STREAM-INF:"):
                next_is_variant = True
            nested = line.startswith(_PLAYLIST_URI_TAGS)
            for uri in _URI_ATTRIBUTE_RE.findall(line):
                references.append(PlaylistReference(uri, nested or is_playlist(uri)))
            continue
        references.append(PlaylistReference(line, next_is_variant or is_playlist(line)))
        next_is_variant = False
    return references


def _entry_scheme(entry: str) -> str | None:
    """The scheme ffmpeg would see in `entry`: the text before ':' when ':' comes before '/?#'.

    This mirrors ffmpeg's URL splitting, so `subfile,,start,0,end,0,,:/etc/passwd` has a
    scheme (ffmpeg opens it with the subfile protocol) although it is not a valid RFC 3986 one.
    """
    for index, char in enumerate(entry):
        if char in "/?#":
            return None
        if char == ":":
            return entry[:index].lower() if index > 0 else None
    return None


def _port(scheme: str, parts_port: int | None) -> int | None:
    return parts_port if parts_port is not None else _DEFAULT_PORTS.get(scheme)


def _same_host(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    if (pa.hostname or "").lower() != (pb.hostname or "").lower():
        return False
    return _port(pa.scheme, pa.port) == _port(pb.scheme, pb.port)


def resolve_reference(
    playlist: str, entry: str, *, allowed_protocols: Iterable[str], media_roots: Iterable[str]
) -> str:
    """Where `entry` of `playlist` points, or InputNotAllowed when ffmpeg must not go there.

    A playlist file may only refer to files inside the media roots. A playlist fetched over
    http(s) may only refer to http(s) URLs (allowed by the pool) on its own host; relative
    and root-relative entries resolve against the playlist's URL, as ffmpeg resolves them.
    """
    allowed = set(allowed_protocols)
    if _has_control_characters(entry):
        raise InputNotAllowed(f"The playlist {playlist} has an entry with control characters.")
    scheme = _entry_scheme(entry)
    if playlist.startswith("/"):
        if scheme is not None:
            raise InputNotAllowed(
                f"The playlist {playlist} refers to '{entry}': a playlist file may only refer to files next to it."
            )
        target = entry if entry.startswith("/") else os.path.join(os.path.dirname(playlist), entry)
        try:
            return resolve_media_path(target, media_roots)
        except InputNotAllowed:
            raise InputNotAllowed(
                f"The playlist {playlist} refers to '{entry}', which is outside the media roots."
            ) from None
    if scheme is not None and scheme not in HTTP_SCHEMES:
        raise InputNotAllowed(
            f"The playlist {playlist} refers to '{entry}': only http(s) entries on the playlist's own host are allowed."
        )
    target = urljoin(playlist, entry)
    target_scheme = urlsplit(target).scheme
    if target_scheme not in HTTP_SCHEMES or target_scheme not in allowed:
        raise InputNotAllowed(f"The playlist {playlist} refers to '{entry}', whose protocol this pool does not allow.")
    if not _same_host(playlist, target):
        raise InputNotAllowed(
            f"The playlist {playlist} refers to '{entry}' on another host; entries must stay on the playlist's host.",
            target,
        )
    return target


async def _read_local(path: str, max_bytes: int) -> str:
    def read() -> bytes:
        with open(path, "rb") as handle:
            return handle.read(max_bytes + 1)

    try:
        data = await asyncio.to_thread(read)
    except OSError as exc:
        raise InputUnavailable(f"The playlist {path} cannot be read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise InputNotAllowed(f"The playlist {path} is larger than {max_bytes} bytes.")
    return data.decode("utf-8", errors="replace")


async def _read_http(
    url: str,
    max_bytes: int,
    seconds: float,
    session: aiohttp.ClientSession,
    proxy: str | None,
    headers: Mapping[str, str] | None = None,
) -> str:
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=seconds), allow_redirects=True, max_redirects=5, proxy=proxy,
            headers=dict(headers or {}),
        ) as response:  # fmt: skip
            final = str(response.url)
            if not _same_host(url, final):
                raise InputNotAllowed(f"The playlist {url} redirects to another host: {final}", final)
            if response.status != 200:
                raise InputUnavailable(f"The playlist {url} cannot be read: HTTP {response.status}")
            data = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                data.extend(chunk)
                if len(data) > max_bytes:
                    raise InputNotAllowed(f"The playlist {url} is larger than {max_bytes} bytes.")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise InputUnavailable(f"The playlist {url} cannot be read: {exc or type(exc).__name__}") from None
    return bytes(data).decode("utf-8", errors="replace")


async def check_playlist(
    url_or_path: str,
    *,
    allowed_protocols: Iterable[str],
    media_roots: Iterable[str],
    max_depth: int = PLAYLIST_MAX_DEPTH,
    max_bytes: int = PLAYLIST_MAX_BYTES,
    max_playlists: int = PLAYLIST_MAX_COUNT,
    read_timeout: float = PLAYLIST_TIMEOUT_SECONDS,
    session: aiohttp.ClientSession | None = None,
    proxy: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> list[str]:
    """Check an HLS input and the playlists it refers to; return the playlists read.

    `url_or_path` is what `check_input` returned. Raises InputNotAllowed for an entry that
    is a `file:`/`concat:`/... URL, a local path outside the media roots, or a URL on another
    host, for playlists nested deeper than `max_depth` (a master is depth 0, its variants 1)
    and for oversized playlists; InputUnavailable when a playlist cannot be read. `proxy`: the
    attempt's egress proxy, through which every http(s) read (and redirect) goes; `headers`: the
    input's request headers (input.headersFrom), sent as ffmpeg sends them.
    """
    roots = list(media_roots)
    allowed = list(allowed_protocols)
    own_session = session is None and not url_or_path.startswith("/")
    client = aiohttp.ClientSession() if own_session else session
    seen: list[str] = []
    queue: list[tuple[str, int]] = [(url_or_path, 0)]
    try:
        while queue:
            location, depth = queue.pop(0)
            if location in seen:
                continue
            if len(seen) >= max_playlists:
                raise InputNotAllowed(f"The input refers to more than {max_playlists} playlists.")
            seen.append(location)
            if location.startswith("/"):
                text = await _read_local(location, max_bytes)
            elif client is not None:
                text = await _read_http(location, max_bytes, read_timeout, client, proxy, headers)
            else:  # a playlist file never refers to URLs (resolve_reference refuses them)
                raise InputNotAllowed(f"The playlist entry {location} is not a file.")
            if text.lstrip("\ufeff \t\r\n").startswith("ffconcat"):
                raise InputNotAllowed(f"The input {location} is an ffconcat list, which is not allowed.")
            for reference in playlist_references(text):
                target = resolve_reference(location, reference.uri, allowed_protocols=allowed, media_roots=roots)
                if reference.playlist:
                    if depth + 1 > max_depth:
                        raise InputNotAllowed(
                            f"The playlist {location} nests playlists deeper than {max_depth} levels."
                        )
                    queue.append((target, depth + 1))
    finally:
        if own_session and client is not None:
            await client.close()
    return seen
