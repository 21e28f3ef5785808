"""Simulated executors: many logical workers in one process, on the real worker code path.

* `SimAttempt` is `ffrtmp.worker.attempt.Attempt` with ffmpeg replaced by `asyncio.sleep`: its
  `_prepare` plans no ffmpeg run and `_encode` sleeps the nominal duration (the job's
  `spec.input.durationSeconds` at 1x) while feeding progress snapshots every 0.5 s (ffmpeg's
  `-stats_period` default) into the real `Attempt._progress`, which throttles them to
  `progress_interval` and writes them fenced. The Running write (`Attempt._run`), the Succeeded
  write (`Attempt._succeed`, publishing an empty output folder) and every fenced retry are the
  real ones.
* `SimAgent` is `ffrtmp.worker.agent.Agent` minus the process-level parts (signal handlers,
  metrics server, the ffmpeg self-test, whose annotation it sets to a passed one): the real
  Lease loop, the real watch loop and the recheck loop run unchanged.
* Watches: ONE PER LOGICAL WORKER, each with the worker's own `fieldSelector
  status.worker=<pod>`, exactly as a worker Pod does. A shared watch dispatching by
  status.worker would be cheaper for the benchmark process, but it would hide the API server's
  cost of N filtered watches, which is part of what a real farm of N workers costs.
* `SimFarm` plays the kubelet: it watches the worker Pods the operator creates and starts a
  SimAgent for each Pod once the scheduler bound it to a (KWOK) node, stops it when the Pod goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ffrtmp import heap
from ffrtmp.api.constants import LABEL_COMPONENT, WORKER_COMPONENT
from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.dev.workers import pod_environment
from ffrtmp.ffmpeg.argv import EncodePlan
from ffrtmp.ffmpeg.errors import Failure
from ffrtmp.ffmpeg.progress import ProgressSnapshot
from ffrtmp.kube.client import KubeClient, informer
from ffrtmp.worker.agent import Agent
from ffrtmp.worker.attempt import Attempt
from ffrtmp.worker.config import WorkerConfig
from ffrtmp.worker.fence import FencedStatus
from ffrtmp.worker.metrics import WorkerMetrics
from ffrtmp.worker.selftest import SelfTestResult
from ffrtmp.worker.storage import StorageCheck

from .common import pods_path

log = logging.getLogger(__name__)
Obj = dict[str, Any]
STATS_PERIOD = 0.5  # ffmpeg writes a -progress block every 0.5 s by default
SIM_SELF_TEST = SelfTestResult(True, "libx264", "", 0.0)
SIM_STORAGE = StorageCheck(True, "simulated: no media read, no output written")


@dataclass
class SimAttempt(Attempt):
    """An attempt whose ffmpeg run is an asyncio.sleep of the nominal duration."""

    speed: float = 1.0
    counters: dict[str, int] = field(default_factory=dict)  # shared by the farm

    async def _write_progress(self, progress: Obj) -> None:
        before = self.client_status.writes
        await super()._write_progress(progress)
        written = self.client_status.writes - before
        if written:
            self.counters["progress_writes"] = self.counters.get("progress_writes", 0) + written

    async def run(self) -> str:
        try:
            return await super().run()
        finally:
            # Every successful fenced status write of the attempt (Running, progress, result).
            self.counters["worker_status_writes"] = self.counters.get("worker_status_writes", 0) + (
                self.client_status.writes
            )

    def _tick(self, elapsed: float) -> float:
        """ffmpeg's 0.5 s progress period while a write may be due; between writes, snapshots that
        `_progress` would drop are skipped (same writes, far fewer wake-ups for thousands of
        simulated attempts). The first block comes after 0.5 s, as from ffmpeg."""
        if elapsed < STATS_PERIOD:
            return STATS_PERIOD
        due = self._last_write + self.progress_interval - time.monotonic()
        return max(STATS_PERIOD, due)

    async def _prepare(self) -> EncodePlan:
        self.attempt_dir.mkdir(parents=True, exist_ok=True)
        duration = float(self.spec.input.duration_seconds or 1)
        return EncodePlan(passes=[["simulated"]], outputs=[], live=False, duration_seconds=duration)

    async def _encode(self, plan: EncodePlan) -> tuple[Failure | None, int]:
        duration = plan.duration_seconds or 1.0
        wall = duration / self.speed
        started = time.monotonic()
        frame_rate = 25.0
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= wall:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), min(self._tick(elapsed), wall - elapsed))
            if self.stop_reason is not None:
                return Failure("FfmpegError", f"ffmpeg stopped ({self.stop_reason})", True), 0
            out_time = min(time.monotonic() - started, wall) * self.speed
            snap = ProgressSnapshot(
                out_time_seconds=out_time, fps=frame_rate * self.speed, speed=self.speed,
                total_size=int(out_time * 250_000), frame=int(out_time * frame_rate), ended=False,
            )  # fmt: skip
            await self._progress(snap, duration, False, 0, 1)
        end = ProgressSnapshot(duration, frame_rate * self.speed, self.speed, int(duration * 250_000),
                               int(duration * frame_rate), True)  # fmt: skip
        await self._progress(end, duration, False, 0, 1)
        return None, 0


class SimAgent(Agent):
    """The worker agent of one simulated worker Pod."""

    def __init__(
        self,
        client: KubeClient,
        config: WorkerConfig,
        metrics: WorkerMetrics,
        speed: float = 1.0,
        counters: dict[str, int] | None = None,
    ) -> None:
        super().__init__(client, config, metrics)
        self.speed = speed
        self.counters = {} if counters is None else counters
        self.quiet_exit = False
        self.lease_written: float | None = None
        self.attempts_started = 0

    async def renew_lease(self) -> None:
        await super().renew_lease()
        if self.lease_written is None:
            self.lease_written = time.monotonic()

    async def run_simulated(self) -> None:
        """Agent.run without signal handlers, metrics server, storage check and ffmpeg self-test."""
        self.self_test = SIM_SELF_TEST
        self.storage = SIM_STORAGE
        lease = asyncio.create_task(self._lease_loop(), name=f"lease-{self.config.pod_name}")
        watch = asyncio.create_task(self._watch_loop(), name=f"watch-{self.config.pod_name}")
        recheck = asyncio.create_task(self._recheck_loop(), name=f"recheck-{self.config.pod_name}")
        try:
            await self._drained.wait()
        finally:
            watch.cancel()
            recheck.cancel()
            if self.quiet_exit:
                for task in self._tasks.values():
                    task.cancel()
            else:
                for attempt in list(self.attempts.values()):
                    attempt.stop("drain")
                await self._release_lease()
            lease.cancel()
            await asyncio.gather(lease, watch, recheck, *self._tasks.values(), return_exceptions=True)

    def _spawn_handback(self, obj: Obj, number: int, why: str) -> None:
        self.counters["handbacks"] = self.counters.get("handbacks", 0) + 1
        super()._spawn_handback(obj, number, why)

    def _new_attempt(self, obj: Obj, number: int) -> Attempt:
        self.attempts_started += 1
        return SimAttempt(
            client_status=FencedStatus(self.client, obj, self.config.pod_name, number),
            spec=TranscodeJobSpec.from_api(obj["spec"]), config=self.config, metrics=self.metrics,
            namespace=self.config.namespace, name=obj["metadata"]["name"], number=number, speed=self.speed,
            counters=self.counters, progress_seconds=lambda: self.cadence.progress_seconds,
        )  # fmt: skip


@dataclass
class FarmStats:
    pods_seen: dict[str, float] = field(default_factory=dict)  # first seen (any state)
    pods_bound: dict[str, float] = field(default_factory=dict)  # first seen with spec.nodeName
    pods_ready: dict[str, float] = field(default_factory=dict)  # first seen with condition Ready=True


class SimFarm:
    """The in-process stand-in kubelet of simulated workers for one namespace."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        work_dir: Path,
        *,
        progress_interval: float = 5.0,
        lease_seconds: int = 15,
        speed: float = 1.0,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.work_dir = work_dir
        self.progress_interval = progress_interval
        self.lease_seconds = lease_seconds
        self.speed = speed
        self.metrics = WorkerMetrics()  # shared: one registry for all logical workers
        self.counters: dict[str, int] = {}  # progress writes of all attempts
        self.agents: dict[str, SimAgent] = {}
        self.runs: dict[str, asyncio.Task[None]] = {}
        self.stats = FarmStats()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> SimFarm:
        heap.configure()  # the collector's settings of a worker process (`worker.main`), for its agents
        self._task = asyncio.create_task(self._watch_pods(), name="sim-farm")
        self._task.add_done_callback(_report_crash)
        return self

    async def _watch_pods(self) -> None:
        selector = f"{LABEL_COMPONENT}={WORKER_COMPONENT}"
        async for kind, obj in informer(self.client, pods_path(self.namespace), {"labelSelector": selector}):
            now = time.monotonic()
            if kind == "SYNC":
                listed = {o["metadata"]["name"]: o for o in obj["items"]}
                for name in [n for n in self.agents if n not in listed]:
                    self._pod_gone(name)
                for pod in listed.values():
                    self._pod_seen(pod, now)
            elif kind == "DELETED":
                self._pod_gone(obj["metadata"]["name"])
            else:
                self._pod_seen(obj, now)

    def _pod_seen(self, pod: Obj, now: float) -> None:
        name = pod["metadata"]["name"]
        self.stats.pods_seen.setdefault(name, now)
        if pod["metadata"].get("deletionTimestamp"):
            self._pod_gone(name)
            return
        conditions = (pod.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            self.stats.pods_ready.setdefault(name, now)
        if not (pod.get("spec") or {}).get("nodeName") or name in self.agents:
            return
        self.stats.pods_bound.setdefault(name, now)
        env = pod_environment(pod)
        env.update({
            "FFRTMP_OUTPUT_ROOT": str(self.work_dir / "output"),
            "FFRTMP_SCRATCH_DIR": str(self.work_dir / "scratch"),
            "FFRTMP_MEDIA_ROOTS": "/media",
            "FFRTMP_LEASE_SECONDS": str(self.lease_seconds),
            "FFRTMP_PROGRESS_INTERVAL": str(self.progress_interval),
            "FFRTMP_METRICS_PORT": "0",
        })  # fmt: skip
        config = WorkerConfig.from_env(env)
        agent = SimAgent(self.client, config, self.metrics, self.speed, self.counters)
        self.agents[name] = agent
        self.runs[name] = task = asyncio.create_task(agent.run_simulated(), name=f"agent-{name}")
        task.add_done_callback(_report_crash)

    def _pod_gone(self, name: str) -> None:
        agent = self.agents.get(name)
        if agent is not None and not agent.draining:
            agent.begin_drain()

    @property
    def ready_agents(self) -> int:
        return sum(1 for a in self.agents.values() if a.lease_written is not None)

    def agent_writes(self) -> int:
        return sum(a.attempts_started for a in self.agents.values())

    async def close(self) -> None:
        """Stop everything at once (the namespace is deleted next: no Lease releases)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for agent in self.agents.values():
            agent.quiet_exit = True
        for task in self.runs.values():
            task.cancel()
        await asyncio.gather(*self.runs.values(), return_exceptions=True)

    def names(self) -> Iterable[str]:
        return self.agents.keys()


def _report_crash(task: asyncio.Task[None]) -> None:
    """A simulated kubelet or worker that dies must say so (else a benchmark just times out)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s crashed", task.get_name(), exc_info=task.exception())
