"""Object storage decisions without a server: s3:// URIs, publishing order, part sizes, content types."""

from __future__ import annotations

import pytest

from ffrtmp.storage.publish import content_type, phases
from ffrtmp.storage.upload import MIB, part_size_for
from ffrtmp.storage.uri import S3Location, parse_object_uri, parse_prefix_uri

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("uri", "bucket", "key"),
    [
        ("s3://media/in/trailer.mov", "media", "in/trailer.mov"),
        ("s3://my.bucket-1/a", "my.bucket-1", "a"),
        ("s3://abc/.hidden/x..y/...z", "abc", ".hidden/x..y/...z"),
        ("s3://abc/\u00e9t\u00e9+(1)=&.mp4", "abc", "\u00e9t\u00e9+(1)=&.mp4"),
    ],
)
def test_object_uris(uri: str, bucket: str, key: str) -> None:
    assert parse_object_uri(uri) == S3Location(bucket, key)
    assert str(parse_object_uri(uri)) == uri


@pytest.mark.parametrize(
    "uri",
    ["s3://media/", "s3://media/dir/", "s3://Media/a", "s3://ab/a", "s3://media/a b", "s3://media/a/../b",
     "s3://media/./a", "s3://media//a", "s3:/media/a", "https://media/a", "s3://-media/a", "s3://media/a\x00"],
)  # fmt: skip
def test_bad_object_uris(uri: str) -> None:
    with pytest.raises(ValueError, match="is not an s3://bucket/key URI"):
        parse_object_uri(uri)


def test_prefix_uris() -> None:
    assert parse_prefix_uri("s3://out/") == S3Location("out", "")
    assert parse_prefix_uri("s3://out/jobs/2024/") == S3Location("out", "jobs/2024/")
    assert parse_prefix_uri("s3://out/jobs/").child("hls/master.m3u8") == S3Location("out", "jobs/hls/master.m3u8")
    for bad in ("s3://out", "s3://out/jobs", "s3://out/../", "s3://out/a//", "s3://OUT/"):
        with pytest.raises(ValueError, match="is not an s3://bucket/prefix/ URI"):
            parse_prefix_uri(bad)


def test_keys_longer_than_s3_allows_are_refused() -> None:
    with pytest.raises(ValueError, match="1024 bytes"):
        parse_object_uri("s3://media/" + "\u00e9" * 513)


def test_media_first_then_variant_playlists_then_the_master() -> None:
    files = ["hls/master.m3u8", "hls/720p/index.m3u8", "hls/720p/seg_000.ts", "hls/360p/index.m3u8",
             "hls/360p/init.mp4", "hls/360p/seg_000.m4s", "out.mp4", "thumbnails/thumb_0001.jpg"]  # fmt: skip
    assert phases(files, ["hls/master.m3u8"]) == [
        ["hls/360p/init.mp4", "hls/360p/seg_000.m4s", "hls/720p/seg_000.ts", "out.mp4", "thumbnails/thumb_0001.jpg"],
        ["hls/360p/index.m3u8", "hls/720p/index.m3u8"],
        ["hls/master.m3u8"],
    ]
    assert phases(["a.mp4"], []) == [["a.mp4"]]
    assert phases([], []) == []


def test_part_size_grows_only_past_ten_thousand_parts() -> None:
    assert part_size_for(1, 8 * MIB) == 8 * MIB
    assert part_size_for(80_000 * MIB, 8 * MIB) == 8 * MIB
    grown = part_size_for(200 * 1024 * MIB, 8 * MIB)  # 200 GiB
    assert grown % MIB == 0 and 200 * 1024 * MIB / grown <= 10_000 and grown == 21 * MIB
    with pytest.raises(ValueError):
        part_size_for(1, 4 * MIB)


@pytest.mark.parametrize(
    ("path", "expected"),
    [("a/index.m3u8", "application/vnd.apple.mpegurl"), ("seg_001.ts", "video/mp2t"), ("s.m4s", "video/iso.segment"),
     ("out.MP4", "video/mp4"), ("out.mkv", "video/x-matroska"), ("t.jpg", "image/jpeg"), ("sprite_1.png", "image/png"),
     ("x.unknownext", "application/octet-stream")],
)  # fmt: skip
def test_content_types(path: str, expected: str) -> None:
    assert content_type(path) == expected
