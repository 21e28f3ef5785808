"""Object storage credentials from the worker Pod's identity (ffrtmp.storage.credentials): which identity
is used, what STS and the container endpoint answer, when temporary credentials are fetched again, and
how a pool's `ambientCredentials` reaches the worker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from ffrtmp.api.pool import ObjectStorage
from ffrtmp.controller.pods import object_storage_env
from ffrtmp.storage.credentials import (
    REFRESH_BEFORE,
    ContainerEndpoint,
    CredentialsUnavailable,
    FixedCredentials,
    NoIdentity,
    Temporary,
    WebIdentity,
    choose_ambient,
    needs_refresh,
    parse_container_answer,
    parse_sts_answer,
    session_name_for,
    usable_seconds,
)
from ffrtmp.storage.sigv4 import Credentials
from ffrtmp.worker.config import ObjectStorageConfig
from ffrtmp.worker.objectstore import without_credentials

pytestmark = pytest.mark.unit

IRSA = {"AWS_ROLE_ARN": "arn:aws:iam::111122223333:role/transcoder", "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/t"}
POD_IDENTITY = {
    "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.23/v1/credentials",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "/var/run/secrets/pods.eks.amazonaws.com/eks-pod-identity-token",
}
KEY = {"AWS_ACCESS_KEY_ID": "AKIDPOD", "AWS_SECRET_ACCESS_KEY": "pod-secret", "AWS_SESSION_TOKEN": "pod-token"}
STS_OK = b"""<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:media:transcoder</SubjectFromWebIdentityToken>
    <Credentials>
      <SessionToken>FwoGZXIvYXdzEXAMPLE</SessionToken>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG</SecretAccessKey>
      <Expiration>2026-12-03T13:00:00Z</Expiration>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"""
STS_DENIED = b"""<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>
<Code>AccessDenied</Code><Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error>
<RequestId>1</RequestId></ErrorResponse>"""


def choose(env: dict[str, str], sts: str | None = None) -> object:
    return choose_ambient(env, region="eu-west-1", sts_endpoint=sts, session_name="ffrtmp-w")


def test_the_sdks_order_pod_identity_then_web_identity_then_a_key() -> None:
    assert isinstance(choose({**POD_IDENTITY, **IRSA, **KEY}), ContainerEndpoint)
    web = choose({**IRSA, **KEY})
    assert isinstance(web, WebIdentity)
    assert (web.role_arn, web.token_file, web.session_name) == (IRSA["AWS_ROLE_ARN"], Path("/var/run/t"), "ffrtmp-w")
    fixed = choose(KEY)
    assert isinstance(fixed, FixedCredentials)
    assert fixed.credentials == Credentials("AKIDPOD", "pod-secret", "pod-token")


def test_the_sts_endpoint_is_the_pools_then_the_pods_then_the_regions() -> None:
    assert choose(IRSA).sts_endpoint == "https://sts.eu-west-1.amazonaws.com"  # type: ignore[attr-defined]
    pod = {**IRSA, "AWS_ENDPOINT_URL_STS": "https://sts.internal:8443/"}
    assert choose(pod).sts_endpoint == "https://sts.internal:8443"  # type: ignore[attr-defined]
    assert choose(pod, "http://10.0.0.5:9000").sts_endpoint == "http://10.0.0.5:9000"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({}, "has no AWS identity"),
        ({"AWS_ROLE_ARN": IRSA["AWS_ROLE_ARN"]}, "has AWS_ROLE_ARN but not AWS_WEB_IDENTITY_TOKEN_FILE"),
        ({"AWS_WEB_IDENTITY_TOKEN_FILE": "/t"}, "has AWS_WEB_IDENTITY_TOKEN_FILE but not AWS_ROLE_ARN"),
        ({"AWS_ACCESS_KEY_ID": "AKID"}, "has no AWS identity"),
    ],
)
def test_a_pod_without_an_identity_is_told_what_is_missing(env: dict[str, str], says: str) -> None:
    with pytest.raises(CredentialsUnavailable, match=says) as e:
        choose(env)
    assert not e.value.retryable


def test_sts_credentials_are_parsed_with_their_expiry() -> None:
    got = parse_sts_answer(200, STS_OK)
    assert got.credentials == Credentials("ASIAEXAMPLE", "wJalrXUtnFEMI/K7MDENG", "FwoGZXIvYXdzEXAMPLE")
    assert got.expires == datetime(2026, 12, 3, 13, 0, tzinfo=UTC)


def test_a_refusal_of_sts_names_its_code_and_is_not_retried_but_a_5xx_is() -> None:
    with pytest.raises(CredentialsUnavailable, match="AccessDenied: Not authorized") as e:
        parse_sts_answer(403, STS_DENIED)
    assert not e.value.retryable
    with pytest.raises(CredentialsUnavailable, match="HTTP 503") as e:
        parse_sts_answer(503, b"<html>busy</html")
    assert e.value.retryable
    with pytest.raises(CredentialsUnavailable, match="without credentials"):
        parse_sts_answer(200, b"<AssumeRoleWithWebIdentityResponse/>")


def test_container_endpoint_answers() -> None:
    doc = b'{"AccessKeyId":"ASIA1","SecretAccessKey":"s","Token":"t","Expiration":"2026-12-03T12:30:00Z"}'
    got = parse_container_answer(200, doc)
    assert got.credentials == Credentials("ASIA1", "s", "t")
    assert got.expires == datetime(2026, 12, 3, 12, 30, tzinfo=UTC)
    with pytest.raises(CredentialsUnavailable, match="HTTP 401") as e:
        parse_container_answer(401, b"")
    assert not e.value.retryable
    with pytest.raises(CredentialsUnavailable, match="without AccessKeyId"):
        parse_container_answer(200, b'{"Code":"Success"}')


@given(
    minutes_left=st.integers(min_value=-120, max_value=24 * 60),
)
def test_refreshed_before_expiry_never_after(minutes_left: int) -> None:
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    current = Temporary(Credentials("a", "b", "c"), now + timedelta(minutes=minutes_left))
    assert needs_refresh(current, now) == (timedelta(minutes=minutes_left) <= REFRESH_BEFORE)
    assert usable_seconds(current, now) == max(minutes_left * 60, 0)
    assert needs_refresh(None, now)
    assert not needs_refresh(Temporary(Credentials("a", "b"), None), now)  # a fixed key never expires
    assert usable_seconds(Temporary(Credentials("a", "b"), None), now) is None


def test_session_names_are_what_sts_accepts() -> None:
    assert session_name_for("cpu-7f9c4-x2k1q") == "ffrtmp-cpu-7f9c4-x2k1q"
    long = session_name_for("w" * 100 + "/é")
    assert len(long) == 64 and set(long) <= set("ffrtmp-w")


def test_the_pool_chooses_exactly_one_source() -> None:
    endpoint = "https://s3.eu-west-1.amazonaws.com"
    ObjectStorage.model_validate({"endpoint": endpoint, "ambientCredentials": {}})
    ObjectStorage.model_validate({"endpoint": endpoint, "credentialsSecretRef": {"name": "s3"}})
    for both_or_neither in ({}, {"ambientCredentials": {}, "credentialsSecretRef": {"name": "s3"}}):
        with pytest.raises(ValidationError, match="exactly one of credentialsSecretRef"):
            ObjectStorage.model_validate({"endpoint": endpoint, **both_or_neither})


def test_ambient_pools_give_workers_no_secret_and_the_worker_its_identity(tmp_path: Path) -> None:
    storage = ObjectStorage.model_validate(
        {"endpoint": "https://s3.eu-west-1.amazonaws.com", "region": "eu-west-1",
         "ambientCredentials": {"stsEndpoint": "https://sts.internal", "sessionSeconds": 7200}}
    )  # fmt: skip
    env = object_storage_env(storage)
    assert not [e for e in env if "valueFrom" in e]
    plain = {e["name"]: e["value"] for e in env}
    assert plain["FFRTMP_S3_CREDENTIALS"] == "ambient" and plain["FFRTMP_S3_STS_ENDPOINT"] == "https://sts.internal"
    config = ObjectStorageConfig.from_env({**plain, **IRSA, "POD_NAME": "cpu-abc"})
    assert config is not None
    source = config.credentials
    assert isinstance(getattr(source, "kind", None), WebIdentity)
    kind: WebIdentity = source.kind  # type: ignore[attr-defined]
    assert (kind.sts_endpoint, kind.session_seconds, kind.session_name) == (
        "https://sts.internal",
        7200,
        "ffrtmp-cpu-abc",
    )
    # Without an identity the worker still starts; object storage jobs fail with why.
    lacking = ObjectStorageConfig.from_env(plain)
    assert lacking is not None and isinstance(lacking.credentials, NoIdentity)
    assert "has no AWS identity" in lacking.credentials.why


def test_ffmpeg_gets_no_aws_identity() -> None:
    env = {"PATH": "/usr/bin", **IRSA, **POD_IDENTITY, **KEY, "FFRTMP_S3_CREDENTIALS": "ambient"}
    assert without_credentials(env) == {"PATH": "/usr/bin"}
