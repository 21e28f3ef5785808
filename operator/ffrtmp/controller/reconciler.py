"""The operator's single decision loop: apply what the pure functions decide, fenced and in bulk.

Watch events (from `controller.watches`) only update the store and wake the loop. Each pass decides
everything due now from the store and applies it. Only the leader decides; a standby replica
keeps its store warm so that it can take over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import signal
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp

from ffrtmp.api.cadence import ANNOTATION_CADENCE, Cadence
from ffrtmp.api.constants import GROUP, JOB_PLURAL, LABEL_POOL, LEASE_PREFIX, POOL_PLURAL, VERSION
from ffrtmp.conditions import now_iso
from ffrtmp.controller.cadence import current_cadence, decide_cadence, lease_annotation_writes, published_annotation
from ffrtmp.controller.chunked import CreateJob
from ffrtmp.controller.events import SUMMARY_REASON, EventGate, ObjectRef
from ffrtmp.controller.leader import LeaderElector
from ffrtmp.controller.lifecycle import (
    JobAction,
    JobEvent,
    PatchStatus,
    decide_jobs,
    lease_fresh,
    running_by_worker,
)
from ffrtmp.controller.metrics import OperatorMetrics
from ffrtmp.controller.notifications import decide_notifications, notify_state
from ffrtmp.controller.notifier import Notifier
from ffrtmp.controller.pods import build_worker_pod
from ffrtmp.controller.pools import PoolMemory, decide_pool
from ffrtmp.controller.settings import OperatorSettings
from ffrtmp.controller.state import JobView, Store, WorkerPod, key_of, store_key
from ffrtmp.controller.watches import WATCHED, feed, not_ready
from ffrtmp.kube.client import ApiError, KubeClient, resource_path
from ffrtmp.redact import redact

log = logging.getLogger(__name__)
Obj = dict[str, Any]
# Re-check the API server before deciding when nothing confirmed it for this long; a silence of
# API_GAP_SECONDS or more, a failed check or a stalled one is an outage, after which worker Leases get
# a fresh period.
API_CHECK_SECONDS = 2.0
API_GAP_SECONDS = 5.0
# A readiness check (a few milliseconds when healthy) answered this late means a stalled API server.
API_STALL_SECONDS = 1.0
FULL_POOL_PASS_SECONDS = 1.0

# Lease cadence annotations written each second, as a share of the write budget (a new cadence
# reaches a thousand workers over some seconds, not in one burst).
CADENCE_ROLLOUT_SHARE = 0.25
# Test hook (never set in production): "1" makes the process SIGSTOP itself once, the first time it has
# decided to create worker Pods and before it sends them, so a test can depose it at exactly that point.
STOP_BEFORE_POD_CREATES_ENV = "FFRTMP_TEST_STOP_BEFORE_POD_CREATES"


def job_path(namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    return resource_path(GROUP, VERSION, JOB_PLURAL, namespace, name, subresource)


def pool_path(namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    return resource_path(GROUP, VERSION, POOL_PLURAL, namespace, name, subresource)


def pool_key_of(kind: str, obj: Obj) -> str:
    """The pool a WorkerPool or worker Pod event concerns."""
    meta = obj.get("metadata") or {}
    if kind == "pods":
        return f"{meta.get('namespace', '')}/{(meta.get('labels') or {}).get(LABEL_POOL, '')}"
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def pool_time_due(key: str, decided_at: float | None, now: float, period: float) -> bool:
    """Whether a pool must be decided for what only time changes: once in each `period` of its own
    phase (from its key), so that a hundred pools come due spread over the period, not in one pass.
    Never decided: due. Decided in every pass that finds it due: at most `period` plus one pass apart."""
    if decided_at is None:
        return True
    phase = zlib.crc32(key.encode()) / 2**32
    return math.floor(now / period + phase) > math.floor(decided_at / period + phase)


class Reconciler:
    def __init__(
        self,
        client: KubeClient,
        settings: OperatorSettings,
        metrics: OperatorMetrics,
        elector: LeaderElector | None = None,
        on_synced: Callable[[], None] | None = None,
    ) -> None:
        """`on_synced` is called once, when every watched kind has been listed, before the first pass."""
        self.client = client
        self.on_synced = on_synced
        self.settings = settings
        self.metrics = metrics
        self.elector = elector
        self.store = Store()
        self.memory: dict[str, PoolMemory] = {}
        self.trigger = asyncio.Event()
        self._writes = asyncio.Semaphore(settings.max_parallel_writes)
        # Events have slots of their own: a burst of them never delays a status write.
        self._event_writes = asyncio.Semaphore(max(settings.max_parallel_writes // 4, 1))
        self.event_gate = EventGate(settings.event_budget, time.monotonic())
        self._background: set[asyncio.Task[Any]] = set()
        self._pool_status_writes: dict[str, asyncio.Task[None]] = {}  # pool key -> its write in flight
        self._pool_status_held: set[str] = set()  # pools a pass skipped while their write was out
        self._dirty_pools: set[str] = set()  # pools an event touched since their last decision
        self._pool_inputs: dict[str, tuple[int, int]] = {}  # pool key -> (waiting, running) last decided on
        self._pool_decided_at: dict[str, float] = {}  # pool key -> time.monotonic() of its last decision
        self._last_cadence = 0.0
        self._cadence: Cadence | None = None  # what was last decided (None: not yet, read from the Leases)
        self._cadence_writes: set[str] = set()  # Lease keys whose cadence annotation write is out
        self.last_pass = 0.0
        self._last_metrics = 0.0
        self._waiting: dict[str, int] = {}
        self._synced: set[tuple[str, str]] = set()
        self._list_errors: dict[tuple[str, str], str] = {}
        self._last_api_ok = 0.0
        self._api_down = False
        self._stop_before_pod_creates = os.environ.get(STOP_BEFORE_POD_CREATES_ENV) == "1"
        notifications = settings.notifications
        self.notifier = Notifier(
            client, notifications, notifications.policy(settings.cluster_cidrs), metrics, self.store,
            lambda: self.leading, self.trigger.set, self._warn_job,
        )  # fmt: skip

    # -- events (the watches of `controller.watches` call these) -------------------------------
    def on_event(self, kind: str, event_type: str, obj: Obj) -> None:
        """One watch event of a kind ("jobs", "pools", "pods", "leases")."""
        if kind == "jobs":
            self.on_job(event_type, obj)
        elif kind == "leases":
            self.on_lease(event_type, obj)
        else:
            if event_type == "DELETED":
                self.store.of_kind(kind).pop(key_of(obj), None)
            else:
                self.store.put(kind, obj)
            self._dirty_pools.add(pool_key_of(kind, obj))
            self.trigger.set()

    def on_sync(self, kind: str, namespace: str, items: list[Obj], resource_version: str) -> None:
        """A (re)list of one kind in one namespace ("" = all): replace that part of the store.
        An object missing from the list is gone, unless the store has a version newer than the list
        (created, or written by us, after the list was taken)."""
        current = self.store.of_kind(kind)
        listed: set[str] = set()
        for obj in items:
            if kind == "jobs":
                self.on_job("SYNC", obj)  # a listed job may have changed phase while the watch was down
            else:
                self.store.put(kind, obj)
            listed.add(store_key(kind, obj))
        list_rv = int(resource_version or 0)
        prefix = f"{namespace}/" if namespace else ""
        for key in [k for k in current if k.startswith(prefix) and k not in listed]:
            if int(current[key].resource_version or 0) <= list_rv:
                current.pop(key, None)
        self._synced.add((kind, namespace))
        self._pool_decided_at.clear()  # a relist may change any pool's inputs
        if all((kind, ns) in self._synced for ns in self.namespaces):
            self.store.synced.add(kind)
        self._api_answered(time.time())
        self.trigger.set()

    def on_list_error(self, kind: str, namespace: str, path: str, error: ApiError) -> None:
        """A refused list keeps readiness false; logged loudly once per kind and namespace."""
        reason = f"{error.status} {error.reason} listing {path}"
        if (kind, namespace) not in self._list_errors:
            log.error("cannot list %s in %r: %s %s", kind, namespace or "all namespaces", reason, error.message)
        self._list_errors[(kind, namespace)] = reason
        self.metrics.list_errors.labels(kind, str(error.status)).inc()

    def not_ready(self) -> list[str]:
        return not_ready(self.namespaces, self._synced, self._list_errors)

    @property
    def namespaces(self) -> tuple[str, ...]:
        return self.settings.namespaces or ("",)

    def on_job(self, event_type: str, obj: Obj) -> None:
        key = key_of(obj)
        old = self.store.jobs.get(key)
        if event_type == "DELETED":
            self.store.jobs.pop(key, None)
        else:
            new = self.store.put_job(obj)
            self._observe_transition(old, new)
        self.trigger.set()

    def on_lease(self, event_type: str, obj: Obj) -> None:
        """A plain renewal only refreshes the store: freshness is judged on every periodic pass
        (resync_seconds, far below a Lease's duration), and a thousand workers renew a few hundred
        times a second. A new Lease, a finished self-test or a drain changes decisions: decide now."""
        key = store_key("leases", obj)
        if event_type == "DELETED":
            self.store.leases.pop(key, None)
            self._lease_changed(key)
            return
        old = self.store.leases.get(key)
        new = self.store.put_lease(obj)
        if old is None or (old.encoder_ok, old.encoders, old.storage_ok, old.draining, old.duration) != (
            new.encoder_ok,
            new.encoders,
            new.storage_ok,
            new.draining,
            new.duration,
        ):
            self._lease_changed(key)

    def _lease_changed(self, key: str) -> None:
        pod = self.store.pods.get(key)  # a worker's Lease is keyed by its Pod
        if pod is not None:
            self._dirty_pools.add(pod.pool_key)
        self.trigger.set()

    def _observe_transition(self, old: JobView | None, new: JobView) -> None:
        if new.phase == (old.phase if old else None):
            return
        now = time.time()
        pool = new.pool or ""
        if old is not None and self.leading and new.worker:
            # The worker writes these two transitions; the operator tells them in Events.
            if new.phase == "Running":
                started = JobEvent("Normal", "Started", f"attempt {new.attempt}: ffmpeg started on {new.worker}")
                self._event(new.namespace, "TranscodeJob", new.name, new.uid, started, observed=True)
            elif new.phase == "Succeeded":
                completed = JobEvent("Normal", "Completed", new.message or "completed")
                self._event(new.namespace, "TranscodeJob", new.name, new.uid, completed, observed=True)
        # Only the leader counts: a standby's counters would double every sum over the replicas.
        counting = self.leading
        if counting and new.phase == "Running" and new.start_time and new.queued_time is not None:
            self.metrics.queue_seconds.labels(new.namespace, pool).observe(max(new.start_time - new.created, 0.0))
        if new.terminal and old is not None and not old.terminal:
            run = (new.completion_time - new.start_time) if new.completion_time and new.start_time else None
            total = (new.completion_time - new.created) if new.completion_time else None
            reason = None
            if new.phase == "Failed":
                reason = next((c.get("reason") for c in new.conditions if c.get("type") == "Failed"), None)
            if counting:
                self.metrics.job_finished(
                    new.namespace, pool, new.phase or "", reason, run, total, new.sla_seconds, now
                )
                if new.part is not None and new.phase == "Succeeded" and run is not None:
                    self.metrics.chunk_task_finished(new.part, run)
            if run is not None and new.phase == "Succeeded" and pool:
                self.memory.setdefault(f"{new.namespace}/{pool}", PoolMemory()).record_duration(now, run)

    # -- the loop -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Watch every kind, and decide once each was listed (until then "missing" is not "gone")."""
        watches = [
            asyncio.create_task(
                feed(self.client, watched, namespace, self, self.metrics.watch_relists.labels(watched.kind).inc),
                name=f"watch-{watched.kind}-{namespace}",
            )
            for watched in WATCHED
            for namespace in self.namespaces
        ]
        if self.elector is not None:
            watches.append(asyncio.create_task(self._follow_leadership(self.elector), name="follow-leadership"))
        self.notifier.start()
        try:
            while len(self.store.synced) < len(WATCHED):
                await self.trigger.wait()
                self.trigger.clear()
            if self.on_synced is not None:
                self.on_synced()
            self.trigger.set()  # decide at once, not after the first resync period
            await self._decide_forever()
        finally:
            for task in watches:
                task.cancel()
            await asyncio.gather(*watches, return_exceptions=True)
            await self.notifier.close()

    async def _follow_leadership(self, elector: LeaderElector) -> None:
        """On losing the lead, drop the job metrics at once; on taking it, decide (and export) at once."""
        while True:
            await elector.changed.wait()
            elector.changed.clear()
            if not elector.is_leader:
                self.metrics.drop_job_metrics()
            self._last_metrics = 0.0
            self._pool_decided_at.clear()
            self.trigger.set()

    async def _decide_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.trigger.wait(), timeout=self.settings.resync_seconds)
            self.trigger.clear()
            await asyncio.sleep(0.02)  # let a burst of events land in one pass
            try:
                await self.pass_once()
            except Exception:
                log.exception("reconcile pass failed")
                self.metrics.reconcile_errors.labels("pass").inc()
                await asyncio.sleep(1)
            self.last_pass = time.time()

    @property
    def leading(self) -> bool:
        return self.elector is None or self.elector.is_leader

    async def pass_once(self) -> None:
        if not self.leading or not await self._api_reachable():
            return
        started = time.monotonic()
        try:
            await self._decide_and_apply()
        finally:
            self.metrics.pass_seconds.observe(time.monotonic() - started)

    async def _decide_and_apply(self) -> None:
        now = time.time()
        decisions = decide_jobs(self.store, now, self.settings)
        actions = await self._unless_leases_renewed(decisions.actions)
        await self._gather(self._apply_job(a) for a in actions)
        self._offer_notifications(now)
        self._waiting = decisions.waiting_by_pool
        # Pools see the jobs as they are after this pass's writes. Their Pod creates and deletes go
        # out together (bounded by max_parallel_writes) and the pass waits for them: the next one must
        # see those Pods. Their status writes go out in the background: with a hundred namespaces'
        # pools the pass waited for a hundred writes, and every waiting job with it. A pool whose
        # status write is still out is decided once it is answered: its decision reads that status.
        running = running_by_worker(self.store.jobs.values())
        running_by_pool: dict[str, int] = {}
        pods_by_pool: dict[str, list[WorkerPod]] = {}
        for pod in self.store.pods.values():
            pods_by_pool.setdefault(pod.pool_key, []).append(pod)
            if pod.key in running:
                running_by_pool[pod.pool_key] = running_by_pool.get(pod.pool_key, 0) + running[pod.key]
        # A pass decides the pools an event touched or whose queue or running count moved, and each
        # pool at least once a FULL_POOL_PASS_SECONDS period of its own phase (what only time changes:
        # Lease freshness, the autoscaler's windows, pending timeouts, counters due). At a hundred
        # namespaces deciding every pool on every pass cost ten times the job decisions, and deciding
        # them all in one pass each second held the jobs of that pass (BENCHMARKS.md, figure 8).
        dirty, self._dirty_pools = self._dirty_pools, set()
        mono = time.monotonic()
        pool_decisions = []
        for pool in list(self.store.pools.values()):
            inputs = (decisions.waiting_by_pool.get(pool.key, 0), running_by_pool.get(pool.key, 0))
            due = pool_time_due(pool.key, self._pool_decided_at.get(pool.key), mono, FULL_POOL_PASS_SECONDS)
            if not due and pool.key not in dirty and self._pool_inputs.get(pool.key) == inputs:
                continue
            if pool.key in self._pool_status_writes:
                self._pool_status_held.add(pool.key)
                continue
            self._pool_inputs[pool.key] = inputs
            self._pool_decided_at[pool.key] = mono
            memory = self.memory.setdefault(pool.key, PoolMemory())
            decision = decide_pool(
                pool, pods_by_pool.get(pool.key, ()), self.store.leases, running,
                decisions.waiting_by_pool.get(pool.key, 0), memory, now, self.settings,
                self.store.api_ok_since, len(self.store.pools),
            )  # fmt: skip
            pool_decisions.append((pool.key, decision))
        await self._gather(
            self._apply_pool(key, d.create, d.delete, d.events)
            for key, d in pool_decisions
            if d.create or d.delete or d.events
        )
        for key, d in pool_decisions:
            if d.status is not None:
                self._write_pool_status_soon(key, d.status)
        if mono - self._last_cadence >= FULL_POOL_PASS_SECONDS:
            self._last_cadence = mono
            self._publish_cadence(sum(running.values()))
        self._post_event_summaries()
        if self.leading and time.monotonic() - self._last_metrics > 1.0:
            self.metrics.refresh(self.store, self._waiting, now)
            self._last_metrics = time.monotonic()
        if decisions.wake_at is not None:
            self._wake_at(decisions.wake_at)

    def _offer_notifications(self, now: float) -> None:
        """Decide every job's webhook deliveries and hand them to the notifier: the pass never waits for one."""
        for job in self.store.jobs.values():
            if job.notifications is None or job.key in self.notifier.busy:
                continue
            plan = decide_notifications(job.notifications, list(job.notification_records), notify_state(job), now)
            if plan.changed or plan.sends or plan.given_up:
                self.notifier.offer(job.key, plan)  # refused (queue full): offered again by a later pass
            elif plan.wake_at is not None:
                self._wake_at(plan.wake_at)

    def _warn_job(self, job: JobView, event: JobEvent) -> None:
        self._event(job.namespace, "TranscodeJob", job.name, job.uid, event)

    async def _unless_leases_renewed(self, actions: list[JobAction]) -> list[JobAction]:
        """Drop the WorkerLost decisions whose expired Lease turns out renewed when read again."""
        keys = sorted(
            {a.unless_lease_renewed for a in actions if isinstance(a, PatchStatus) and a.unless_lease_renewed}
        )
        if not keys:
            return actions
        results = await asyncio.gather(*(self._lease_renewed(key) for key in keys))
        renewed = {key for key, ok in zip(keys, results, strict=True) if ok}
        return [a for a in actions if not (isinstance(a, PatchStatus) and a.unless_lease_renewed in renewed)]

    async def _lease_renewed(self, key: str) -> bool:
        """Read a worker Lease that looked expired before its jobs are given away: a watch can deliver a
        renewal late (a loaded API server), and redoing an attempt that is still running costs a whole
        encode. True when the read shows it renewed (the store takes that version), or could not be made."""
        namespace, _, worker = key.partition("/")
        path = resource_path("coordination.k8s.io", "v1", "leases", namespace, f"{LEASE_PREFIX}{worker}")
        try:
            obj = await self._bounded(self.client.get(path))
        except ApiError as e:
            if e.not_found:
                self.metrics.lease_confirmations.labels("expired").inc()
                return False
            log.warning("reading the Lease of %s failed (%s): deciding again next pass", key, e)
            return True
        except (OSError, TimeoutError, aiohttp.ClientError) as e:
            log.warning("reading the Lease of %s failed (%r): deciding again next pass", key, e)
            return True
        answered = time.time()
        self._api_answered(answered)
        lease = self.store.put_lease(obj)
        if lease_fresh(lease, answered, self.settings, self.store.api_ok_since):
            self.metrics.lease_confirmations.labels("renewed").inc()
            log.warning(
                "the Lease of %s was renewed %.1fs ago, later than its watch showed: not lost",
                key, answered - (lease.renew_time or answered),
            )  # fmt: skip
            return True
        self.metrics.lease_confirmations.labels("expired").inc()
        return False

    async def _api_reachable(self) -> bool:
        """Decide only on a view the API server confirmed recently. After an outage, Leases could
        not be renewed: they count from the moment the API answered again."""
        asked = time.time()
        if asked - self._last_api_ok < API_CHECK_SECONDS:
            return True
        try:
            await self.client.request("GET", "/readyz")
        except Exception as e:
            if not self._api_down:
                log.warning("the API server does not answer (%r): no decisions until it does", e)
            self._api_down = True
            return False
        answered = time.time()
        if answered - asked >= API_STALL_SECONDS:
            # No worker could renew its Lease while the API server stalled either: a stall is an outage.
            log.warning("the API server took %.1fs to answer its readiness check", answered - asked)
            self._api_down = True
        self._api_answered(answered)
        return True

    def _api_answered(self, now: float) -> None:
        """Every answer of the API server goes through here (a list, a write, a readiness check), so
        that the first one after an outage starts the Leases' fresh period, whichever it is. An
        outage: a readiness check failed, or nothing answered for API_GAP_SECONDS (this process
        may have been stopped)."""
        silent = now - self._last_api_ok
        if self._last_api_ok and (self._api_down or silent > API_GAP_SECONDS):
            self.store.api_ok_since = now
            log.info("the API server answers again after %.0fs; Leases count from now", silent)
        self._api_down = False
        self._last_api_ok = max(self._last_api_ok, now)

    def _wake_at(self, at: float) -> None:
        delay = max(at - time.time(), 0.0)
        if delay < self.settings.resync_seconds:
            loop = asyncio.get_running_loop()
            loop.call_later(delay + 0.01, self.trigger.set)

    async def _gather(self, aws: Iterable[Awaitable[None]]) -> None:
        """Await all of `aws`, at most max_parallel_writes at a time, each made only when one of
        those runners takes it. A pass of 10,000 status writes (or 1,000 Pod creates) then holds a
        few dozen coroutines and answers at once instead of all of them: that burst of memory stayed
        in the process's heap afterwards (BENCHMARKS.md, figure 9's footprint)."""
        pending = iter(aws)
        runners = max(self.settings.max_parallel_writes, 1)
        first = list(itertools.islice(pending, runners))
        if len(first) < runners:
            await asyncio.gather(*first)
            return

        async def runner(aw: Awaitable[None]) -> None:
            await aw
            for more in pending:
                await more

        await asyncio.gather(*(runner(aw) for aw in first))

    async def _bounded(self, aw: Awaitable[Any]) -> Any:
        async with self._writes:
            return await aw

    # -- applying -----------------------------------------------------------------------------
    async def _apply_job(self, action: JobAction) -> None:
        namespace, _, name = action.key.partition("/")
        try:
            if isinstance(action, CreateJob):
                try:
                    created = await self._bounded(self.client.create(job_path(namespace), action.body))
                except ApiError as e:
                    if e.status != 409:  # already there: a decision repeated after a restart or a lost answer
                        raise
                    return
                self.store.put_job(created)
                log.info("created %s", action.key)
            elif isinstance(action, PatchStatus):
                body: Obj = {"metadata": {"resourceVersion": action.resource_version}, "status": action.status}
                updated = await self._bounded(self.client.merge_patch(job_path(namespace, name, "status"), body))
                self._api_answered(time.time())
                old = self.store.jobs.get(action.key)
                new = self.store.put_job(updated)
                if old is None or old.phase != new.phase or action.event is not None:
                    log.info(
                        "job %s: %s -> %s%s", action.key, old.phase if old else None, new.phase,
                        f" ({action.event.reason}: {action.event.message})" if action.event else "",
                    )  # fmt: skip
                self._observe_transition(old, new)
                if action.event is not None:
                    self._event(namespace, "TranscodeJob", name, updated["metadata"]["uid"], action.event)
            else:
                body = {"preconditions": {"uid": action.uid}, "propagationPolicy": "Background"}
                await self._bounded(self.client.delete(job_path(namespace, name), body))
                self.store.jobs.pop(action.key, None)
                log.info("deleted %s: %s", action.key, action.reason)
        except ApiError as e:
            if e.conflict:
                # Someone (a worker, a user) changed it since we decided: decide again on the new version.
                log.debug("conflict on %s; will decide again", action.key)
                await self._refresh_job(namespace, name)
            elif e.not_found:
                self.store.jobs.pop(action.key, None)
            else:
                log.warning("writing %s failed: %s", action.key, e)
                self.metrics.reconcile_errors.labels("TranscodeJob").inc()

    async def _refresh_job(self, namespace: str, name: str) -> None:
        try:
            self.on_job("MODIFIED", await self.client.get(job_path(namespace, name)))
        except ApiError as e:
            if e.not_found:
                self.store.jobs.pop(f"{namespace}/{name}", None)

    def _post_job_event(self, event: JobEvent, observed: bool) -> bool:
        """`observed`: an Event that only repeats a transition the worker wrote into the status."""
        mode = self.settings.job_events
        if mode == "all":
            return True
        if event.type == "Warning":
            return mode != "none"
        return mode == "decisions" and not observed

    def _publish_cadence(self, running: int) -> None:
        """Decide the farm's renewal and progress periods and put them on the worker Leases that do not
        carry them yet (in the background; a Lease with a write out is skipped until it is answered)."""
        budget = self.settings.write_budget
        leases = self.store.leases
        if self._cadence is None:
            self._cadence = current_cadence(lease.cadence for lease in leases.values())
        decision = decide_cadence(len(leases), running, budget, self._cadence, pools=len(self.store.pools))
        if decision.cadence != self._cadence:
            log.info(
                "write budget %g/s: %d workers, %d running jobs -> %s (%.0f writes/s%s)",
                budget.writes_per_second, len(leases), running, decision.cadence.annotation(),
                decision.expected_writes_per_second, ", over budget" if decision.over_budget else "",
            )  # fmt: skip
        self._cadence = decision.cadence
        self.metrics.write_budget.set(budget.writes_per_second)
        self.metrics.expected_writes.set(decision.expected_writes_per_second)
        self.metrics.write_budget_exceeded.set(1 if decision.over_budget else 0)
        for period, seconds in (
            ("renew", decision.cadence.renew_seconds),
            ("lease", decision.cadence.lease_seconds),
            ("progress", decision.cadence.progress_seconds),
        ):
            self.metrics.cadence_seconds.labels(period).set(seconds)
        wanted = published_annotation(decision, budget)
        told = {key: lease.cadence for key, lease in leases.items() if key not in self._cadence_writes}
        limit = max(int(budget.writes_per_second * CADENCE_ROLLOUT_SHARE), 1)
        for key, value in lease_annotation_writes(told, wanted, limit):
            self._cadence_writes.add(key)
            task = asyncio.create_task(self._write_lease_cadence(key, value), name=f"cadence {key}")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _write_lease_cadence(self, key: str, value: str | None) -> None:
        try:
            lease = self.store.leases.get(key)
            if lease is None:
                return
            namespace = key.partition("/")[0]
            path = resource_path("coordination.k8s.io", "v1", "leases", namespace) + f"/{lease.name}"
            async with self._writes:
                if self._fenced("Lease", f"the cadence of Lease {namespace}/{lease.name}"):
                    return
                annotations = {ANNOTATION_CADENCE: value}
                updated = await self.client.merge_patch(path, {"metadata": {"annotations": annotations}})
            if key in self.store.leases:
                self.store.put_lease(updated)
        except ApiError as e:
            if not e.not_found:
                log.warning("publishing the cadence on Lease %s failed: %s", key, e)
                self.metrics.reconcile_errors.labels("Lease").inc()
        except (aiohttp.ClientError, TimeoutError) as e:  # the next second's pass tries again
            log.warning("publishing the cadence on Lease %s failed: %r", key, e)
        finally:
            self._cadence_writes.discard(key)

    def _write_pool_status_soon(self, key: str, status: Obj) -> None:
        """Write a pool's status in the background; when it is answered, a pass that skipped the pool
        meanwhile is made up for."""
        task = asyncio.create_task(self._write_pool_status(key, status), name=f"pool-status {key}")
        self._pool_status_writes[key] = task

        def done(_: asyncio.Task[None]) -> None:
            self._pool_status_writes.pop(key, None)
            if key in self._pool_status_held:
                self._pool_status_held.discard(key)
                self._dirty_pools.add(key)
                self.trigger.set()

        task.add_done_callback(done)

    async def _write_pool_status(self, key: str, status: Obj) -> None:
        pool = self.store.pools.get(key)
        if pool is None:
            return
        try:
            async with self._writes:
                if self._fenced("WorkerPool", f"the status of pool {key}"):
                    return
                updated = await self.client.merge_patch(
                    pool_path(pool.namespace, pool.name, "status"), {"status": status}
                )
            self.store.put_pool(updated)
        except ApiError as e:
            log.warning("writing the status of pool %s failed: %s", key, e)
            self.metrics.reconcile_errors.labels("WorkerPool").inc()

    async def _apply_pool(self, key: str, create: int, delete: list[str], events: list[JobEvent]) -> None:
        pool = self.store.pools[key]
        spec = pool.spec
        if spec is None:
            return
        try:
            pods_path = resource_path("", "v1", "pods", pool.namespace)
            if create:
                term = self.elector.term if self.elector is not None else None
                manifest = build_worker_pod(pool.name, pool.namespace, pool.uid, spec, self.settings, term)
                if self._stop_before_pod_creates:
                    self._stop_before_pod_creates = False
                    log.warning(
                        "%s is set: stopping this process before creating %d Pods", STOP_BEFORE_POD_CREATES_ENV, create
                    )
                    os.kill(os.getpid(), signal.SIGSTOP)
                await self._gather(self._create_pod(pods_path, manifest) for _ in range(create))
            for name in delete:
                async with self._writes:
                    if self._fenced("Pod", f"deleting worker Pod {pool.namespace}/{name}"):
                        continue
                    await self.client.delete_ignore_missing(f"{pods_path}/{name}")
                self.store.pods.pop(f"{pool.namespace}/{name}", None)
            for event in events:
                self._event(pool.namespace, "WorkerPool", pool.name, pool.uid, event)
        except ApiError as e:
            log.warning("reconciling pool %s failed: %s", key, e)
            self.metrics.reconcile_errors.labels("WorkerPool").inc()

    def _fenced(self, kind: str, what: str) -> bool:
        """Checked right before a worker Pod write is sent (after waiting for a write slot): True, and
        the write dropped, when this replica's lead ended since it decided. A leader stopped mid-pass
        (SIGSTOP, a frozen VM, a long pause) wakes up past its renew deadline, while another replica
        may already lead and have made the same decision: acting on its own would double the Pods."""
        if self.leading:
            return False
        log.warning("not leading any more: %s dropped unsent", what)
        self.metrics.fenced_writes.labels(kind).inc()
        return True

    async def _create_pod(self, pods_path: str, manifest: Obj) -> None:
        """Create one worker Pod and put its view in the store at once: the answer (a whole Pod) is
        dropped then, not held with a thousand others until the last create of the pass returns."""
        try:
            async with self._writes:
                if self._fenced("Pod", f"creating a worker Pod of {manifest['metadata']['generateName']}*"):
                    return
                created: Obj = await self.client.create(pods_path, manifest)
        except Exception as e:
            log.warning("creating a worker Pod failed: %s", e)
            self.metrics.reconcile_errors.labels("Pod").inc()
            return
        self.store.put_pod(created)

    def _event(
        self, namespace: str, kind: str, name: str, uid: str, event: JobEvent, *, observed: bool = False
    ) -> None:
        """Post a core/v1 Event in the background, within the Event budget: `kubectl describe` tells the story."""
        if kind == "TranscodeJob" and not self._post_job_event(event, observed):
            return
        obj = ObjectRef(kind, name, uid)
        pool = obj if kind == "WorkerPool" else self._pool_of_job(namespace, name)
        if not self.event_gate.admit(namespace, event.type, event.reason, obj, pool, time.monotonic()):
            self.metrics.events.labels(event.type, event.reason, "sampled").inc()
            return
        self._post_event(namespace, obj, event)

    def _pool_of_job(self, namespace: str, name: str) -> ObjectRef | None:
        job = self.store.jobs.get(f"{namespace}/{name}")
        pool = self.store.pools.get(f"{namespace}/{job.pool}") if job is not None and job.pool else None
        return ObjectRef("WorkerPool", pool.name, pool.uid) if pool is not None else None

    def _post_event_summaries(self) -> None:
        for summary in self.event_gate.summaries(time.monotonic()):
            event = JobEvent("Normal", SUMMARY_REASON, summary.message())
            self._post_event(summary.namespace, summary.target, event)

    def _post_event(self, namespace: str, obj: ObjectRef, event: JobEvent) -> None:
        now = now_iso(time.time())
        body: Obj = {
            "metadata": {"generateName": f"{obj.name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": obj.kind, "name": obj.name, "namespace": namespace,
                "uid": obj.uid,
            },
            "type": event.type,
            "reason": event.reason,
            "message": redact(event.message)[:1024],
            "source": {"component": "ffmpeg-rtmp-operator"},
            "reportingComponent": "ffmpeg-rtmp.io/operator",
            "reportingInstance": self.elector.identity if self.elector else "ffmpeg-rtmp-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }  # fmt: skip

        async def post() -> None:
            outcome = "written"
            try:
                async with self._event_writes:
                    await self.client.create(resource_path("", "v1", "events", namespace), body)
            except (ApiError, OSError, TimeoutError, aiohttp.ClientError) as e:
                log.debug("posting event failed: %s", e)
                outcome = "failed"
            self.metrics.events.labels(event.type, event.reason, outcome).inc()

        task = asyncio.ensure_future(post())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
