"""Keeping signed URLs out of what the worker reports: a presigned URL is a bearer credential until it
expires, and ffmpeg prints its input URL in errors (the stderr tail, the failure message)."""

from __future__ import annotations

import re
from collections.abc import Mapping

REDACTED = "REDACTED"
# SigV4 query parameters that authorise a request, wherever a URL carrying them turns up.
_SIGNED_QUERY = re.compile(r"(?i)\b(X-Amz-(?:Signature|Credential|Security-Token))=[^&\s'\"<>]*")


def redact(text: str, replacements: Mapping[str, str]) -> str:
    """`text` with each key of `replacements` (a presigned URL) replaced by its value (the `s3://` URI it
    reads), and any SigV4 signature, credential or session token left over replaced by REDACTED."""
    for secret, label in replacements.items():
        text = text.replace(secret, label)
    return _SIGNED_QUERY.sub(rf"\1={REDACTED}", text)
