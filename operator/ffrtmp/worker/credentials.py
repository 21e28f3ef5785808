"""A job's credentials from Secrets (input.uriFrom, input.headersFrom, outputs[].urlFrom), resolved by the
worker when an attempt starts.

The worker reads them from its own Pod: the pool's spec.jobSecrets are mounted read-only, one folder per
Secret (controller.pods.job_secret_volumes). Neither the operator nor the worker has RBAC on Secrets, and a
job can use only the Secrets its pool's author chose to expose to jobs. The values go into a copy of the
spec the attempt runs on (so the input and egress checks see the resolved URL) and into the redaction of
everything the attempt says (ffrtmp.redact); never into the job's spec or status.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ffrtmp.api.common import SecretKeySelector
from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.ffmpeg.errors import Failure

_INPUT_URL = re.compile(r"^(https?|rtmps?)://[^/\s]+(/\S*)?$")
_OUTPUT_URL = re.compile(r"^rtmps?://[^\s/]+/\S+$")  # as OutputSpec.url's pattern
_HEADER_VALUE = re.compile(r"^[^\x00-\x1f\x7f]*$")  # one line, no control characters (tab neither)
MAX_VALUE = 4096


class SecretUnavailable(Exception):
    """A Secret or key a job names cannot be read: SecretNotFound, naming both (never a value). `retryable`:
    another attempt may find it (a Secret created just now reaches the workers' mounts within a minute)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Resolved:
    """The spec the attempt runs (URLs from Secrets filled in), the input's request headers, and the values
    read (for redaction)."""

    spec: TranscodeJobSpec
    headers: dict[str, str] = field(default_factory=dict)
    values: tuple[str, ...] = ()


def uses_secrets(spec: TranscodeJobSpec) -> bool:
    return bool(spec.input.uri_from or spec.input.headers_from or any(o.url_from for o in spec.outputs))


def _where(ref: SecretKeySelector, field_name: str) -> str:
    return f"Secret {ref.name} key {ref.key} ({field_name})"


def resolve(spec: TranscodeJobSpec, read: Callable[[SecretKeySelector], str]) -> Resolved | Failure:
    """`spec` with uriFrom/urlFrom filled in from `read` (which raises SecretUnavailable), or the Failure:
    SecretNotFound, or InvalidSecret when a value is not what its field takes. Messages name the Secret,
    the key and the field, never the value."""
    values: list[str] = []

    def value(ref: SecretKeySelector, field_name: str, pattern: re.Pattern[str], what: str) -> str:
        try:
            raw = read(ref)
        except SecretUnavailable as e:
            raise _Refused(Failure("SecretNotFound", f"{field_name}: {e}", e.retryable)) from None
        text = raw[:-1] if raw.endswith("\n") else raw
        text = text[:-1] if text.endswith("\r") else text
        if text:
            values.append(text)
        if len(text) > MAX_VALUE or not pattern.match(text):
            raise _Refused(Failure("InvalidSecret", f"the value of {_where(ref, field_name)} is not {what}", False))
        return text

    try:
        job_input = spec.input
        if job_input.uri_from is not None:
            what = "an http(s):// or rtmp(s):// URL"
            uri = value(job_input.uri_from.secret_key_ref, "input.uriFrom", _INPUT_URL, what)
            job_input = job_input.model_copy(update={"uri": uri})
        headers: dict[str, str] = {}
        for header in job_input.headers_from or []:
            where = f"input.headersFrom {header.name}"
            headers[header.name] = value(header.secret_key_ref, where, _HEADER_VALUE, "one line of text")
        if headers and not (job_input.uri or "").startswith(("http://", "https://")):
            raise _Refused(Failure("InvalidSpec", "input.headersFrom is for http(s):// inputs", False))
        outputs = []
        for out in spec.outputs:
            if out.url_from is None:
                outputs.append(out)
                continue
            where = f"outputs[{out.name}].urlFrom"
            url = value(out.url_from.secret_key_ref, where, _OUTPUT_URL, "an rtmp(s)://host/app/stream URL")
            outputs.append(out.model_copy(update={"url": url}))
    except _Refused as refused:
        return refused.failure
    # The rules that need the scheme (a live rtmp input and spec.destination, ...) run on this spec next, as
    # for any job (objectstore.check_job, ffmpeg.argv).
    return Resolved(spec.model_copy(update={"input": job_input, "outputs": outputs}), headers, tuple(values))


class _Refused(Exception):
    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def mounted_reader(
    folder: str, listed: tuple[str, ...], pool: str, namespace: str
) -> Callable[[SecretKeySelector], str]:
    """Reads a key of a Secret mounted by the pool's spec.jobSecrets under `folder`; SecretUnavailable for a
    Secret the pool does not list, or a Secret or key that is not there (the volumes are optional)."""

    def read(ref: SecretKeySelector) -> str:
        if ref.name not in listed:
            raise SecretUnavailable(
                f"WorkerPool {pool} does not list Secret {ref.name} in spec.jobSecrets, so its workers cannot read "
                f"it: add it there, or run the job in a pool that lists it (spec.poolRef)",
                retryable=False,
            )
        path = Path(folder) / ref.name / ref.key
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SecretUnavailable(
                f"Secret {ref.name} in namespace {namespace} does not exist or has no key {ref.key} "
                "(a Secret created or changed just now reaches the workers within about a minute)",
                retryable=True,
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise SecretUnavailable(
                f"Secret {ref.name} key {ref.key} cannot be read: {type(e).__name__}", retryable=False
            ) from None

    return read
