"""One redaction for everything the operator and the workers say: status messages, Events, log lines,
stderr tails. A presigned URL is a bearer credential until it expires, a job's credentials from Secrets
(input.uriFrom, input.headersFrom, outputs[].urlFrom) are credentials, and ffmpeg prints its URLs in
errors. What is removed:

- the values registered with `secret_values` while an attempt uses them (and their pieces: a URL's
  password, query values and last path segment, the RTMP stream key), in every process-wide log line
  through `RedactingFormatter`, and wherever `redact` is called;
- URL userinfo (`scheme://user:password@host`), whatever URL it is in;
- the values of signed or secret query parameters: SigV4 `X-Amz-Signature`, `X-Amz-Credential`,
  `X-Amz-Security-Token`, and `sig`, `signature`, `token`, `access_token`, `key`, `password`, `secret`,
  `auth` (any case).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from urllib.parse import parse_qsl, quote, unquote, urlsplit

REDACTED = "REDACTED"
# A registered piece shorter than this is not redacted on its own (it would blank out ordinary words);
# the whole value it came from still is.
MIN_PIECE = 6
_SECRET_QUERY_NAMES = (
    r"X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|sig|signature|token|access_token|key|password|"
    r"passwd|secret|auth"
)
# A value runs to the next parameter, fragment, blank or quote, and to a colon before a blank (ffmpeg's
# `URL: message`).
_VALUE = r"(?:[^&;#\s'\"<>:]|:(?!\s))*"
_SECRET_QUERY = re.compile(rf"(?i)([?&;](?:{_SECRET_QUERY_NAMES}))={_VALUE}")
# A SigV4 parameter anywhere (also outside a query string, e.g. a header dump).
_SIGNED = re.compile(rf"(?i)\b(X-Amz-(?:Signature|Credential|Security-Token))={_VALUE}")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"<>]*@")
_MAX_PASSES = 8

_lock = threading.Lock()
_registered: Counter[str] = Counter()


def pieces(value: str) -> list[str]:
    """`value` and the parts of it that are secret on their own when it is a URL: the userinfo and its
    password, each query value, and the last path segment (an RTMP stream key, a signed path), each also
    percent-decoded and JSON-escaped (as a JSON log line writes it). Pieces shorter than MIN_PIECE are
    dropped, except the whole value."""
    found = [value]
    with contextlib.suppress(ValueError):
        parts = urlsplit(value)
        if parts.scheme and parts.netloc:
            userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
            found += [userinfo, userinfo.partition(":")[2]]
            found += [v for _, v in parse_qsl(parts.query, keep_blank_values=True)]
            found.append(parts.path.rstrip("/").rpartition("/")[2])
    out: list[str] = []
    for piece in found:
        for form in (piece, unquote(piece), quote(piece, safe=""), json.dumps(piece)[1:-1]):
            if form and (form == value or len(form) >= MIN_PIECE) and form not in REDACTED and form not in out:
                out.append(form)
    return out


@contextlib.contextmanager
def secret_values(values: Iterable[str]) -> Iterator[None]:
    """Register `values` (with their `pieces`) for redaction in every log line of this process while the
    block runs (an attempt that uses credentials from Secrets)."""
    registered = [p for v in values if v for p in pieces(v)]
    with _lock:
        _registered.update(registered)
    try:
        yield
    finally:
        with _lock:
            _registered.subtract(registered)
            for piece in [p for p, n in _registered.items() if n <= 0]:
                del _registered[piece]


def registered() -> list[str]:
    with _lock:
        return list(_registered)


def redact(text: str, replacements: Mapping[str, str] | None = None, secrets: Iterable[str] = ()) -> str:
    """`text` with each key of `replacements` (a presigned URL) replaced by its value (the `s3://` URI it
    reads), each of `secrets` and of the registered values (and their pieces) replaced by REDACTED, and
    URL userinfo and secret query values redacted. A secret that would survive (it reappears around a
    replacement) blanks the whole text."""
    for url, label in (replacements or {}).items():
        text = text.replace(url, label)
    values = sorted({p for s in secrets if s for p in pieces(s)} | set(registered()), key=len, reverse=True)
    for _ in range(_MAX_PASSES):
        found = [v for v in values if v in text]
        if not found:
            break
        for value in found:
            text = text.replace(value, REDACTED)
    text = _USERINFO.sub(rf"\1{REDACTED}@", text)
    text = _SECRET_QUERY.sub(rf"\1={REDACTED}", text)
    text = _SIGNED.sub(rf"\1={REDACTED}", text)
    return REDACTED if any(v in text for v in values) else text


class RedactingFormatter(logging.Formatter):
    """Formats with `inner`, then redacts the whole line (message, arguments and traceback alike)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def redact_logging(logger: logging.Logger | None = None) -> None:
    """Make every handler of `logger` (default: the root logger, which every logger of the process
    propagates to) redact what it writes. For the root logger, an uncaught exception (which Python would
    print to stderr itself) is logged through those handlers too."""
    for handler in (logger or logging.getLogger()).handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter or logging.Formatter()))
    if logger is None:
        sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("ffrtmp").critical("uncaught exception", exc_info=(kind, value, tb))
