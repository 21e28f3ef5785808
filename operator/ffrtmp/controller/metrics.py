"""Operator metrics on :9090, computed from the store (the runbook's names where they exist).

Two kinds. Job and pool metrics (`ffrtmp_jobs`, `ffrtmp_jobs_finished_total`, `ffrtmp_pool_*`, ...)
describe the cluster: only the leader counts and exports them, so that a Prometheus `sum()` over all
replicas is right, and a replica that loses the lead stops exporting them at once (they are cleared,
and a scrape that comes before the clearing finds them hidden). Process metrics (leader, loop lag,
watch relists, list and reconcile errors) describe each replica and are always exported.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ffrtmp.controller.chunked import task_of
from ffrtmp.controller.state import Store
from ffrtmp.looplag import LoopLag

SLA_WINDOW_SECONDS = 3600.0
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
CHUNK_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
QUEUE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)
PHASES = ("Pending", "Queued", "Scheduled", "Running", "Succeeded", "Failed", "Cancelled")


class _WhileLeading(Collector):
    """Exports the leader-only registry while `leading()` holds."""

    def __init__(self, inner: CollectorRegistry, leading: Callable[[], bool]) -> None:
        self.inner = inner
        self.leading = leading

    def collect(self) -> Iterable[Metric]:
        if self.leading():
            yield from self.inner.collect()


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, leading: Callable[[], bool] = lambda: True) -> None:
        self.registry = registry or CollectorRegistry()
        self.job_registry = CollectorRegistry()
        self.leading = leading
        self.registry.register(_WhileLeading(self.job_registry, self._is_leading))
        r = self.job_registry
        self.jobs = Gauge("ffrtmp_jobs", "TranscodeJobs by phase.", ["namespace", "pool", "phase"], registry=r)
        self.queue_depth = Gauge("ffrtmp_queue_depth", "Jobs waiting for a slot.", ["namespace", "pool"], registry=r)
        self.queue_seconds = Histogram(
            "ffrtmp_job_queue_seconds",
            "Submit to Running.",
            ["namespace", "pool"],
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "job_duration_seconds",
            "Running to finished.",
            ["namespace", "pool"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.finished = PromCounter(
            "ffrtmp_jobs_finished_total", "Jobs that finished.", ["namespace", "pool", "phase"], registry=r
        )
        self.failed = PromCounter(
            "ffrtmp_jobs_failed_total", "Failed jobs by reason.", ["namespace", "pool", "reason"], registry=r
        )
        self.sla = Gauge(
            "ffrtmp_worker_sla_compliance_rate",
            "Percent of jobs with slaSeconds that finished within it (last hour).",
            ["namespace", "pool"],
            registry=r,
        )
        self.pool_workers = Gauge("ffrtmp_pool_workers", "Worker Pods.", ["namespace", "pool"], registry=r)
        self.pool_ready = Gauge("ffrtmp_pool_ready_workers", "Ready workers.", ["namespace", "pool"], registry=r)
        self.pool_desired = Gauge("ffrtmp_pool_desired_workers", "Desired workers.", ["namespace", "pool"], registry=r)
        self.pool_busy = Gauge("ffrtmp_pool_busy_slots", "Busy slots.", ["namespace", "pool"], registry=r)
        self.pool_free = Gauge("ffrtmp_pool_free_slots", "Free slots.", ["namespace", "pool"], registry=r)
        self.chunk_seconds = Histogram(
            "ffrtmp_chunk_seconds",
            "Start to finish of a chunked job's tasks that succeeded (status times, whole seconds), by task: "
            "plan (the input probe), video (one chunk), audio (the whole input's audio), stitch.",
            ["task"],
            buckets=CHUNK_BUCKETS,
            registry=r,
        )
        self.chunks_in_flight = Gauge(
            "ffrtmp_chunks_in_flight",
            "Chunks (video tasks of chunked jobs) assigned to a worker or running.",
            ["namespace", "pool"],
            registry=r,
        )
        self._job_metrics: list[Gauge | Histogram | PromCounter] = [
            self.jobs, self.queue_depth, self.queue_seconds, self.duration, self.finished, self.failed, self.sla,
            self.pool_workers, self.pool_ready, self.pool_desired, self.pool_busy, self.pool_free,
            self.chunk_seconds, self.chunks_in_flight,
        ]  # fmt: skip
        r = self.registry
        self.reconcile_errors = PromCounter(
            "ffrtmp_reconcile_errors_total", "Failed API writes and passes.", ["kind"], registry=r
        )
        self.watch_relists = PromCounter(
            "ffrtmp_operator_watch_relists_total",
            "Watches that had to list again (410 Gone, or no resourceVersion to resume from).",
            ["kind"],
            registry=r,
        )
        self.list_errors = PromCounter(
            "ffrtmp_operator_list_errors_total",
            "Lists of a watched kind the API server refused, by HTTP status (403: RBAC, 404: no CRD).",
            ["kind", "code"],
            registry=r,
        )
        self.leader = Gauge("ffrtmp_operator_leader", "1 while this replica leads.", registry=r)
        self.leader.set_function(lambda: 1.0 if self._is_leading() else 0.0)
        self.worker_lease_age = Gauge(
            "ffrtmp_operator_worker_lease_age_seconds",
            "Seconds since the freshest renewal of each worker's Lease that the operator has seen.",
            ["namespace", "worker"],
            registry=self.job_registry,
        )
        self._job_metrics.append(self.worker_lease_age)
        self.lease_confirmations = PromCounter(
            "ffrtmp_operator_lease_confirmations_total",
            "Leases that looked expired and were read again before a worker was declared lost, by what "
            "the read showed: expired (the worker is lost) or renewed (the watch had not delivered it yet).",
            ["outcome"],
            registry=r,
        )
        self.fenced_writes = PromCounter(
            "ffrtmp_operator_fenced_writes_total",
            "Writes (worker Pod creates and deletes, pool status) a replica decided while leading and dropped "
            "unsent because its lead had ended by the time it would send them (e.g. it was stopped in between).",
            ["kind"],
            registry=r,
        )
        self.events = PromCounter(
            "ffrtmp_events_total",
            "Kubernetes Events the operator had to post, by outcome: written, sampled (Normal, over --event-rate: "
            "not written, counted in its namespace's next EventsSampled Event) or failed (the API refused it).",
            ["type", "reason", "outcome"],
            registry=r,
        )
        self.loop_lag = LoopLag(r, "ffrtmp_operator")
        self.pass_seconds = Histogram(
            "ffrtmp_operator_pass_seconds",
            "One decision pass of the leader: decide every job and the pools due, and send the job writes.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        # The write budget (cadence.py): leader-only, like the job series.
        jr = self.job_registry
        self.write_budget = Gauge(
            "ffrtmp_write_budget_writes_per_second", "The farm's steady API write budget (--write-budget).", registry=jr
        )
        self.expected_writes = Gauge(
            "ffrtmp_expected_writes_per_second",
            "Steady API writes/s the published cadence makes: worker Lease renewals + progress reports + Events.",
            registry=jr,
        )
        self.write_budget_exceeded = Gauge(
            "ffrtmp_write_budget_exceeded",
            "1 while the farm needs more writes than the budget even at the longest periods (see RUNBOOK).",
            registry=jr,
        )
        self.cadence_seconds = Gauge(
            "ffrtmp_cadence_seconds",
            "The periods the operator publishes to workers: Lease renewal, Lease duration, progress.",
            ["period"],
            registry=jr,
        )
        self.notification_deliveries = PromCounter(
            "ffrtmp_notification_deliveries_total",
            "Webhook delivery attempts (the leader's), by result: delivered (2xx), failed (another answer, a "
            "timeout, no connection, an unreadable Secret: retried), refused (the notification egress policy) "
            "and given_up (events dropped: deadline passed, refused, too many pending).",
            ["result"],
            registry=r,
        )
        self.notification_seconds = Histogram(
            "ffrtmp_notification_delivery_seconds",
            "One webhook delivery attempt, from reading its Secrets to the answer (or the timeout).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.notifications_pending = Gauge(
            "ffrtmp_notifications_pending",
            "Webhook events recorded in jobs' status.notifications and not delivered yet.",
            registry=jr,
        )
        self._job_metrics.append(self.notifications_pending)
        self._sla_window: dict[tuple[str, str], deque[tuple[float, bool]]] = defaultdict(deque)

    def _is_leading(self) -> bool:
        return self.leading()

    def drop_job_metrics(self) -> None:
        """Forget every job and pool series (on losing the lead): a standby exports none, and its
        counters start again from zero if it leads again (Prometheus takes that as a counter reset)."""
        for metric in self._job_metrics:
            metric.clear()
        self._sla_window.clear()

    def job_finished(self, namespace: str, pool: str, phase: str, reason: str | None, run_seconds: float | None,
                     total_seconds: float | None, sla_seconds: int | None, now: float) -> None:  # fmt: skip
        self.finished.labels(namespace, pool, phase).inc()
        if phase == "Failed":
            self.failed.labels(namespace, pool, reason or "Unknown").inc()
        if run_seconds is not None and phase == "Succeeded":
            self.duration.labels(namespace, pool).observe(run_seconds)
        if sla_seconds is not None and total_seconds is not None:
            window = self._sla_window[(namespace, pool)]
            window.append((now, phase == "Succeeded" and total_seconds <= sla_seconds))

    def chunk_task_finished(self, part: str, run_seconds: float) -> None:
        """A chunked job's child (part label `part`) succeeded after `run_seconds`."""
        self.chunk_seconds.labels(task_of(part)).observe(run_seconds)

    def refresh(self, store: Store, waiting: dict[str, int], now: float) -> None:
        counts: Counter[tuple[str, str, str]] = Counter()
        in_flight: Counter[tuple[str, str]] = Counter()
        for job in store.jobs.values():
            counts[(job.namespace, job.pool or "", job.phase or "Pending")] += 1
            if job.part is not None and job.active and task_of(job.part) == "video":
                in_flight[(job.namespace, job.pool or "")] += 1
        self.jobs.clear()
        for (ns, pool, phase), n in counts.items():
            self.jobs.labels(ns, pool, phase).set(n)
        self.chunks_in_flight.clear()
        for (ns, pool), n in in_flight.items():
            self.chunks_in_flight.labels(ns, pool).set(n)
        self.queue_depth.clear()
        for key, n in waiting.items():
            ns, _, pool = key.partition("/")
            self.queue_depth.labels(ns, pool).set(n)
        for (ns, pool), window in self._sla_window.items():
            while window and now - window[0][0] > SLA_WINDOW_SECONDS:
                window.popleft()
            if window:
                self.sla.labels(ns, pool).set(100.0 * sum(ok for _, ok in window) / len(window))
        self.worker_lease_age.clear()
        for lease in store.leases.values():
            if lease.renew_time is not None:
                ns, _, worker = lease.key.partition("/")
                self.worker_lease_age.labels(ns, worker).set(round(max(now - lease.renew_time, 0.0), 3))
        self.notifications_pending.set(
            sum(len(r.pending or []) for job in store.jobs.values() for r in job.notification_records)
        )
        for p in store.pools.values():
            s = p.status
            self.pool_workers.labels(p.namespace, p.name).set(s.get("workers") or 0)
            self.pool_ready.labels(p.namespace, p.name).set(s.get("readyWorkers") or 0)
            self.pool_desired.labels(p.namespace, p.name).set(s.get("desiredWorkers") or 0)
            self.pool_busy.labels(p.namespace, p.name).set(s.get("busySlots") or 0)
            self.pool_free.labels(p.namespace, p.name).set(s.get("freeSlots") or 0)
