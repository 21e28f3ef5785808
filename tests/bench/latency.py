"""Figure 2: submit-to-Running latency at a steady submission rate with free slots.

Jobs are created at a steady 20 jobs/s for 60 s (each create fired at t0 + i/rate, not waiting
for the previous one) while simulated workers keep far more slots free than the jobs in flight
need (nominal duration x rate < workers x slots). Latency = the monotonic time our watch of the
namespace first sees phase Running minus the monotonic time the create request was issued (one
clock, CLOCK_MONOTONIC of the benchmark process).
"""

from __future__ import annotations

import asyncio
import time

from .common import (
    VARIANT_ARGS,
    BenchEnv,
    JobWatch,
    Report,
    job_path,
    main,
    percentile,
    pool_manifest,
    pool_path,
    sim_job,
    submit_paced,
    variants_from_env,
    wait_pool_ready,
)
from .sim import SimFarm

NAME = "latency"
PARAMS = {
    "small": {"rate": 10, "seconds": 15, "workers": 20, "slots": 4, "duration": 3},
    "full": {"rate": 20, "seconds": 60, "workers": 100, "slots": 4, "duration": 5},
}


def workers_needed(scale: str) -> int:
    return int(PARAMS[scale]["workers"])


async def run(env: BenchEnv, scale: str) -> Report:
    report = Report(NAME, scale)
    for variant in variants_from_env():
        await measure(env, report, scale, variant)
    return report


async def measure(env: BenchEnv, report: Report, scale: str, variant: str) -> None:
    p = PARAMS[scale]
    rate, seconds, workers, slots, duration = p["rate"], p["seconds"], p["workers"], p["slots"], p["duration"]
    total = rate * seconds
    suffix = "" if variant == "shipped" else f"_{variant}"
    ns = env.create_namespace("latency")
    op = env.start_operator(ns, *VARIANT_ARGS[variant], log_name=f"operator-{variant}")
    client = env.client(max_connections=workers + 100)
    bare = env.client(max_connections=100)
    farm = SimFarm(client, ns, env.root / "sim" / ns).start()  # worker default progress interval (5 s)
    watch = JobWatch(bare, ns)
    try:
        await op.wait_ready()
        await bare.create(pool_path(ns), pool_manifest(
            "cpu", maxConcurrentJobs=slots, minWorkers=workers, maxWorkers=workers, autoscaling={"enabled": False},
        ))  # fmt: skip
        _, ready = await wait_pool_ready(bare, ns, "cpu", workers, limit=max(240, workers))
        report.details.setdefault("ready_workers_at_start", {})[variant] = ready
        await asyncio.sleep(3)
        watch.start()
        await watch.synced.wait()

        sent: dict[str, float] = {}
        errors: list[str] = []

        async def create(i: int) -> None:
            name = f"l-{i:05d}"
            sent[name] = time.monotonic()
            try:
                await bare.create(job_path(ns), sim_job(name, duration))
            except Exception as e:  # a failed create is counted, not retried: it would skew the rate
                errors.append(f"{name}: {e}")

        submit_seconds = await submit_paced(total, rate, create)
        expected = total - len(errors)
        complete = True
        try:
            await watch.wait(lambda: watch.count(lambda t: t.running is not None) >= expected, 120, "all Running")
        except TimeoutError:
            complete = False
        lat = [watch.jobs[n].running - s for n, s in sent.items() if watch.jobs[n].running is not None]
        assign = [watch.jobs[n].assigned - s for n, s in sent.items() if watch.jobs[n].assigned is not None]
        seen = [watch.jobs[n].first_seen - s for n, s in sent.items() if watch.jobs[n].first_seen is not None]
        common = {
            "rate_per_s": rate, "seconds": seconds, "jobs": total, "workers": workers, "slots_per_worker": slots,
            "job_nominal_seconds": duration, "clock": "time.monotonic (one process)", "operator": variant,
        }  # fmt: skip
        note = "" if complete else f"ONLY {len(lat)} of {expected} reached Running within 120 s after the last create"
        for q in (50, 95, 99):
            report.add(
                f"submit_to_running_p{q}{suffix}", percentile(lat, q), "s", simulated=True,
                target="< 2" if q == 99 else None, note=note, **common,
            )  # fmt: skip
        report.add(f"submit_to_running_max{suffix}", max(lat) if lat else None, "s", simulated=True, **common)
        report.add(f"submit_to_assigned_p50{suffix}", percentile(assign, 50), "s", simulated=True, **common)
        report.add(f"submit_to_assigned_p99{suffix}", percentile(assign, 99), "s", simulated=True, **common)
        report.details[variant] = {
            "submit_seconds": submit_seconds,
            "achieved_submit_rate": total / submit_seconds,
            "create_errors": errors[:20],
            "create_error_count": len(errors),
            "submit_to_watch_seen_p50": percentile(seen, 50),
            "submit_to_watch_seen_p99": percentile(seen, 99),
            "running": len(lat),
            "complete": complete,
        }
    finally:
        await watch.stop()
        await farm.close()
        op.stop()
        await client.close()
        await bare.close()
        env.delete_namespace(ns)


if __name__ == "__main__":
    raise SystemExit(main(NAME, run, workers_needed))
