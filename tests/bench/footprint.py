"""Figure 4: operator memory and CPU with 10,000 TranscodeJobs present and 1,000 workers.

Choice: the pool is PAUSED, so every job stays Queued (reason PoolPaused) while 1,000 simulated
workers (real Lease renewals every 5 s, real per-worker job watches) are alive. The operator
thus holds 10,000 jobs, 1,000 Pods and 1,000 Leases, writes each job's Queued status once, and
keeps deciding passes triggered by ~200 Lease renewals per second.

Jobs are added in steps (1,000 -> 2,500 -> 5,000 -> 10,000). After each step, once our watch
sees every job Queued, the operator is left alone for a settle window: RSS (psutil) is averaged
over the window and CPU use (user+system) measured over it. Peak RSS is the kernel's VmHWM of the
operator process. Linearity: least-squares fit of RSS against jobs over the steps.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

from ffrtmp.kube.client import KubeClient

from .common import (
    RESULTS_DIR,
    VARIANT_ARGS,
    BenchEnv,
    JobWatch,
    ProcessSampler,
    Report,
    create_jobs,
    job_path,
    linear_fit,
    main,
    peak_rss_bytes,
    pool_manifest,
    pool_path,
    sim_job,
    variants_from_env,
    wait_pool_ready,
)
from .sim import SimFarm

NAME = "footprint"
PARAMS: dict[str, dict[str, Any]] = {
    "small": {"workers": 100, "steps": [250, 500, 1000], "settle": 8},
    "full": {"workers": 1000, "steps": [1000, 2500, 5000, 10000], "settle": 15},
}
MB = 1e6
STEP_LIMIT = float(os.environ.get("FFRTMP_BENCH_STEP_LIMIT", "600"))  # seconds for a step's jobs to be Queued
# FFRTMP_BENCH_TRACEMALLOC=1: a diagnostic run (tracemalloc in the operator: slower, bigger; its
# figures are not the benchmark's), with the top allocations per step in the report's details.
TRACE = os.environ.get("FFRTMP_BENCH_TRACEMALLOC") == "1"


def workers_needed(scale: str) -> int:
    return int(PARAMS[scale]["workers"])


async def run(env: BenchEnv, scale: str) -> Report:
    p = PARAMS[scale]
    workers: int = p["workers"]
    report = Report(NAME, scale)
    ns = env.create_namespace("footprint")
    client = env.client(max_connections=workers + 100)
    bare = env.client(max_connections=60)
    farm = SimFarm(client, ns, env.root / "sim" / ns, progress_interval=3600).start()
    try:
        for index, variant in enumerate(variants_from_env()):
            trace = RESULTS_DIR / f"{NAME}-tracemalloc-{variant}-{env.root.name}.json"
            op = env.start_operator(
                ns, *VARIANT_ARGS[variant], trace=trace if TRACE else None, log_name=f"operator-{variant}"
            )
            try:
                await op.wait_ready()
                if index == 0:
                    await bare.create(pool_path(ns), pool_manifest(
                        "cpu", maxConcurrentJobs=4, minWorkers=workers, maxWorkers=workers, paused=True,
                        autoscaling={"enabled": False},
                    ))  # fmt: skip
                started = time.monotonic()
                ready_s, ready = await wait_pool_ready(bare, ns, "cpu", workers, limit=600)
                report.details.setdefault("pool_ready_seconds", {})[variant] = ready_s
                report.details.setdefault("ready_workers_at_start", {})[variant] = ready
                await measure(env, report, bare, op.pid, ns, p, variant, started, trace if TRACE else None)
            except Exception as e:  # keep the figures of the variants measured so far
                report.details.setdefault("errors", {})[variant] = repr(e)
                logging.getLogger(__name__).exception("footprint variant %s failed", variant)
            finally:
                op.stop()
            # Next variant starts from no jobs again: one DELETE of the collection (slow with
            # 10,000 objects on a busy server: a long request timeout), then wait until empty.
            try:
                await bare.request("DELETE", job_path(ns), request_timeout=600)
                for _ in range(600):
                    if not (await bare.get(job_path(ns), limit=1)).get("items"):
                        break
                    await asyncio.sleep(0.5)
            except Exception as e:
                report.details.setdefault("errors", {})[f"{variant}-cleanup"] = repr(e)
                break
        return report
    finally:
        await farm.close()
        await client.close()
        await bare.close()
        env.delete_namespace(ns, wait_seconds=60)


async def settle(sampler: ProcessSampler, seconds: float) -> tuple[float, float]:
    """(mean RSS bytes, CPU cores) over `seconds` of leaving the operator alone."""
    rss: list[int] = []
    c0, t0 = sampler.cpu_seconds(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        rss.append(sampler.rss())
        await asyncio.sleep(0.5)
    return statistics.fmean(rss), (sampler.cpu_seconds() - c0) / (time.monotonic() - t0)


async def measure(
    env: BenchEnv, report: Report, bare: KubeClient, pid: int, ns: str, p: dict[str, Any], variant: str,
    started: float, trace: Path | None = None,
) -> None:  # fmt: skip
    workers: int = p["workers"]
    steps: list[int] = p["steps"]
    window: float = p["settle"]
    suffix = "" if variant == "shipped" else f"_{variant}"
    sampler = ProcessSampler(pid)
    watch = JobWatch(bare, ns).start()
    await watch.synced.wait()
    rss0, cores0 = await settle(sampler, window)
    rows = [{"jobs": 0, "queued": 0, "rss_mb": rss0 / MB, "cpu_cores": cores0, "queue_seconds": 0.0}]
    report.details[variant] = {"steps": rows}  # filled as the steps go: a later failure keeps them
    cpu_start = sampler.cpu_seconds()
    t_first = time.monotonic()
    made = 0
    stuck = ""
    try:
        for n in steps:
            t = time.monotonic()
            prefix = f"{variant[0]}-"
            await create_jobs(bare, ns, (sim_job(f"{prefix}{i:05d}", 600) for i in range(made, n)), 50)
            made = n
            try:
                await watch.wait(
                    lambda n=n: watch.count(lambda j: j.phase == "Queued") >= n, STEP_LIMIT, f"{n} jobs Queued"
                )
            except TimeoutError:
                queued = watch.count(lambda j: j.phase == "Queued")
                stuck = f"only {queued} of {n} jobs Queued {STEP_LIMIT:.0f}s after the step's creates"
                rss, cores = await settle(sampler, window)
                rows.append({"jobs": n, "queued": queued, "rss_mb": rss / MB, "cpu_cores": cores,
                             "queue_seconds": None, "complete": False})  # fmt: skip
                break
            queued_s = time.monotonic() - t
            rss, cores = await settle(sampler, window)
            rows.append({"jobs": n, "queued": n, "rss_mb": rss / MB, "cpu_cores": cores, "queue_seconds": queued_s})
            if trace is not None:
                report.details.setdefault("tracemalloc", {}).setdefault(variant, {})[n] = _read_json(trace)
    finally:
        await watch.stop()
    cpu_jobs = sampler.cpu_seconds() - cpu_start
    elapsed_jobs = time.monotonic() - t_first
    peak = peak_rss_bytes(pid)
    cpu_total = sampler.cpu_seconds()
    done = [r for r in rows[1:] if r.get("complete", True)]
    xs = [float(r["jobs"]) for r in done]
    ys = [float(r["rss_mb"]) for r in done]
    a, b, r2 = linear_fit(xs, ys) if len(done) >= 2 else (0.0, 0.0, float("nan"))
    first, last = (done[0], done[-1]) if done else (rows[0], rows[-1])
    growth_per_job_kb = (
        (last["rss_mb"] - first["rss_mb"]) * 1000 / (last["jobs"] - first["jobs"]) if len(done) >= 2 else None
    )
    report.details[variant]["stuck"] = stuck
    common = {
        "jobs": made, "jobs_queued": rows[-1]["queued"], "workers": workers, "pool": "paused (jobs stay Queued)",
        "operator": variant,
    }  # fmt: skip
    report.add(
        f"operator_peak_rss{suffix}", None if peak is None else peak / MB, "MB", simulated=True, target="< 200",
        note="VmHWM of the operator process over the whole run", **common,
    )  # fmt: skip
    report.add(
        f"operator_rss_at_max_jobs{suffix}", rows[-1]["rss_mb"], "MB", simulated=True, **common,
        note=f"mean RSS over the settle window of the last step{'; ' + stuck if stuck else ''}",
    )  # fmt: skip
    report.add(
        f"operator_cpu_seconds_jobs_phase{suffix}", cpu_jobs, "cpu-s", simulated=True, wall_s=round(elapsed_jobs, 1),
        note="user+system from the first create to the end of the last settle window", **common,
    )  # fmt: skip
    report.add(
        f"operator_cpu_seconds_total{suffix}", cpu_total, "cpu-s", simulated=True,
        wall_s=round(time.monotonic() - started, 1), note="since the operator started", **common,
    )  # fmt: skip
    report.add(f"operator_cpu_cores_idle_jobs{suffix}", rows[-1]["cpu_cores"], "cores", simulated=True, **common,
               note=f"over the {window:.0f}s settle window of the last step")  # fmt: skip
    report.add(f"operator_cpu_cores_no_jobs{suffix}", cores0, "cores", simulated=True, workers=workers,
               operator=variant, note="only the workers' Lease renewals")  # fmt: skip
    report.add(
        f"operator_rss_growth_per_job{suffix}", growth_per_job_kb, "kB/job", simulated=True,
        from_jobs=first["jobs"], to_jobs=last["jobs"], workers=workers, operator=variant,
    )  # fmt: skip
    report.add(
        f"operator_rss_linearity_r2{suffix}", r2, "R^2", simulated=True, workers=workers, operator=variant,
        note=f"fit rss_mb = {a:.1f} + {b * 1000:.2f} kB x jobs over {xs}",
    )  # fmt: skip


def _read_json(path: Path) -> object:
    return json.loads(path.read_text()) if path.exists() else None


if __name__ == "__main__":
    raise SystemExit(main(NAME, run, workers_needed))
