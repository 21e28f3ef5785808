"""The worker agent: Lease, self-test, the watch of its assigned jobs, attempts, drain."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from typing import Any

from ffrtmp.api.cadence import ANNOTATION_CADENCE, Cadence
from ffrtmp.api.constants import (
    ANNOTATION_DRAINING,
    ANNOTATION_ENCODER,
    ANNOTATION_ENCODERS,
    ANNOTATION_STORAGE,
    GROUP,
    JOB_PLURAL,
    LABEL_COMPONENT,
    LABEL_POOL,
    LEASE_PREFIX,
    VERSION,
    WORKER_COMPONENT,
)
from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.conditions import now_iso
from ffrtmp.kube.client import ApiError, KubeClient, informer, resource_path
from ffrtmp.worker import health
from ffrtmp.worker.attempt import Attempt
from ffrtmp.worker.config import WorkerConfig
from ffrtmp.worker.fence import FencedStatus, Superseded, owns
from ffrtmp.worker.health import HealthInputs
from ffrtmp.worker.metrics import WorkerMetrics, serve
from ffrtmp.worker.selftest import SelfTestResult, run_capability_test
from ffrtmp.worker.storage import StorageCheck, check_storage

log = logging.getLogger(__name__)
Obj = dict[str, Any]
# How long a job may say "ours, running" while this process runs nothing for it.
ORPHAN_GRACE_SECONDS = 10.0
# A renewal slower than this share of the Lease is logged; one still unanswered after RENEWAL_TIMEOUT
# of it is given up and sent again on a fresh connection, with time left before the Lease expires.
SLOW_RENEWAL = 0.25
RENEWAL_TIMEOUT = 0.5
# While the storage check fails, how often it is repeated (a volume mounted late, a fixed owner).
STORAGE_RECHECK_SECONDS = 15.0


class Agent:
    def __init__(self, client: KubeClient, config: WorkerConfig, metrics: WorkerMetrics | None = None) -> None:
        self.client = client
        self.config = config
        self.metrics = metrics or WorkerMetrics()
        self.self_test: SelfTestResult | None = None
        self.encoders: str | None = None  # the encoders that passed, as the Lease annotation says them
        self.storage: StorageCheck | None = None
        self.draining = False
        self.attempts: dict[str, Attempt] = {}
        self._tasks: dict[str, asyncio.Task[str]] = {}
        self._api_ok = time.monotonic()
        self._lease_path = resource_path("coordination.k8s.io", "v1", "leases", config.namespace)
        self._lease_name = f"{LEASE_PREFIX}{config.pod_name}"
        self._jobs_path = resource_path(GROUP, VERSION, JOB_PLURAL, config.namespace)
        self._drained = asyncio.Event()
        self._view: dict[str, Obj] = {}
        self._background: set[asyncio.Future[None]] = set()
        # (job uid, attempt) -> when it ended here. By uid: a job deleted and created again under the
        # same name is another job, whose attempt 1 this worker has not run.
        self._done: dict[tuple[str, int], float] = {}
        self._no_slot_since: dict[tuple[str, int], float] = {}
        self._lease_dirty = asyncio.Event()
        # The worker's own periods; the operator may publish longer ones on the Lease (api/cadence.py).
        self.own_cadence = Cadence(config.renew_seconds, config.lease_seconds, config.progress_interval)
        self.cadence = self.own_cadence
        self.metrics.api_last_success_age.set_function(self._api_age)
        self.metrics.api_reachable.set_function(self._api_reachable)

    # -- readiness ----------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return bool(self.self_test and self.self_test.ok and self.storage and self.storage.ok and not self.draining)

    def _health_inputs(self) -> HealthInputs:
        return HealthInputs(
            now=time.monotonic(),
            last_loop_tick=self.metrics.loop_lag.last_tick,
            last_api_success=self._api_ok,
            attempts=len(self.attempts),
            supervised=sum(1 for n in self.attempts if n in self._tasks and not self._tasks[n].done()),
        )

    def healthy(self) -> bool:
        """Liveness: the event loop runs and encodes are supervised; never the API server (health.py)."""
        return health.live(self._health_inputs(), self.config.loop_stale_seconds)

    def probe_ready(self) -> bool:
        """Readiness: `ready` and the API server answered within `api_stale_seconds`."""
        return health.ready(self.ready, self._health_inputs(), self.config.api_stale_seconds)

    def _api_succeeded(self) -> None:
        self._api_ok = time.monotonic()

    def _api_age(self) -> float:
        return time.monotonic() - self._api_ok

    def _api_reachable(self) -> float:
        return 1.0 if health.api_reachable(self._health_inputs(), self.config.api_stale_seconds) else 0.0

    @property
    def free_slots(self) -> int:
        busy = sum(1 for a in self.attempts.values() if not a.finishing)
        return max(self.config.slots - busy, 0)

    # -- main ---------------------------------------------------------------------------------
    async def run(self) -> None:
        runner = None
        # First: liveness reads the loop-lag timer's ticks, and the self-test may take a while.
        lag = asyncio.create_task(self.metrics.loop_lag.run(), name="loop-lag")
        if self.config.metrics_port:
            runner = await serve(self.metrics, self.config.metrics_port, self.healthy, self.probe_ready)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.begin_drain)
        await self.check_storage()
        report = await run_capability_test(self.config.accelerator, render_device=self.config.render_device)
        self.self_test, self.encoders = report.primary, report.encoders_annotation()
        self.metrics.encoder_ok.set(1 if self.self_test.ok else 0)
        for result in report.results:
            self.metrics.encoder_available.labels(result.encoder).set(1 if result.ok else 0)
        log.info("encoder self-test: %s", report.summary())
        self.metrics.free_slots.set(self.free_slots if self.ready else 0)
        lease = asyncio.create_task(self._lease_loop(), name="lease")
        watch = asyncio.create_task(self._watch_loop(), name="watch")
        recheck = asyncio.create_task(self._recheck_loop(), name="recheck")
        storage = asyncio.create_task(self._storage_loop(), name="storage")
        try:
            await self._drained.wait()
        finally:
            watch.cancel()
            recheck.cancel()
            lag.cancel()
            storage.cancel()
            await self._release_lease()
            lease.cancel()
            await asyncio.gather(lease, watch, lag, return_exceptions=True)
            if runner is not None:
                await runner.cleanup()

    async def check_storage(self) -> None:
        self.storage = await asyncio.to_thread(check_storage, self.config.media_roots, self.config.output_root)
        self.metrics.storage_ok.set(1 if self.storage.ok else 0)
        log.info("storage check: %s", self.storage.annotation())

    async def _storage_loop(self) -> None:
        """Repeat a failed storage check until it passes; then the next Lease renewal says so."""
        while self.storage is not None and not self.storage.ok:
            await asyncio.sleep(STORAGE_RECHECK_SECONDS)
            before = self.storage
            await self.check_storage()
            if self.storage != before:
                self.metrics.free_slots.set(self.free_slots if self.ready else 0)
                self._lease_dirty.set()

    # -- Lease --------------------------------------------------------------------------------
    def _lease_body(self) -> Obj:
        now = time.time()
        meta: Obj = {
            "name": self._lease_name,
            "namespace": self.config.namespace,
            "labels": {LABEL_COMPONENT: WORKER_COMPONENT, LABEL_POOL: self.config.pool},
            "annotations": {
                ANNOTATION_ENCODER: self.self_test.annotation() if self.self_test else "pending",
                ANNOTATION_STORAGE: self.storage.annotation() if self.storage else "pending",
                ANNOTATION_DRAINING: "true" if self.draining else "false",
            },
        }
        if self.encoders is not None:
            meta["annotations"][ANNOTATION_ENCODERS] = self.encoders
        if self.config.pod_uid:
            meta["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "Pod", "name": self.config.pod_name, "uid": self.config.pod_uid}
            ]
        return {
            "metadata": meta,
            "spec": {
                "holderIdentity": self.config.pod_name,
                "leaseDurationSeconds": round(self.cadence.lease_seconds),
                "renewTime": _micro(now),
            },
        }

    async def renew_lease(self) -> None:
        """One renewal. A request unanswered after half the Lease is given up (and the loop tries again at
        once, on another connection): waiting out the client's default timeout would let the Lease expire
        behind one stuck request."""
        body = self._lease_body()
        timeout = self.cadence.lease_seconds * RENEWAL_TIMEOUT
        try:
            lease = await self.client.merge_patch(
                f"{self._lease_path}/{self._lease_name}", body, request_timeout=timeout
            )
        except ApiError as e:
            if not e.not_found:
                raise
            body["spec"]["acquireTime"] = body["spec"]["renewTime"]
            lease = await self.client.create(self._lease_path, body, request_timeout=timeout)
        self._adopt_cadence(lease)

    def _adopt_cadence(self, lease: Obj) -> None:
        """Take the periods the operator published on the Lease (never shorter than our own). A changed
        Lease duration is written by a second renewal at once: the Lease must outlast the new period."""
        annotations = (lease.get("metadata") or {}).get("annotations") or {}
        published = Cadence.parse(annotations.get(ANNOTATION_CADENCE))
        cadence = published.at_least(self.own_cadence) if published else self.own_cadence
        if cadence != self.cadence:
            log.info("the operator's write budget: now %s (was %s)", cadence.annotation(), self.cadence.annotation())
            self.cadence = cadence
            if cadence.lease_seconds != lease.get("spec", {}).get("leaseDurationSeconds"):
                self._lease_dirty.set()  # write the new Lease duration now, not one old period later
        self.metrics.cadence_seconds.labels("renew").set(cadence.renew_seconds)
        self.metrics.cadence_seconds.labels("lease").set(cadence.lease_seconds)
        self.metrics.cadence_seconds.labels("progress").set(cadence.progress_seconds)

    async def _lease_loop(self) -> None:
        while True:
            slow = self.cadence.lease_seconds * SLOW_RENEWAL
            wait = self.cadence.renew_seconds
            self._lease_dirty.clear()  # set from here on (a new Lease duration to write, say): renew again at once
            sent = time.monotonic()
            try:
                await self.renew_lease()
                self._api_succeeded()
                took = self._api_ok - sent
                self.metrics.lease_renew_seconds.observe(took)
                if took > slow:
                    log.warning(
                        "renewing the Lease took %.1fs (Lease %ds; event loop lag %.1fs): the API server is slow",
                        took, self.cadence.lease_seconds, self.metrics.loop_lag.latest,
                    )  # fmt: skip
            except Exception as e:  # keep renewing, whatever broke this round
                self.metrics.lease_renew_failures.inc()
                log.warning("renewing the Lease failed after %.1fs: %r", time.monotonic() - sent, e)
                if isinstance(e, TimeoutError):
                    continue  # the period already passed waiting: try again now
                wait = self.own_cadence.renew_seconds  # a longer published period assumes renewals that land
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lease_dirty.wait(), wait)

    async def _release_lease(self) -> None:
        """On exit, let the Lease lapse at once (it goes with the Pod, by its ownerReference)."""
        body = self._lease_body()
        body["spec"]["leaseDurationSeconds"] = 1
        with contextlib.suppress(ApiError, OSError, TimeoutError):
            await self.client.merge_patch(f"{self._lease_path}/{self._lease_name}", body)

    # -- jobs ---------------------------------------------------------------------------------
    async def _watch_loop(self) -> None:
        selector = f"status.worker={self.config.pod_name}"
        async for event_type, obj in informer(self.client, self._jobs_path, {"fieldSelector": selector}):
            self._api_succeeded()
            try:
                await self._handle(event_type, obj)
            except Exception:  # one bad event must not end the watch
                log.exception("handling a %s event failed", event_type)

    async def _handle(self, event_type: str, obj: Obj) -> None:
        if event_type == "SYNC":
            items = obj["items"]
            listed = {i["metadata"]["name"] for i in items}
            self._view = {}
            for name in [n for n in self.attempts if n not in listed]:
                await self._gone(name)
            for item in items:
                self.on_job(item)
        elif event_type == "DELETED":
            self._view.pop(obj["metadata"]["name"], None)
            for key in [k for k in self._no_slot_since if k[0] == obj["metadata"]["name"]]:
                del self._no_slot_since[key]
            await self._gone(obj["metadata"]["name"])
        else:
            self.on_job(obj)

    def on_job(self, obj: Obj) -> None:
        """Level-based: compare what the job says about us with what this process runs."""
        name = obj["metadata"]["name"]
        self._view[name] = obj
        status = obj.get("status") or {}
        attempt_no = int(status.get("attempt") or 0)
        current = self.attempts.get(name)
        if current is not None:
            current.client_status.observe(obj)
            if owns(obj, self.config.pod_name, current.number) is not None or (obj.get("spec") or {}).get("suspend"):
                current.stop("superseded")
            return
        if owns(obj, self.config.pod_name, attempt_no) is not None:
            return
        finished_at = self._done.get((obj["metadata"].get("uid", ""), attempt_no))
        if finished_at is not None:
            # We ran this attempt; our last write is on its way, or it was lost.
            result = status.get("result") or {}
            if result.get("attempt") != attempt_no and time.monotonic() - finished_at > ORPHAN_GRACE_SECONDS:
                self._spawn_handback(obj, attempt_no, "the worker lost track of the attempt's result")
            return
        if status.get("phase") == "Running":
            # Assigned to us and running, but not in this process: the worker restarted mid-attempt.
            self._spawn_handback(obj, attempt_no, "the worker restarted during the attempt")
            return
        if not self.draining and self.ready and self.free_slots <= 0:
            # Our slot count may lag the operator's by the end of an attempt: wait a little
            # (re-checked when an attempt ends and by the re-check loop) before handing back.
            first = self._no_slot_since.setdefault((name, attempt_no), time.monotonic())
            if time.monotonic() - first < ORPHAN_GRACE_SECONDS:
                return
        if self.draining or not self.ready or self.free_slots <= 0:
            why = "the worker is draining" if self.draining else "the worker has no free slot"
            self._spawn_handback(obj, attempt_no, why)
            return
        self._no_slot_since.pop((name, attempt_no), None)
        self._start(obj, attempt_no)

    async def _recheck_loop(self) -> None:
        """Now and then, look again at every job assigned to us (nothing is left to a lost event)."""
        while True:
            await asyncio.sleep(ORPHAN_GRACE_SECONDS)
            for obj in list(self._view.values()):
                try:
                    self.on_job(obj)
                except Exception:
                    log.exception("re-checking %s failed", obj["metadata"]["name"])

    def _new_attempt(self, obj: Obj, number: int) -> Attempt:
        """The attempt `_start` runs (the benchmarks' simulated workers return one that sleeps)."""
        return Attempt(
            client_status=FencedStatus(self.client, obj, self.config.pod_name, number),
            spec=TranscodeJobSpec.from_api(obj["spec"]),
            config=self.config,
            metrics=self.metrics,
            namespace=self.config.namespace,
            name=obj["metadata"]["name"],
            number=number,
            progress_seconds=lambda: self.cadence.progress_seconds,
        )

    def _start(self, obj: Obj, number: int) -> None:
        name = obj["metadata"]["name"]
        attempt = self._new_attempt(obj, number)
        self.attempts[name] = attempt
        self.metrics.free_slots.set(self.free_slots)
        task = asyncio.create_task(attempt.run(), name=f"attempt-{name}-{number}")
        self._tasks[name] = task
        task.add_done_callback(functools.partial(self._finished, name, obj["metadata"].get("uid", ""), attempt))
        log.info("started %s attempt %d", name, number)

    def _finished(self, name: str, uid: str, attempt: Attempt, task: asyncio.Task[str]) -> None:
        if self.attempts.get(name) is attempt:
            del self.attempts[name]
            self._tasks.pop(name, None)
        self._done[(uid, attempt.number)] = time.monotonic()
        if len(self._done) > 10000:
            self._done.pop(next(iter(self._done)))
        self.metrics.free_slots.set(self.free_slots if self.ready else 0)
        for (waiting, _), _since in list(self._no_slot_since.items()):
            # A slot is free now: start what was waiting for one.
            if waiting in self._view and waiting not in self.attempts:
                self.on_job(self._view[waiting])
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("attempt %s/%d crashed: %r", name, attempt.number, exc, exc_info=exc)
        else:
            log.info("attempt %s/%d ended: %s", name, attempt.number, task.result())
        if self.draining and not self.attempts:
            self._drained.set()

    def _spawn_handback(self, obj: Obj, number: int, why: str) -> None:
        async def handback() -> None:
            fence = FencedStatus(self.client, obj, self.config.pod_name, number)
            now = time.time()
            result = {
                "attempt": number, "worker": self.config.pod_name, "outcome": "HandedBack", "reason": "HandedBack",
                "message": why, "retryable": True, "finishTime": now_iso(now),
            }  # fmt: skip
            with contextlib.suppress(Superseded):
                await fence.update({"result": result, "message": f"attempt {number} handed back: {why}"})

        task = asyncio.ensure_future(handback())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _gone(self, name: str) -> None:
        """The job left our watch: deleted (cancel) or reassigned (superseded)."""
        attempt = self.attempts.get(name)
        if attempt is None:
            return
        try:
            obj = await self.client.get(f"{self._jobs_path}/{name}")
        except ApiError as e:
            if e.not_found:
                log.info("%s was deleted: stopping attempt %d", name, attempt.number)
                attempt.stop("cancelled")
                return
            raise
        attempt.client_status.observe(obj)
        if owns(obj, self.config.pod_name, attempt.number) is not None:
            attempt.stop("superseded")

    # -- drain --------------------------------------------------------------------------------
    def begin_drain(self) -> None:
        """SIGTERM: take no new jobs, let running ones finish within the drain time, hand back the rest."""
        if self.draining:
            return
        log.info("draining: %d attempt(s) running, up to %.0fs", len(self.attempts), self.config.drain_seconds)
        self.draining = True
        self._lease_dirty.set()
        self.metrics.free_slots.set(0)
        if not self.attempts:
            self._drained.set()
            return
        asyncio.get_running_loop().call_later(self.config.drain_seconds, self._hand_back_all)

    def _hand_back_all(self) -> None:
        for attempt in list(self.attempts.values()):
            attempt.stop("drain")


def _micro(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
