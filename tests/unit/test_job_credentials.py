"""A job's credentials from Secrets, resolved by the worker (ffrtmp.worker.credentials), and the headers they
put on ffmpeg's input (ffrtmp.ffmpeg.argv)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ffrtmp.api.common import SecretKeySelector
from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.controller.state import credential_secrets
from ffrtmp.ffmpeg.argv import input_headers_options, with_input_headers
from ffrtmp.ffmpeg.errors import Failure
from ffrtmp.worker.credentials import Resolved, SecretUnavailable, mounted_reader, resolve, uses_secrets

pytestmark = pytest.mark.unit

STREAM = "rtmp://live.example.com/app/sk-7f3a9c2e1b"
INPUT = "https://viewer:pa55w0rd-x9@media.example/in.mp4?token=abc123def"


def spec(**input_fields: Any) -> TranscodeJobSpec:
    return TranscodeJobSpec.model_validate({
        "input": input_fields or {"uriFrom": {"secretKeyRef": {"name": "in", "key": "url"}}},
        "outputs": [
            {"name": "file", "video": {"preset": "ultrafast"}},
            {"name": "live", "container": "flv", "urlFrom": {"secretKeyRef": {"name": "out", "key": "stream"}}},
        ],
    })  # fmt: skip


def reader(data: dict[tuple[str, str], str]) -> Any:
    def read(ref: SecretKeySelector) -> str:
        if (ref.name, ref.key) not in data:
            raise SecretUnavailable(f"Secret {ref.name} has no key {ref.key}", retryable=True)
        return data[(ref.name, ref.key)]

    return read


def test_urls_and_headers_are_filled_in_from_their_secrets() -> None:
    job = spec(uriFrom={"secretKeyRef": {"name": "in", "key": "url"}},
               headersFrom=[{"name": "Authorization", "secretKeyRef": {"name": "in", "key": "auth"}}])  # fmt: skip
    assert uses_secrets(job)
    got = resolve(job, reader({("in", "url"): INPUT + "\n", ("in", "auth"): "Bearer t0k", ("out", "stream"): STREAM}))
    assert isinstance(got, Resolved)
    assert got.spec.input.uri == INPUT, "one trailing newline (a file's) is dropped"
    assert got.spec.outputs[1].url == STREAM and got.spec.outputs[0].url is None
    assert got.headers == {"Authorization": "Bearer t0k"}
    assert set(got.values) == {INPUT, "Bearer t0k", STREAM}
    assert job.input.uri is None and job.outputs[1].url is None, "the job's own spec is not changed"


def test_a_job_without_secrets_does_not_use_them() -> None:
    assert not uses_secrets(TranscodeJobSpec.model_validate({"input": {"uri": "/m/a.mp4"}, "outputs": [{"name": "a"}]}))


@pytest.mark.parametrize(
    ("data", "reason", "words"),
    [
        ({("out", "stream"): STREAM}, "SecretNotFound", ["input.uriFrom", "Secret in has no key url"]),
        ({("in", "url"): INPUT}, "SecretNotFound", ["outputs[live].urlFrom", "Secret out has no key stream"]),
        ({("in", "url"): "file:///etc/passwd", ("out", "stream"): STREAM}, "InvalidSecret",
         ["Secret in key url (input.uriFrom)", "http(s):// or rtmp(s):// URL"]),
        ({("in", "url"): INPUT + "\nhttp://x/", ("out", "stream"): STREAM}, "InvalidSecret", ["input.uriFrom"]),
        ({("in", "url"): INPUT, ("out", "stream"): "rtmp://live.example.com"}, "InvalidSecret",
         ["Secret out key stream (outputs[live].urlFrom)", "rtmp(s)://host/app/stream"]),
    ],
)  # fmt: skip
def test_a_missing_or_unfit_value_fails_naming_secret_and_key_never_the_value(
    data: dict[tuple[str, str], str], reason: str, words: list[str]
) -> None:
    got = resolve(spec(), reader(data))
    assert isinstance(got, Failure)
    assert got.reason == reason and got.retryable is (reason == "SecretNotFound")
    for word in words:
        assert word in got.message, got.message
    for value in data.values():
        assert value not in got.message


@given(before=st.text(max_size=20), control=st.sampled_from("\r\n\x00\x1b\x7f\t"), after=st.text(max_size=20))
def test_a_header_value_is_one_line_of_text(before: str, control: str, after: str) -> None:
    job = spec(uri="https://media.example/a.mp4",
               headersFrom=[{"name": "X-Api-Key", "secretKeyRef": {"name": "in", "key": "k"}}])  # fmt: skip
    value = before + control + after + "x"  # not at the end: one trailing newline is dropped
    got = resolve(job, reader({("in", "k"): value, ("out", "stream"): STREAM}))
    assert isinstance(got, Failure) and got.reason == "InvalidSecret", repr(value)
    assert "input.headersFrom X-Api-Key" in got.message


def test_headers_need_an_http_input() -> None:
    job = spec(uriFrom={"secretKeyRef": {"name": "in", "key": "url"}},
               headersFrom=[{"name": "X-Api-Key", "secretKeyRef": {"name": "in", "key": "k"}}])  # fmt: skip
    got = resolve(job, reader({("in", "url"): STREAM, ("in", "k"): "v", ("out", "stream"): STREAM}))
    assert isinstance(got, Failure) and got.reason == "InvalidSpec"
    assert got.message == "input.headersFrom is for http(s):// inputs"


def test_the_mounted_reader_reads_listed_secrets_only(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "url").write_text(INPUT)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "password").write_text("not-for-jobs")
    read = mounted_reader(str(tmp_path), ("in", "gone"), "cpu", "media")
    assert read(SecretKeySelector(name="in", key="url")) == INPUT
    with pytest.raises(SecretUnavailable, match=r"WorkerPool cpu does not list Secret other in spec\.jobSecrets") as e:
        read(SecretKeySelector(name="other", key="password"))
    assert not e.value.retryable
    with pytest.raises(SecretUnavailable, match="Secret gone in namespace media does not exist or has no key k") as e:
        read(SecretKeySelector(name="gone", key="k"))
    assert e.value.retryable, "a Secret created just now reaches the mount within a minute"


def test_a_secret_key_is_never_a_path_out_of_its_folder() -> None:
    for key in (".", "..", "..data", "../x", "a/b"):
        with pytest.raises(ValueError):
            SecretKeySelector(name="in", key=key)
    assert SecretKeySelector(name="in", key=".hidden").key == ".hidden"


def test_headers_go_before_the_input_of_every_run() -> None:
    url = "https://media.example/a.mp4"
    argv = ["ffmpeg", "-y", "-i", url, "-i", "/other.wav", "-map", "0", "out.mp4"]
    got = with_input_headers(argv, url, {"Authorization": "Bearer x", "X-Api-Key": "k"})
    assert got == ["ffmpeg", "-y", "-headers", "Authorization: Bearer x\r\nX-Api-Key: k\r\n", "-i", url,
                   "-i", "/other.wav", "-map", "0", "out.mp4"]  # fmt: skip
    assert with_input_headers(argv, url, {}) == argv
    assert input_headers_options({}) == []


def test_the_operator_knows_which_secrets_a_job_needs() -> None:
    spec = {
        "input": {"uriFrom": ref("in", "url"), "headersFrom": [{"name": "X-Api-Key", **ref("keys", "api")}]},
        "outputs": [{"name": "a"}, {"name": "live", "container": "flv", "urlFrom": ref("in", "stream")}],
    }
    assert credential_secrets(spec) == ("in", "keys")
    assert credential_secrets({"input": {"uri": "/m/a.mp4"}, "outputs": [{"name": "a"}]}) == ()


def ref(name: str, key: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": name, "key": key}}
