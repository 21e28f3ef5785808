"""A real node for the local control plane: containerd (runc, Debian's CNI plugins), a kubelet,
kube-proxy and CoreDNS on this host, joined beside the KWOK nodes.

No registry is reachable: the sandbox (pause) image is written here from a static binary, and
images reach containerd with `ctr images import`. The node owns a bridge (`ffrtmp-br0`, 10.85.0.1/24)
that is the Pods' gateway, the address the API server advertises to Pods (the `kubernetes` Service)
and the cluster DNS address. Everything it changes on the host is recorded first (`hoststate`) and
undone by `stop`. One real node per host at a time (fixed socket and device names)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from ffrtmp.dev import hoststate

NODE_NAME = "ffrtmp-node"
NODE_LABEL = "ffmpeg-rtmp.io/real-node"
BRIDGE = "ffrtmp-br0"
NODE_IP = "10.85.0.1"
POD_SUBNET = "10.85.0.0/24"
CLUSTER_DOMAIN = "cluster.local"
RUN_DIR = Path("/run/ffrtmp-node")
SOCKET = RUN_DIR / "containerd.sock"
SANDBOX_IMAGE = "localhost/ffrtmp/pause:1"
K8S_NAMESPACE = "k8s.io"  # containerd's namespace for CRI (kubelet) images and containers
NODE_TOOLS = ("kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "coredns", "pause")
HOST_TOOLS = {
    "runc": "/usr/sbin/runc",
    "iptables": "/usr/sbin/iptables",
    "CNI bridge plugin": "/usr/lib/cni/bridge",
    "CNI host-local plugin": "/usr/lib/cni/host-local",
    "CNI loopback plugin": "/usr/lib/cni/loopback",
    "CNI portmap plugin": "/usr/lib/cni/portmap",
}
CNI_BIN_DIR = "/usr/lib/cni"


class NodeError(RuntimeError):
    """An image could not be imported or tagged into the node's containerd."""


def unavailable_reason(bin_dir: Path) -> str | None:
    """Why a real node cannot start on this host, or None when it can."""
    if os.name != "posix" or not Path("/proc/self/mountinfo").exists():
        return "not a Linux host"
    if os.geteuid() != 0:
        return "needs root (containerd, the kubelet and CNI change mounts, cgroups and iptables)"
    missing = [name for name in NODE_TOOLS if not (bin_dir / name).exists()]
    if missing:
        return f"Go-built tools missing from {bin_dir}: {', '.join(missing)} (run `make tools`)"
    missing = [f"{what} ({path})" for what, path in HOST_TOOLS.items() if not Path(path).exists()]
    if missing:
        return f"host packages missing: {', '.join(missing)} (run `make setup`)"
    if not Path("/sys/fs/cgroup/memory").is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "no memory cgroup controller"
    if not Path("/proc/sys/net/bridge").is_dir():
        return "no bridge netfilter (br_netfilter) in this kernel"
    if Path("/sys/class/net", BRIDGE).exists() or SOCKET.exists():
        return f"another real node runs on this host ({BRIDGE} or {SOCKET} exists; `ffrtmp dev cluster down` it)"
    return None


def write_oci_archive(path: Path, name: str, files: dict[str, tuple[bytes, int]], entrypoint: list[str]) -> None:
    """An OCI image archive (one layer) that `ctr images import` takes: enough for the pause image."""
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as tar:
        for member, (data, mode) in files.items():
            info = tarfile.TarInfo(member)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    diff_id = "sha256:" + hashlib.sha256(layer_tar.getvalue()).hexdigest()
    layer = gzip.compress(layer_tar.getvalue(), mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": entrypoint, "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()  # fmt: skip

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(config, "application/vnd.oci.image.config.v1+json"),
        "layers": [blob(layer, "application/vnd.oci.image.layer.v1.tar+gzip")],
    }).encode()  # fmt: skip
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{
            **blob(manifest, "application/vnd.oci.image.manifest.v1+json"),
            "annotations": {
                "io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
            },
        }],
    }).encode()  # fmt: skip
    with tarfile.open(path, "w") as out:
        entries = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index}
        for data in (config, layer, manifest):
            entries["blobs/sha256/" + hashlib.sha256(data).hexdigest()] = data
        for member, data in entries.items():
            info = tarfile.TarInfo(member)
            info.size, info.mtime = len(data), 0
            out.addfile(info, io.BytesIO(data))


class RealNode:
    """One kubelet + containerd node. `start` after the API server is up; `stop` undoes everything."""

    def __init__(
        self,
        root: Path,
        bin_dir: Path,
        spawn: Callable[[str, list[str], dict[str, str] | None], subprocess.Popen[bytes]],
        wait_for: Callable[[str, subprocess.Popen[bytes], Callable[[], bool], float], None],
    ) -> None:
        """`spawn` and `wait_for` are the cluster's: one process table, one way to wait for a component."""
        self.root = root  # <cluster>/node
        self.bin_dir = bin_dir
        self._spawn = spawn
        self._wait_for = wait_for

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _env(self) -> dict[str, str]:
        # containerd finds its shim on PATH; runc and iptables live in /usr/sbin.
        return {**os.environ, "PATH": f"{self.bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"}

    # -- host network, before the API server (it advertises NODE_IP) -------------------------------
    def prepare_host(self) -> hoststate.HostSnapshot:
        before = hoststate.snapshot()
        self.root.mkdir(parents=True, exist_ok=True)
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True, capture_output=True)
        subprocess.run(["ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE], check=True, capture_output=True)
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True, capture_output=True)
        hoststate.write_sysctl("net/ipv4/ip_forward", "1")
        hoststate.write_sysctl("net/bridge/bridge-nf-call-iptables", "1")
        return before

    # -- components --------------------------------------------------------------------------------
    def start(self, *, server: str, ca: Path, kubeconfigs: dict[str, Path], kubelet_serving: tuple[Path, Path],
              timeout: float) -> None:  # fmt: skip
        """containerd (with the pause image), kubelet, kube-proxy and CoreDNS; returns once each answers."""
        self._start_containerd(timeout)
        self.import_image_archive(self._pause_archive())
        self._start_kubelet(ca, kubeconfigs["kubelet"], kubelet_serving)
        self._start_kube_proxy(kubeconfigs["kube-proxy"])
        self._start_coredns(kubeconfigs["coredns"])

    def _start_containerd(self, timeout: float) -> None:
        cni_conf = self.root / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-ffrtmp.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        config = self.root / "containerd.toml"
        config.write_text(self._containerd_config(cni_conf))
        proc = self._spawn("containerd", [self._bin("containerd"), "--config", str(config)], self._env())

        def answers() -> bool:
            if not SOCKET.exists():
                return False
            argv = [self._bin("ctr"), "--address", str(SOCKET), "version"]
            return subprocess.run(argv, capture_output=True, check=False).returncode == 0

        self._wait_for("containerd", proc, answers, timeout)

    def _cni_config(self) -> dict[str, object]:
        return {
            "cniVersion": "1.0.0",
            "name": "ffrtmp",
            "plugins": [
                {
                    "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True,
                    "ipam": {
                        "type": "host-local", "dataDir": str(self.root / "cni" / "ipam"),
                        "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }  # fmt: skip

    def _containerd_config(self, cni_conf: Path) -> str:
        return f"""version = 4
root = "{self.root / "containerd" / "root"}"
state = "{RUN_DIR / "containerd"}"
imports = []
disabled_plugins = [
  "io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt", "io.containerd.image-verifier.v1.bindir",
]

[plugins."io.containerd.server.v1.grpc"]
  address = "{SOCKET}"

[plugins."io.containerd.server.v1.ttrpc"]
  address = "{RUN_DIR / "containerd.sock.ttrpc"}"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{SANDBOX_IMAGE}"

[plugins."io.containerd.cri.v1.runtime"]
  # runc cannot write oom_score_adj without CAP_SYS_RESOURCE (which this host withholds).
  restrict_oom_score_adj = true
  cdi_spec_dirs = []
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{HOST_TOOLS["runc"]}"
        Root = "{RUN_DIR / "runc"}"
        SystemdCgroup = false
"""

    def _pause_archive(self) -> Path:
        path = self.root / "pause.oci.tar"
        pause = (self.bin_dir / "pause").read_bytes()
        write_oci_archive(path, SANDBOX_IMAGE, {"pause": (pause, 0o755)}, ["/pause"])
        return path

    def ctr(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self._bin("ctr"), "--address", str(SOCKET), "--namespace", K8S_NAMESPACE, *args],
            capture_output=True, text=True, check=False, timeout=timeout,
        )  # fmt: skip

    def import_image_archive(self, archive: Path) -> None:
        """Load an OCI or docker archive into the node's image store (the kubelet uses it: no pulls)."""
        out = self.ctr("images", "import", str(archive))
        if out.returncode != 0:
            raise NodeError(f"ctr images import {archive.name} failed: {out.stderr.strip()[-2000:]}")

    def tag_image(self, reference: str, alias: str) -> None:
        out = self.ctr("images", "tag", "--force", reference, alias)
        if out.returncode != 0:
            raise NodeError(f"ctr images tag {reference} {alias} failed: {out.stderr.strip()[-2000:]}")

    def images(self) -> list[str]:
        out = self.ctr("images", "list", "-q")
        return out.stdout.split() if out.returncode == 0 else []

    def _start_kubelet(self, ca: Path, kubeconfig: Path, serving: tuple[Path, Path]) -> None:
        kubelet_dir = self.root / "kubelet"
        kubelet_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs",
            # kubelet 1.35+ refuses cgroup v1 unless told; this host has v1 hierarchies.
            "failCgroupV1": False,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{SOCKET}",
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "tlsCertFile": str(serving[0]),
            "tlsPrivateKeyFile": str(serving[1]),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(ca)},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDNS": [NODE_IP],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": "/etc/resolv.conf",
            "podLogsDir": str(self.root / "pod-logs"),
            "staticPodPath": "",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "nodeStatusUpdateFrequency": "5s",
            "maxPods": 50,
            "serializeImagePulls": False,
            # A test host's disk and memory run close to kubelet's default thresholds: evict only in extremis.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "shutdownGracePeriod": "0s",
        }
        config_path = self.root / "kubelet.yaml"
        config_path.write_text(yaml.safe_dump(config))
        proc = self._spawn("kubelet", [
            self._bin("kubelet"), "--config", str(config_path), "--kubeconfig", str(kubeconfig),
            "--root-dir", str(kubelet_dir), "--cert-dir", str(kubelet_dir / "pki"),
            "--hostname-override", NODE_NAME, "--node-ip", NODE_IP,
            "--node-labels", f"{NODE_LABEL}=true,ffmpeg-rtmp.io/accelerator=cpu",
            "--v", "1",
        ], self._env())  # fmt: skip

        def healthy() -> bool:
            return _http_ok("http://127.0.0.1:10248/healthz")

        self._wait_for("kubelet", proc, healthy, 60)

    def _start_kube_proxy(self, kubeconfig: Path) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables",
            "hostnameOverride": NODE_NAME,
            "bindAddress": NODE_IP,
            "clusterCIDR": POD_SUBNET,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # Leave the host's conntrack tunables and route_localnet alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "iptables": {"localhostNodePorts": False},
        }
        path = self.root / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = self._spawn("kube-proxy", [self._bin("kube-proxy"), "--config", str(path), "--v", "1"], self._env())

        def healthy() -> bool:
            return _http_ok("http://127.0.0.1:10256/healthz")

        self._wait_for("kube-proxy", proc, healthy, 60)

    def _start_coredns(self, kubeconfig: Path) -> None:
        corefile = self.root / "Corefile"
        corefile.write_text(f""".:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:18080
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} ffrtmp-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    forward . /etc/resolv.conf
    cache 30
}}
""")
        proc = self._spawn("coredns", [self._bin("coredns"), "-conf", str(corefile)], self._env())

        def healthy() -> bool:
            return _http_ok("http://127.0.0.1:18080/health")

        self._wait_for("coredns", proc, healthy, 60)

    # -- stop --------------------------------------------------------------------------------------
    def stop(self, before: hoststate.HostSnapshot | None, stop_process: Callable[[str], None]) -> list[str]:
        """Stop the node's programs, kill what containerd left (shims, containers), unmount, and
        restore the host to `before`. Returns what could not be undone (empty when clean)."""
        for name in ("coredns", "kube-proxy", "kubelet"):
            stop_process(name)
        if (self.bin_dir / "kube-proxy").exists():
            subprocess.run([self._bin("kube-proxy"), "--cleanup"], capture_output=True, check=False, timeout=60)
        self._stop_sandboxes()
        stop_process("containerd")
        self._kill_shims()
        hoststate.unmount_all([str(self.root), str(RUN_DIR)])
        problems = hoststate.restore(before) if before else []
        shutil.rmtree(RUN_DIR, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)
        if self.root.exists():
            problems.append(f"path {self.root}")
        return problems

    def _stop_sandboxes(self) -> None:
        """Kill every container's task so the shims exit; the network namespaces go with the sandboxes."""
        if not SOCKET.exists():
            return
        tasks = self.ctr("tasks", "list", "-q", timeout=30)
        for task in tasks.stdout.split():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.ctr("tasks", "list", "-q", timeout=30).stdout.strip():
            time.sleep(0.3)

    def _kill_shims(self) -> None:
        shim = os.path.realpath(self.bin_dir / "containerd-shim-runc-v2")
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.path.realpath(f"/proc/{pid}/exe") == shim:
                    os.kill(int(pid), 9)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False
