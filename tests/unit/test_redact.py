"""The one redaction of status messages, Events, log lines and stderr tails (ffrtmp.redact)."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ffrtmp.logs import JsonFormatter
from ffrtmp.redact import REDACTED, RedactingFormatter, pieces, redact, redact_logging, registered, secret_values

pytestmark = pytest.mark.unit

# Distinctive values, as credentials are: at least 6 characters, not a piece of the word REDACTED itself.
secret_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=6, max_size=40).filter(
    lambda s: s not in REDACTED
)
any_text = st.text(max_size=80)


@given(secret=secret_text, parts=st.lists(any_text, min_size=1, max_size=5))
def test_a_secret_embedded_anywhere_never_survives(secret: str, parts: list[str]) -> None:
    text = secret.join(parts) + secret
    assert secret not in redact(text, secrets=[secret])


@given(secret=secret_text, before=any_text, after=any_text)
def test_a_registered_secret_never_survives_and_is_forgotten_after_its_block(
    secret: str, before: str, after: str
) -> None:
    with secret_values([secret]):
        assert secret not in redact(before + secret + after)
    assert secret not in registered()


@given(
    user=st.from_regex(r"[a-z]{3,8}", fullmatch=True),
    password=st.from_regex(r"[A-Za-z0-9]{8,20}", fullmatch=True),
    token=st.from_regex(r"[A-Za-z0-9_-]{8,30}", fullmatch=True),
    name=st.sampled_from(["sig", "signature", "token", "key", "password", "X-Amz-Signature", "TOKEN", "Key"]),
)
def test_userinfo_and_secret_query_values_are_redacted_without_knowing_them(
    user: str, password: str, token: str, name: str
) -> None:
    line = f"[http @ 0x5] http://{user}:{password}@media.example:8080/a.mp4?x=1&{name}={token}: 401 Unauthorized"
    out = redact(line)
    assert password not in out and token not in out
    assert f"http://{REDACTED}@media.example:8080/a.mp4?x=1&{name}={REDACTED}: 401 Unauthorized" in out


def test_the_pieces_of_a_secret_url_are_redacted_where_ffmpeg_prints_them_alone() -> None:
    url = "rtmp://live.example.com/app/sk_live_9f8e7d6c5b?auth=Zm9vYmFyYmF6"
    assert {"sk_live_9f8e7d6c5b", "Zm9vYmFyYmF6"} <= set(pieces(url))
    said = "[rtmp @ 0x1] Server error: stream sk_live_9f8e7d6c5b rejected (auth Zm9vYmFyYmF6)"
    assert redact(said, secrets=[url]) == f"[rtmp @ 0x1] Server error: stream {REDACTED} rejected (auth {REDACTED})"
    assert redact("the app and the k", secrets=["rtmp://h/app/k"]) == "the app and the k", "short pieces stay"


def test_percent_encoded_and_json_escaped_forms_are_redacted() -> None:
    secret = 'p@ss"word/+1'
    assert secret not in redact(f"url http://h/x?pw={secret}", secrets=[secret])
    escaped = json.dumps(secret)[1:-1]
    assert escaped not in redact(json.dumps({"message": f"using {secret}"}), secrets=[secret])


def test_a_secret_rebuilt_around_its_replacement_blanks_the_text() -> None:
    # "REDACTE" + "DXYZAB" would read "REDACTEDXYZAB" after one replacement, which contains the secret again.
    secret = "DXYZAB"
    text = "REDACTE" + secret + "XYZAB"
    assert secret not in redact(text, secrets=[secret])


def test_presigned_urls_become_their_s3_uri_before_anything_else() -> None:
    url = "http://127.0.0.9:9000/in/a.mp4?X-Amz-Signature=abc123&token=t0k3n"
    assert redact(f"{url}: 403", {url: "s3://in/a.mp4"}) == "s3://in/a.mp4: 403"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, io.StringIO]]:
    """A logger with a text and a JSON handler, both made redacting by redact_logging."""
    logger = logging.getLogger(f"test-redact-{id(object())}")
    text, structured = io.StringIO(), io.StringIO()
    plain = logging.StreamHandler(text)
    plain.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    as_json = logging.StreamHandler(structured)
    as_json.setFormatter(JsonFormatter())
    logger.handlers[:] = [plain, as_json]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    redact_logging(logger)
    redact_logging(logger)  # idempotent: one wrapper, not two
    assert all(isinstance(h.formatter, RedactingFormatter) for h in logger.handlers)
    assert not isinstance(plain.formatter.inner, RedactingFormatter)  # type: ignore[union-attr]
    yield logger, text, structured


Captured = tuple[logging.Logger, io.StringIO, io.StringIO]


def test_log_lines_arguments_and_tracebacks_are_redacted(captured: Captured) -> None:
    logger, text, structured = captured
    secret = "https://bob:hunter2hunter2@cdn.example/v.mp4"
    with secret_values([secret]):
        logger.warning("input %s failed", secret)
        try:
            raise ValueError(f"cannot open {secret}")
        except ValueError:
            logger.exception("attempt broke")
    logger.info("after the attempt: http://alice:s3cr3tpass@h/x")
    for out in (text.getvalue(), structured.getvalue()):
        assert "hunter2hunter2" not in out and "bob" not in out and "s3cr3tpass" not in out
        assert "input REDACTED failed" in out
        assert "ValueError: cannot open REDACTED" in out
        assert f"http://{REDACTED}@h/x" in out


def test_an_uncaught_exception_goes_through_the_redacting_handlers() -> None:
    root = logging.getLogger()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved_handlers, saved_hook = root.handlers[:], sys.excepthook
    root.handlers[:] = [handler]
    try:
        redact_logging()
        secret = "rtmp://live.example.com/app/sk_live_0a1b2c3d4e"
        with secret_values([secret]):
            try:
                raise RuntimeError(f"cannot publish to {secret}")
            except RuntimeError as e:
                sys.excepthook(type(e), e, e.__traceback__)
    finally:
        root.handlers[:] = saved_handlers
        sys.excepthook = saved_hook
    assert "RuntimeError: cannot publish to REDACTED" in out.getvalue()
    assert "sk_live_0a1b2c3d4e" not in out.getvalue()
