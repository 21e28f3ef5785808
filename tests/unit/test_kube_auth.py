"""Exec credential plugins: the ExecCredential exchange, caching until expiry, refresh after a 401.
The plugins are real programs (small Python scripts) run as the client runs them."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from ffrtmp.kube.auth import Credential, CredentialError, Credentials, exec_info, parse_exec_credential
from ffrtmp.kube.config import ExecConfig, KubeConfig

pytestmark = pytest.mark.unit

V1 = "client.authentication.k8s.io/v1"
TOKEN = "tok-3f9a-never-printed"


def credential(status: dict[str, Any], api_version: str = V1, kind: str = "ExecCredential") -> bytes:
    return json.dumps({"apiVersion": api_version, "kind": kind, "status": status}).encode()


def test_parse_token_with_expiry() -> None:
    out = credential({"token": TOKEN, "expirationTimestamp": "2033-05-18T03:33:20Z"})
    assert parse_exec_credential(out, V1, "u") == Credential(token=TOKEN, expires=2_000_000_000.0)
    out = credential({"token": TOKEN, "expirationTimestamp": "2033-05-18T05:33:20.5+02:00"})
    assert parse_exec_credential(out, V1, "u").expires == 2_000_000_000.5


def test_parse_client_certificate_without_expiry() -> None:
    out = credential({"clientCertificateData": "CERT", "clientKeyData": "KEY"})
    assert parse_exec_credential(out, V1, "u") == Credential(cert_data=b"CERT", key_data=b"KEY")


@pytest.mark.parametrize(
    ("out", "message"),
    [
        (b"not json " + TOKEN.encode(), "did not print a JSON ExecCredential"),
        (credential({"token": TOKEN}, kind="Other"), "something other than an ExecCredential"),
        (credential({"token": TOKEN}, api_version="client.authentication.k8s.io/v1beta1"), "answered apiVersion"),
        (json.dumps({"apiVersion": V1, "kind": "ExecCredential"}).encode(), "without status"),
        (credential({}), "neither a token nor a client certificate"),
        (credential({"clientCertificateData": TOKEN}), "without its key"),
        (credential({"token": TOKEN, "expirationTimestamp": "tomorrow"}), "not RFC 3339"),
        (credential({"token": TOKEN, "expirationTimestamp": "2033-05-18T03:33:20"}), "not RFC 3339"),
    ],
)
def test_bad_plugin_output_is_an_error_naming_the_user_not_the_output(out: bytes, message: str) -> None:
    with pytest.raises(CredentialError, match=message) as err:
        parse_exec_credential(out, V1, "eks-admin")
    assert "user 'eks-admin'" in str(err.value) and TOKEN not in str(err.value)


def test_a_credential_never_shows_its_token() -> None:
    assert TOKEN not in repr(Credential(token=TOKEN)) and TOKEN not in str(Credential(token=TOKEN))


def test_exec_info_carries_the_cluster_only_when_asked() -> None:
    cfg = ExecConfig(api_version=V1, command="x")
    assert json.loads(exec_info(cfg)) == {"apiVersion": V1, "kind": "ExecCredential", "spec": {"interactive": False}}
    cfg = ExecConfig(api_version=V1, command="x", cluster={"server": "https://k"})
    assert json.loads(exec_info(cfg))["spec"] == {"interactive": False, "cluster": {"server": "https://k"}}


PLUGIN = """\
import json, os, sys
calls = os.path.join(os.environ["PLUGIN_DIR"], "calls")
with open(calls, "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "info": os.environ.get("KUBERNETES_EXEC_INFO")}) + "\\n")
n = sum(1 for _ in open(calls))
if os.environ.get("PLUGIN_FAIL"):
    print("the plugin's own complaint", file=sys.stderr)
    sys.exit(3)
status = {"token": f"token-{n}"}
if os.environ.get("PLUGIN_EXPIRY"):
    status["expirationTimestamp"] = os.environ["PLUGIN_EXPIRY"]
print(json.dumps({"apiVersion": json.loads(os.environ["KUBERNETES_EXEC_INFO"])["apiVersion"],
                  "kind": "ExecCredential", "status": status}))
"""


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def plugin_config(tmp_path: Path, **env: str) -> KubeConfig:
    script = tmp_path / "plugin.py"
    script.write_text(PLUGIN)
    exec_cfg = ExecConfig(
        api_version=V1,
        command=sys.executable,
        args=(str(script), "--cluster", "prod"),
        env=(("PLUGIN_DIR", str(tmp_path)), *env.items()),
        install_hint="pip install the-plugin",
        cluster={"server": "https://k:6443"},
    )
    return KubeConfig(server="https://k:6443", exec=exec_cfg, user="eks-admin")


def calls(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "calls"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_the_plugin_runs_with_its_args_env_and_exec_info_and_is_cached_until_expiry(tmp_path: Path) -> None:
    clock = Clock(1_999_999_000.0)
    creds = Credentials(plugin_config(tmp_path, PLUGIN_EXPIRY="2033-05-18T03:33:20Z"), clock=clock)
    first = await creds.current()
    assert first == Credential(token="token-1", expires=2_000_000_000.0)
    (call,) = calls(tmp_path)
    assert call["argv"] == ["--cluster", "prod"]
    assert json.loads(call["info"]) == {
        "apiVersion": V1,
        "kind": "ExecCredential",
        "spec": {"interactive": False, "cluster": {"server": "https://k:6443"}},
    }
    clock.now = 1_999_999_999.9
    assert await creds.current() is first  # cached: no new run
    assert len(calls(tmp_path)) == 1
    clock.now = 2_000_000_000.0  # expired: run again
    assert (await creds.current()).token == "token-2"
    assert len(calls(tmp_path)) == 2 and creds.exec_runs == 2


async def test_concurrent_requests_that_find_it_expired_run_the_plugin_once(tmp_path: Path) -> None:
    creds = Credentials(plugin_config(tmp_path))
    got = await asyncio.gather(*(creds.current() for _ in range(20)))
    assert {c.token for c in got} == {"token-1"}
    assert len(calls(tmp_path)) == 1


async def test_a_401_drops_the_credential_it_was_made_with_only(tmp_path: Path) -> None:
    creds = Credentials(plugin_config(tmp_path))  # no expiry: cached until a 401
    first = await creds.current()
    assert creds.invalidate(first) is True
    second = await creds.current()
    assert second.token == "token-2"
    # a late 401 of a request made with the old credential keeps the new one
    assert creds.invalidate(first) is True
    assert await creds.current() is second
    assert len(calls(tmp_path)) == 2


async def test_static_credentials_are_not_refreshable(tmp_path: Path) -> None:
    creds = Credentials(KubeConfig(server="https://k", token=TOKEN))
    cred = await creds.current()
    assert cred.token == TOKEN
    assert creds.invalidate(cred) is False


async def test_a_failing_plugin_is_an_error_naming_user_and_status(tmp_path: Path) -> None:
    creds = Credentials(plugin_config(tmp_path, PLUGIN_FAIL="1"))
    with pytest.raises(CredentialError, match=r"user 'eks-admin': exec plugin .* exited with status 3"):
        await creds.current()


async def test_a_missing_plugin_is_an_error_with_its_install_hint(tmp_path: Path) -> None:
    cfg = plugin_config(tmp_path)
    assert cfg.exec is not None
    missing = KubeConfig(
        server=cfg.server,
        exec=ExecConfig(api_version=V1, command=str(tmp_path / "nope"), install_hint="pip install the-plugin"),
        user="eks-admin",
    )
    with pytest.raises(CredentialError, match=r"could not be run: No such file or directory; pip install the-plugin"):
        await Credentials(missing).current()


async def test_a_token_plugin_keeps_the_static_client_certificate(tmp_path: Path) -> None:
    cfg = plugin_config(tmp_path)
    both = KubeConfig(server=cfg.server, exec=cfg.exec, cert_data=b"CERT", key_data=b"KEY", user="u")
    cred = await Credentials(both).current()
    assert (cred.token, cred.cert_data, cred.key_data) == ("token-1", b"CERT", b"KEY")


async def test_the_client_retries_a_401_once_with_a_new_plugin_credential_never_for_a_static_one(
    tmp_path: Path,
) -> None:
    """An in-process HTTP server that refuses every token: one retry, then the 401 is the answer."""
    from aiohttp import web

    from ffrtmp.kube.client import ApiError, KubeClient

    seen: list[str] = []

    async def refuse(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"kind": "Status", "reason": "Unauthorized", "message": "no"}, status=401)

    app = web.Application()
    app.router.add_get("/api/v1/pods", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"
    try:
        cfg = plugin_config(tmp_path)
        async with KubeClient(KubeConfig(server=url, exec=cfg.exec, user="eks-admin")) as client:
            with pytest.raises(ApiError) as err:
                await client.get("/api/v1/pods")
            assert err.value.status == 401
        assert seen == ["Bearer token-1", "Bearer token-2"]
        seen.clear()
        async with KubeClient(KubeConfig(server=url, token=TOKEN)) as client:
            with pytest.raises(ApiError):
                await client.get("/api/v1/pods")
        assert seen == [f"Bearer {TOKEN}"]
    finally:
        await runner.cleanup()
