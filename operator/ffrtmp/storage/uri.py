"""`s3://bucket/key` and `s3://bucket/prefix/` URIs (pure). The patterns are the CRD's too."""

from __future__ import annotations

import re
from dataclasses import dataclass

# S3's bucket naming rules: 3-63 lower-case letters, digits, dots and hyphens, a letter or digit at each end.
BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
# A key: no whitespace or control characters, no `.` or `..` step (servers that map keys to files refuse them).
_CHAR = r"[^\s/\x00-\x1f\x7f]"
_KEY_STEP = rf"(\.?[^\s/.\x00-\x1f\x7f]{_CHAR}*|\.\.{_CHAR}+)"
OBJECT_URI_PATTERN = rf"^s3://{BUCKET}/{_KEY_STEP}(/{_KEY_STEP})*$"
PREFIX_URI_PATTERN = rf"^s3://{BUCKET}/({_KEY_STEP}/)*$"
MAX_KEY_BYTES = 1024
_OBJECT = re.compile(OBJECT_URI_PATTERN)
_PREFIX = re.compile(PREFIX_URI_PATTERN)


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key (or a key prefix ending in `/`, possibly empty)."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def child(self, relative: str) -> S3Location:
        """The object `relative` (a path such as `hls/720p/index.m3u8`) under this prefix."""
        return S3Location(self.bucket, self.key + relative)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _split(uri: str) -> S3Location:
    bucket, _, key = uri[len("s3://") :].partition("/")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"{uri}: an object key is at most {MAX_KEY_BYTES} bytes")
    return S3Location(bucket, key)


def parse_object_uri(uri: str) -> S3Location:
    """`s3://bucket/key` of one object, or ValueError saying what is wrong."""
    if not _OBJECT.match(uri):
        raise ValueError(
            f"{uri} is not an s3://bucket/key URI (bucket: 3-63 of a-z 0-9 . -; key: no spaces, no . or .. steps, "
            "not ending in /)"
        )
    return _split(uri)


def parse_prefix_uri(uri: str) -> S3Location:
    """`s3://bucket/prefix/` (or `s3://bucket/`), or ValueError saying what is wrong."""
    if not _PREFIX.match(uri):
        raise ValueError(
            f"{uri} is not an s3://bucket/prefix/ URI (bucket: 3-63 of a-z 0-9 . -; the prefix ends in /, "
            "no spaces, no . or .. steps)"
        )
    return _split(uri)
