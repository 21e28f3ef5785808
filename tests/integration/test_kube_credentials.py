"""Client parity with kubectl, against the real API server: an exec credential plugin (a script that
gets a real ServiceAccount token with `kubectl create token`), a merged two-file KUBECONFIG with
--context, traffic through a real HTTP CONNECT proxy, and an unsupported auth-provider refused at
start. The operator and the stand-in workers run a TranscodeJob with each."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Farm
from ffrtmp.kube.client import ApiError, KubeClient, resource_path
from ffrtmp.kube.config import load_kubeconfig
from helpers import TestCluster, make_clip, operator_argv, start_service, wait_for

pytestmark = pytest.mark.integration
Obj = dict[str, Any]
EXEC_V1 = "client.authentication.k8s.io/v1"
EXPIRY_SECONDS = 4.0

# An exec credential plugin: one real ServiceAccount token per call (kubectl create token), valid for
# EXPIRY_SECONDS by its ExecCredential. Each call is recorded: caller pid, time, expiry, argv, exec info.
# PLAN (JSON list, one entry per call, then real tokens): "bogus" answers a token the server refuses.
PLUGIN = """\
import fcntl, json, os, subprocess, sys, time
from datetime import datetime, timezone
calls = os.environ["PLUGIN_CALLS"]
with open(calls + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # one call at a time: numbered in order
    n = len(open(calls).read().splitlines()) + 1 if os.path.exists(calls) else 1
    plan = json.loads(os.environ.get("PLUGIN_PLAN") or "[]")
    if n <= len(plan) and plan[n - 1] == "bogus":
        token = "bogus-token-the-server-refuses"
    else:
        token = subprocess.run(
            [os.environ["KUBECTL"], "--kubeconfig", os.environ["ADMIN_KUBECONFIG"], "create", "token",
             os.environ["SA"], "-n", os.environ["SA_NAMESPACE"], "--duration", "1h"],
            check=True, capture_output=True, text=True).stdout.strip()
    now = time.time()
    exp = now + float(os.environ["PLUGIN_EXPIRY"])
    with open(calls, "a") as f:
        f.write(json.dumps({"pid": os.getppid(), "t": now, "exp": exp, "argv": sys.argv[1:],
                            "info": json.loads(os.environ["KUBERNETES_EXEC_INFO"])}) + "\\n")
expires = datetime.fromtimestamp(exp, timezone.utc).isoformat()
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": token, "expirationTimestamp": expires}}))
"""


def admin_doc(cluster: TestCluster) -> Obj:
    doc: Obj = yaml.safe_load(cluster.kubeconfig.read_text())
    return doc


def cluster_entry(cluster: TestCluster) -> Obj:
    """The local cluster's entry (server and CA, the CA inlined) of the admin kubeconfig."""
    doc = admin_doc(cluster)
    entry: Obj = dict(doc["clusters"][0]["cluster"])
    if "certificate-authority" in entry:
        ca = Path(entry.pop("certificate-authority"))
        ca = ca if ca.is_absolute() else cluster.kubeconfig.parent / ca
        entry["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
    return entry


def admin_user(cluster: TestCluster) -> Obj:
    doc = admin_doc(cluster)
    user: Obj = dict(doc["users"][0]["user"])
    for key in ("client-certificate", "client-key"):
        if key in user:
            path = Path(user.pop(key))
            path = path if path.is_absolute() else cluster.kubeconfig.parent / path
            user[f"{key}-data"] = base64.b64encode(path.read_bytes()).decode()
    return user


def kubeconfig(path: Path, cluster: Obj, user: Obj, namespace: str) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "c",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": namespace}}],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def service_account_admin(cluster: TestCluster, namespace: str, name: str = "creds") -> str:
    """A ServiceAccount with admin rights in the namespace (operator and workers need no more)."""
    cluster.kubectl("create", "serviceaccount", name, "-n", namespace)
    cluster.kubectl(
        "create", "rolebinding", f"{name}-admin", "-n", namespace, "--clusterrole=cluster-admin",
        f"--serviceaccount={namespace}:{name}",
    )  # fmt: skip
    return name


def exec_user(farm: Farm, sa: str, calls: Path, plan: list[str] | None = None) -> Obj:
    plugin = farm.root / "bin" / "sa-token-plugin"
    plugin.parent.mkdir(exist_ok=True)
    plugin.write_text(f"#!{sys.executable}\n{PLUGIN}")
    plugin.chmod(0o755)
    env = {
        "PLUGIN_CALLS": str(calls),
        "PLUGIN_EXPIRY": str(EXPIRY_SECONDS),
        "PLUGIN_PLAN": json.dumps(plan or []),
        "KUBECTL": str(farm.cluster.bin_dir / "kubectl"),
        "ADMIN_KUBECONFIG": str(farm.cluster.kubeconfig),
        "SA": sa,
        "SA_NAMESPACE": farm.namespace,
    }
    return {
        "exec": {
            "apiVersion": EXEC_V1,
            "command": str(plugin),
            "args": ["--audience", "ffrtmp-test"],
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "interactiveMode": "Never",
            "provideClusterInfo": True,
        }
    }


def plugin_calls(calls: Path) -> list[Obj]:
    lines = calls.read_text().splitlines() if calls.exists() else []
    return [dict(json.loads(line)) for line in lines]


def run_one_job(farm: Farm, name: str = "creds") -> Obj:
    clip = make_clip(farm.media / "clip.mp4", seconds=1)
    farm.job(name, str(clip))
    job = farm.wait_phase(name, "Succeeded", "Failed", timeout=150)
    assert job["status"]["phase"] == "Succeeded", job["status"]
    return job


def without_kubeconfig_flag(argv: list[str]) -> list[str]:
    i = argv.index("--kubeconfig")
    return argv[:i] + argv[i + 2 :]


# --- exec credential plugin ------------------------------------------------------------------------


def test_operator_and_worker_run_a_job_with_an_exec_plugin_cached_until_expiry(farm: Farm) -> None:
    sa = service_account_admin(farm.cluster, farm.namespace)
    calls = farm.root / "plugin-calls"
    server = cluster_entry(farm.cluster)
    kc = kubeconfig(farm.root / "exec.kubeconfig", server, exec_user(farm, sa, calls), farm.namespace)
    farm.pool("cpu", minWorkers=1, autoscaling={"enabled": False})
    argv = operator_argv(farm.cluster, farm.namespace)
    argv[argv.index("--kubeconfig") + 1] = str(kc)
    farm.services["operator"] = operator = start_service("operator", argv, farm.root / "logs")
    # the stand-in kubelet itself is the kubelet (admin); the worker processes use the plugin
    farm.start_workers("--worker-kubeconfig", str(kc))
    job = run_one_job(farm)
    assert job["status"]["worker"]

    # Each process refreshes after expiry: wait for the operator's second call (it keeps renewing).
    def operator_refreshed() -> list[Obj] | None:
        mine = [c for c in plugin_calls(calls) if c["pid"] == operator.proc.pid]
        return mine if len(mine) >= 2 else None

    wait_for(operator_refreshed, 60, "the operator to run the plugin again after expiry")
    records = plugin_calls(calls)
    by_pid: dict[int, list[float]] = {}
    for c in records:
        by_pid.setdefault(c["pid"], []).append(c["t"])
        assert c["argv"] == ["--audience", "ffrtmp-test"]
        assert c["info"]["apiVersion"] == EXEC_V1 and c["info"]["kind"] == "ExecCredential"
        assert c["info"]["spec"]["interactive"] is False
        assert c["info"]["spec"]["cluster"]["server"] == server["server"].rstrip("/")
    assert operator.proc.pid in by_pid and len(by_pid) >= 2, by_pid.keys()  # the operator and a worker
    # Cached until expiry: no process ran it twice within the credential's lifetime (the token is
    # valid for an hour, so no 401 forces an early refresh).
    for pid, times in by_pid.items():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(g >= EXPIRY_SECONDS - 0.05 for g in gaps), (pid, gaps)
    log = operator.tail(2000)
    assert "Unauthorized" not in log and "bogus" not in log


async def test_a_401_refreshes_the_plugin_credential_once_for_requests_and_watches(farm: Farm) -> None:
    sa = service_account_admin(farm.cluster, farm.namespace)
    calls = farm.root / "plugin-calls"
    # 1: refused; 2: good for EXPIRY_SECONDS; 3 (after expiry): refused; 4: good.
    user = exec_user(farm, sa, calls, plan=["bogus", "real", "bogus", "real"])
    kc = kubeconfig(farm.root / "exec.kubeconfig", cluster_entry(farm.cluster), user, farm.namespace)
    path = resource_path("", "v1", "configmaps", farm.namespace)
    async with KubeClient(load_kubeconfig(kc)) as client:
        _, rv = await client.list_all(path)  # 401, new credential, the same request again: 200
        assert len(plugin_calls(calls)) == 2
        expires = plugin_calls(calls)[1]["exp"]
        await asyncio.sleep(max(0.0, expires - time.time()) + 0.1)  # let it expire (waiting, not asserting)

        async def first_event() -> Obj:
            async for event in client.watch(path, rv, timeout_seconds=60):
                if event["object"]["metadata"]["name"] == "seen":
                    return event
            raise AssertionError("watch ended")

        watch = asyncio.create_task(first_event())
        # Created only once the watch is open: the plugin ran twice more (refused, then good).
        await asyncio.to_thread(wait_for, lambda: len(plugin_calls(calls)) == 4, 60, "two more plugin runs")
        await asyncio.sleep(0.5)
        await client.create(path, {"metadata": {"name": "seen"}, "data": {"k": "v"}})
        event = await asyncio.wait_for(watch, 60)
        assert event["type"] == "ADDED"
    assert client.credentials.exec_runs == 4
    # A static token the server refuses is not retried: the 401 is the answer.
    bad = kubeconfig(farm.root / "bad.kubeconfig", cluster_entry(farm.cluster), {"token": "nope"}, farm.namespace)
    async with KubeClient(load_kubeconfig(bad)) as client:
        with pytest.raises(ApiError) as err:
            await client.get(path)
        assert err.value.status == 401


# --- merged KUBECONFIG and --context -----------------------------------------------------------------


def test_a_merged_two_file_kubeconfig_with_context_runs_a_job(farm: Farm) -> None:
    sa = service_account_admin(farm.cluster, farm.namespace)
    token = farm.cluster.kubectl("create", "token", sa, "-n", farm.namespace, "--duration", "1h").stdout.strip()
    real = cluster_entry(farm.cluster)
    first = farm.root / "kube" / "first"
    second = farm.root / "kube" / "second"
    first.parent.mkdir()
    # The first file: the user and both contexts, current-context pointing nowhere.
    first.write_text(
        yaml.safe_dump(
            {
                "current-context": "broken",
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [
                    {"name": "broken", "context": {"cluster": "nowhere", "user": "sa"}},
                    {"name": "real", "context": {"cluster": "local", "user": "sa", "namespace": farm.namespace}},
                ],
            }
        )
    )
    # The second: the clusters, and a same-named user and context that lose to the first file's.
    second.write_text(
        yaml.safe_dump(
            {
                "current-context": "real",
                "clusters": [
                    {"name": "local", "cluster": real},
                    {"name": "nowhere", "cluster": {"server": "https://127.0.0.1:1"}},
                ],
                "users": [{"name": "sa", "user": {"token": "second-file-token-never-used"}}],
                "contexts": [{"name": "real", "context": {"cluster": "nowhere", "user": "sa"}}],
            }
        )
    )
    merged = f"{first}{os.pathsep}{second}"
    farm.pool("cpu", minWorkers=1, autoscaling={"enabled": False})
    argv = [*without_kubeconfig_flag(operator_argv(farm.cluster, farm.namespace)), "--context", "real"]
    farm.services["operator"] = start_service("operator", argv, farm.root / "logs", env={"KUBECONFIG": merged})
    farm.start_workers("--worker-kubeconfig", merged, env={"FFRTMP_KUBE_CONTEXT": "real"})
    run_one_job(farm)
    # A context no file defines: refused at start, naming it.
    proc = subprocess.run(
        [sys.executable, "-m", "ffrtmp.cli", "operator", "--namespace", farm.namespace, "--context", "nope"],
        check=False, env={**os.environ, "KUBECONFIG": merged}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "no context named 'nope'" in proc.stderr, proc.stderr
    assert token not in proc.stderr + proc.stdout


# --- HTTP CONNECT proxy -------------------------------------------------------------------------


class ConnectProxy:
    """A real HTTP CONNECT proxy on its own thread and event loop; counts tunnels per target.
    `aliases` maps names only it can resolve (like a corporate proxy's DNS) to addresses."""

    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = aliases
        self.tunnels: Counter[str] = Counter()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConnectProxy:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        """Stop listening and close every tunnel, on the proxy's own loop."""
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            host, _, port = target.rpartition(":")
            upstream_r, upstream_w = await asyncio.open_connection(self.aliases.get(host, host), int(port))
        except (OSError, ValueError, asyncio.IncompleteReadError):
            writer.close()
            return
        self.tunnels[target] += 1
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except OSError:
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, upstream_w), pipe(upstream_r, writer))


@pytest.fixture
def proxy() -> Iterator[ConnectProxy]:
    with ConnectProxy({"apiserver.ffrtmp.test": "127.0.0.1"}) as p:
        yield p


def test_operator_via_proxy_url_and_workers_via_https_proxy_run_a_job(farm: Farm, proxy: ConnectProxy) -> None:
    real = cluster_entry(farm.cluster)
    port = int(real["server"].rstrip("/").rsplit(":", 1)[1])
    user = admin_user(farm.cluster)
    # The operator: the cluster's proxy-url (used even for a loopback server, as kubectl does).
    op_kc = kubeconfig(farm.root / "op.kubeconfig", {**real, "proxy-url": proxy.url}, user, farm.namespace)
    # The workers: a server name only the proxy can resolve, reached through $HTTPS_PROXY; the
    # certificate (issued to localhost) checked for tls-server-name.
    alias = {**real, "server": f"https://apiserver.ffrtmp.test:{port}", "tls-server-name": "localhost"}
    worker_kc = kubeconfig(farm.root / "worker.kubeconfig", alias, user, farm.namespace)
    farm.pool("cpu", minWorkers=1, autoscaling={"enabled": False})
    argv = operator_argv(farm.cluster, farm.namespace)
    argv[argv.index("--kubeconfig") + 1] = str(op_kc)
    farm.services["operator"] = start_service("operator", argv, farm.root / "logs", env={"HTTPS_PROXY": ""})
    farm.start_workers(
        "--worker-kubeconfig", str(worker_kc), env={"HTTPS_PROXY": proxy.url, "NO_PROXY": "example.invalid"}
    )
    run_one_job(farm)
    assert proxy.tunnels[f"127.0.0.1:{port}"] >= 1, proxy.tunnels
    assert proxy.tunnels[f"apiserver.ffrtmp.test:{port}"] >= 1, proxy.tunnels
    assert set(proxy.tunnels) == {f"127.0.0.1:{port}", f"apiserver.ffrtmp.test:{port}"}


# --- unsupported auth ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["operator", "worker"])
def test_an_unsupported_auth_provider_fails_at_start_without_a_request(tmp_path: Path, command: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    secret = "ya29.gcp-access-token-never-printed"
    user = {"auth-provider": {"name": "gcp", "config": {"access-token": secret, "cmd-path": "gcloud"}}}
    doc = {
        "current-context": "gke",
        "clusters": [{"name": "gke", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
        "users": [{"name": "gke_user", "user": user}],
        "contexts": [{"name": "gke", "context": {"cluster": "gke", "user": "gke_user"}}],
    }
    kc = tmp_path / "gke.kubeconfig"
    kc.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "POD_NAME": "w", "POD_NAMESPACE": "default", "FFRTMP_POOL": "cpu"}
    argv = [sys.executable, "-m", "ffrtmp.cli", command, "--kubeconfig", str(kc)]
    proc = subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"ffrtmp {command}: {kc}: user 'gke_user': auth-provider 'gcp' is not supported" in proc.stderr
    assert "exec credential plugin instead (e.g. gke-gcloud-auth-plugin" in proc.stderr
    assert secret not in proc.stderr + proc.stdout
    with pytest.raises(BlockingIOError):  # nobody connected: no anonymous request was tried
        listener.accept()
    listener.close()
