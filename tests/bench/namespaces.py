"""Figure 8: one operator watching many namespaces (the chart's `watchNamespaces` mode), against
the same operator watching one.

The operator is started with N `--namespace` flags; the same simulated farm (W workers x S slots
in all) is spread evenly over the N namespaces (one WorkerPool of W/N workers in each), and so
are the jobs (job i goes to namespace i mod N). Per round, on the same control plane:

* **Throughput**: W x S jobs (every slot) created at once (50 in flight); jobs / (first create
  issued -> last job seen with status.worker set), as figure 1 measures it.
* **Latency**: jobs created at a steady `rate` for `seconds` (each fired at t0 + i/rate), far
  fewer in flight than free slots; submit -> Running as figure 2 measures it (one monotonic clock).
* **Connections held**: the operator's ESTABLISHED TCP connections to kube-apiserver (psutil,
  sampled every 0.5 s: after it is ready with no job, and the most during the round), and the
  watches it opened (kube-apiserver's `apiserver_longrunning_requests{verb="WATCH"}` after it is
  ready minus before it started; nothing else opens or closes a watch in between).
* **Health of the watches**: the operator's `ffrtmp_operator_watch_relists_total` over the round
  and its log lines of broken or failed watches; process start -> /readyz answering 200 (every
  kind listed in every namespace).

Rounds run in the order 1, 100, 100, 1, so that a drift of a shared machine's load weighs on both
settings alike; each N's figure is the median of its rounds, and the ratios of N to 1 namespace
carry the target (throughput >= 0.8 x, submit -> Running p99 <= 1.2 x). Every namespace's farm (a Pod
watch) and the cluster-wide job watch run in every round, so the rounds differ only in the
operator's namespaces. FFRTMP_BENCH_NS_ROUNDS=1,20,50,100 picks other rounds.

The operator's memory: its RSS and peak RSS once it is ready (every namespace listed, no pool yet)
and its peak RSS at the round's end; with FFRTMP_BENCH_MEMSTATS=1 also the census of figure 9 (every
30 s: pymalloc's arenas, live objects by type) in .bench/namespaces-r<round>-ns<N>-memstats.json.
The garbage collector: its pauses per generation and the event loop's lag in the latency window, in
every round; with FFRTMP_BENCH_GC_GARBAGE=1 also, in .bench/namespaces-r<round>-ns<N>-garbage.json,
what it freed by type and the code running when each collection started (who allocates most; the
collector then keeps what it frees until the tally drops it: diagnostics, not a figure).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import statistics
import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ffrtmp.api.constants import LABEL_COMPONENT, WORKER_COMPONENT
from ffrtmp.dev.cluster import free_port
from ffrtmp.kube.client import KubeClient

from .common import (
    RESULTS_DIR,
    BenchEnv,
    JobWatch,
    Operator,
    ProcessSampler,
    Report,
    Sampler,
    create_jobs,
    job_path,
    main,
    peak_rss_bytes,
    percentile,
    pods_path,
    pool_manifest,
    pool_path,
    request_delta,
    sim_job,
    submit_paced,
    wait_until,
)
from .sim import SimFarm
from .write_budget import bucket_bound, histogram_in, histogram_summary, operator_text, scrape_samples

NAME = "namespaces"
PARAMS: dict[str, dict[str, Any]] = {
    "small": {"rounds": (1, 10), "workers": 10, "slots": 4, "rate": 5, "seconds": 6, "duration": 2},
    "full": {"rounds": (1, 100, 100, 1), "workers": 100, "slots": 4, "rate": 5, "seconds": 40, "duration": 3},
}
CREATE_CONCURRENCY = 50
PASS_SECONDS = "ffrtmp_operator_pass_seconds"
GC_PAUSE_SECONDS = "ffrtmp_operator_gc_pause_seconds"
LOOP_LAG_SECONDS = "ffrtmp_operator_event_loop_lag_seconds"
THROUGHPUT_TARGET = 0.8  # N namespaces' jobs/s over 1 namespace's
P99_TARGET = 1.2  # N namespaces' submit -> Running p99 over 1 namespace's
LABEL = "bench.ffmpeg-rtmp.io/figure"
BROKEN_WATCH = re.compile(r"watch of \S+ (broke|failed)")
MEMSTATS = os.environ.get("FFRTMP_BENCH_MEMSTATS") == "1"
GC_GARBAGE = os.environ.get("FFRTMP_BENCH_GC_GARBAGE") == "1"


def workers_needed(scale: str) -> int:
    return int(PARAMS[scale]["workers"])


def rounds_for(scale: str) -> list[int]:
    text = os.environ.get("FFRTMP_BENCH_NS_ROUNDS", "")
    return [int(n) for n in text.split(",") if n.strip()] or list(PARAMS[scale]["rounds"])


def spread(total: int, parts: int) -> list[int]:
    """`total` split into `parts` counts differing by at most one."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


@dataclass
class Round:
    namespaces: int
    ready_seconds: float | None = None
    watches: float | None = None
    connections_idle: int | None = None
    connections_max: int = 0
    ready_workers: int = 0
    throughput: float | None = None
    assigned: int = 0
    assign_p50: float | None = None
    assign_p99: float | None = None
    running: int = 0
    submitted: int = 0
    latency: dict[str, float | None] = field(default_factory=dict)
    # The latency's two halves: submit -> status.worker set (the operator's decision and write) and
    # status.worker set -> Running (the simulated worker's), as the bench's watch saw them.
    to_assigned: dict[str, float | None] = field(default_factory=dict)
    assigned_to_running: dict[str, float | None] = field(default_factory=dict)
    # The three slowest jobs: (name, submit -> worker set, worker set -> Running), seconds.
    slowest: list[tuple[str, float | None, float | None]] = field(default_factory=list)
    passes_per_second: float | None = None  # the operator's decision passes in the latency window
    pass_mean_ms: float | None = None
    # In the latency window: the collector's pauses per generation (count, total ms, the bucket
    # bound of the longest) and the event loop's lag (mean ms, the bucket bound of its p99).
    gc_pauses: dict[str, tuple[float, float, float | None]] = field(default_factory=dict)
    loop_lag_ms: tuple[float | None, float | None] = (None, None)
    relists: float | None = None
    broken_watch_lines: int = 0
    operator_cpu_seconds: float = 0.0  # in the throughput window
    writes_in_window: dict[str, float] = field(default_factory=dict)  # API writes, every client
    operator_peak_rss_mb: float | None = None
    operator_rss_ready_mb: float | None = None  # once ready: every namespace listed and watched, no pool
    operator_peak_rss_ready_mb: float | None = None
    loadavg: list[float] = field(default_factory=list)  # 1/5/15 min, at the start and the end
    seconds: float = 0.0


class Connections(Sampler):
    """The operator's ESTABLISHED TCP connections to kube-apiserver, sampled every 0.5 s."""

    def __init__(self, pid: int, port: int) -> None:
        import psutil

        super().__init__(0.5)
        self.proc = psutil.Process(pid)
        self.port = port
        self.most = 0

    def sample(self) -> int:
        conns = self.proc.net_connections(kind="tcp")
        n = sum(1 for c in conns if c.status == "ESTABLISHED" and c.raddr and c.raddr.port == self.port)
        self.most = max(self.most, n)
        return n


async def open_watches(env: BenchEnv, limit: float = 30) -> float:
    """Watches kube-apiserver is serving, every client together: once two scrapes a second apart
    agree (the control plane's own controllers open theirs for a while after it starts)."""
    from prometheus_client.parser import text_string_to_metric_families

    last = None
    deadline = time.monotonic() + limit
    while True:
        text = (await env._admin_get("/metrics", 30)).decode()
        now = sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "apiserver_longrunning_requests" and s.labels.get("verb") == "WATCH"
        )
        if now == last or time.monotonic() > deadline:
            return now
        last = now
        await asyncio.sleep(1)


async def operator_relists(port: int) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as resp,
        ):
            text = await resp.text()
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "ffrtmp_operator_watch_relists_total"
    )


async def wait_readyz(op: Operator, port: int, limit: float) -> float | None:
    """Seconds from now until the operator's /readyz answers 200 (every kind listed), or None."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - started < limit:
            if not op.alive():
                raise RuntimeError(f"operator exited:\n{op.tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                url = f"http://127.0.0.1:{port}/readyz"
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            await asyncio.sleep(0.2)
    return None


class Bench:
    def __init__(self, env: BenchEnv, scale: str, namespaces: list[str], client: KubeClient, bare: KubeClient) -> None:
        self.env = env
        self.p = PARAMS[scale]
        self.namespaces = namespaces
        self.client = client
        self.bare = bare
        self.farms = [SimFarm(client, ns, env.root / "sim" / ns, progress_interval=3600) for ns in namespaces]
        assert env.config is not None
        self.apiserver_port = urlsplit(env.config.server).port or 443

    @staticmethod
    async def gather_bounded(calls: Sequence[Awaitable[object]], limit: int = 20) -> None:
        sem = asyncio.Semaphore(limit)

        async def one(call: Awaitable[object]) -> None:
            async with sem:
                await call

        await asyncio.gather(*(one(c) for c in calls))

    async def ready_workers(self, namespaces: set[str], pool: str) -> int:
        listed = await self.bare.get(pool_path(""))
        return sum(
            int((p.get("status") or {}).get("readyWorkers") or 0)
            for p in listed.get("items", [])
            if p["metadata"]["namespace"] in namespaces and p["metadata"]["name"] == pool
        )

    async def no_jobs(self) -> bool:
        if any(a.attempts for farm in self.farms for a in farm.agents.values()):
            return False
        return not (await self.bare.get(job_path(""), labelSelector=LABEL, limit=1)).get("items")

    async def delete_jobs(self, namespaces: list[str]) -> None:
        await self.gather_bounded([
            self.bare.request("DELETE", job_path(ns), params={"labelSelector": LABEL}, request_timeout=600)
            for ns in namespaces
        ])  # fmt: skip
        await wait_until(self.no_jobs, limit=180, what="jobs deleted and attempts stopped", interval=0.5)

    async def no_workers(self) -> bool:
        """No worker Pod left in our namespaces (pods_path(""): every namespace)."""
        listed = await self.bare.get(pods_path(""), labelSelector=f"{LABEL_COMPONENT}={WORKER_COMPONENT}")
        ours = set(self.namespaces)
        return not any(pod["metadata"]["namespace"] in ours for pod in listed.get("items", []))

    async def measure(self, index: int, n: int) -> Round:
        p, started = self.p, time.monotonic()
        names = self.namespaces[:n]
        r = Round(n, loadavg=[round(x, 2) for x in os.getloadavg()])
        metrics_port, ready_port = free_port(), free_port()
        flags = [arg for ns in names[1:] for arg in ("--namespace", ns)]
        watches_before = await open_watches(self.env)
        census = RESULTS_DIR / f"namespaces-r{index}-ns{n}-memstats.json" if MEMSTATS else None
        garbage = RESULTS_DIR / f"namespaces-r{index}-ns{n}-garbage.json" if GC_GARBAGE else None
        op = self.env.start_operator(
            names[0], *flags, "--metrics-port", str(metrics_port), "--ready-port", str(ready_port),
            log_name=f"operator-r{index}-ns{n}", census=census, garbage=garbage,
        )  # fmt: skip
        conns = Connections(op.pid, self.apiserver_port).start()
        cpu = ProcessSampler(op.pid)
        pool = f"cpu-r{index}"
        try:
            r.ready_seconds = await wait_readyz(op, ready_port, limit=180)
            await asyncio.sleep(2)  # the last lists' watches open
            r.watches = await open_watches(self.env) - watches_before
            r.connections_idle = conns.sample()
            r.operator_rss_ready_mb = megabytes(cpu.rss())
            r.operator_peak_rss_ready_mb = megabytes(peak_rss_bytes(op.pid))

            per_ns = spread(p["workers"], n)
            await self.gather_bounded([
                self.bare.create(pool_path(ns), pool_manifest(
                    pool, maxConcurrentJobs=p["slots"], minWorkers=k, maxWorkers=k, autoscaling={"enabled": False},
                )) for ns, k in zip(names, per_ns, strict=True) if k
            ])  # fmt: skip
            deadline = time.monotonic() + max(180, p["workers"])
            while time.monotonic() < deadline:
                r.ready_workers = await self.ready_workers(set(names), pool)
                if r.ready_workers >= p["workers"]:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(3)  # the operator's first passes and the pools' status settle

            cpu0, requests0 = cpu.cpu_seconds(), await self.env.apiserver_requests()
            await self.throughput(r, index, names)
            r.operator_cpu_seconds = cpu.cpu_seconds() - cpu0
            r.writes_in_window = {
                f"{verb} {resource}" + (f"/{sub}" if sub else ""): n
                for (verb, _, resource, sub), n in request_delta(requests0, await self.env.apiserver_requests()).items()
                if verb in ("POST", "PATCH", "PUT", "DELETE")
            }
            await self.delete_jobs(names)
            await self.latency(r, index, names, metrics_port)
            await self.delete_jobs(names)
            r.relists = await operator_relists(metrics_port)  # since the operator started
        finally:
            await conns.stop()
            r.connections_max = conns.most
            r.operator_peak_rss_mb = megabytes(peak_rss_bytes(op.pid))
            op.stop()
            r.broken_watch_lines = len(BROKEN_WATCH.findall(op.log.read_text(errors="replace")))
            await self.gather_bounded([self.bare.delete_ignore_missing(pool_path(ns, pool)) for ns in names])
            await wait_until(self.no_workers, limit=180, what="worker Pods gone", interval=0.5)
        r.loadavg.extend(round(x, 2) for x in os.getloadavg())
        r.seconds = time.monotonic() - started
        return r

    async def throughput(self, r: Round, index: int, names: list[str]) -> None:
        jobs = self.p["workers"] * self.p["slots"]
        watch = JobWatch(self.bare, "").start()
        try:
            await watch.synced.wait()
            docs = []
            for i in range(jobs):
                doc = sim_job(f"t{index}-{i:05d}", 600)
                doc["metadata"].update(namespace=names[i % len(names)], labels={LABEL: "8"})
                docs.append(doc)
            t0 = time.monotonic()
            sent = await create_jobs(self.bare, names[0], docs, CREATE_CONCURRENCY)
            with contextlib.suppress(TimeoutError):
                await watch.wait(
                    lambda: watch.count(lambda t: t.assigned is not None) >= jobs, max(180, jobs / 5), "all assigned"
                )
        finally:
            await watch.stop()
        ours = {n: watch.jobs[n] for n in sent if n in watch.jobs}
        assigned = {n: t.assigned for n, t in ours.items() if t.assigned is not None}
        r.assigned = len(assigned)
        if assigned:
            window = max(assigned.values()) - t0
            r.throughput = len(assigned) / window if window > 0 else None
            lat = [a - sent[n] for n, a in assigned.items()]
            r.assign_p50, r.assign_p99 = percentile(lat, 50), percentile(lat, 99)

    async def latency(self, r: Round, index: int, names: list[str], metrics_port: int) -> None:
        rate, seconds, duration = self.p["rate"], self.p["seconds"], self.p["duration"]
        total = rate * seconds
        watch = JobWatch(self.bare, "").start()
        sent: dict[str, float] = {}
        errors: list[str] = []
        try:
            await watch.synced.wait()

            async def create(i: int) -> None:
                name = f"l{index}-{i:05d}"
                doc = sim_job(name, duration)
                doc["metadata"]["labels"] = {LABEL: "8"}
                sent[name] = time.monotonic()
                try:
                    await self.bare.create(job_path(names[i % len(names)]), doc)
                except Exception as e:  # counted, not retried: a retry would skew the rate
                    errors.append(f"{name}: {e}")

            # One scrape each side, parsed only once every job is Running: this process also runs the
            # simulated workers and the watch that times the jobs, and parsing a scrape of 100
            # namespaces' series (360 kB) here used to hold them, so the last jobs looked late.
            before, t0 = await operator_text(metrics_port), time.monotonic()
            await submit_paced(total, rate, create)
            after, elapsed = await operator_text(metrics_port), time.monotonic() - t0
            expected = total - len(errors)
            with contextlib.suppress(TimeoutError):
                await watch.wait(lambda: watch.count(lambda t: t.running is not None) >= expected, 120, "all Running")
        finally:
            await watch.stop()
        first, last = scrape_samples(before), scrape_samples(after)
        passes0, passes1 = histogram_in(first, PASS_SECONDS), histogram_in(last, PASS_SECONDS)
        r.gc_pauses = {
            g: pauses_between(
                histogram_in(first, GC_PAUSE_SECONDS, {"generation": g}),
                histogram_in(last, GC_PAUSE_SECONDS, {"generation": g}),
            )
            for g in "012"
        }
        lag_mean, lag_p99 = histogram_summary(
            histogram_in(first, LOOP_LAG_SECONDS), histogram_in(last, LOOP_LAG_SECONDS)
        )
        r.loop_lag_ms = (_ms(lag_mean), _ms(lag_p99))
        running = {n: watch.jobs[n].running for n in sent if n in watch.jobs}
        lat = [t - sent[n] for n, t in running.items() if t is not None]
        r.submitted, r.running = total - len(errors), len(lat)
        r.latency = {f"p{q}": percentile(lat, q) for q in (50, 95, 99)} | {"max": max(lat) if lat else None}
        times = {n: watch.jobs[n] for n in sent if n in watch.jobs}
        decided = [t.assigned - sent[n] for n, t in times.items() if t.assigned is not None]
        started = [t.running - t.assigned for t in times.values() if t.running is not None and t.assigned is not None]
        r.to_assigned = {f"p{q}": percentile(decided, q) for q in (50, 99)}
        by_latency = sorted(((t - sent[n], n) for n, t in running.items() if t is not None), reverse=True)
        r.slowest = [
            (n, _round(t.assigned - sent[n]) if t.assigned is not None else None,
             _round(t.running - t.assigned) if t.assigned is not None and t.running is not None else None)
            for _, n in by_latency[:3] for t in [times[n]]
        ]  # fmt: skip
        r.assigned_to_running = {f"p{q}": percentile(started, q) for q in (50, 99)}
        count = passes1.get("count", 0) - passes0.get("count", 0)
        if count > 0:
            r.passes_per_second = count / elapsed
            r.pass_mean_ms = 1000 * (passes1.get("sum", 0) - passes0.get("sum", 0)) / count


def pauses_between(before: dict[str, float], after: dict[str, float]) -> tuple[float, float, float | None]:
    """(collections, total ms, the upper bound of the bucket of the longest) between two scrapes."""
    count = after.get("count", 0) - before.get("count", 0)
    total_ms = 1000 * (after.get("sum", 0) - before.get("sum", 0))
    return count, round(total_ms, 2), _ms(bucket_bound(before, after, 1.0))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 2)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(report: Report, rounds: list[Round], p: dict[str, Any]) -> None:
    common = {
        "workers": p["workers"], "slots_per_worker": p["slots"], "jobs_throughput": p["workers"] * p["slots"],
        "rate_per_s": p["rate"], "seconds": p["seconds"], "job_nominal_seconds": p["duration"],
    }  # fmt: skip
    by_n: dict[int, list[Round]] = {}
    for r in rounds:
        by_n.setdefault(r.namespaces, []).append(r)
    medians: dict[int, dict[str, float | None]] = {}
    for n, rs in sorted(by_n.items()):
        runs = len(rs)
        jobs = p["workers"] * p["slots"]
        short = [f"ONLY {r.assigned} of {jobs} assigned" for r in rs if r.assigned < jobs]
        late = [f"ONLY {r.running} of {r.submitted} Running" for r in rs if r.running < r.submitted]
        m = medians[n] = {
            "throughput": _median([r.throughput for r in rs]),
            "p50": _median([r.latency.get("p50") for r in rs]),
            "p99": _median([r.latency.get("p99") for r in rs]),
        }
        per = {"namespaces": n, "runs": runs, **common}
        report.add(f"scheduling_throughput_ns{n}", m["throughput"], "jobs/s", simulated=True, note="; ".join(short),
                   values=[_round(r.throughput) for r in rs], **per)  # fmt: skip
        report.add(f"submit_to_running_p50_ns{n}", m["p50"], "s", simulated=True,
                   values=[_round(r.latency.get("p50")) for r in rs], **per)  # fmt: skip
        report.add(f"submit_to_running_p99_ns{n}", m["p99"], "s", simulated=True, note="; ".join(late),
                   values=[_round(r.latency.get("p99")) for r in rs], **per)  # fmt: skip
        for half, what in (("to_assigned", "submit -> status.worker set"), ("assigned_to_running", "-> Running")):
            report.add(f"{half}_p99_ns{n}", _median([getattr(r, half).get("p99") for r in rs]), "s", simulated=True,
                       note=what, values=[_round(getattr(r, half).get("p99")) for r in rs], **per)  # fmt: skip
        report.add(f"operator_passes_ns{n}", _median([r.passes_per_second for r in rs]), "passes/s",
                   note="decision passes in the latency window; mean ms: "
                        + ", ".join(f"{r.pass_mean_ms:.1f}" for r in rs if r.pass_mean_ms is not None),
                   values=[_round(r.passes_per_second) for r in rs], namespaces=n, runs=runs)  # fmt: skip
        report.add(f"operator_gc_pause_ms_ns{n}", _median([sum(t for _, t, _ in r.gc_pauses.values()) for r in rs]),
                   "ms", simulated=True,
                   note="the collector's pauses in the latency window, per round and generation "
                        "(collections, ms, longest <= ms): "
                        + "; ".join(str({g: v for g, v in r.gc_pauses.items() if v[0]}) for r in rs),
                   namespaces=n, runs=runs)  # fmt: skip
        report.add(f"operator_loop_lag_p99_ns{n}", _median([r.loop_lag_ms[1] for r in rs]), "ms", simulated=True,
                   note="bucket bound of the event loop lag's p99 in the latency window; mean ms: "
                        + ", ".join(f"{r.loop_lag_ms[0]}" for r in rs),
                   values=[r.loop_lag_ms[1] for r in rs], namespaces=n, runs=runs)  # fmt: skip
        report.add(f"operator_connections_idle_ns{n}", _median([r.connections_idle for r in rs]), "connections",
                   note="ESTABLISHED TCP to kube-apiserver, ready, no job", values=[r.connections_idle for r in rs],
                   namespaces=n, runs=runs)  # fmt: skip
        report.add(f"operator_connections_max_ns{n}", max(r.connections_max for r in rs), "connections",
                   simulated=True, values=[r.connections_max for r in rs], namespaces=n, runs=runs)  # fmt: skip
        report.add(f"operator_watches_ns{n}", _median([r.watches for r in rs]), "watches",
                   values=[r.watches for r in rs], namespaces=n, runs=runs)  # fmt: skip
        report.add(f"operator_ready_ns{n}", _median([r.ready_seconds for r in rs]), "s",
                   note="process start -> /readyz 200 (every kind listed in every namespace)",
                   values=[_round(r.ready_seconds) for r in rs], namespaces=n, runs=runs)  # fmt: skip
        report.add(f"operator_peak_rss_ns{n}", _median([r.operator_peak_rss_mb for r in rs]), "MB", simulated=True,
                   note="peak once ready, no pool yet: "
                        + ", ".join(f"{r.operator_peak_rss_ready_mb} MB" for r in rs)
                        + "; RSS then: " + ", ".join(f"{r.operator_rss_ready_mb} MB" for r in rs),
                   values=[r.operator_peak_rss_mb for r in rs], namespaces=n, runs=runs)  # fmt: skip
        report.add(f"watch_relists_ns{n}", sum(r.relists or 0 for r in rs), "relists", simulated=True,
                   note=f"{sum(r.broken_watch_lines for r in rs)} broken/failed watch log lines",
                   namespaces=n, runs=runs)  # fmt: skip
    base = medians.get(1)
    for n, m in sorted(medians.items()):
        if n == 1 or base is None:
            continue
        report.add(f"throughput_ns{n}_vs_ns1", _ratio(m["throughput"], base["throughput"]), "ratio",
                   simulated=True, target=f">= {THROUGHPUT_TARGET}", namespaces=n, **common)  # fmt: skip
        report.add(f"submit_to_running_p99_ns{n}_vs_ns1", _ratio(m["p99"], base["p99"]), "ratio",
                   simulated=True, target=f"<= {P99_TARGET}", namespaces=n, **common)  # fmt: skip


def megabytes(size: int | None) -> float | None:
    return None if size is None else round(size / 2**20, 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


async def run(env: BenchEnv, scale: str) -> Report:
    report = Report(NAME, scale)
    p = PARAMS[scale]
    plan = rounds_for(scale)
    prefix = f"ns8-{uuid.uuid4().hex[:4]}"
    names = [f"{prefix}-{i:03d}" for i in range(max(plan))]
    client = env.client(max_connections=p["workers"] + 100)
    bare = env.client(max_connections=CREATE_CONCURRENCY + 10)
    bench: Bench | None = None
    try:
        started = time.monotonic()
        for ns in names:  # namespaces are cluster-scoped: no namespace in the path
            await bare.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

        async def accounts_exist() -> bool:
            listed = await bare.get("/api/v1/serviceaccounts", fieldSelector="metadata.name=default")
            return len({a["metadata"]["namespace"] for a in listed["items"]} & set(names)) == len(names)

        await wait_until(accounts_exist, limit=120, what="the default ServiceAccount in every namespace")
        bench = Bench(env, scale, names, client, bare)
        for farm in bench.farms:
            farm.start()
        report.details["setup_seconds"] = round(time.monotonic() - started, 1)
        rounds = []
        for index, n in enumerate(plan):
            r = await bench.measure(index, n)
            rounds.append(r)
            print(f"  round {index}: {n} namespaces: {r}", flush=True)
        report.details["rounds"] = [vars(r) for r in rounds]
        summarize(report, rounds, p)
        return report
    finally:
        if bench is not None:
            await asyncio.gather(*(farm.close() for farm in bench.farms))
        await client.close()
        await Bench.gather_bounded([bare.delete_ignore_missing(f"/api/v1/namespaces/{ns}") for ns in names])
        await bare.close()


if __name__ == "__main__":
    raise SystemExit(main(NAME, run, workers_needed))
