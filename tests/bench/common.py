"""What every benchmark shares: the local control plane, the operator process, job traffic,
observation (watches, the API server's request counters, psutil, py-spy) and the report.

Clock: every latency here is `time.monotonic()` (CLOCK_MONOTONIC) of the benchmark process,
taken when a request is issued and when a watch event arrives, so no two clocks are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import aiohttp

from ffrtmp.api.constants import GROUP, JOB_PLURAL, POOL_PLURAL, VERSION
from ffrtmp.dev.cluster import LocalCluster, free_port
from ffrtmp.kube.client import ApiError, KubeClient, informer, resource_path
from ffrtmp.kube.config import KubeConfig, load_config

Obj = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / ".bench"
SCALES = ("small", "full")
# Each KWOK node added by `extra_nodes` holds 250 Pods; nodes.yaml adds two CPU nodes of 110.
PODS_PER_EXTRA_NODE = 250


# --- figures and the report ----------------------------------------------------------------------


@dataclass
class Figure:
    name: str
    value: float | None
    unit: str
    parameters: dict[str, Any] = field(default_factory=dict)
    simulated: bool = False  # measured with simulated executors (asyncio.sleep instead of ffmpeg)
    target: str | None = None  # e.g. ">= 300"
    met: bool | None = None
    note: str = ""


def target_met(value: float | None, target: str | None) -> bool | None:
    if value is None or target is None:
        return None
    op, _, bound = target.partition(" ")
    limit = float(bound)
    return {">=": value >= limit, "<=": value <= limit, "<": value < limit, ">": value > limit}[op]


@dataclass
class Report:
    benchmark: str
    scale: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def add(
        self,
        name: str,
        value: float | None,
        unit: str,
        *,
        simulated: bool = False,
        target: str | None = None,
        note: str = "",
        **parameters: Any,
    ) -> Figure:
        fig = Figure(name, value, unit, parameters, simulated, target, target_met(value, target), note)
        self.figures.append(fig)
        return fig

    def document(self) -> Obj:
        return {
            "benchmark": self.benchmark,
            "scale": self.scale,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "machine": machine_facts(),
            "figures": {f.name: asdict(f) for f in self.figures},
            "details": self.details,
        }

    def table(self) -> str:
        rows = [("figure", "value", "unit", "sim", "target", "met", "parameters")]
        for f in self.figures:
            value = "-" if f.value is None else f"{f.value:.4g}"
            params = ", ".join(f"{k}={v}" for k, v in f.parameters.items())
            met = "" if f.met is None else ("yes" if f.met else "NO")
            rows.append((f.name, value, f.unit, "sim" if f.simulated else "", f.target or "", met, params))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = []
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1])
        return f"== {self.benchmark} ({self.scale}) ==\n" + "\n".join(lines)


def machine_facts() -> Obj:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "loadavg_at_report": [round(x, 2) for x in os.getloadavg()],
    }


def write_json(path: Path, doc: Obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(p / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + b*x; returns (a, b, r_squared)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    b = sxy / sxx if sxx else 0.0
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    return a, b, (1 - ss_res / ss_tot) if ss_tot else 1.0


# --- paths and manifests -------------------------------------------------------------------------


def job_path(namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    return resource_path(GROUP, VERSION, JOB_PLURAL, namespace, name, subresource)


def pool_path(namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    return resource_path(GROUP, VERSION, POOL_PLURAL, namespace, name, subresource)


def pods_path(namespace: str) -> str:
    return resource_path("", "v1", "pods", namespace)


def sim_job(name: str, duration_seconds: int, **spec: Any) -> Obj:
    """A TranscodeJob for simulated workers: they 'encode' for input.durationSeconds (at 1x)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TranscodeJob",
        "metadata": {"name": name},
        "spec": {
            "input": {"uri": "/media/sim/source.mp4", "durationSeconds": duration_seconds},
            "outputs": [{"name": "out", "video": {"codec": "h264", "crf": 30, "preset": "ultrafast"}}],
            **spec,
        },
    }


def pool_manifest(name: str, **spec: Any) -> Obj:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WorkerPool",
        "metadata": {"name": name},
        "spec": {"accelerator": "cpu", "terminationGracePeriodSeconds": 30, **spec},
    }


# --- the control plane and the operator ----------------------------------------------------------


@dataclass
class Operator:
    proc: subprocess.Popen[bytes]
    log: Path
    argv: list[str]
    health_port: int = 0

    async def wait_ready(self, limit: float = 60) -> None:
        """Until kopf's liveness endpoint answers, i.e. the operator runs its watches and loop."""
        deadline = time.monotonic() + limit
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(f"operator exited:\n{self.tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    url = f"http://127.0.0.1:{self.health_port}/healthz"
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                        if resp.status == 200:
                            await asyncio.sleep(1.0)  # the first relist and pass
                            return
                await asyncio.sleep(0.2)
        raise TimeoutError(f"operator not live after {limit:.0f}s:\n{self.tail()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class BenchEnv:
    """One local control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK) for
    one or more benchmarks; each benchmark works in a namespace of its own."""

    def __init__(self, extra_nodes: int = 0, root: Path | None = None) -> None:
        # Logs (control plane, operators) stay in .bench/env-*/ for reading after a run.
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        self.root = root or Path(tempfile.mkdtemp(prefix="env-", dir=RESULTS_DIR))
        self.extra_nodes = extra_nodes
        self.cluster = LocalCluster(self.root / "cluster", apiserver_profiling=True)
        self.config: KubeConfig | None = None
        self.up_seconds = 0.0

    def up(self) -> BenchEnv:
        started = time.monotonic()
        self.cluster.up(extra_nodes=self.extra_nodes, timeout=180)
        self.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        self.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/transcodejobs.ffmpeg-rtmp.io", "crd/workerpools.ffmpeg-rtmp.io",
        )  # fmt: skip
        self.config = load_config(str(self.cluster.kubeconfig))
        self.up_seconds = time.monotonic() - started
        return self

    def down(self) -> None:
        self.cluster.down()
        shutil.rmtree(self.cluster.root / "etcd", ignore_errors=True)
        shutil.rmtree(self.root / "sim", ignore_errors=True)

    def __enter__(self) -> BenchEnv:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    @property
    def worker_capacity(self) -> int:
        return 2 * 110 + self.extra_nodes * PODS_PER_EXTRA_NODE

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(  # noqa: PLW1510 - checked below with the output in the message
            [str(self.cluster.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input, text=True, capture_output=True, timeout=300,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr}{proc.stdout}")
        return proc

    def client(self, max_connections: int = 64) -> KubeClient:
        assert self.config is not None, "BenchEnv.up() first"
        return KubeClient(self.config, max_connections=max_connections, timeout=60)

    def create_namespace(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:5]}"
        self.kubectl("create", "namespace", name)
        deadline = time.monotonic() + 30
        while self.kubectl("get", "sa", "default", "-n", name, check=False).returncode != 0:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        return name

    def delete_namespace(self, name: str, wait_seconds: float = 120) -> None:
        """Delete and (bounded) wait until it is gone, so the next benchmark runs on a quiet server."""
        self.kubectl("delete", "namespace", name, "--wait=false", check=False)
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            if self.kubectl("get", "namespace", name, check=False).returncode != 0:
                return
            time.sleep(1)

    def start_operator(
        self,
        namespace: str,
        *extra: str,
        trace: Path | None = None,
        census: Path | None = None,
        garbage: Path | None = None,
        log_name: str = "operator",
    ) -> Operator:
        """The operator as users run it; with `trace`, `census` or `garbage`, through
        tests.bench.traced_operator (the same operator, tracing its allocations, counting its memory
        untraced, or tallying what its garbage collector frees and where collections start, into that
        file)."""
        diagnostics = {
            "FFRTMP_BENCH_TRACEMALLOC": trace,
            "FFRTMP_BENCH_MEMSTATS": census,
            "FFRTMP_BENCH_GC_GARBAGE": garbage,
        }
        diagnostics_env = {name: str(path) for name, path in diagnostics.items() if path}
        module = ["-m", "tests.bench.traced_operator"] if diagnostics_env else ["-m", "ffrtmp.cli"]
        env = {**os.environ, **diagnostics_env} if diagnostics_env else None
        health = free_port()
        argv = [
            sys.executable, *module, "operator", "--kubeconfig", str(self.kubeconfig),
            "--namespace", namespace, "--metrics-port", "0", "--health-port", str(health), *extra,
        ]  # fmt: skip
        log = self.root / "logs" / f"{log_name}-{namespace}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as f:
            proc = subprocess.Popen(
                argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                cwd=REPO, env=env,
            )  # fmt: skip
        return Operator(proc, log, argv, health)

    async def _admin_get(self, path: str, limit_seconds: float, **params: str) -> bytes:
        """GET a non-resource path of kube-apiserver (/metrics, /debug/pprof) with the admin certificate."""
        assert self.config is not None
        connector = aiohttp.TCPConnector(ssl=self.config.ssl_context())
        async with (
            aiohttp.ClientSession(base_url=self.config.server, connector=connector) as session,
            session.get(path, params=params, timeout=aiohttp.ClientTimeout(total=limit_seconds)) as resp,
        ):
            resp.raise_for_status()
            return await resp.read()

    async def apiserver_cpu_profile(self, seconds: int, out: Path) -> Obj:
        """kube-apiserver's own Go CPU profile (`/debug/pprof/profile`, admin certificate) over the
        next `seconds`, and its top functions by `go tool pprof -top` (cumulative and flat %)."""
        body = await self._admin_get("/debug/pprof/profile", seconds + 60, seconds=str(seconds))
        await asyncio.to_thread(out.write_bytes, body)
        tops: Obj = {"profile": str(out)}
        for order in ("cum", "flat"):
            proc = await asyncio.create_subprocess_exec(
                "go", "tool", "pprof", "-top", f"-{order}", "-nodecount=30", str(out),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            stdout, stderr = await proc.communicate()
            tops[order] = (stdout or stderr).decode(errors="replace").splitlines()
        return tops

    async def apiserver_requests(self) -> dict[tuple[str, str, str, str], float]:
        """apiserver_request_total summed over code/scope/version: {(verb, group, resource, subresource): n}."""
        from prometheus_client.parser import text_string_to_metric_families

        text = (await self._admin_get("/metrics", 30)).decode()
        out: dict[tuple[str, str, str, str], float] = defaultdict(float)
        for family in text_string_to_metric_families(text):
            if family.name != "apiserver_request":
                continue
            for sample in family.samples:
                if sample.name != "apiserver_request_total":
                    continue
                lb = sample.labels
                out[(lb.get("verb", ""), lb.get("group", ""), lb.get("resource", ""), lb.get("subresource", ""))] += (
                    sample.value
                )
        return dict(out)


def request_delta(
    before: dict[tuple[str, str, str, str], float], after: dict[tuple[str, str, str, str], float]
) -> dict[tuple[str, str, str, str], float]:
    keys = set(before) | set(after)
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys if after.get(k, 0.0) - before.get(k, 0.0) > 0}


# --- job traffic ---------------------------------------------------------------------------------


async def create_jobs(
    client: KubeClient, namespace: str, docs: Iterable[Obj], concurrency: int = 50, sent: dict[str, float] | None = None
) -> dict[str, float]:
    """Create every job (in its metadata.namespace, else `namespace`) with at most `concurrency`
    requests in flight; {name: monotonic time the create was issued} (into `sent` when given, so
    that progress can be watched)."""
    sent = {} if sent is None else sent
    queue: asyncio.Queue[Obj] = asyncio.Queue()
    for doc in docs:
        queue.put_nowait(doc)

    async def worker() -> None:
        while True:
            try:
                doc = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            sent[doc["metadata"]["name"]] = time.monotonic()
            for attempt in range(5):
                try:
                    await client.create(job_path(doc["metadata"].get("namespace") or namespace), doc)
                    break
                except ApiError as e:
                    if e.status == 409 and attempt > 0:
                        break  # an earlier try that timed out on our side was created after all
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.5)
                except (aiohttp.ClientError, TimeoutError):
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.5)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sent


@dataclass
class JobTimes:
    first_seen: float | None = None
    assigned: float | None = None  # status.worker set
    running: float | None = None
    succeeded: float | None = None
    queued: float | None = None
    phase: str | None = None


class JobWatch:
    """A bare watch of every job of a namespace, stamping when each one is first seen in a state."""

    def __init__(self, client: KubeClient, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.jobs: dict[str, JobTimes] = defaultdict(JobTimes)
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()

    def start(self) -> JobWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        async for kind, obj in informer(self.client, job_path(self.namespace)):
            now = time.monotonic()
            items = obj["items"] if kind == "SYNC" else [obj]
            for item in items:
                if kind == "DELETED":
                    continue
                self._see(item, now)
            if kind == "SYNC":
                self.synced.set()
            self.changed.set()

    def _see(self, obj: Obj, now: float) -> None:
        t = self.jobs[obj["metadata"]["name"]]
        status = obj.get("status") or {}
        phase = status.get("phase")
        t.phase = phase
        if t.first_seen is None:
            t.first_seen = now
        if t.assigned is None and status.get("worker"):
            t.assigned = now
        if t.queued is None and phase == "Queued":
            t.queued = now
        if t.running is None and phase == "Running":
            t.running = now
        if t.succeeded is None and phase == "Succeeded":
            t.succeeded = now

    def count(self, predicate: Callable[[JobTimes], bool]) -> int:
        return sum(1 for t in self.jobs.values() if predicate(t))

    async def wait(self, predicate: Callable[[], bool], limit: float, what: str) -> None:
        deadline = time.monotonic() + limit
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {limit:.0f}s waiting for {what}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))


async def wait_until(check: Callable[[], Awaitable[bool]], limit: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {limit:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


async def pool_status(client: KubeClient, namespace: str, name: str) -> Obj:
    obj = await client.get(pool_path(namespace, name))
    return obj.get("status") or {}


async def wait_pool_ready(
    client: KubeClient, namespace: str, name: str, workers: int, limit: float, *, strict: bool = False
) -> tuple[float, int]:
    """Wait until the pool reports `workers` ready workers (Lease with a passed self-test).

    Returns (seconds taken, ready workers). Unless `strict`, a pool that is not complete after
    `limit` seconds is returned as it is (the caller records how many were ready): at scale, the
    operator's view of the workers is itself one of the things measured.
    """
    started = time.monotonic()
    ready = 0
    while time.monotonic() - started < limit:
        ready = int((await pool_status(client, namespace, name)).get("readyWorkers") or 0)
        if ready >= workers:
            return time.monotonic() - started, ready
        await asyncio.sleep(0.5)
    if strict:
        raise TimeoutError(f"only {ready} of {workers} workers of pool {name} ready after {limit:.0f}s")
    logging.getLogger(__name__).warning(
        "only %d of %d workers of pool %s ready after %.0fs", ready, workers, name, limit
    )
    return time.monotonic() - started, ready


# --- process observation -------------------------------------------------------------------------


def peak_rss_bytes(pid: int) -> int | None:
    """VmHWM: the process's peak resident set since it started."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


async def submit_paced(total: int, rate: float, submit: Callable[[int], Coroutine[Any, Any, None]]) -> float:
    """Start `submit(0)` .. `submit(total - 1)` at `rate` per second, each on its own task (a slow
    answer does not slow the pace), wait for all, and return the seconds that took."""
    t0 = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    for i in range(total):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(submit(i)))
    await asyncio.gather(*tasks)
    return time.monotonic() - t0


class Sampler:
    """Calls `sample()` every `interval` seconds between `start()` and `stop()` (a failed sample is
    skipped: the process may be between restarts)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> object:
        raise NotImplementedError

    def start(self) -> Self:
        async def loop() -> None:
            while True:
                with contextlib.suppress(Exception):
                    self.sample()
                await asyncio.sleep(self.interval)

        self._task = asyncio.create_task(loop())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class ProcessSampler(Sampler):
    """psutil samples of one process: RSS now and then, CPU seconds (user + system)."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        import psutil

        super().__init__(interval)
        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, int, float]] = []  # (monotonic, rss, cpu seconds)

    def cpu_seconds(self) -> float:
        t = self.proc.cpu_times()
        return float(t.user + t.system)

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    def sample(self) -> tuple[float, int, float]:
        s = (time.monotonic(), self.rss(), self.cpu_seconds())
        self.samples.append(s)
        return s

    def max_rss(self, since: float = 0.0) -> int:
        return max((r for t, r, _ in self.samples if t >= since), default=0)


class PySpy:
    """`py-spy record` of a process (raw collapsed stacks), summarized into top self/total costs."""

    def __init__(self, pid: int, out: Path, rate: int = 50) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None
        self.error: str | None = None

    @staticmethod
    def binary() -> str | None:
        here = Path(sys.executable).parent / "py-spy"
        return str(here) if here.exists() else shutil.which("py-spy")

    def start(self) -> PySpy:
        exe = self.binary()
        if exe is None:
            self.error = "py-spy not installed (pip install py-spy)"
            return self
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(self.pid), "--format", "raw", "--rate", str(self.rate),
             "--nonblocking", "-o", str(self.out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        return self

    def stop(self) -> Obj:
        if self.proc is None:
            return {"error": self.error}
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.out.exists():
            return {"error": f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"}
        return summarize_collapsed(self.out.read_text())


# Where the operator's time goes, by the frames that mark each part (inclusive samples).
PROFILE_GROUPS = {
    "watch intake (controller/watches.py feed: stream, decode, store)": "watches.py",
    "  of which our store update (Reconciler.on_event/on_sync)": "Reconciler.on_",
    "JSON decoding (raw_decode, all callers)": "raw_decode",
    "reconcile pass decisions (Reconciler.pass_once)": "Reconciler.pass_once",
    "  of which decide_jobs": "decide_jobs",
    "  of which decide_pool": "decide_pool",
    "job status writes (Reconciler._apply_job)": "Reconciler._apply_job",
    "event posts (Reconciler._event)": "Reconciler._event.<locals>.post",
    "TLS (SSLObject)": "SSLObject",
    "event loop waiting (EpollSelector.select)": "EpollSelector.select",
}


def summarize_collapsed(text: str, top: int = 15) -> Obj:
    """Top frames by self samples and by total (inclusive) samples from collapsed stacks, and
    the inclusive share of each of PROFILE_GROUPS."""
    own: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    groups: dict[str, int] = defaultdict(int)
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        for label, marker in PROFILE_GROUPS.items():
            if marker in stack:
                groups[label] += count
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        own[frames[-1]] += count
        for f in set(frames):
            total[f] += count

    def ranked(d: dict[str, int]) -> list[Obj]:
        return [
            {"frame": f, "samples": n, "percent": round(100 * n / samples, 1)}
            for f, n in sorted(d.items(), key=lambda kv: -kv[1])[:top]
        ]

    shares = {label: round(100 * groups[label] / samples, 1) if samples else 0.0 for label in PROFILE_GROUPS}
    return {"samples": samples, "groups_percent": shares, "top_self": ranked(own), "top_total": ranked(total)}


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py)"; line numbers vary per sample.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})" if short else name


# --- command line of one benchmark ---------------------------------------------------------------


# Operator variants measured side by side: "shipped" is the operator with its defaults;
# "events_all" posts every job Event (`--job-events all`: also Started and Completed).
# "events_failures" posts Warnings only; "writes64" doubles the operator's concurrent writes.
VARIANT_ARGS: dict[str, tuple[str, ...]] = {
    "shipped": (),
    "events_all": ("--job-events", "all"),
    "events_failures": ("--job-events", "failures"),
    "writes64": ("--max-parallel-writes", "64"),
}


def variants_from_env(default: str = "shipped") -> list[str]:
    """FFRTMP_BENCH_VARIANTS=shipped[,events_all][,events_failures][,writes64] (default: shipped)."""
    names = os.environ.get("FFRTMP_BENCH_VARIANTS", default).split(",")
    return [n for n in names if n in VARIANT_ARGS]


def extra_nodes_for(workers: int) -> int:
    """Enough 250-Pod KWOK nodes for `workers` worker Pods (with room to spare)."""
    return max(math.ceil(workers / PODS_PER_EXTRA_NODE) + 1, 1)


def main(
    name: str,
    run: Callable[[BenchEnv, str], Awaitable[Report]],
    workers_needed: Callable[[str], int],
    argv: list[str] | None = None,
) -> int:
    """`python -m tests.bench.<name> [--json FILE] [--scale small|full]` with a control plane of its own."""
    parser = argparse.ArgumentParser(prog=f"python -m tests.bench.{name}")
    parser.add_argument("--json", type=Path, default=None, help=f"where to write (default .bench/{name}.json)")
    parser.add_argument("--scale", choices=SCALES, default=os.environ.get("FFRTMP_BENCH_SCALE", "full"))
    args = parser.parse_args(argv)
    with BenchEnv(extra_nodes_for(workers_needed(args.scale))) as env:
        report = asyncio.run(run(env, args.scale))
    print(report.table())
    out = args.json or RESULTS_DIR / f"{name}.json"
    write_json(out, report.document())
    print(f"wrote {out}")
    return 0
