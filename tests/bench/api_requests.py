"""Figure 3: API requests per job over a whole lifecycle, from the API server's own counter.

`apiserver_request_total` is scraped from kube-apiserver's /metrics (admin client certificate)
before the jobs are created and after the last one Succeeded (plus a few seconds for the
operator's background Event posts). The delta is split by (verb, resource, subresource).

What counts as "per job": every request on `transcodejobs` (create, status patches of the
operator and of the worker, fenced-write conflict re-reads, list/watch restarts) and on core
`events` (the operator's job Events). Requests on leases (worker heartbeats: per worker and per
second, not per job), workerpools (pool status) and pods are reported apart, per run. Progress
writes are counted by the simulated attempts themselves (the worker's throttled writes), so
"excluding progress" subtracts exactly them.

Four runs: progress interval 1 s vs off (3600 s, longer than any job), x `--job-events decisions`
(the operator's default) vs `all` (also Started and Completed Events).
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict

from .common import (
    BenchEnv,
    JobWatch,
    Report,
    create_jobs,
    main,
    pool_manifest,
    pool_path,
    request_delta,
    sim_job,
    wait_pool_ready,
)
from .sim import SimFarm

NAME = "api_requests"
PARAMS = {
    "small": {"jobs": 40, "workers": 10, "slots": 4, "duration": 4},
    "full": {"jobs": 200, "workers": 50, "slots": 4, "duration": 4},
}
CONFIGS = [  # (label, progress interval, --job-events)
    ("progress1s_eventsDecisions", 1.0, "decisions"),
    ("progressOff_eventsDecisions", 3600.0, "decisions"),
    ("progress1s_eventsAll", 1.0, "all"),
    ("progressOff_eventsAll", 3600.0, "all"),
]
PER_JOB = {("ffmpeg-rtmp.io", "transcodejobs"), ("", "events")}


def workers_needed(scale: str) -> int:
    return int(PARAMS[scale]["workers"])


async def run(env: BenchEnv, scale: str) -> Report:
    report = Report(NAME, scale)
    wanted = os.environ.get("FFRTMP_BENCH_REQUEST_CONFIGS", "")  # e.g. progressOff_eventsDecisions
    for label, interval, events in CONFIGS:
        if not wanted or label in wanted.split(","):
            await measure(env, report, scale, label, interval, events)
    return report


async def measure(env: BenchEnv, report: Report, scale: str, label: str, interval: float, events: str) -> None:
    p = PARAMS[scale]
    jobs, workers, slots, duration = p["jobs"], p["workers"], p["slots"], p["duration"]
    ns = env.create_namespace("requests")
    op = env.start_operator(ns, "--job-events", events)
    client = env.client(max_connections=workers + 100)
    bare = env.client(max_connections=40)
    farm = SimFarm(client, ns, env.root / "sim" / ns, progress_interval=interval).start()
    watch = JobWatch(bare, ns)
    try:
        await op.wait_ready()
        await bare.create(pool_path(ns), pool_manifest(
            "cpu", maxConcurrentJobs=slots, minWorkers=workers, maxWorkers=workers, autoscaling={"enabled": False},
        ))  # fmt: skip
        await wait_pool_ready(bare, ns, "cpu", workers, limit=240, strict=True)
        await asyncio.sleep(3)
        watch.start()
        await watch.synced.wait()
        before = await env.apiserver_requests()
        await create_jobs(bare, ns, (sim_job(f"r-{i:04d}", duration) for i in range(jobs)), 20)
        await watch.wait(lambda: watch.count(lambda t: t.succeeded is not None) >= jobs, 300, "all Succeeded")
        await asyncio.sleep(4)  # Events are posted in the background; the pool's last status write
        after = await env.apiserver_requests()
    finally:
        await watch.stop()
        await farm.close()
        op.stop()
        await client.close()
        await bare.close()
        env.delete_namespace(ns)

    delta = request_delta(before, after)
    per_job: dict[str, float] = defaultdict(float)
    per_run: dict[str, float] = defaultdict(float)
    total = 0.0
    for (verb, group, resource, sub), n in sorted(delta.items()):
        key = f"{verb} {resource}{'/' + sub if sub else ''}"
        if (group, resource) in PER_JOB:
            per_job[key] += n / jobs
            total += n
        else:
            per_run[f"{key} ({group or 'core'})"] += n
    progress = farm.counters.get("progress_writes", 0)
    common = {
        "jobs": jobs, "workers": workers, "slots_per_worker": slots, "job_nominal_seconds": duration,
        "progress_interval_s": interval, "job_events": events,
    }  # fmt: skip
    report.add(f"requests_per_job_{label}", total / jobs, "requests/job", simulated=True, **common)
    report.add(
        f"requests_per_job_excl_progress_{label}", (total - progress) / jobs, "requests/job",
        simulated=True, target="<= 6", **common,
        note="transcodejobs + core events requests, minus the workers' progress writes",
    )  # fmt: skip
    report.add(
        f"progress_writes_per_job_{label}", progress / jobs, "writes/job", simulated=True, **common,
    )  # fmt: skip
    report.details[label] = {
        "per_job_by_verb_resource": {k: round(v, 3) for k, v in sorted(per_job.items())},
        "per_run_other_resources": dict(sorted(per_run.items())),
        "progress_writes": progress,
        "worker_status_writes": farm.counters.get("worker_status_writes", 0),
        "worker_handbacks": farm.counters.get("handbacks", 0),
        "note": "PATCH + PUT transcodejobs/status minus worker_status_writes = the operator's status writes",
    }


if __name__ == "__main__":
    raise SystemExit(main(NAME, run, workers_needed))
