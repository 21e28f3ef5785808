"""Figure 9: the farm's steady API writes under the write budget, at 100 to 2,000 workers.

One namespace, one operator (`--write-budget`, default 100 writes/s), simulated workers
(tests/bench/sim.py: the real worker agent — Lease renewals, job watch, fenced progress writes —
with attempts that sleep instead of running ffmpeg) with 5 slots each, grown in steps. The workers
are pools of at most 1,000 (the WorkerPool CRD's maximum): 2,000 workers are two pools. At each
step the pools are resized to W workers in all and filled with 5 x W - PROBE_SLOTS jobs long enough
to stay Running. Once the jobs run and the operator's cadence is on the Leases (one more renewal
period for the workers to take it), the step waits until one progress period has passed since the
ramp's last job started (FFRTMP_BENCH_WB_SETTLE seconds instead, if set): every job has then
written its progress at the final period, and the writes of young jobs at the shorter periods of
smaller farms are over. Then a steady window measures:

- writes/s from kube-apiserver's own `apiserver_request_total` (POST, PUT, PATCH, DELETE): ours
  (leases, transcodejobs, events, workerpools, pods) against the budget, and everything (KWOK's
  node heartbeats and Pod status included);
- progress freshness: at the window's end, the age of each Running job's newest progress report
  (status.heartbeatTime), p50/p99/max;
- submit -> Running p99 of probe jobs submitted through the window into the free slots;
- the operator's RSS and CPU, and its decision pass time (`ffrtmp_operator_pass_seconds`);
- CPU of the bench process (all simulated workers), kube-apiserver and etcd: where the limit is.

Then a few simulated workers are killed outright (no Lease release) and the time until none of
their jobs names them any more is the worker-loss detection time (Lease duration + grace + a pass).

The ramp to each size is bounded, so that the steady window starts from a calm control plane. The
budget bounds the steady state only: the writes of a ramp (each new job's create, its assignment,
its Running write and its first progress reports; each new worker's Pod, binding, Pod status and
Lease) are not budgeted, and a step that added 2,000 jobs and 400 workers at once overloaded this
2-core machine's kube-apiserver (Lease renewals timed out, its watch cache re-initialised, every
worker's job watch re-listed). So each step:

1. grows the pools in sub-steps of RAMP_WORKERS workers (min/max patched, then waits until the pools
   report them ready: Pod bound, agent started, Lease written), and after each sub-step
2. submits the new slots' jobs at RAMP_RATE jobs/s (FFRTMP_BENCH_WB_RAMP_RATE, default 10) in
   batches of RAMP_BATCH_SECONDS x RAMP_RATE jobs, waiting for each batch to be Running (98 % of
   every job created so far, at most RAMP_BATCH_LIMIT s) before the next. At 10 jobs/s the ramp
   adds about 30 writes/s (create, assignment, Running) on top of the steady load, well under
   the ~100 status writes/s this control plane holds (BENCHMARKS.md, figure 9).

The ramp's duration, its batches' waits and the CPU of the operator, the bench process,
kube-apiserver and etcd over the ramp are recorded per step. FFRTMP_BENCH_WB_SIZES=500,1000 picks
the sizes (the pools then start at RAMP_WORKERS and are grown to the first size the same way), and
FFRTMP_BENCH_WB_BUDGET another budget.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ffrtmp.api.cadence import ANNOTATION_CADENCE, Cadence
from ffrtmp.conditions import parse_time
from ffrtmp.dev.cluster import free_port
from ffrtmp.kube.client import KubeClient, resource_path

from .common import (
    RESULTS_DIR,
    BenchEnv,
    JobWatch,
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
    write_json,
)
from .sim import SimFarm

NAME = "write_budget"
PARAMS: dict[str, dict[str, Any]] = {
    # The small scale runs under a small budget, so that its farm is big enough to need longer periods.
    "small": {"sizes": [20, 60], "budget": 20.0, "window": 40.0},
    # 50, not the default 100: this 2-core machine's own API server saturates near 100 CRD status
    # writes/s beside the benchmark's 2,000 simulated workers (BENCHMARKS.md, figure 9). Sizing the
    # budget to the control plane is what the runbook asks of users too.
    "full": {"sizes": [100, 500, 1000, 2000], "budget": 50.0, "window": 60.0},
}
SLOTS = 5
PROBE_SLOTS = 10  # slots kept free for the probe jobs
PROBE_EVERY = 2.0  # seconds between probe jobs in the window
LONG_JOB_SECONDS = 7200
OURS = {"leases", "transcodejobs", "transcodejobs/status", "events", "workerpools", "workerpools/status", "pods"}
STEP_LIMIT = float(os.environ.get("FFRTMP_BENCH_STEP_LIMIT", "600"))
RAMP_RATE = float(os.environ.get("FFRTMP_BENCH_WB_RAMP_RATE", "10"))  # new jobs/s while ramping
RAMP_WORKERS = 100  # workers added per pool sub-step
RAMP_BATCH_SECONDS = 10.0  # a batch is this many seconds of submissions at RAMP_RATE
RAMP_BATCH_LIMIT = 180.0  # seconds a batch may take to be Running before the ramp goes on anyway
POOL_MAX = 1000  # the WorkerPool CRD's maximum of maxWorkers
SETTLE = os.environ.get("FFRTMP_BENCH_WB_SETTLE")  # seconds from the ramp's end to the window; default: progress
log = logging.getLogger(__name__)


def sizes(scale: str) -> list[int]:
    """The scale's sizes, or FFRTMP_BENCH_WB_SIZES (comma-separated worker counts)."""
    text = os.environ.get("FFRTMP_BENCH_WB_SIZES", "")
    return [int(n) for n in text.split(",") if n.strip()] or list(PARAMS[scale]["sizes"])


def budget_of(p: dict[str, Any]) -> float:
    """The scale's budget, or FFRTMP_BENCH_WB_BUDGET (writes/s): 2,000 workers need more than 50, since
    their renewals alone are 50 writes/s at the longest renewal period (40 s)."""
    return float(os.environ.get("FFRTMP_BENCH_WB_BUDGET") or p["budget"])


def workers_needed(scale: str) -> int:
    return max(sizes(scale))


def pool_sizes(workers: int) -> dict[str, int]:
    """`workers` as pools of at most POOL_MAX: {"cpu-0": 1000, "cpu-1": 500} for 1,500."""
    return {f"cpu-{i}": min(POOL_MAX, workers - i * POOL_MAX) for i in range(-(-workers // POOL_MAX))}


async def run(env: BenchEnv, scale: str) -> Report:
    p = PARAMS[scale]
    report = Report(NAME, scale)
    ns = env.create_namespace("budget")
    steps = sizes(scale)
    biggest = max(steps)
    client = env.client(max_connections=biggest + 100)
    bare = env.client(max_connections=60)
    farm = SimFarm(client, ns, env.root / "sim" / ns, progress_interval=5.0, lease_seconds=15).start()
    metrics_port = free_port()
    op = env.start_operator(ns, "--write-budget", str(budget_of(p)), "--metrics-port", str(metrics_port))
    watch = JobWatch(bare, ns)
    report.details["steps"] = []
    try:
        await op.wait_ready()
        watch.start()
        await watch.synced.wait()
        made = 0
        for workers in steps:
            try:
                row = await step(env, report, bare, farm, watch, op.pid, metrics_port, ns, workers, made, p)
            except Exception as e:  # keep the figures of the sizes measured so far
                log.exception("write budget step %d failed", workers)
                report.details["steps"].append({"workers": workers, "error": repr(e)})
                break
            made = row["jobs_created"]
    finally:
        await watch.stop()
        await farm.close()
        op.stop()
        await client.close()
        await bare.close()
        env.delete_namespace(ns, wait_seconds=60)
    return report


async def step(
    env: BenchEnv, report: Report, bare: KubeClient, farm: SimFarm, watch: JobWatch, op_pid: int, metrics_port: int,
    ns: str, workers: int, made: int, p: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    budget = budget_of(p)
    started = time.monotonic()
    ramp = await ramp_to(env, bare, watch, op_pid, ns, workers, made)
    ready_s, ready = ramp["pool_ready_s"], ramp["ready_workers"]
    ramp_end = time.monotonic()
    ramp_s = ramp_end - started
    cadence = await wait_cadence(bare, metrics_port, ns, workers)
    await asyncio.sleep(cadence.renew_seconds + 2)  # every worker renews once with it (and takes it)
    settle = float(SETTLE) if SETTLE else cadence.progress_seconds
    await asyncio.sleep(max(0.0, ramp_end + settle - time.monotonic()))

    window: float = max(p["window"], 2 * cadence.renew_seconds)
    operator = ProcessSampler(op_pid)
    bench = ProcessSampler(os.getpid())
    apiserver = ProcessSampler(env.cluster.state.pids["kube-apiserver"])
    etcd = ProcessSampler(env.cluster.state.pids["etcd"])
    samplers = {"operator": operator, "bench (simulated workers)": bench, "kube-apiserver": apiserver, "etcd": etcd}
    cpu0 = {name: s.cpu_seconds() for name, s in samplers.items()}
    rss: list[int] = []
    passes0 = await operator_histogram(metrics_port, "ffrtmp_operator_pass_seconds")
    before = await env.apiserver_requests()
    t0 = time.monotonic()
    sent: dict[str, float] = {}
    probe = 0
    while time.monotonic() - t0 < window:
        name = f"probe-{workers}-{probe:03d}"
        await create_jobs(bare, ns, [sim_job(name, 1)], 1, sent)
        probe += 1
        rss.append(operator.rss())
        await asyncio.sleep(PROBE_EVERY)
    elapsed = time.monotonic() - t0
    after = await env.apiserver_requests()
    passes1 = await operator_histogram(metrics_port, "ffrtmp_operator_pass_seconds")
    cores = {name: (s.cpu_seconds() - cpu0[name]) / elapsed for name, s in samplers.items()}
    ages = await progress_ages(bare, ns)
    await watch.wait(lambda: all(watch.jobs[n].running is not None for n in sent), 120, "the probes Running")
    latencies = [t.running - sent[n] for n, t in watch.jobs.items() if n in sent and t.running is not None]

    writes: dict[str, float] = defaultdict(float)
    for (verb, _group, resource, sub), n in request_delta(before, after).items():
        if verb in ("POST", "PUT", "PATCH", "DELETE"):
            writes[resource + (f"/{sub}" if sub else "")] += n / elapsed
    ours = sum(v for k, v in writes.items() if k in OURS)
    busy = [name for name, agent in farm.agents.items() if agent.attempts and not agent.draining][:3]

    def kill(name: str) -> None:
        farm.agents[name].quiet_exit = True
        farm.runs[name].cancel()

    detect = await worker_loss(bare, ns, cadence, busy, kill)
    for name in busy:
        farm.agents.pop(name, None)
        farm.runs.pop(name, None)
    pass_mean, pass_p99 = histogram_summary(passes0, passes1)

    params = {"workers": workers, "running_jobs": running(watch), "budget": budget, "cadence": cadence.annotation()}
    report.add(f"writes_per_s_{workers}w", ours, "writes/s", simulated=True, target=f"<= {budget:g}",
               note="ours: leases, transcodejobs, events, workerpools, pods", **params)  # fmt: skip
    report.add(f"progress_age_p99_{workers}w", percentile(ages, 99), "s", simulated=True,
               note=f"age of each Running job's newest progress at the window's end ({len(ages)} jobs)",
               **params)  # fmt: skip
    report.add(f"worker_loss_detection_{workers}w", max(detect) if detect else None, "s", simulated=True,
               note=f"kill (no Lease release) -> jobs no longer name the worker; {len(detect)} workers killed",
               **params)  # fmt: skip
    report.add(f"submit_to_running_p99_{workers}w", percentile(latencies, 99), "s", simulated=True,
               note=f"{len(latencies)} probe jobs during the window", **params)  # fmt: skip
    report.add(f"operator_rss_{workers}w", statistics.fmean(rss) / 1e6 if rss else None, "MB", simulated=True,
               **params)  # fmt: skip
    report.add(f"operator_pass_p99_{workers}w", pass_p99, "s", simulated=True,
               note=f"bucket upper bound; mean {pass_mean * 1000 if pass_mean else 0:.1f} ms", **params)  # fmt: skip
    row = {
        "workers": workers, "pools": pool_sizes(workers), "ready_workers": ready, "pool_ready_s": round(ready_s, 1),
        "ramp_s": round(ramp_s, 1), "ramp": ramp, "window_after_ramp_s": round(t0 - ramp_end, 1),
        "jobs_created": ramp["jobs_created"], "running": running(watch), "cadence": cadence.annotation(),
        "window_s": round(elapsed, 1), "writes_per_s_ours": round(ours, 2),
        "writes_per_s_all": round(sum(writes.values()), 2),
        "writes_per_s_by_resource": {k: round(v, 2) for k, v in sorted(writes.items()) if v >= 0.05},
        "progress_age_s": {"p50": percentile(ages, 50), "p99": percentile(ages, 99), "max": max(ages, default=None)},
        "submit_to_running_s": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99)},
        "worker_loss_detection_s": [round(d, 1) for d in detect],
        "cpu_cores": {k: round(v, 3) for k, v in cores.items()},
        "operator_rss_mb": round(statistics.fmean(rss) / 1e6, 1) if rss else None,
        "operator_pass_s": {"mean": pass_mean, "p99_bucket": pass_p99},
    }  # fmt: skip
    report.details["steps"].append(row)
    print(f"write budget: {row}", flush=True)
    # Each step's figures on disk at once: a run stopped at a size the machine cannot hold keeps them.
    write_json(RESULTS_DIR / f"{NAME}-steps.json", report.document())
    return row


async def ramp_to(
    env: BenchEnv, bare: KubeClient, watch: JobWatch, op_pid: int, ns: str, workers: int, made: int
) -> dict[str, Any]:
    """Grow the pools to `workers` in all in sub-steps of RAMP_WORKERS (a new pool once one holds
    POOL_MAX) and fill each sub-step's new slots at RAMP_RATE jobs/s, batch by batch (each batch
    Running before the next); what it took."""
    pools = {item["metadata"]["name"]: int(item["spec"].get("maxWorkers") or 0)
             for item in (await bare.get(pool_path(ns)))["items"]}  # fmt: skip
    have = sum(pools.values())
    samplers = {
        "operator": ProcessSampler(op_pid), "bench (simulated workers)": ProcessSampler(os.getpid()),
        "kube-apiserver": ProcessSampler(env.cluster.state.pids["kube-apiserver"]),
        "etcd": ProcessSampler(env.cluster.state.pids["etcd"]),
    }  # fmt: skip
    cpu0 = {name: s.cpu_seconds() for name, s in samplers.items()}
    t0 = time.monotonic()
    pool_wait = 0.0
    ready = 0
    batches: list[float] = []  # seconds each batch took from its first create to Running
    late = 0  # batches not Running within RAMP_BATCH_LIMIT
    for size in sorted({*range(have, workers, RAMP_WORKERS), workers}):
        for name, n in pool_sizes(size).items():
            if name not in pools:
                await bare.create(pool_path(ns), pool_manifest(
                    name, maxConcurrentJobs=SLOTS, minWorkers=n, maxWorkers=n, autoscaling={"enabled": False},
                    resources={"requests": {"cpu": "1m", "memory": "1Mi"}},
                ))  # fmt: skip
            elif pools[name] != n:
                await bare.merge_patch(pool_path(ns, name), {"spec": {"minWorkers": n, "maxWorkers": n}})
            pools[name] = n
        ready = 0
        for name, n in pools.items():
            waited, pool_ready = await wait_pool_ready(bare, ns, name, n, limit=STEP_LIMIT)
            pool_wait += waited
            ready += pool_ready
        target = size * SLOTS - PROBE_SLOTS
        batch = max(int(RAMP_RATE * RAMP_BATCH_SECONDS), 1)
        while made < target:
            names = [f"long-{i:05d}" for i in range(made, min(made + batch, target))]
            b0 = time.monotonic()

            async def submit(i: int, names: list[str] = names) -> None:
                await create_jobs(bare, ns, [sim_job(names[i], LONG_JOB_SECONDS)], 1)

            await submit_paced(len(names), RAMP_RATE, submit)
            made += len(names)
            want = int(made * 0.98)
            try:
                await watch.wait(lambda want=want: running(watch) >= want, RAMP_BATCH_LIMIT, f"{want} jobs Running")
            except TimeoutError:
                late += 1
                log.warning("ramp: only %d of %d jobs Running after %.0fs", running(watch), made, RAMP_BATCH_LIMIT)
            batches.append(time.monotonic() - b0)
    elapsed = time.monotonic() - t0
    return {
        "seconds": round(elapsed, 1), "rate_jobs_per_s": RAMP_RATE, "pool_substep_workers": RAMP_WORKERS,
        "pool_ready_s": round(pool_wait, 1), "ready_workers": ready, "jobs_created": made,
        "batches": len(batches), "batches_late": late,
        "batch_s": {"p50": percentile(batches, 50), "max": max(batches, default=None)},
        "cpu_cores": {k: round((s.cpu_seconds() - cpu0[k]) / elapsed, 3) for k, s in samplers.items()},
    }  # fmt: skip


def running(watch: JobWatch) -> int:
    return watch.count(lambda t: t.phase == "Running")


async def operator_text(port: int) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as resp:
        return await resp.text()


async def operator_histogram(port: int, name: str, labels: dict[str, str] | None = None) -> dict[str, float]:
    """{le: cumulative count, "sum": total, "count": n} of a histogram (the series with `labels`)."""
    return histogram_in(scrape_samples(await operator_text(port)), name, labels)


def scrape_samples(text: str) -> list[Sample]:
    """Every sample of one scrape, parsed once (a scrape of 100 namespaces' series takes 60 ms)."""
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def histogram_in(samples: list[Sample], name: str, labels: dict[str, str] | None = None) -> dict[str, float]:
    """`operator_histogram` of one scrape's samples."""
    out: dict[str, float] = {}
    for sample in samples:
        if any(sample.labels.get(k) != v for k, v in (labels or {}).items()):
            continue
        if sample.name == f"{name}_bucket":
            out[sample.labels["le"]] = sample.value
        elif sample.name == f"{name}_sum":
            out["sum"] = sample.value
        elif sample.name == f"{name}_count":
            out["count"] = sample.value
    return out


def bucket_bound(before: dict[str, float], after: dict[str, float], fraction: float) -> float | None:
    """The upper bound of the first bucket holding `fraction` of the observations in between."""
    count = after.get("count", 0) - before.get("count", 0)
    if count <= 0:
        return None
    bounds = sorted((float(le), after[le] - before.get(le, 0)) for le in after if le not in ("sum", "count"))
    return next((le for le, n in bounds if n >= fraction * count), None)


def histogram_summary(before: dict[str, float], after: dict[str, float]) -> tuple[float | None, float | None]:
    """(mean, the upper bound of the bucket holding the 99th percentile) of the observations in between."""
    count = after.get("count", 0) - before.get("count", 0)
    if count <= 0:
        return None, None
    mean = (after.get("sum", 0) - before.get("sum", 0)) / count
    return mean, bucket_bound(before, after, 0.99)


async def wait_cadence(bare: KubeClient, port: int, ns: str, workers: int) -> Cadence:
    """The cadence the operator decided, once 99 % of the Leases carry it (or none needs to)."""
    deadline = time.monotonic() + 300
    while True:
        periods: dict[str, float] = {}
        for family in text_string_to_metric_families(await operator_text(port)):
            for sample in family.samples:
                if sample.name == "ffrtmp_cadence_seconds":
                    periods[sample.labels["period"]] = sample.value
        if len(periods) == 3:
            cadence = Cadence(periods["renew"], periods["lease"], periods["progress"])
            leases = (await bare.get(resource_path("coordination.k8s.io", "v1", "leases", ns)))["items"]
            values = [(lease["metadata"].get("annotations") or {}).get(ANNOTATION_CADENCE) for lease in leases]
            told = sum(1 for v in values if Cadence.parse(v) == cadence)
            at_floor = all(v is None for v in values) and cadence == Cadence(5, 15, 5)
            if at_floor or told >= 0.99 * workers:
                return cadence
        if time.monotonic() > deadline:
            raise TimeoutError(f"the operator's cadence not on the Leases after 300 s: {periods}")
        await asyncio.sleep(1)


async def progress_ages(bare: KubeClient, ns: str) -> list[float]:
    """Ages of the Running jobs' newest progress reports, from a paged list (10,000 jobs in one answer
    outlast the API server's 60 s request timeout on a busy machine)."""
    jobs: list[dict[str, Any]] = []
    token = ""
    while True:
        params: dict[str, str | int] = {"limit": 500, **({"continue": token} if token else {})}
        page = await bare.get(job_path(ns), **params)
        jobs.extend(page["items"])
        token = (page.get("metadata") or {}).get("continue") or ""
        if not token:
            break
    now = time.time()
    ages = []
    for job in jobs:
        status = job.get("status") or {}
        beat = parse_time(status.get("heartbeatTime"))
        if status.get("phase") == "Running" and beat is not None:
            ages.append(now - beat)
    return ages


async def worker_loss(
    bare: KubeClient, ns: str, cadence: Cadence, busy: list[str], kill: Callable[[str], None]
) -> list[float]:
    """Kill the `busy` simulated workers outright (`kill`: no Lease release); seconds until no job
    names each of them. Their Pods are deleted afterwards: the pool makes new ones."""
    killed_at: dict[str, float] = {}
    for name in busy:
        kill(name)
        killed_at[name] = time.monotonic()
    found: dict[str, float] = {}
    deadline = time.monotonic() + cadence.lease_seconds * 2 + 120
    while len(found) < len(busy) and time.monotonic() < deadline:
        for name in busy:
            if name in found:
                continue
            named = await bare.get(job_path(ns), fieldSelector=f"status.worker={name}")
            if not named["items"]:
                found[name] = time.monotonic() - killed_at[name]
        await asyncio.sleep(0.5)
    for name in busy:
        await bare.delete_ignore_missing(f"{pods_path(ns)}/{name}")
    return list(found.values())


if __name__ == "__main__":
    raise SystemExit(main(NAME, run, workers_needed))
