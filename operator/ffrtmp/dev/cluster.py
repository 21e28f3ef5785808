"""Start and stop the local control plane: real etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and KWOK, on free loopback ports, every process tracked by PID; optionally one real
node (containerd + kubelet + kube-proxy + CoreDNS, `ffrtmp.dev.node`) beside the KWOK nodes."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ffrtmp.dev import node as host_node
from ffrtmp.dev.hoststate import HostSnapshot
from ffrtmp.dev.pki import KeyPair, Pki
from ffrtmp.egress.guard import LIBRARY_ENV

SERVICE_CIDR = "10.96.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


class ClusterError(RuntimeError):
    """The control plane could not be started; the message names the failing component."""


def repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def default_bin_dir() -> Path:
    """The cache folder hack/tools.sh builds into ($FFRTMP_TOOLS_BIN overrides)."""
    if "FFRTMP_TOOLS_BIN" in os.environ:
        return Path(os.environ["FFRTMP_TOOLS_BIN"])
    cache = os.environ.get("FFRTMP_TOOLS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ffrtmp-tools"
    )
    return Path(cache) / "bin"


def default_connect_guard() -> Path:
    """The connect guard library for workers run as local processes: the one hack/tools.sh builds
    into the tools cache ($FFRTMP_CONNECT_GUARD overrides, as for the worker itself)."""
    if os.environ.get(LIBRARY_ENV):
        return Path(os.environ[LIBRARY_ENV])
    return default_bin_dir().parent / "lib" / "connect-guard.so"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ClusterState:
    """What `up` started, saved so `down` (maybe another process) can stop it."""

    root: str
    server: str = ""
    etcd_url: str = ""
    pids: dict[str, int] = field(default_factory=dict)
    # With a real node: the host as it was before (what `down` restores), see ffrtmp.dev.hoststate.
    host_before: dict[str, Any] | None = None


def _kubeconfig(server: str, ca: Path, client: KeyPair, user: str) -> str:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "ffrtmp-local", "cluster": {"server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(client.cert), "client-key-data": b64(client.key),
        }}],
        "contexts": [{"name": "ffrtmp-local", "context": {"cluster": "ffrtmp-local", "user": user}}],
        "current-context": "ffrtmp-local",
    }  # fmt: skip
    return yaml.safe_dump(doc)


def generate_nodes(count: int, prefix: str = "sim-cpu") -> list[dict[str, object]]:
    """Extra simulated CPU nodes, for scale runs."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": f"{prefix}-{i}",
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {"type": "kwok", "kubernetes.io/os": "linux", "ffmpeg-rtmp.io/accelerator": "cpu"},
            },
            "spec": {},
            "status": {
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "250"},
                "capacity": {"cpu": "64", "memory": "256Gi", "pods": "250"},
            },
        }
        for i in range(count)
    ]


class LocalCluster:
    """A control plane under `root`: pki/, etcd/, logs/, kubeconfig, state.json."""

    def __init__(
        self,
        root: Path,
        bin_dir: Path | None = None,
        *,
        apiserver_profiling: bool = False,
        real_node: bool = False,
        simulated_nodes: bool = True,
    ) -> None:
        self.root = root.resolve()
        # One kubelet + containerd node on this host, beside the KWOK nodes (needs root; see ffrtmp.dev.node).
        self.real_node = real_node
        # The KWOK nodes of nodes.yaml (CPU and GPU): off, every Pod lands on the real node.
        self.simulated_nodes = simulated_nodes
        # kube-apiserver's /debug/pprof (admin only): the benchmarks profile the API server with it.
        self.apiserver_profiling = apiserver_profiling
        self.bin_dir = bin_dir or default_bin_dir()
        self.pki = Pki(self.root / "pki")
        self.kubeconfig = self.root / "kubeconfig"
        self.logs = self.root / "logs"
        self.state_file = self.root / "state.json"
        self.state = ClusterState(root=str(self.root))
        self.node = host_node.RealNode(self.root / "node", self.bin_dir, self._spawn, self._wait)

    # -- files -------------------------------------------------------------------------------
    def _bin(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.exists():
            raise ClusterError(f"{path} is missing: run `make tools` (hack/tools.sh) to build it")
        return str(path)

    def _save(self) -> None:
        self.state_file.write_text(json.dumps(asdict(self.state), indent=2))

    def load(self) -> ClusterState:
        if self.state_file.exists():
            self.state = ClusterState(**json.loads(self.state_file.read_text()))
        return self.state

    # -- processes ---------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
        )
        log.close()
        self.state.pids[name] = proc.pid
        self._save()
        return proc

    def _log_tail(self, name: str, lines: int = 25) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _wait(self, what: str, proc: subprocess.Popen[bytes], check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterError(f"{what} exited with {proc.returncode}:\n{self._log_tail(what)}")
            if check():
                return
            time.sleep(0.2)
        raise ClusterError(f"{what} not ready after {timeout:.0f}s:\n{self._log_tail(what)}")

    def _https_ok(self, path: str) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        admin = self.pki.issue("admin", "ffrtmp-admin", organization="system:masters")
        ctx.load_cert_chain(str(admin.cert), str(admin.key))
        try:
            with urllib.request.urlopen(self.state.server + path, context=ctx, timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self._bin("kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input, text=True, capture_output=True, check=check, timeout=120,
        )  # fmt: skip

    # -- up / down ---------------------------------------------------------------------------
    def up(self, *, extra_nodes: int = 0, timeout: float = 120.0) -> None:
        """Start every component (fresh etcd data), create the nodes, wait until all are Ready."""
        self.down()
        if self.real_node and (reason := host_node.unavailable_reason(self.bin_dir)):
            raise ClusterError(f"the real node cannot start here: {reason}")
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.root / "etcd", ignore_errors=True)
        shutil.rmtree(self.logs, ignore_errors=True)
        self.state = ClusterState(root=str(self.root))
        self.pki.ensure()
        started = time.monotonic()
        try:
            if self.real_node:
                self.state.host_before = asdict(self.node.prepare_host())
                self._save()
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
            self._start_controllers()
            self._create_nodes(extra_nodes, timeout - (time.monotonic() - started))
            if self.real_node:
                self._start_real_node(timeout)
        except BaseException:
            self.down()
            raise

    def _start_etcd(self, timeout: float) -> None:
        client, peer = free_port(), free_port()
        self.state.etcd_url = f"http://127.0.0.1:{client}"
        proc = self._spawn("etcd", [
            self._bin("etcd"), "--name", "ffrtmp", "--data-dir", str(self.root / "etcd"),
            "--listen-client-urls", self.state.etcd_url, "--advertise-client-urls", self.state.etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"ffrtmp=http://127.0.0.1:{peer}",
            "--listen-metrics-urls", f"http://127.0.0.1:{free_port()}",
            "--unsafe-no-fsync", "--quota-backend-bytes", str(4 << 30), "--log-level", "warn",
        ])  # fmt: skip

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(self.state.etcd_url + "/health", timeout=1) as r:
                    return b'"true"' in r.read()
            except (urllib.error.URLError, OSError):
                return False

        self._wait("etcd", proc, healthy, timeout)

    def _start_apiserver(self, timeout: float) -> None:
        port = free_port()
        self.state.server = f"https://127.0.0.1:{port}"
        names = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
        if self.real_node:
            # Pods reach the API server through the `kubernetes` Service, whose endpoint is the node's bridge.
            serving = self.pki.issue("apiserver-node", "kube-apiserver", server_names=names,
                                     server_ips=("127.0.0.1", "10.96.0.1", host_node.NODE_IP))  # fmt: skip
            kubelet_client = self.pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                            organization="system:masters")  # fmt: skip
            node_flags = [
                "--bind-address", "0.0.0.0", "--advertise-address", host_node.NODE_IP,
                "--endpoint-reconciler-type", "lease",
                "--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction",
                "--kubelet-client-certificate", str(kubelet_client.cert),
                "--kubelet-client-key", str(kubelet_client.key),
                "--kubelet-preferred-address-types", "InternalIP",
            ]  # fmt: skip
        else:
            serving = self.pki.issue(
                "apiserver", "kube-apiserver", server_names=names, server_ips=("127.0.0.1", "10.96.0.1")
            )
            node_flags = [
                "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
                "--endpoint-reconciler-type", "none", "--authorization-mode", "RBAC",
            ]  # fmt: skip
        admin = self.pki.issue("admin", "ffrtmp-admin", organization="system:masters")
        proc = self._spawn("kube-apiserver", [
            self._bin("kube-apiserver"),
            "--etcd-servers", self.state.etcd_url,
            *node_flags, "--secure-port", str(port),
            "--tls-cert-file", str(serving.cert), "--tls-private-key-file", str(serving.key),
            "--client-ca-file", str(self.pki.ca.cert),
            "--service-account-issuer", SA_ISSUER,
            "--service-account-key-file", str(self.pki.sa_pub),
            "--service-account-signing-key-file", str(self.pki.sa_key),
            "--service-cluster-ip-range", SERVICE_CIDR,
            "--allow-privileged=true",
            "--max-requests-inflight", "1000", "--max-mutating-requests-inflight", "500",
            f"--profiling={str(self.apiserver_profiling).lower()}", "--v", "1",
        ])  # fmt: skip
        self.kubeconfig.write_text(_kubeconfig(self.state.server, self.pki.ca.cert, admin, "ffrtmp-admin"))
        self._wait("kube-apiserver", proc, lambda: self._https_ok("/readyz"), timeout)
        self._save()

    def _component_kubeconfig(self, name: str, common_name: str, organization: str | None = None) -> Path:
        pair = self.pki.issue(name, common_name, organization=organization)
        path = self.root / f"{name}.kubeconfig"
        path.write_text(_kubeconfig(self.state.server, self.pki.ca.cert, pair, common_name))
        return path

    def _start_controllers(self) -> None:
        cm = self._component_kubeconfig("controller-manager", "system:kube-controller-manager")
        self._spawn("kube-controller-manager", [
            self._bin("kube-controller-manager"), "--kubeconfig", str(cm),
            "--leader-elect=false", "--secure-port=0",
            "--service-account-private-key-file", str(self.pki.sa_key),
            "--root-ca-file", str(self.pki.ca.cert),
            "--use-service-account-credentials=true",
            # PersistentVolumeClaims bind only where a real node can mount them.
            "--controllers", "*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle"
            + ("" if self.real_node else ",-persistentvolume-binder"),
            "--concurrent-gc-syncs", "10", "--v", "1",
        ])  # fmt: skip
        sched = self._component_kubeconfig("scheduler", "system:kube-scheduler")
        self._spawn("kube-scheduler", [
            self._bin("kube-scheduler"), "--kubeconfig", str(sched),
            "--leader-elect=false", "--secure-port=0", "--v", "1",
        ])  # fmt: skip
        if not self.simulated_nodes:
            return
        config = resources.files("ffrtmp.dev").joinpath("kwok.yaml")
        self._spawn("kwok", [
            self._bin("kwok"), "--kubeconfig", str(self.kubeconfig),
            "--config", str(config),
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector", "kwok.x-k8s.io/node=fake",
            "--node-lease-duration-seconds", "40",
            "--cidr", "10.244.0.0/16", "--node-ip", "10.0.0.1",
            "--server-address", f"127.0.0.1:{free_port()}",
        ])  # fmt: skip

    def node_manifests(self, extra_nodes: int = 0) -> list[dict[str, object]]:
        doc = yaml.safe_load(resources.files("ffrtmp.dev").joinpath("nodes.yaml").read_text())
        items: list[dict[str, object]] = doc["items"]
        return items + generate_nodes(extra_nodes)

    def _create_nodes(self, extra_nodes: int, timeout: float) -> None:
        nodes = self.node_manifests(extra_nodes) if self.simulated_nodes else []
        if nodes:
            listing = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": nodes})
            self.kubectl("create", "-f", "-", input=listing)
        deadline = time.monotonic() + max(timeout, 30)
        while time.monotonic() < deadline:
            for name in ("kube-controller-manager", "kube-scheduler", "kwok")[: 3 if self.simulated_nodes else 2]:
                if not _alive(self.state.pids.get(name)):
                    raise ClusterError(f"{name} exited:\n{self._log_tail(name)}")
            listed = json.loads(self.kubectl("get", "nodes", "-o", "json", check=False).stdout or '{"items": []}')
            ready = sum(1 for n in listed["items"] if _node_schedulable(n))
            if ready == len(nodes) and self._default_service_account_ready():
                return
            time.sleep(0.5)
        raise ClusterError(f"nodes not Ready in time:\n{self._log_tail('kwok')}")

    def _start_real_node(self, timeout: float) -> None:
        name = host_node.NODE_NAME
        kubelet = self.pki.issue("kubelet-serving", f"system:node:{name}", server_names=(name,),
                                 server_ips=(host_node.NODE_IP, "127.0.0.1"))  # fmt: skip
        kubeconfigs = {
            "kubelet": self._component_kubeconfig("kubelet", f"system:node:{name}", "system:nodes"),
            "kube-proxy": self._component_kubeconfig("kube-proxy", "system:kube-proxy"),
            "coredns": self.kubeconfig,
        }
        try:
            self.node.start(server=self.state.server, ca=self.pki.ca.cert, kubeconfigs=kubeconfigs,
                            kubelet_serving=(kubelet.cert, kubelet.key), timeout=timeout)  # fmt: skip
        except host_node.NodeError as e:
            raise ClusterError(str(e)) from None
        deadline = time.monotonic() + max(timeout, 60)
        while time.monotonic() < deadline:
            got = self.kubectl("get", "node", name, "-o", "json", check=False)
            if got.returncode == 0 and _node_schedulable(json.loads(got.stdout)):
                return
            if not _alive(self.state.pids.get("kubelet")):
                break
            time.sleep(0.5)
        raise ClusterError(f"the real node {name} did not become Ready:\n{self._log_tail('kubelet')}")

    def load_image(self, archive: Path, reference: str, *aliases: str) -> float:
        """Import an image archive into the real node's containerd (there is no registry to pull
        from) and tag it with `aliases` too; returns the seconds it took."""
        started = time.monotonic()
        if not host_node.SOCKET.exists():
            raise ClusterError(f"no real node runs here ({host_node.SOCKET} is missing): `up --real-node` first")
        try:
            if reference not in self.node.images():
                self.node.import_image_archive(archive)
            for alias in aliases:
                self.node.tag_image(reference, alias)
        except host_node.NodeError as e:
            raise ClusterError(str(e)) from None
        return time.monotonic() - started

    def _default_service_account_ready(self) -> bool:
        out = self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
        return out.returncode == 0

    def register(self, name: str, pid: int) -> None:
        """Track a process started beside the control plane (the demo's operator), so `down` stops it."""
        self.load()
        self.state.pids[name] = pid
        self._save()

    def down(self) -> list[str]:
        """Stop every process `up` started (SIGTERM, then SIGKILL), in reverse order. With a real
        node, first stop it and restore the host; returns what could not be undone (empty when clean)."""
        state = self.load()
        problems: list[str] = []
        if state.host_before is not None or (self.root / "node").exists():
            before = HostSnapshot(**state.host_before) if state.host_before is not None else None
            problems = self.node.stop(before, self._stop_named)
            state.host_before = None
        for name in reversed(list(state.pids)):
            _stop(state.pids[name])
        state.pids.clear()
        if self.state_file.exists():
            self._save()
        return problems

    def _stop_named(self, name: str) -> None:
        pid = self.state.pids.pop(name, None)
        if pid:
            _stop(pid, grace=10.0)
            self._save()

    def env(self) -> str:
        return f"export KUBECONFIG={self.kubeconfig}\n"


def _node_schedulable(node: dict[str, Any]) -> bool:
    """Ready, and without the not-ready taint the node lifecycle controller removes once it sees that."""
    conditions = node.get("status", {}).get("conditions") or []
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    taints = node.get("spec", {}).get("taints") or []
    return ready and not any(t["key"].startswith("node.kubernetes.io/") for t in taints)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(FileNotFoundError, IndexError):
        # A zombie (exited, not yet reaped) is not alive.
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z":
            return False
    return True


def _stop(pid: int, grace: float = 5.0) -> None:
    if not _alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not _alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
