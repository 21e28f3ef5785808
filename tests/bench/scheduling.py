"""Figure 1: scheduling throughput, against the ceiling of a bare client on the same API server.

2,000 TranscodeJobs are created at once (bare async client, 50 in flight) while 500 simulated
workers x 4 slots are free. Throughput = jobs / (first create issued -> last job seen with
status.worker set), as a watch of the namespace sees it. The ceiling is the rate at which a bare
`KubeClient` merge-patches the status of 2,000 custom objects (an assignment-sized status, fenced
by resourceVersion, 32 in flight = the operator's max_parallel_writes) on the same server.
The operator is profiled with py-spy (non-blocking sampling) during the run.

Simulated executors start the jobs (their Running writes overlap the window, as in production);
progress writes are turned off (interval 3600 s) so the window measures scheduling.
"""

from __future__ import annotations

import asyncio
import os
import time

from ffrtmp.conditions import now_iso
from ffrtmp.kube.client import KubeClient

from .common import (
    RESULTS_DIR,
    VARIANT_ARGS,
    BenchEnv,
    JobWatch,
    Operator,
    ProcessSampler,
    PySpy,
    Report,
    create_jobs,
    job_path,
    main,
    percentile,
    pool_manifest,
    pool_path,
    sim_job,
    variants_from_env,
    wait_pool_ready,
    wait_until,
)
from .sim import SimFarm

NAME = "scheduling"
PARAMS = {
    "small": {"workers": 50, "slots": 4, "jobs": 200},
    "full": {"workers": 500, "slots": 4, "jobs": 2000},
}
CREATE_CONCURRENCY = 50
PATCH_CONCURRENCY = 32  # OperatorSettings.max_parallel_writes


def workers_needed(scale: str) -> int:
    return int(PARAMS[scale]["workers"])


async def measure_ceiling(env: BenchEnv, jobs: int) -> dict[str, float]:
    """Bare client: create `jobs` objects, then patch each one's status once (timed)."""
    ns = env.create_namespace("ceiling")
    try:
        async with env.client(max_connections=100) as client:
            docs = [sim_job(f"c-{i:05d}", 600) for i in range(jobs)]
            rvs: dict[str, str] = {}

            async def create(doc: dict[str, object]) -> None:
                obj = await client.create(job_path(ns), doc)
                rvs[obj["metadata"]["name"]] = obj["metadata"]["resourceVersion"]

            sem = asyncio.Semaphore(CREATE_CONCURRENCY)

            async def bounded_create(doc: dict[str, object]) -> None:
                async with sem:
                    await create(doc)

            t0 = time.monotonic()
            await asyncio.gather(*(bounded_create(d) for d in docs))
            create_seconds = time.monotonic() - t0

            now = time.time()
            psem = asyncio.Semaphore(PATCH_CONCURRENCY)

            async def patch(name: str) -> None:
                message = f"assigned to worker pool-xyz-{name} on node sim-cpu-0"
                body = {
                    "metadata": {"resourceVersion": rvs[name]},
                    "status": {
                        "phase": "Scheduled", "pool": "cpu", "worker": f"pool-xyz-{name}", "node": "sim-cpu-0",
                        "accelerator": "cpu", "attempt": 1, "scheduledTime": now_iso(now), "queuedTime": now_iso(now),
                        "message": message, "observedGeneration": 1,
                        "conditions": [
                            {"type": t, "status": s, "reason": r, "message": message,
                             "lastTransitionTime": now_iso(now), "observedGeneration": 1}
                            for t, s, r in (("Queued", "False", "Scheduled"), ("Scheduled", "True", "Assigned"),
                                            ("Running", "False", "Scheduled"))
                        ],
                    },
                }  # fmt: skip
                async with psem:
                    await client.merge_patch(job_path(ns, name, "status"), body)

            t1 = time.monotonic()
            await asyncio.gather(*(patch(n) for n in rvs))
            patch_seconds = time.monotonic() - t1
        return {
            "patch_rate": jobs / patch_seconds,
            "patch_seconds": patch_seconds,
            "create_rate": jobs / create_seconds,
            "create_seconds": create_seconds,
        }
    finally:
        env.delete_namespace(ns)


async def run(env: BenchEnv, scale: str) -> Report:
    # Diagnostics: the same 2,000 slots on fewer, larger workers (fewer watches for the API server
    # to feed), e.g. FFRTMP_BENCH_SCHED_WORKERS=50 FFRTMP_BENCH_SCHED_SLOTS=40.
    p = dict(PARAMS[scale])
    for key in ("workers", "slots"):
        override = os.environ.get(f"FFRTMP_BENCH_SCHED_{key.upper()}")
        if override:
            p[key] = int(override)
    workers, slots, jobs = p["workers"], p["slots"], p["jobs"]
    report = Report(NAME, scale)
    ceiling = await measure_ceiling(env, jobs)
    report.add(
        "status_patch_ceiling", ceiling["patch_rate"], "patches/s", jobs=jobs,
        concurrency=PATCH_CONCURRENCY, note="bare KubeClient merge-patching /status of existing TranscodeJobs",
    )  # fmt: skip
    report.add(
        "bare_create_rate", ceiling["create_rate"], "jobs/s", jobs=jobs, concurrency=CREATE_CONCURRENCY,
        note="bare client creating TranscodeJobs, no operator running",
    )  # fmt: skip
    report.details["ceiling"] = ceiling

    ns = env.create_namespace("sched")
    client = env.client(max_connections=workers + 100)
    bare = env.client(max_connections=CREATE_CONCURRENCY + 10)
    farm = SimFarm(client, ns, env.root / "sim" / ns, progress_interval=3600).start()
    op = None
    try:
        for index, variant in enumerate(variants_from_env()):
            op = env.start_operator(ns, *VARIANT_ARGS[variant], log_name=f"operator-{variant}")
            await op.wait_ready()
            if index == 0:
                await bare.create(pool_path(ns), pool_manifest(
                    "cpu", maxConcurrentJobs=slots, minWorkers=workers, maxWorkers=workers,
                    autoscaling={"enabled": False},
                ))  # fmt: skip
            ready_seconds, ready = await wait_pool_ready(bare, ns, "cpu", workers, limit=max(240, workers))
            report.details.setdefault("ready_workers_at_start", {})[variant] = ready
            await asyncio.sleep(3)  # the operator's first passes and the pool's status settle
            await measure(env, report, bare, farm, op, ns, p, variant, ceiling, ready_seconds)
            op.stop()
            op = None
            # Free every slot for the next variant: delete the jobs, wait until no attempt runs.
            await bare.request("DELETE", job_path(ns), request_timeout=600)  # one DELETE of the collection
            await wait_until(
                lambda: _idle(farm, bare, ns), limit=120, what="jobs deleted and attempts stopped", interval=0.5
            )
        return report
    finally:
        await farm.close()
        if op is not None:
            op.stop()
        await client.close()
        await bare.close()
        env.delete_namespace(ns)


async def _idle(farm: SimFarm, client: KubeClient, ns: str) -> bool:
    if any(a.attempts for a in farm.agents.values()):
        return False
    return not (await client.get(job_path(ns), limit=1)).get("items")


def cpu_by_process(env: BenchEnv) -> dict[str, float]:
    """CPU seconds (user + system) of each
    control-plane process and of this benchmark process (which hosts the simulated workers)."""
    import psutil

    out: dict[str, float] = {}
    for name, pid in {**env.cluster.state.pids, "benchmark (simulated workers)": os.getpid()}.items():
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[name] = float(t.user + t.system)
    return out


async def measure(
    env: BenchEnv, report: Report, bare: KubeClient, farm: SimFarm, op: Operator, ns: str,
    p: dict[str, int], variant: str, ceiling: dict[str, float], ready_seconds: float,
) -> None:  # fmt: skip
    workers, slots, jobs = p["workers"], p["slots"], p["jobs"]
    suffix = "" if variant == "shipped" else f"_{variant}"
    watch = JobWatch(bare, ns).start()
    try:
        await watch.synced.wait()
        sampler = ProcessSampler(op.pid, interval=0.25)
        cpu0 = sampler.cpu_seconds()
        others0 = cpu_by_process(env)
        sampler.start()
        spy = PySpy(op.pid, RESULTS_DIR / f"{NAME}-operator-{variant}-{env.root.name}.pyspy.txt").start()
        pprof_path = RESULTS_DIR / f"{NAME}-apiserver-{variant}-{env.root.name}.pprof"
        apiserver_profile = asyncio.create_task(env.apiserver_cpu_profile(15, pprof_path))

        t0 = time.monotonic()
        prefix = f"{variant[0]}-"
        docs = (sim_job(f"{prefix}{i:05d}", 600) for i in range(jobs))
        sent: dict[str, float] = {}
        timeline: list[tuple[float, int, int, int, int]] = []

        async def track() -> None:
            while True:
                timeline.append((
                    round(time.monotonic() - t0, 2), len(sent), watch.count(lambda t: t.first_seen is not None),
                    watch.count(lambda t: t.assigned is not None), watch.count(lambda t: t.running is not None),
                ))  # fmt: skip
                await asyncio.sleep(0.5)

        tracker = asyncio.create_task(track())
        sent = await create_jobs(bare, ns, docs, CREATE_CONCURRENCY, sent)
        created = time.monotonic()
        complete = True
        try:
            await watch.wait(
                lambda: watch.count(lambda t: t.assigned is not None) >= jobs, max(180, jobs / 5), "all assigned"
            )
        except TimeoutError:
            complete = False
        assigned_times = [t.assigned for t in watch.jobs.values() if t.assigned is not None]
        t_end = max(assigned_times) if assigned_times else time.monotonic()
        cpu1 = sampler.cpu_seconds()
        others1 = cpu_by_process(env)
        tracker.cancel()
        try:
            apiserver_top: object = await apiserver_profile
        except Exception as e:  # the figures stand without it
            apiserver_top = {"error": repr(e)}
        profile = spy.stop()
        await sampler.stop()
    finally:
        await watch.stop()

    window = t_end - t0
    rate = len(assigned_times) / window if window > 0 else None
    ratio = (rate / ceiling["patch_rate"]) if rate else None
    lat = [watch.jobs[n].assigned - s for n, s in sent.items() if watch.jobs[n].assigned is not None]
    common = {
        "jobs": jobs, "workers": workers, "slots_per_worker": slots, "create_concurrency": CREATE_CONCURRENCY,
        "operator": variant,
    }  # fmt: skip
    report.add(
        f"scheduling_throughput{suffix}", rate, "jobs/s", simulated=True, target=">= 300",
        note="first create issued -> last job seen with status.worker set"
        + ("" if complete else f"; ONLY {len(assigned_times)} of {jobs} assigned before the timeout"),
        **common,
    )  # fmt: skip
    report.add(f"throughput_vs_ceiling{suffix}", ratio, "ratio", simulated=True, target=">= 0.5", **common)
    report.add(
        f"create_rate_during_run{suffix}", jobs / (created - t0), "jobs/s", simulated=True, **common,
        note="the same creates while the operator and the simulated workers run",
    )  # fmt: skip
    report.add(f"assign_latency_p50{suffix}", percentile(lat, 50), "s", simulated=True, **common)
    report.add(f"assign_latency_p99{suffix}", percentile(lat, 99), "s", simulated=True, **common)
    report.add(
        f"operator_cpu_in_window{suffix}", cpu1 - cpu0, "cpu-s", simulated=True, window_s=round(window, 2), **common
    )  # fmt: skip
    report.details[variant] = {
        "window_seconds": window,
        "create_seconds": created - t0,
        "last_create_to_all_assigned_seconds": t_end - created,
        "pool_ready_seconds": ready_seconds,
        "operator_peak_rss_bytes": sampler.max_rss(),
        "cpu_seconds_in_window_by_process": {
            "operator": round(cpu1 - cpu0, 2),
            **{k: round(others1[k] - others0[k], 2) for k in others1 if k in others0},
        },
        "running_seen": watch.count(lambda t: t.running is not None),
        "profile": profile,
        "apiserver_profile_first_15s": apiserver_top,
        "complete": complete,
        "timeline_t_sent_seen_assigned_running": timeline,
    }


if __name__ == "__main__":
    raise SystemExit(main(NAME, run, workers_needed))
