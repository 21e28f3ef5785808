"""Object storage credentials from the worker Pod's identity (`spec.objectStorage.ambientCredentials`).

Real here: ServiceAccount tokens minted by the local kube-apiserver for the STS audience (what the
kubelet projects for IRSA) and verified by it (TokenReview), the worker's credential code and HTTP, the
S3 server (versitygw) and the egress proxy. Stand-ins, because AWS cannot run here: STS
(AssumeRoleWithWebIdentity) and the EKS Pod Identity agent are small aiohttp servers in this file that
trust what the real API server says about a token, as AWS does through the cluster's OIDC issuer.
versitygw refuses session tokens (InvalidToken), so the S3 leg runs with the Pod Identity stand-in
handing out versitygw's own key with an expiry and no session token; signing with a session token is
covered by the AWS test vectors in tests/unit/test_sigv4.py.
"""

from __future__ import annotations

import json
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp import web

from ffrtmp.egress.policy import EgressPolicy
from ffrtmp.egress.proxy import EgressProxy
from ffrtmp.storage.credentials import AmbientCredentials, CredentialsUnavailable, WebIdentity
from ffrtmp.storage.s3 import S3Client
from ffrtmp.worker.config import ObjectStorageConfig
from ffrtmp.worker.objectstore import AttemptStorage, StorageFailed
from helpers import TestCluster
from s3server import S3Server

pytestmark = pytest.mark.integration

AUDIENCE = "sts.amazonaws.com"
ROLE = "arn:aws:iam::111122223333:role/transcoder"
TRUSTED_SA = "transcoder"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Sts:
    """AssumeRoleWithWebIdentity for one role whose trust policy names one ServiceAccount; tokens are
    checked by the real API server (TokenReview with the STS audience)."""

    cluster: TestCluster
    trusted: str  # system:serviceaccount:NS:SA
    lifetime: timedelta = timedelta(hours=1)
    calls: list[dict[str, str]] = field(default_factory=list)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))  # when its sessions start

    def review(self, token: str) -> dict[str, object]:
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                  "spec": {"token": token, "audiences": [AUDIENCE]}}  # fmt: skip
        out = self.cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review)).stdout
        status: dict[str, object] = json.loads(out)["status"]
        return status

    async def handle(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.calls.append(form)
        status = self.review(form.get("WebIdentityToken", ""))
        if not status.get("authenticated"):
            return _sts_error(
                400, "InvalidIdentityToken", "Couldn't retrieve verification key from your identity provider"
            )
        user = status.get("user")
        if form.get("RoleArn") != ROLE or not isinstance(user, dict) or user.get("username") != self.trusted:
            return _sts_error(403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity")
        expires = (self.clock() + self.lifetime).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = f"""<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
<AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>ASIA{len(self.calls)}</AccessKeyId>
<SecretAccessKey>temporary-secret</SecretAccessKey><SessionToken>session-{len(self.calls)}</SessionToken>
<Expiration>{expires}</Expiration></Credentials></AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"""
        return web.Response(body=body.encode(), content_type="text/xml")


def _sts_error(status: int, code: str, message: str) -> web.Response:
    error = f"<Type>Sender</Type><Code>{code}</Code><Message>{message}</Message>"
    body = f"<ErrorResponse><Error>{error}</Error></ErrorResponse>"
    return web.Response(status=status, body=body.encode(), content_type="text/xml")


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def sts(cluster: TestCluster, namespace: str) -> AsyncIterator[tuple[Sts, str]]:
    for sa in (TRUSTED_SA, "other"):
        cluster.kubectl("create", "serviceaccount", sa, "-n", namespace)
    server = Sts(cluster, f"system:serviceaccount:{namespace}:{TRUSTED_SA}")
    app = web.Application()
    app.router.add_post("/", server.handle)
    runner, url = await _serve(app)
    try:
        yield server, url
    finally:
        await runner.cleanup()


def _token(cluster: TestCluster, namespace: str, sa: str, *audience: str) -> str:
    args = ["create", "token", sa, "-n", namespace, "--duration", "10m"] + [f"--audience={a}" for a in audience]
    return cluster.kubectl(*args).stdout.strip()


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


async def test_web_identity_trades_the_pods_token_at_sts_and_again_before_expiry(
    cluster: TestCluster, namespace: str, sts: tuple[Sts, str], tmp_path: Path
) -> None:
    server, url = sts
    token_file = tmp_path / "token"
    first = _token(cluster, namespace, TRUSTED_SA, AUDIENCE)
    token_file.write_text(first)
    clock = Clock()
    server.clock = clock  # the worker's time and STS's move together
    source = AmbientCredentials(WebIdentity(ROLE, token_file, url, "ffrtmp-cpu-abc", 900), clock)

    got = await source.get()
    assert got.credentials.access_key_id == "ASIA1" and got.credentials.session_token == "session-1"
    call = server.calls[0]
    assert (call["Action"], call["RoleArn"], call["RoleSessionName"], call["DurationSeconds"]) == (
        "AssumeRoleWithWebIdentity", ROLE, "ffrtmp-cpu-abc", "900")  # fmt: skip
    assert call["WebIdentityToken"] == first
    assert await source.get() is got and source.fetches == 1  # cached while fresh

    # The kubelet rotated the token; four minutes before expiry the next use fetches again, with it.
    second = _token(cluster, namespace, TRUSTED_SA, AUDIENCE)
    token_file.write_text(second + "\n")
    assert got.expires is not None
    clock.now = got.expires - timedelta(minutes=4)
    renewed = await source.get()
    assert source.fetches == 2 and renewed.credentials.session_token == "session-2"
    assert server.calls[1]["WebIdentityToken"] == second

    # An input URL asks for credentials lasting as long as it should: 50 minutes left is not an hour, so a
    # new session is fetched; one fetched within the last minute is the longest there is, and is kept.
    clock.now += timedelta(minutes=10)
    assert renewed.expires is not None and renewed.expires - clock.now > timedelta(minutes=45)
    longer = await source.get(lasting=3600)
    assert source.fetches == 3 and longer.credentials.session_token == "session-3"
    assert await source.get(lasting=7200) is longer and source.fetches == 3


async def test_tokens_sts_does_not_trust_are_refused_by_name_without_the_token(
    cluster: TestCluster, namespace: str, sts: tuple[Sts, str], tmp_path: Path
) -> None:
    _, url = sts
    cases = {
        "another ServiceAccount": (_token(cluster, namespace, "other", AUDIENCE), "AccessDenied"),
        "the API server's audience": (_token(cluster, namespace, TRUSTED_SA), "InvalidIdentityToken"),
    }
    for what, (token, code) in cases.items():
        path = tmp_path / "token"
        path.write_text(token)
        with pytest.raises(CredentialsUnavailable) as e:
            await AmbientCredentials(WebIdentity(ROLE, path, url, "ffrtmp-w")).get()
        assert f"STS refused AssumeRoleWithWebIdentity: {code}" in str(e.value), what
        assert not e.value.retryable, what
        assert token not in str(e.value) and token[-20:] not in str(e.value), what
    closed = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(CredentialsUnavailable, match="unreachable") as e:
        await AmbientCredentials(WebIdentity(ROLE, tmp_path / "token", closed, "ffrtmp-w")).get()
    assert e.value.retryable
    with pytest.raises(CredentialsUnavailable, match="cannot read AWS_WEB_IDENTITY_TOKEN_FILE") as e:
        await AmbientCredentials(WebIdentity(ROLE, tmp_path / "missing", url, "ffrtmp-w")).get()
    assert not e.value.retryable


async def test_pod_identity_credentials_read_and_write_real_s3_within_their_lifetime(
    s3_server: S3Server, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    agent_token = "eks-pod-identity-" + secrets.token_urlsafe(16)
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text(agent_token)
    lifetime = timedelta(minutes=20)
    seen: list[str | None] = []

    async def credentials(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != agent_token:
            return web.json_response({"Message": "invalid token"}, status=401)
        expires = (datetime.now(UTC) + lifetime).strftime("%Y-%m-%dT%H:%M:%SZ")
        return web.json_response({"AccessKeyId": s3_server.access_key, "SecretAccessKey": s3_server.secret_key,
                                  "Expiration": expires})  # fmt: skip

    app = web.Application()
    app.router.add_get("/v1/credentials", credentials)
    runner, agent = await _serve(app)
    try:
        config = ObjectStorageConfig.from_env({
            "FFRTMP_S3_ENDPOINT": s3_server.url, "FFRTMP_S3_PATH_STYLE": "true", "FFRTMP_S3_CREDENTIALS": "ambient",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{agent}/v1/credentials",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file), "POD_NAME": "cpu-abc",
        })  # fmt: skip
        assert config is not None
        await s3.put_object(bucket, "in/clip.mp4", b"\x00" * 4096, "video/mp4")
        async with EgressProxy(EgressPolicy.build([f"{s3_server.host}/32"])) as proxy:
            storage = AttemptStorage(config, EgressPolicy.build([f"{s3_server.host}/32"]), proxy.url)
            url, size = await storage.input_url(f"s3://{bucket}/in/clip.mp4", None)
            assert size == 4096
            # Signed with the agent's key, valid no longer than the credentials (not the day + hour a fixed key gets).
            query = parse_qs(urlsplit(url).query)
            assert query["X-Amz-Credential"][0].startswith(s3_server.access_key + "/")
            assert 0 < int(query["X-Amz-Expires"][0]) <= lifetime.total_seconds()
            async with aiohttp.ClientSession() as http, http.get(url) as resp:
                assert resp.status == 200 and len(await resp.read()) == 4096
        assert seen == [agent_token]  # one fetch served both the check and the URL

        # A wrong agent token: the job's failure says where the credentials were to come from, no token.
        token_file.write_text("stale-token")
        refused = ObjectStorageConfig.from_env({
            "FFRTMP_S3_ENDPOINT": s3_server.url, "FFRTMP_S3_PATH_STYLE": "true", "FFRTMP_S3_CREDENTIALS": "ambient",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{agent}/v1/credentials",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file),
        })  # fmt: skip
        assert refused is not None
        async with EgressProxy(EgressPolicy.build([f"{s3_server.host}/32"])) as proxy:
            with pytest.raises(StorageFailed) as failed:
                await AttemptStorage(refused, EgressPolicy.build([f"{s3_server.host}/32"]), proxy.url).input_url(
                    f"s3://{bucket}/in/clip.mp4", None
                )
        f = failed.value.failure
        assert (f.reason, f.retryable) == ("ObjectStorageCredentialsUnavailable", False)
        assert f"reading s3://{bucket}/in/clip.mp4" in f.message and "HTTP 401" in f.message
        assert "stale-token" not in f.message and agent_token not in f.message
    finally:
        await runner.cleanup()
