"""Machinery of the chaos suite: the farm, a recorder of job transitions, fault injectors for the
control plane, a simulated ffmpeg, and the summary of every scenario (printed at the end of the run
and merged into RELIABILITY.md).

Test modules import from here (`from chaoslib import ...`), never from `conftest`: several conftest
modules share that name in one session.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ffrtmp.api.constants import GROUP, JOB_PLURAL, VERSION
from ffrtmp.dev.cluster import LocalCluster, free_port
from ffrtmp.kube.client import KubeClient, informer, resource_path
from ffrtmp.kube.config import load_config
from helpers import REPO, Service, TestCluster, operator_argv, wait_for, workers_argv

Obj = dict[str, Any]
TERMINAL = ("Succeeded", "Failed", "Cancelled")


def _integration_farm_class() -> type:
    """The `Farm` of tests/integration/conftest.py, loaded under its own module name."""
    name = "ffrtmp_integration_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "integration" / "conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    farm: type = sys.modules[name].Farm
    return farm


_Farm: Any = _integration_farm_class()


def status(job: Obj) -> Obj:
    return job.get("status") or {}


def start_process(name: str, argv: list[str], log_dir: Path, cwd: Path, env: dict[str, str] | None = None) -> Service:
    """Like helpers.start_service, in a working folder of its own (a stray relative write lands there)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "ab") as f:
        proc = subprocess.Popen(
            argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )  # fmt: skip
    return Service(name, proc, log)


# A stand-in for ffmpeg where real encodes would make a scenario too slow for a 2-core machine: the
# encoder self-test passes at once; a transcode prints -progress blocks for STEPS x STEP seconds, ends
# them (the last block's total_size is STEPS x 1000 + 1, to be told apart), waits TAIL seconds (as
# ffmpeg does writing its trailer) and copies a real clip to its output (the last argument), so
# ffprobe sees a valid file. Jobs named slow-* take 20 times as long.
SIM_FFMPEG = """#!/bin/sh
case " $* " in *" -progress pipe:1 "*) ;; *) exit 0 ;; esac
for out; do :; done
steps=${FFRTMP_SIM_STEPS:-6}
case "$out" in */slow-*) steps=$((steps * 20)) ;; esac
i=1
while [ "$i" -le "$steps" ]; do
  sleep "${FFRTMP_SIM_STEP:-0.25}"
  printf 'frame=%d\\nfps=25.0\\nout_time_us=%d\\ntotal_size=%d\\nspeed=1.0x\\nprogress=continue\\n' \\
    "$((i * 25))" "$((i * 1000000 / steps))" "$((i * 1000))"
  i=$((i + 1))
done
printf 'frame=%d\\nfps=25.0\\nout_time_us=1000000\\ntotal_size=%d\\nspeed=1.0x\\nprogress=end\\n' \\
  "$((steps * 25))" "$((steps * 1000 + 1))"
if [ -n "$FFRTMP_SIM_TAIL_MARK" ]; then : > "$FFRTMP_SIM_TAIL_MARK"; fi
sleep "${FFRTMP_SIM_TAIL:-0}"
cp "$FFRTMP_SIM_CLIP" "$out" || exit 1
"""


@dataclass
class ChaosFarm(_Farm):  # type: ignore[misc]
    """The integration Farm, plus: processes in their own working folder, the operator's health port,
    a simulated ffmpeg, and helpers to find and hurt worker processes."""

    health_ports: dict[str, int] = field(default_factory=dict)

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    def start_operator(self, *extra: str, name: str = "operator", env: dict[str, str] | None = None) -> Service:
        argv = operator_argv(self.cluster, self.namespace, *extra)
        self.health_ports[name] = int(argv[argv.index("--health-port") + 1])
        svc = start_process(name, argv, self.root / "logs", self.cwd, env)
        self.services[name] = svc
        return svc

    def start_workers(self, *extra: str, env: dict[str, str] | None = None) -> Service:
        argv = workers_argv(self.cluster, self.namespace, self.root / "workers", *extra)
        for k, v in (env or {}).items():
            argv += ["--env", f"{k}={v}"]
        svc = start_process("workers", argv, self.root / "logs", self.cwd)
        self.services["workers"] = svc
        return svc

    def healthz(self, name: str = "operator") -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.health_ports[name]}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except OSError as e:
            return 0, str(e)

    def sim_env(self, clip: Path, steps: int = 6, step: float = 0.25) -> dict[str, str]:
        """Worker env that puts the simulated ffmpeg first on PATH (ffprobe stays the real one)."""
        return sim_env(self.root / "simbin", clip, steps, step)

    def pool_status(self, name: str) -> Obj:
        return status(self.cluster.get("wp", name, self.namespace))

    def wait_ready(self, pool: str, count: int, timeout: float = 90) -> None:
        wait_for(lambda: self.pool_status(pool).get("readyWorkers") == count, timeout, f"{count} ready workers")

    def apply_all(self, docs: list[Obj]) -> None:
        self.cluster.apply({"apiVersion": "v1", "kind": "List", "items": docs}, self.namespace)

    def worker_pid(self, pod: str) -> int:
        return int(self.workers_state()[pod]["pid"])

    def worker_pods(self) -> list[str]:
        return [p["metadata"]["name"] for p in self.cluster.list("pods", self.namespace)]


def sim_env(
    simbin: Path, clip: Path, steps: int = 6, step: float = 0.25, tail: float = 0, tail_mark: Path | None = None
) -> dict[str, str]:
    """Env that puts the simulated ffmpeg first on PATH (ffprobe stays the real one). The sim touches
    `tail_mark` when its progress has ended, before it sleeps `tail` seconds and writes its output.
    The connect guard is off: the sim opens no connection, so the worker's start check (a guarded
    ffmpeg must be refused a connection) cannot pass with it; tests/ffmpeg/test_connect_guard.py
    proves the guard on the real ffmpeg."""
    simbin.mkdir(parents=True, exist_ok=True)
    script = simbin / "ffmpeg"
    script.write_text(SIM_FFMPEG)
    script.chmod(0o755)
    return {
        "PATH": f"{simbin}:{os.environ.get('PATH', '')}",
        "FFRTMP_SIM_CLIP": str(clip),
        "FFRTMP_SIM_STEPS": str(steps),
        "FFRTMP_SIM_STEP": str(step),
        "FFRTMP_SIM_TAIL": str(tail),
        "FFRTMP_SIM_TAIL_MARK": str(tail_mark or ""),
        "FFRTMP_CONNECT_GUARD": "off",
    }


def stop_farm(f: ChaosFarm) -> None:
    """Stop the farm's services (a stopped process is continued first: it could not handle SIGTERM)
    and any worker process the stand-in kubelet left."""
    for svc in reversed(list(f.services.values())):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(svc.proc.pid, signal.SIGCONT)
        svc.stop(timeout=15)
    for info in f.workers_state().values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(info["pid"]), signal.SIGCONT)
            os.kill(int(info["pid"]), signal.SIGKILL)


# -- a recorder of job transitions, as a watch sees them ------------------------------------------


@dataclass(frozen=True)
class Transition:
    at: float  # time.time() when the recorder saw it
    name: str
    phase: str | None
    attempt: int
    worker: str | None
    event: str  # ADDED / MODIFIED / DELETED / SYNC


class JobRecorder:
    """Watches the namespace's TranscodeJobs from a thread and keeps every change of
    (phase, attempt, worker) with the time it was seen: recovery times come from here."""

    def __init__(self, cluster: TestCluster, namespace: str) -> None:
        self.kubeconfig = str(cluster.kubeconfig)
        self.path = resource_path(GROUP, VERSION, JOB_PLURAL, namespace)
        self.transitions: list[Transition] = []
        self._last: dict[str, tuple[str | None, int, str | None]] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="job-recorder", daemon=True)
        self._ready = threading.Event()

    def __enter__(self) -> JobRecorder:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()  # type: ignore[assignment]
            self._ready.set()
            async with KubeClient(load_config(self.kubeconfig)) as client:
                async for kind, obj in informer(client, self.path):
                    now = time.time()
                    for item in obj["items"] if kind == "SYNC" else [obj]:
                        self._record(now, kind, item)

        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(main())

    def _record(self, now: float, kind: str, obj: Obj) -> None:
        s = status(obj)
        name = obj["metadata"]["name"]
        key = (None, 0, None) if kind == "DELETED" else (s.get("phase"), int(s.get("attempt") or 0), s.get("worker"))
        with self._lock:
            if self._last.get(name) == key:
                return
            self._last[name] = key
            self.transitions.append(Transition(now, name, key[0], key[1], key[2], kind))

    def count(self, phase: str) -> int:
        """Jobs whose latest state is `phase`."""
        with self._lock:
            return sum(1 for state in self._last.values() if state[0] == phase)

    def snapshot(self) -> list[Transition]:
        with self._lock:
            return list(self.transitions)

    def first(self, after: float, *phases: str, name: str | None = None) -> float | None:
        """When a job (any, or `name`) was first seen entering one of `phases` after `after`."""
        for t in self.snapshot():
            if t.at >= after and t.phase in phases and (name is None or t.name == name):
                return t.at
        return None

    def wait_first(self, after: float, *phases: str, name: str | None = None, timeout: float = 60) -> float:
        return float(
            wait_for(lambda: self.first(after, *phases, name=name), timeout, f"a job to become {'/'.join(phases)}")
        )


# -- the control plane: restart kube-apiserver and etcd in place -----------------------------------


def _reap(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: wait until it is gone
            if not Path(f"/proc/{pid}").exists():
                return
            done = 0
        if done == pid:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not exit")


def _save_state(local: LocalCluster) -> None:
    local.state_file.write_text(json.dumps(dataclasses.asdict(local.state), indent=2))


def kill_component(local: LocalCluster, name: str) -> list[str]:
    """SIGKILL a control-plane process; returns its argv (from /proc) to start it again with."""
    pid = local.state.pids[name]
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    os.kill(pid, signal.SIGKILL)
    _reap(pid)
    return argv


def start_component(local: LocalCluster, name: str, argv: list[str]) -> int:
    """Start a control-plane process again, same argv (so same ports and data), logging where it did."""
    local.logs.mkdir(parents=True, exist_ok=True)
    with open(local.logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    local.state.pids[name] = proc.pid
    _save_state(local)
    return proc.pid


def apiserver_ready(cluster: TestCluster) -> bool:
    return cluster.kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode == 0


def etcd_healthy(local: LocalCluster) -> bool:
    try:
        with urllib.request.urlopen(local.state.etcd_url + "/health", timeout=2) as r:
            return b'"true"' in r.read()
    except OSError:
        return False


def restart_apiserver(cluster: TestCluster, down_seconds: float = 2.0, timeout: float = 120) -> float:
    """Kill kube-apiserver and start it again on the same port; returns seconds until /readyz is OK."""
    local = cluster.local
    assert local is not None
    argv = kill_component(local, "kube-apiserver")
    started = time.monotonic()
    time.sleep(down_seconds)
    start_component(local, "kube-apiserver", argv)
    wait_for(lambda: apiserver_ready(cluster), timeout, "kube-apiserver /readyz", interval=0.5)
    return time.monotonic() - started


def restart_etcd(cluster: TestCluster, down_seconds: float = 2.0, timeout: float = 120) -> float:
    """Kill etcd and start it again (same data folder and URLs); returns seconds until the apiserver is ready."""
    local = cluster.local
    assert local is not None
    argv = kill_component(local, "etcd")
    started = time.monotonic()
    time.sleep(down_seconds)
    start_component(local, "etcd", argv)
    wait_for(lambda: etcd_healthy(local), timeout, "etcd /health", interval=0.3)
    wait_for(lambda: apiserver_ready(cluster), timeout, "kube-apiserver /readyz after etcd", interval=0.5)
    return time.monotonic() - started


def _etcd_post(local: LocalCluster, path: str, body: Obj) -> Obj:
    req = urllib.request.Request(
        local.state.etcd_url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: Obj = json.loads(resp.read())
        return result


def etcd_compact(local: LocalCluster) -> int:
    """Compact etcd's history up to its current revision (through the gRPC gateway); returns it."""
    head = _etcd_post(local, "/v3/kv/range", {"key": base64.b64encode(b"/ffrtmp-chaos").decode()})
    revision = int(head["header"]["revision"])
    _etcd_post(local, "/v3/kv/compaction", {"revision": revision, "physical": True})
    return revision


def control_plane_healthy(cluster: TestCluster, timeout: float = 120) -> None:
    """Leave the shared cluster as the next test expects it: every process up, API ready, nodes Ready."""
    local = cluster.local
    assert local is not None
    for name, pid in local.state.pids.items():
        assert Path(f"/proc/{pid}").exists(), f"{name} (pid {pid}) is gone"
    wait_for(lambda: apiserver_ready(cluster), timeout, "kube-apiserver ready")

    def nodes_ready() -> bool:
        nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        return all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
            for n in nodes
        )

    wait_for(nodes_ready, timeout, "nodes Ready", interval=1)
    # kube-controller-manager's informers back off (up to 30 s a try) while the API is down, so the
    # next test's namespace would wait that long for its default ServiceAccount: wait here instead,
    # where the outage was made, until its controllers act again.
    probe = f"chaos-recovered-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", probe)
    try:
        wait_for(
            lambda: cluster.kubectl("get", "sa", "default", "-n", probe, check=False).returncode == 0,
            timeout,
            "kube-controller-manager to create a new namespace's default ServiceAccount",
            interval=0.5,
        )
    finally:
        cluster.kubectl("delete", "namespace", probe, "--wait=false", check=False)


# -- the scenario summary -------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    scenario: str
    jobs: int
    faults: str
    lost: int
    twice: int
    recover_s: float | None
    notes: str = ""
    when: str = field(default_factory=lambda: time.strftime("%Y-%m-%d"))

    def row(self) -> str:
        recover = "n/a" if self.recover_s is None else f"{self.recover_s:.1f} s"
        return (
            f"| {self.scenario} | {self.jobs} | {self.faults} | {self.lost} | {self.twice} | {recover} | {self.notes} |"
        )


SUMMARY: list[ScenarioResult] = []
TABLE_HEADER = (
    "| Scenario | Jobs | Faults injected | Jobs lost | Jobs run twice | Max time to recover | Notes |\n"
    "|---|---|---|---|---|---|---|"
)
BEGIN, END = "<!-- chaos-summary:begin -->", "<!-- chaos-summary:end -->"


def report(result: ScenarioResult) -> ScenarioResult:
    SUMMARY.append(result)
    print("\n" + TABLE_HEADER + "\n" + result.row())
    return result


def merge_into_reliability(results: list[ScenarioResult], path: Path) -> None:
    """Replace the rows of the scenarios that ran in the table between the markers; keep the others."""
    if not results or not path.exists():
        return
    text = path.read_text()
    if BEGIN not in text or END not in text:
        return
    head, _, rest = text.partition(BEGIN)
    table, _, tail = rest.partition(END)
    rows: dict[str, str] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells and cells[0] not in ("Scenario", "---") and not cells[0].startswith("-"):
            rows[cells[0]] = line
    for r in results:
        rows[r.scenario] = r.row()
    body = "\n".join([TABLE_HEADER, *rows.values()])
    stamp = time.strftime("%Y-%m-%d %H:%M")
    path.write_text(f"{head}{BEGIN}\n{body}\n\n_Last run: {stamp}._\n{END}{tail}")


def copy_clip(src: Path, dst_dir: Path, name: str | None = None) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / (name or src.name)
    shutil.copyfile(src, dst)
    return dst


__all__ = [
    "TERMINAL",
    "ChaosFarm",
    "JobRecorder",
    "ScenarioResult",
    "Transition",
    "control_plane_healthy",
    "copy_clip",
    "etcd_compact",
    "free_port",
    "kill_component",
    "report",
    "restart_apiserver",
    "restart_etcd",
    "start_component",
    "status",
    "stop_farm",
]
