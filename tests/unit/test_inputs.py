"""Input safety: media roots, schemes, and what HLS playlists may refer to."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ffrtmp.ffmpeg.inputs import (
    InputNotAllowed,
    InputUnavailable,
    PlaylistReference,
    check_input,
    check_playlist,
    is_playlist,
    playlist_references,
)

pytestmark = pytest.mark.unit

ALL = ["file", "http", "https", "rtmp", "rtmps"]


@pytest.fixture
def media(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    (root / "shows").mkdir(parents=True)
    (root / "shows" / "a.mp4").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("secret")
    return root


def check(uri: str, media: Path, allowed: list[str] = ALL) -> str:
    return check_input(uri, allowed_protocols=allowed, media_roots=[str(media)])


def test_file_inside_a_media_root(media: Path) -> None:
    assert check(str(media / "shows" / "a.mp4"), media) == str(media / "shows" / "a.mp4")


def test_file_under_the_second_root(media: Path, tmp_path: Path) -> None:
    other = tmp_path / "archive"
    other.mkdir()
    (other / "b.mkv").write_bytes(b"x")
    roots = [str(media), str(other)]
    assert check_input(str(other / "b.mkv"), allowed_protocols=["file"], media_roots=roots) == str(other / "b.mkv")


@pytest.mark.parametrize(
    "relative",
    [
        "../secret.txt",  # outside
        "shows/../../secret.txt",  # climbs out
        "",  # the root itself
    ],
)
def test_paths_outside_the_roots(media: Path, relative: str) -> None:
    with pytest.raises(InputNotAllowed, match="not under the pool's media roots"):
        check(os.path.join(str(media), relative) if relative else str(media), media)


def test_sibling_folder_with_the_root_as_prefix(media: Path, tmp_path: Path) -> None:
    sibling = tmp_path / "media2"
    sibling.mkdir()
    (sibling / "x.mp4").write_bytes(b"x")
    with pytest.raises(InputNotAllowed):
        check(str(sibling / "x.mp4"), media)


def test_symlink_out_of_the_root_is_caught(media: Path, tmp_path: Path) -> None:
    link = media / "shows" / "innocent.mp4"
    link.symlink_to(tmp_path / "secret.txt")
    with pytest.raises(InputNotAllowed, match="resolves to"):
        check(str(link), media)
    folder_link = media / "escape"
    folder_link.symlink_to(tmp_path)
    with pytest.raises(InputNotAllowed):
        check(str(folder_link / "secret.txt"), media)


def test_symlink_within_the_root_resolves_to_its_target(media: Path) -> None:
    link = media / "latest.mp4"
    link.symlink_to(media / "shows" / "a.mp4")
    assert check(str(link), media) == str(media / "shows" / "a.mp4")


def test_root_given_through_a_symlink(media: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(media)
    result = check_input(str(alias / "shows" / "a.mp4"), allowed_protocols=["file"], media_roots=[str(alias)])
    assert result == str(media / "shows" / "a.mp4")


def test_file_inputs_need_the_file_protocol(media: Path) -> None:
    with pytest.raises(InputNotAllowed, match="does not accept file inputs"):
        check(str(media / "shows" / "a.mp4"), media, ["http", "https"])


@pytest.mark.parametrize(
    "uri",
    [
        "http://cdn.example.com/a.mp4",
        "https://cdn.example.com:8443/path/a.m3u8?token=abc",
        "rtmp://ingest.example.com/live/key",
        "rtmps://ingest.example.com:443/live/key",
    ],
)
def test_network_urls(uri: str, media: Path) -> None:
    assert check(uri, media) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "file:/etc/passwd",
        "file:///etc/passwd",
        "concat:/media/a.mp4|/etc/passwd",
        "concatf:/media/list.txt",
        "data:text/plain;base64,aGVsbG8=",
        "subfile,,start,0,end,0,,:/etc/passwd",
        "pipe:0",
        "ftp://example.com/a.mp4",
        "crypto+http://example.com/a.ts",
        "hls+http://example.com/a.m3u8",
        "HTTP://example.com/a.mp4",
        "tcp://example.com:1234",
        "udp://0.0.0.0:1234",
        "unix:/var/run/docker.sock",
        "relative/path.mp4",
        "http:/example.com/a.mp4",
        "http:///a.mp4",
        "https://",
        "/media/with space.mp4",
        "/media/a.mp4\x00.txt",
        "",
    ],
)
def test_refused_uris(uri: str, media: Path) -> None:
    with pytest.raises(InputNotAllowed):
        check(uri, media)


def test_schemes_the_pool_does_not_allow(media: Path) -> None:
    with pytest.raises(InputNotAllowed, match="does not accept rtmp inputs"):
        check("rtmp://h/live/k", media, ["file", "http", "https"])
    with pytest.raises(InputNotAllowed, match="does not accept https inputs"):
        check("https://h/a.mp4", media, ["http"])


def test_is_playlist() -> None:
    assert is_playlist("/media/a/index.m3u8")
    assert is_playlist("https://h/live/INDEX.M3U8?token=1")
    assert not is_playlist("https://h/live/a.mp4?x=.m3u8")
    assert not is_playlist("/media/a.mp4")


def test_playlist_references() -> None:
    text = (
        "\ufeff#EXTM3U\n"
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="en",URI="audio/en.m3u8"\n'
        '#EXT-X-STREAM-INF:BANDWIDTH=800000,CODECS="avc1.4d401f,mp4a.40.2",AUDIO="aud"\n'
        "v720/index\n"
        '#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=80000,URI="v720/iframes.m3u8"\n'
        '#EXT-X-KEY:METHOD=AES-128,URI="https://keys.example.com/k1",IV=0x1\n'
        '#EXT-X-MAP:URI="init.mp4"\n'
        "#EXTINF:6.0,\n"
        "seg1.ts\n"
    )
    assert playlist_references(text) == [
        PlaylistReference("audio/en.m3u8", True),
        PlaylistReference("v720/index", True),
        PlaylistReference("v720/iframes.m3u8", True),
        PlaylistReference("https://keys.example.com/k1", False),
        PlaylistReference("init.mp4", False),
        PlaylistReference("seg1.ts", False),
    ]
    assert playlist_references("not a playlist\n/etc/passwd\n") == []


# --- playlist files -------------------------------------------------------------------------


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


MEDIA_PLAYLIST = (
    "#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXTINF:6.0,\nseg_00000.ts\n#EXTINF:6.0,\nseg_00001.ts\n#EXT-X-ENDLIST\n"
)


async def check_file(path: str, media: Path, **kwargs: int) -> list[str]:
    return await check_playlist(path, allowed_protocols=ALL, media_roots=[str(media)], **kwargs)


async def test_local_master_with_variants(media: Path) -> None:
    master = write(
        media / "show" / "master.m3u8",
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\nhi/index.m3u8\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=500\n" + str(media / "show" / "lo" / "index.m3u8") + "\n",
    )
    hi = write(media / "show" / "hi" / "index.m3u8", MEDIA_PLAYLIST)
    lo = write(media / "show" / "lo" / "index.m3u8", MEDIA_PLAYLIST)
    assert await check_file(master, media) == [master, hi, lo]


@pytest.mark.parametrize(
    "entry",
    [
        "file:///etc/passwd",
        "file:seg.ts",
        "concat:seg_00000.ts|/etc/passwd",
        "subfile,,start,0,end,0,,:/etc/passwd",
        "/etc/passwd",
        "../../secret.txt",
        "http://cdn.example.com/seg.ts",
        "data:video/mp2t;base64,AAAA",
    ],
)
async def test_local_playlist_entries_that_are_refused(media: Path, entry: str) -> None:
    playlist = write(media / "p" / "index.m3u8", f"#EXTM3U\n#EXTINF:6.0,\n{entry}\n#EXT-X-ENDLIST\n")
    with pytest.raises(InputNotAllowed, match="refers to"):
        await check_file(playlist, media)


@pytest.mark.parametrize(
    "tag",
    ['#EXT-X-KEY:METHOD=AES-128,URI="file:///etc/key"', '#EXT-X-MAP:URI="/etc/passwd"'],
)
async def test_uri_attributes_are_checked_too(media: Path, tag: str) -> None:
    playlist = write(media / "p" / "index.m3u8", f"#EXTM3U\n{tag}\n#EXTINF:6.0,\nseg.ts\n")
    with pytest.raises(InputNotAllowed):
        await check_file(playlist, media)


async def test_bad_entry_in_a_variant_playlist_is_found(media: Path) -> None:
    master = write(media / "m" / "master.m3u8", "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nv/index.m3u8\n")
    write(media / "m" / "v" / "index.m3u8", "#EXTM3U\n#EXTINF:6.0,\nconcat:a.ts|/etc/shadow\n")
    with pytest.raises(InputNotAllowed, match="concat:"):
        await check_file(master, media)


async def test_nesting_is_bounded(media: Path) -> None:
    a = write(media / "n" / "a.m3u8", "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nb.m3u8\n")
    write(media / "n" / "b.m3u8", "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nc.m3u8\n")
    write(media / "n" / "c.m3u8", MEDIA_PLAYLIST)
    assert len(await check_file(a, media, max_depth=2)) == 3
    with pytest.raises(InputNotAllowed, match="deeper"):
        await check_file(a, media, max_depth=1)


async def test_cycles_are_read_once(media: Path) -> None:
    a = write(media / "c" / "a.m3u8", "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nb.m3u8\n")
    write(media / "c" / "b.m3u8", "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\na.m3u8\n")
    assert len(await check_file(a, media, max_depth=5)) == 2


async def test_oversized_playlist(media: Path) -> None:
    big = write(media / "big.m3u8", "#EXTM3U\n" + "#EXTINF:1,\nseg.ts\n" * 200)
    with pytest.raises(InputNotAllowed, match="larger than"):
        await check_file(big, media, max_bytes=1000)


async def test_ffconcat_list_named_m3u8_is_refused(media: Path) -> None:
    sneaky = write(media / "list.m3u8", "ffconcat version 1.0\nfile /etc/passwd\n")
    with pytest.raises(InputNotAllowed, match="ffconcat"):
        await check_file(sneaky, media)


async def test_not_a_playlist_has_nothing_to_check(media: Path) -> None:
    other = write(media / "odd.m3u8", "just text\n/etc/passwd\n")
    assert await check_file(other, media) == [other]


async def test_missing_playlist_file(media: Path) -> None:
    with pytest.raises(InputUnavailable):
        await check_file(str(media / "nope.m3u8"), media)


# --- playlists over http --------------------------------------------------------------------


@pytest.fixture
async def servers() -> AsyncIterator[tuple[TestServer, TestServer, dict[str, str]]]:
    """An origin on 127.0.0.1 serving `pages` (path -> text; `@url` redirects) and another host."""
    pages: dict[str, str] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        text = pages.get(request.path)
        if text is None:
            raise web.HTTPNotFound()
        if text.startswith("@"):
            raise web.HTTPFound(text[1:])
        return web.Response(text=text, content_type="application/vnd.apple.mpegurl")

    origin_app = web.Application()
    origin_app.router.add_get("/{tail:.*}", handler)
    other_app = web.Application()
    other_app.router.add_get("/{tail:.*}", handler)
    origin = TestServer(origin_app, host="127.0.0.1")
    other = TestServer(other_app, host="127.0.0.2")
    await origin.start_server()
    await other.start_server()
    try:
        yield origin, other, pages
    finally:
        await origin.close()
        await other.close()


async def check_url(url: str, allowed: list[str] = ALL) -> list[str]:
    return await check_playlist(url, allowed_protocols=allowed, media_roots=["/media"])


async def test_remote_master_and_variants_on_the_same_host(
    servers: tuple[TestServer, TestServer, dict[str, str]],
) -> None:
    origin, _, pages = servers
    base = f"http://127.0.0.1:{origin.port}"
    pages["/live/master.m3u8"] = (
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nhi/index.m3u8\n"
        f"#EXT-X-STREAM-INF:BANDWIDTH=2\n/other/lo.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=3\n{base}/abs/mid.m3u8\n"
    )
    pages["/live/hi/index.m3u8"] = MEDIA_PLAYLIST
    pages["/other/lo.m3u8"] = '#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI="/keys/k1"\n#EXTINF:6,\n/seg/a.ts\n'
    pages["/abs/mid.m3u8"] = MEDIA_PLAYLIST
    assert await check_url(f"{base}/live/master.m3u8") == [
        f"{base}/live/master.m3u8",
        f"{base}/live/hi/index.m3u8",
        f"{base}/other/lo.m3u8",
        f"{base}/abs/mid.m3u8",
    ]


@pytest.mark.parametrize(
    "entry",
    [
        "http://127.0.0.2/seg.ts",
        "//127.0.0.2/seg.ts",
        "http://evil.example.com/seg.ts",
        "file:///etc/passwd",
        "concat:http://127.0.0.1/a.ts|file:///etc/passwd",
        "subfile,,start,0,end,0,,:/etc/passwd",
        "crypto+http://127.0.0.1/a.ts",
    ],
)
async def test_remote_entries_that_are_refused(
    servers: tuple[TestServer, TestServer, dict[str, str]], entry: str
) -> None:
    origin, _, pages = servers
    pages["/live/index.m3u8"] = f"#EXTM3U\n#EXTINF:6,\n{entry}\n"
    with pytest.raises(InputNotAllowed):
        await check_url(f"http://127.0.0.1:{origin.port}/live/index.m3u8")


async def test_other_port_is_another_host(servers: tuple[TestServer, TestServer, dict[str, str]]) -> None:
    origin, _, pages = servers
    pages["/live/index.m3u8"] = f"#EXTM3U\n#EXTINF:6,\nhttp://127.0.0.1:{origin.port + 1}/seg.ts\n"
    with pytest.raises(InputNotAllowed, match="another host"):
        await check_url(f"http://127.0.0.1:{origin.port}/live/index.m3u8")


async def test_entry_protocol_must_be_allowed(servers: tuple[TestServer, TestServer, dict[str, str]]) -> None:
    origin, _, pages = servers
    pages["/live/index.m3u8"] = f"#EXTM3U\n#EXTINF:6,\nhttps://127.0.0.1:{origin.port}/seg.ts\n"
    with pytest.raises(InputNotAllowed, match="protocol"):
        await check_url(f"http://127.0.0.1:{origin.port}/live/index.m3u8", ["http"])


async def test_redirect_to_another_host(servers: tuple[TestServer, TestServer, dict[str, str]]) -> None:
    origin, other, pages = servers
    pages["/live/index.m3u8"] = f"@http://127.0.0.2:{other.port}/evil.m3u8"
    pages["/evil.m3u8"] = MEDIA_PLAYLIST
    with pytest.raises(InputNotAllowed, match="redirects to another host"):
        await check_url(f"http://127.0.0.1:{origin.port}/live/index.m3u8")


async def test_variant_on_another_host_is_refused_before_it_is_fetched(
    servers: tuple[TestServer, TestServer, dict[str, str]],
) -> None:
    origin, other, pages = servers
    pages["/live/master.m3u8"] = f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nhttp://127.0.0.2:{other.port}/v.m3u8\n"
    with pytest.raises(InputNotAllowed, match="another host"):
        await check_url(f"http://127.0.0.1:{origin.port}/live/master.m3u8")


async def test_remote_errors(servers: tuple[TestServer, TestServer, dict[str, str]]) -> None:
    origin, _, pages = servers
    with pytest.raises(InputUnavailable, match="HTTP 404"):
        await check_url(f"http://127.0.0.1:{origin.port}/missing.m3u8")
    pages["/big.m3u8"] = "#EXTM3U\n" + "#EXTINF:1,\nseg.ts\n" * 100
    with pytest.raises(InputNotAllowed, match="larger than"):
        await check_playlist(
            f"http://127.0.0.1:{origin.port}/big.m3u8", allowed_protocols=ALL, media_roots=[], max_bytes=500
        )
    with pytest.raises(InputUnavailable):
        await check_url("http://127.0.0.1:1/refused.m3u8")
