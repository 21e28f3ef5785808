"""The operator's footprint at 10,000 Running jobs and 2,000 workers (figure 9), measured cheaply.

Figure 9's full simulation (tests/bench/sim.py: one real agent per worker, each with its own job
watch and attempts) does not reach 2,000 workers on this 2-core machine, so this benchmark keeps
the operator and the API traffic of such a farm and drops the per-worker costs of the benchmark
process:

- Leases: for each worker Pod the operator creates (KWOK binds it), the real worker agent's Lease
  loop alone (`Agent._lease_loop`: the same body, annotations, renewal and cadence adoption), with
  a passed self-test and storage check set directly; no job watch, no recheck loop, no metrics
  server. The workers' own periods are the published ones for the farm's size from the start
  (RENEW_SECONDS: the operator publishes 40 / 120 s for 2,000 workers at the default budget),
  so that 2,000 new Leases do not renew every 5 s while the published cadence reaches them.
- Jobs: ONE watch of the namespace's jobs plays every worker: a job the operator assigned
  (status.worker, status.attempt) gets the worker's fenced Running write (`FencedStatus.update`,
  as `Attempt._run` sends it) and then fenced progress patches every published progress period
  (the worker's Lease's cadence, never shorter than PROGRESS_FLOOR), spread evenly.
- Jobs are submitted at RATE jobs/s (FFRTMP_BENCH_FOOTPRINT_RATE) in batches that are Running
  before the next, as figure 9's ramp does.

Once the jobs run, 99 % of the Leases carry the operator's cadence and one progress period has passed
since the last job started (FFRTMP_BENCH_FOOTPRINT_SETTLE seconds instead, if set), a steady window
measures the operator's RSS (mean, max) and CPU, its decision pass time
(`ffrtmp_operator_pass_seconds`), the farm's writes/s from kube-apiserver's `apiserver_request_total`,
and the CPU of the bench process, kube-apiserver and etcd; at its end, the age of each Running job's
newest progress. Then three busy workers die outright (their Lease loops stop, no release) and the
time until no job names them is the worker-loss detection time.
FFRTMP_BENCH_FOOTPRINT_SIZE=WORKERS,JOBS picks another size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from ffrtmp.api.cadence import next_progress_due
from ffrtmp.api.constants import LABEL_COMPONENT, WORKER_COMPONENT
from ffrtmp.conditions import now_iso, set_conditions
from ffrtmp.dev.cluster import free_port
from ffrtmp.dev.workers import pod_environment
from ffrtmp.kube.client import KubeClient, informer
from ffrtmp.worker.agent import Agent
from ffrtmp.worker.config import WorkerConfig
from ffrtmp.worker.fence import FencedStatus, Superseded
from ffrtmp.worker.metrics import WorkerMetrics

from .common import (
    RESULTS_DIR,
    BenchEnv,
    ProcessSampler,
    Report,
    create_jobs,
    job_path,
    main,
    percentile,
    pods_path,
    pool_manifest,
    pool_path,
    request_delta,
    sim_job,
    submit_paced,
    wait_pool_ready,
    wait_until,
)
from .sim import SIM_SELF_TEST, SIM_STORAGE
from .write_budget import (
    OURS,
    histogram_summary,
    operator_histogram,
    progress_ages,
    wait_cadence,
    worker_loss,
)

NAME = "running_footprint"
PARAMS: dict[str, dict[str, Any]] = {
    "small": {"workers": 100, "jobs": 500, "window": 40.0},
    "full": {"workers": 2000, "jobs": 10000, "window": 120.0},
}
SLOTS = 5
POOL_MAX = 1000  # the WorkerPool CRD's maximum of maxWorkers
RENEW_SECONDS = 40  # the workers' own renewal period (Lease 3 x): the formula's for 2,000 workers
PROGRESS_FLOOR = 60.0  # the workers' own progress period: never shorter, whatever is published
RATE = float(os.environ.get("FFRTMP_BENCH_FOOTPRINT_RATE", "20"))
BATCH_SECONDS = 15.0
BATCH_LIMIT = 180.0
STEP_LIMIT = float(os.environ.get("FFRTMP_BENCH_STEP_LIMIT", "600"))
LONG_JOB_SECONDS = 7200
SETTLE = os.environ.get("FFRTMP_BENCH_FOOTPRINT_SETTLE")  # seconds from the ramp's end to the window
Obj = dict[str, Any]
log = logging.getLogger(__name__)


def size(scale: str) -> tuple[int, int]:
    text = os.environ.get("FFRTMP_BENCH_FOOTPRINT_SIZE", "")
    if text:
        workers, jobs = (int(n) for n in text.split(","))
        return workers, jobs
    return int(PARAMS[scale]["workers"]), int(PARAMS[scale]["jobs"])


def workers_needed(scale: str) -> int:
    return size(scale)[0]


class LeaseOnlyFarm:
    """Worker Leases (the real agent's Lease loop) for the pool's bound Pods, and one job watch that
    writes every assigned job's Running status and progress as its worker would."""

    def __init__(self, client: KubeClient, namespace: str, work_dir: Path) -> None:
        self.client = client
        self.work_dir = work_dir
        self.namespace = namespace
        self.metrics = WorkerMetrics()
        self.agents: dict[str, Agent] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.fences: dict[str, FencedStatus] = {}  # job name -> the fence of its Running attempt
        self.started: set[tuple[str, int]] = set()  # (job uid, attempt) written Running
        self.running = 0
        self.errors: dict[str, int] = defaultdict(int)
        self.writes = {"running": 0, "progress": 0}
        # Running writes and progress patches have a connection budget each: sharing one (16 in the
        # first full run) let 2,000-3,000 jobs' progress hold the new jobs' Running writes back.
        self._running_writes = asyncio.Semaphore(32)
        self._progress_writes = asyncio.Semaphore(16)
        self._progress_pending: set[str] = set()  # jobs whose last progress write is still on its way
        self._background: set[asyncio.Task[None]] = set()
        self._main: list[asyncio.Task[None]] = []

    def start(self) -> LeaseOnlyFarm:
        self._main = [
            asyncio.create_task(self._watch_pods(), name="lease-farm-pods"),
            asyncio.create_task(self._watch_jobs(), name="lease-farm-jobs"),
            asyncio.create_task(self._progress_loop(), name="lease-farm-progress"),
        ]
        return self

    async def close(self) -> None:
        for task in [*self._main, *self.tasks.values(), *self._background]:
            task.cancel()
        await asyncio.gather(*self._main, *self.tasks.values(), *self._background, return_exceptions=True)

    async def _watch_pods(self) -> None:
        selector = f"{LABEL_COMPONENT}={WORKER_COMPONENT}"
        async for kind, obj in informer(self.client, pods_path(self.namespace), {"labelSelector": selector}):
            for pod in obj["items"] if kind == "SYNC" else [] if kind == "DELETED" else [obj]:
                self._pod_seen(pod)

    def _pod_seen(self, pod: Obj) -> None:
        name = pod["metadata"]["name"]
        if name in self.agents or not (pod.get("spec") or {}).get("nodeName"):
            return
        env = pod_environment(pod)
        env.update({
            "FFRTMP_OUTPUT_ROOT": str(self.work_dir / "output"), "FFRTMP_SCRATCH_DIR": str(self.work_dir / "scratch"),
            "FFRTMP_MEDIA_ROOTS": "/media", "FFRTMP_LEASE_SECONDS": str(3 * RENEW_SECONDS),
            "FFRTMP_RENEW_SECONDS": str(RENEW_SECONDS),
            "FFRTMP_PROGRESS_INTERVAL": str(PROGRESS_FLOOR), "FFRTMP_METRICS_PORT": "0",
        })  # fmt: skip
        agent = Agent(self.client, WorkerConfig.from_env(env), self.metrics)
        agent.self_test, agent.storage = SIM_SELF_TEST, SIM_STORAGE
        self.agents[name] = agent

        async def lease(agent: Agent = agent) -> None:
            await asyncio.sleep(random.uniform(0, 2))  # KWOK binds Pods in bursts: spread the first writes
            await agent._lease_loop()

        self.tasks[name] = asyncio.create_task(lease(), name=f"lease-{name}")

    async def _watch_jobs(self) -> None:
        async for kind, obj in informer(self.client, job_path(self.namespace)):
            for job in obj["items"] if kind == "SYNC" else [] if kind == "DELETED" else [obj]:
                self._job_seen(job)

    def _job_seen(self, job: Obj) -> None:
        name = job["metadata"]["name"]
        status = job.get("status") or {}
        worker = status.get("worker")
        attempt = int(status.get("attempt") or 0)
        fence = self.fences.get(name)
        if fence is not None:
            fence.observe(job)
            return
        key = (job["metadata"].get("uid", ""), attempt)
        if not worker or worker not in self.agents or key in self.started or status.get("phase") == "Running":
            return
        self.started.add(key)
        task = asyncio.create_task(self._start(job, worker, attempt))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _start(self, job: Obj, worker: str, attempt: int) -> None:
        fence = FencedStatus(self.client, job, worker, attempt)
        now = time.time()
        message = f"running on {worker}"
        status = {
            "phase": "Running", "startTime": now_iso(now), "heartbeatTime": now_iso(now),
            "progress": {"percent": 0.0}, "message": message,
            "conditions": set_conditions(fence.conditions, [("Running", "True", "FfmpegStarted", message)], now=now),
        }  # fmt: skip
        async with self._running_writes:
            try:
                await fence.update_until(status)
            except Superseded:
                return
            except Exception as e:
                self.errors[type(e).__name__] += 1
                return
        self.writes["running"] += 1
        self.running += 1
        self.fences[job["metadata"]["name"]] = fence

    def kill(self, worker: str) -> None:
        """The worker dies outright: its Lease loop stops (no release) and so do its jobs' writes."""
        self.tasks.pop(worker).cancel()
        for name, fence in list(self.fences.items()):
            if fence.worker == worker:
                self.fences.pop(name)

    def progress_seconds(self, worker: str) -> float:
        agent = self.agents.get(worker)
        return max(agent.cadence.progress_seconds if agent else PROGRESS_FLOOR, PROGRESS_FLOOR)

    async def _progress_loop(self) -> None:
        """Each Running job's progress every published period, from a random phase (a farm's
        attempts start at all times), in one loop; a new period moves the next report as the worker's
        attempts do (api.cadence.next_progress_due)."""
        due: dict[str, float] = {}
        scheduled_with: dict[str, float] = {}
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for name, fence in list(self.fences.items()):
                period = self.progress_seconds(fence.worker)
                if name not in due:
                    due[name], scheduled_with[name] = now + random.uniform(0, period), period
                elif scheduled_with[name] != period:
                    last = due[name] - scheduled_with[name]
                    due[name] = next_progress_due(last, period, scheduled_with[name], now, random.random())
                    scheduled_with[name] = period
                if due[name] > now or name in self._progress_pending:
                    continue
                due[name] = now + period
                self._progress_pending.add(name)
                task = asyncio.create_task(self._progress(name, fence))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _progress(self, name: str, fence: FencedStatus) -> None:
        async with self._progress_writes:
            try:
                await fence.patch({"progress": {"percent": 1.0}, "heartbeatTime": now_iso(time.time())})
                self.writes["progress"] += 1
            except Superseded:
                self.fences.pop(name, None)
            except Exception as e:
                self.errors[type(e).__name__] += 1
            finally:
                self._progress_pending.discard(name)


async def run(env: BenchEnv, scale: str) -> Report:
    p = PARAMS[scale]
    workers, jobs = size(scale)
    report = Report(NAME, scale)
    ns = env.create_namespace("footprint10k")
    client = env.client(max_connections=200)
    bare = env.client(max_connections=60)
    metrics_port = free_port()
    # FFRTMP_BENCH_MEMSTATS=1: the operator also writes an untraced memory census every 30 s (pymalloc's
    # arenas, live objects by type) to .bench/running_footprint-memstats.json.
    census = RESULTS_DIR / f"{NAME}-memstats.json" if os.environ.get("FFRTMP_BENCH_MEMSTATS") == "1" else None
    # The default write budget (100 writes/s).
    op = env.start_operator(ns, "--metrics-port", str(metrics_port), census=census)
    farm = LeaseOnlyFarm(client, ns, env.root / "sim" / ns).start()
    operator = ProcessSampler(op.pid)
    rss_ramp = operator.start()
    try:
        await op.wait_ready()
        t0 = time.monotonic()
        # A WorkerPool holds at most 1,000 workers (the CRD's maximum): 2,000 workers are two pools.
        pools = {f"cpu-{i}": min(POOL_MAX, workers - i * POOL_MAX) for i in range(math.ceil(workers / POOL_MAX))}
        for name, n in pools.items():
            await bare.create(pool_path(ns), pool_manifest(
                name, maxConcurrentJobs=SLOTS, minWorkers=n, maxWorkers=n,
                autoscaling={"enabled": False}, resources={"requests": {"cpu": "1m", "memory": "1Mi"}},
            ))  # fmt: skip
        ready = 0
        for name, n in pools.items():
            _, pool_ready = await wait_pool_ready(bare, ns, name, n, limit=STEP_LIMIT)
            ready += pool_ready
        pool_s = time.monotonic() - t0
        print(f"running footprint: {ready} workers ready after {pool_s:.0f}s", flush=True)
        made, late = 0, 0
        batch = max(int(RATE * BATCH_SECONDS), 1)
        while made < jobs:
            names = [f"long-{i:05d}" for i in range(made, min(made + batch, jobs))]

            async def submit(i: int, names: list[str] = names) -> None:
                await create_jobs(bare, ns, [sim_job(names[i], LONG_JOB_SECONDS)], 1)

            await submit_paced(len(names), RATE, submit)
            made += len(names)

            async def enough(want: int = int(made * 0.98)) -> bool:
                return farm.running >= want

            try:
                await wait_until(enough, BATCH_LIMIT, f"{made} jobs Running", interval=0.5)
            except TimeoutError:
                late += 1
                log.warning("only %d of %d jobs Running after %.0fs", farm.running, made, BATCH_LIMIT)
        ramp_end = time.monotonic()
        ramp_s = ramp_end - t0
        print(f"running footprint: {farm.running} of {made} Running after {ramp_s:.0f}s", flush=True)
        cadence = await wait_cadence(bare, metrics_port, ns, workers)
        await asyncio.sleep(cadence.renew_seconds + 2)
        # Steady means every job wrote its progress at the final period once: young jobs still write
        # at the shorter periods of the smaller farm they started in.
        settle = float(SETTLE) if SETTLE else max(cadence.progress_seconds, PROGRESS_FLOOR)
        await asyncio.sleep(max(0.0, ramp_end + settle - time.monotonic()))

        samplers = {
            "operator": operator, "bench (Leases and job writes)": ProcessSampler(os.getpid()),
            "kube-apiserver": ProcessSampler(env.cluster.state.pids["kube-apiserver"]),
            "etcd": ProcessSampler(env.cluster.state.pids["etcd"]),
        }  # fmt: skip
        cpu0 = {k: s.cpu_seconds() for k, s in samplers.items()}
        passes0 = await operator_histogram(metrics_port, "ffrtmp_operator_pass_seconds")
        before = await env.apiserver_requests()
        writes0 = dict(farm.writes)
        w0 = time.monotonic()
        rss: list[int] = []
        while time.monotonic() - w0 < p["window"]:
            rss.append(operator.rss())
            await asyncio.sleep(1.0)
        elapsed = time.monotonic() - w0
        after = await env.apiserver_requests()
        passes1 = await operator_histogram(metrics_port, "ffrtmp_operator_pass_seconds")
        cores = {k: (s.cpu_seconds() - cpu0[k]) / elapsed for k, s in samplers.items()}
        await operator.stop()
        ages = await progress_ages(bare, ns)
        busy = sorted({fence.worker for fence in farm.fences.values()})[:3]
        detect = await worker_loss(bare, ns, cadence, busy, farm.kill)
        writes: dict[str, float] = defaultdict(float)
        for (verb, _group, resource, sub), n in request_delta(before, after).items():
            if verb in ("POST", "PUT", "PATCH", "DELETE"):
                writes[resource + (f"/{sub}" if sub else "")] += n / elapsed
        ours = sum(v for k, v in writes.items() if k in OURS)
        pass_mean, pass_p99 = histogram_summary(passes0, passes1)
        params = {"workers": workers, "running_jobs": farm.running, "cadence": cadence.annotation()}
        rss_mb = statistics.fmean(rss) / 1e6
        report.add("operator_rss_running", rss_mb, "MB", target="<= 141", note="mean over the steady window",
                   **params)  # fmt: skip
        report.add("operator_rss_running_max", max(rss) / 1e6, "MB", **params)
        report.add("operator_cpu_running", cores["operator"], "cores", **params)
        report.add("operator_pass_mean_running", pass_mean * 1000 if pass_mean else None, "ms", **params)
        report.add("operator_pass_p99_running", pass_p99, "s", note="bucket upper bound", **params)
        report.add("writes_per_s_running", ours, "writes/s", target="<= 100",
                   note="ours: leases, transcodejobs, events, workerpools, pods", **params)  # fmt: skip
        report.add("progress_age_p99_running", percentile(ages, 99), "s",
                   note=f"age of each Running job's newest progress at the window's end ({len(ages)} jobs)",
                   **params)  # fmt: skip
        report.add("worker_loss_detection_running", max(detect) if detect else None, "s",
                   note=f"kill (no Lease release) -> jobs no longer name the worker; {len(detect)} killed",
                   **params)  # fmt: skip
        row = {
            "workers": workers, "ready_workers": ready, "pool_ready_s": round(pool_s, 1), "jobs_created": made,
            "running": farm.running, "ramp_s": round(ramp_s, 1), "ramp_rate_jobs_per_s": RATE,
            "batches_late": late, "cadence": cadence.annotation(), "window_s": round(elapsed, 1),
            "window_after_ramp_s": round(w0 - ramp_end, 1),
            "progress_age_s": {
                "p50": percentile(ages, 50), "p99": percentile(ages, 99), "max": max(ages, default=None),
            },
            "worker_loss_detection_s": [round(d, 1) for d in detect],
            "operator_rss_mb": {"mean": round(rss_mb, 1), "max": round(max(rss) / 1e6, 1),
                                "max_over_run": round(operator.max_rss() / 1e6, 1)},
            "operator_pass_s": {"mean": pass_mean, "p99_bucket": pass_p99},
            "cpu_cores": {k: round(v, 3) for k, v in cores.items()},
            "writes_per_s_ours": round(ours, 2), "writes_per_s_all": round(sum(writes.values()), 2),
            "writes_per_s_by_resource": {k: round(v, 2) for k, v in sorted(writes.items()) if v >= 0.05},
            "bench_writes_in_window": {k: farm.writes[k] - writes0[k] for k in farm.writes},
            "bench_write_errors": dict(farm.errors),
            "operator_rss_p50_mb": round((percentile(rss, 50) or 0) / 1e6, 1),
        }  # fmt: skip
        report.details["run"] = row
        print(f"running footprint: {row}", flush=True)
    finally:
        with contextlib.suppress(Exception):
            await rss_ramp.stop()
        await farm.close()
        op.stop()
        await client.close()
        await bare.close()
        env.delete_namespace(ns, wait_seconds=120)
    return report


if __name__ == "__main__":
    raise SystemExit(main(NAME, run, workers_needed))
