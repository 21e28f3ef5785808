"""Test helpers: kubectl against the test cluster, waiting, running the operator and workers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ffrtmp.dev.cluster import LocalCluster, default_connect_guard, free_port

REPO = Path(__file__).resolve().parents[1]
Obj = dict[str, Any]


def connect_guard() -> str:
    """The connect guard library for attempts run in a test (`WorkerConfig.connect_guard`): the one
    hack/tools.sh builds, as stand-in workers find it (ffrtmp.dev.cluster.default_connect_guard)."""
    path = default_connect_guard()
    if not path.is_file():
        raise AssertionError(
            f"no connect guard library at {path}: run `hack/tools.sh --connect-guard` (make setup does)"
        )
    return str(path)


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class TestCluster:
    kubeconfig: Path
    bin_dir: Path
    local: LocalCluster | None

    __test__ = False

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(  # noqa: PLW1510 - the caller decides, below
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input, text=True, capture_output=True, timeout=timeout,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    def apply(
        self, doc: Obj | list[Obj] | str, namespace: str, *extra: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        text = doc if isinstance(doc, str) else yaml.safe_dump_all(doc if isinstance(doc, list) else [doc])
        return self.kubectl("apply", "-n", namespace, "-f", "-", *extra, input=text, check=check)

    def get(self, kind: str, name: str, namespace: str) -> Obj:
        out = self.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
        result: Obj = json.loads(out)
        return result

    def list(self, kind: str, namespace: str, *selector: str) -> list[Obj]:
        out = self.kubectl("get", kind, "-n", namespace, "-o", "json", *selector).stdout
        items: list[Obj] = json.loads(out)["items"]
        return items


@dataclass
class Service:
    """A background process of ours (operator, stand-in workers) with its log."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


def start_service(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Service:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "ab") as f:
        proc = subprocess.Popen(
            argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )  # fmt: skip
    return Service(name, proc, log)


def operator_argv(cluster: TestCluster, namespace: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "ffrtmp.cli", "operator", "--kubeconfig", str(cluster.kubeconfig),
        "--namespace", namespace, "--metrics-port", "0", "--health-port", str(free_port()),
        "--lease-grace-seconds", "2", "--retry-backoff-seconds", "1", "--resync-seconds", "1", *extra,
    ]  # fmt: skip


def workers_argv(cluster: TestCluster, namespace: str, state_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "ffrtmp.cli", "dev", "workers", "--namespace", namespace,
        "--kubeconfig", str(cluster.kubeconfig), "--state-dir", str(state_dir),
        "--env", "FFRTMP_LEASE_SECONDS=5", "--env", "FFRTMP_PROGRESS_INTERVAL=0.5",
        "--env", "FFRTMP_KILL_GRACE_SECONDS=3", *extra,
    ]  # fmt: skip


@contextlib.contextmanager
def services(*started: Service) -> Iterator[list[Service]]:
    items = list(started)
    try:
        yield items
    except BaseException:
        for s in items:
            print(f"--- {s.name} log ---\n{s.tail(80)}")
        raise
    finally:
        for s in reversed(items):
            s.stop()


def worker_pool(name: str, accelerator: str = "cpu", **spec: Any) -> Obj:
    return {
        "apiVersion": "ffmpeg-rtmp.io/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": name},
        "spec": {"accelerator": accelerator, **spec},
    }


def transcode_job(name: str, uri: str, outputs: list[Obj] | None = None, *, realtime: bool = False, **spec: Any) -> Obj:
    """`realtime`: ffmpeg reads the input at its native frame rate (`input.realtime`), so the encode
    lasts at least the clip's duration on any machine. Tests that act on a job mid-encode use it
    instead of guessing how fast this machine encodes."""
    return {
        "apiVersion": "ffmpeg-rtmp.io/v1alpha1",
        "kind": "TranscodeJob",
        "metadata": {"name": name},
        "spec": {
            "input": {"uri": uri, **({"realtime": True} if realtime else {})},
            "outputs": outputs or [{"name": "out", "video": {"codec": "h264", "crf": 30, "preset": "ultrafast"}}],
            **spec,
        },
    }


def make_clip(path: Path, seconds: float = 2, size: str = "320x240", rate: int = 25, audio: bool = True) -> Path:
    """A generated test clip (lavfi testsrc2 + sine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={size}:rate={rate}:duration={seconds}",
    ]
    if audio:
        argv += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac"]
    argv += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(argv, check=True, timeout=120)
    return path


def ffprobe(path: Path | str) -> Obj:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    result: Obj = json.loads(out.stdout)
    return result


NGINX_RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
# Not 127.0.0.1: the test API server listens there, and the egress policy never lets a job reach the
# API server's address. Pools allowlist this address (and rtmp, which bypasses the egress proxy).
RTMP_HOST = "127.0.0.7"


@contextlib.contextmanager
def nginx_rtmp(prefix: Path, host: str) -> Iterator[int]:
    """A real nginx-rtmp server on `host` (applications `live` and `restream`); yields its port."""
    if shutil.which("nginx") is None or not NGINX_RTMP_MODULE.exists():
        raise AssertionError("nginx with the RTMP module is missing: run `make setup` (Debian's libnginx-mod-rtmp)")
    port = free_port()
    (prefix / "logs").mkdir(parents=True)
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""
load_module {NGINX_RTMP_MODULE};
daemon off;
master_process off;
error_log {prefix}/logs/error.log info;
pid {prefix}/nginx.pid;
events {{ worker_connections 256; }}
rtmp {{
  server {{
    listen {host}:{port};
    chunk_size 4096;
    application live {{ live on; record off; }}
    application restream {{ live on; record off; }}
  }}
}}
"""
    )
    proc = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(conf)], stderr=subprocess.DEVNULL)

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex((host, port)) == 0

    try:
        wait_for(listening, 10, "nginx-rtmp listening")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def token_kubeconfig(cluster: TestCluster, token: str, path: Path) -> Path:
    """A kubeconfig for `cluster`'s server and CA that authenticates by `token` only."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    ctx = next(c["context"] for c in admin["contexts"] if c["name"] == admin["current-context"])
    server = next(c["cluster"] for c in admin["clusters"] if c["name"] == ctx["cluster"])
    doc = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": server}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path
