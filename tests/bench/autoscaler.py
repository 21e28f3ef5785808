"""Figure 5: autoscaler reaction to a burst on an idle pool at zero workers.

The pool: autoscaling enabled, minWorkers 0, maxWorkers 50, maxConcurrentJobs 4, scaleUpStep 50
(one step may reach the recommendation), targetUtilization 100. Once the operator has written
the idle pool's status (desiredWorkers 0), 200 jobs (long nominal duration, so the queue and the
recommendation stay) are created at once. Measured from the first create issued (monotonic clock
of this process; Pods and the pool are seen through watches):

* first worker Pod created (first Pod ADDED event of the pool's workers);
* pool at its recommended size: status.desiredWorkers == ceil(200 / 4) == 50 == number of worker
  Pods, every one Ready (KWOK marks a bound Pod Ready at once);
* and, for information, status.readyWorkers == 50 (each simulated worker's Lease says its
  encoder self-test passed, which the operator requires before it hands the worker a job).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from ffrtmp.kube.client import KubeClient, informer

from .common import (
    VARIANT_ARGS,
    BenchEnv,
    Report,
    create_jobs,
    main,
    pool_manifest,
    pool_path,
    pool_status,
    sim_job,
    variants_from_env,
    wait_until,
)
from .sim import SimFarm

NAME = "autoscaler"
PARAMS = {
    "small": {"jobs": 40, "max_workers": 10, "slots": 4},
    "full": {"jobs": 200, "max_workers": 50, "slots": 4},
}


def workers_needed(scale: str) -> int:
    return int(PARAMS[scale]["max_workers"])


async def watch_pool(client: KubeClient, ns: str, name: str, history: list[tuple[float, int, int, int]]) -> None:
    async for kind, obj in informer(client, pool_path(ns), {"fieldSelector": f"metadata.name={name}"}):
        items = obj["items"] if kind == "SYNC" else [obj]
        for item in items:
            s = item.get("status") or {}
            history.append((
                time.monotonic(), int(s.get("desiredWorkers") or 0), int(s.get("workers") or 0),
                int(s.get("readyWorkers") or 0),
            ))  # fmt: skip


async def run(env: BenchEnv, scale: str) -> Report:
    report = Report(NAME, scale)
    for variant in variants_from_env():
        await measure(env, report, scale, variant)
    return report


async def measure(env: BenchEnv, report: Report, scale: str, variant: str) -> None:
    p = PARAMS[scale]
    jobs, max_workers, slots = p["jobs"], p["max_workers"], p["slots"]
    recommended = -(-jobs // slots)
    suffix = "" if variant == "shipped" else f"_{variant}"
    ns = env.create_namespace("autoscale")
    op = env.start_operator(ns, *VARIANT_ARGS[variant], log_name=f"operator-{variant}")
    client = env.client(max_connections=max_workers + 100)
    bare = env.client(max_connections=60)
    farm = SimFarm(client, ns, env.root / "sim" / ns, progress_interval=3600).start()
    history: list[tuple[float, int, int, int]] = []
    pool_task = asyncio.create_task(watch_pool(bare, ns, "cpu", history))
    try:
        await op.wait_ready()
        await bare.create(pool_path(ns), pool_manifest(
            "cpu", maxConcurrentJobs=slots, minWorkers=0, maxWorkers=max_workers,
            autoscaling={"enabled": True, "scaleUpStep": max_workers, "targetUtilization": 100},
        ))  # fmt: skip

        async def idle_status() -> bool:
            return (await pool_status(bare, ns, "cpu")).get("desiredWorkers") == 0

        await wait_until(idle_status, 60, "the idle pool's status (desiredWorkers 0)")
        await asyncio.sleep(2)
        t0 = time.monotonic()
        await create_jobs(bare, ns, (sim_job(f"a-{i:04d}", 3600) for i in range(jobs)), 50)
        created = time.monotonic()

        def latest() -> tuple[float, int, int, int]:
            return history[-1] if history else (0.0, 0, 0, 0)

        def at_size() -> bool:
            return (
                latest()[1] == recommended
                and len(farm.stats.pods_seen) == recommended
                and len(farm.stats.pods_ready) == recommended
            )

        deadline = time.monotonic() + 300
        while not (at_size() and latest()[3] == recommended) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # three sources (pool watch, Pod watch, farm): polling is simplest
    finally:
        pool_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pool_task
        await farm.close()
        op.stop()
        await client.close()
        await bare.close()
        env.delete_namespace(ns)

    seen = sorted(farm.stats.pods_seen.values())
    ready = sorted(farm.stats.pods_ready.values())
    first_pod = seen[0] - t0 if seen else None
    desired_at = next((t for t, d, _, _ in history if t >= t0 and d == recommended), None)
    size_parts = [desired_at]
    size_parts.append(seen[recommended - 1] if len(seen) >= recommended else None)
    size_parts.append(ready[recommended - 1] if len(ready) >= recommended else None)
    at_size_time = None if None in size_parts else max(t for t in size_parts if t is not None) - t0
    ready_workers_at = next((t for t, _, _, r in history if t >= t0 and r == recommended), None)
    common = {
        "jobs": jobs, "max_workers": max_workers, "slots_per_worker": slots, "scale_up_step": max_workers,
        "recommended_workers": recommended, "operator": variant,
    }  # fmt: skip
    report.add(
        f"first_worker_pod_created{suffix}", first_pod, "s", target="< 2",
        note="first create issued -> first worker Pod seen by a Pod watch", **common,
    )  # fmt: skip
    report.add(
        f"pool_at_recommended_size{suffix}", at_size_time, "s",
        note="desiredWorkers == recommended == worker Pods, all Pods Ready", **common,
    )  # fmt: skip
    report.add(
        f"pool_ready_workers_at_size{suffix}", None if ready_workers_at is None else ready_workers_at - t0, "s",
        simulated=True, note="status.readyWorkers == recommended (simulated workers' Leases)", **common,
    )  # fmt: skip
    report.details[variant] = {
        "create_seconds": created - t0,
        "desired_history": [(round(t - t0, 2), d, w, r) for t, d, w, r in history if t >= t0 - 1][:200],
        "pods_seen": len(seen),
        "pods_ready": len(ready),
    }


if __name__ == "__main__":
    raise SystemExit(main(NAME, run, workers_needed))
