"""Worker faults with real ffmpeg: a worker SIGKILLed mid-job, worker Pods deleted (gracefully and by
force), and a partitioned worker (SIGSTOP of its agent while its ffmpeg keeps running) whose late
writes must be fenced once its job was redone elsewhere."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import invariants
import pytest
from chaoslib import ChaosFarm, JobRecorder, ScenarioResult, copy_clip, report, status

from helpers import wait_for

pytestmark = pytest.mark.chaos

ONE_CPU = {"limits": {"cpu": "1"}}


def _running_with_progress(farm: ChaosFarm, name: str, timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        s = status(farm.get_job(name))
        return s if s.get("phase") == "Running" and (s.get("progress") or {}).get("percent", 0) > 0 else None

    result: dict[str, Any] = wait_for(check, timeout, f"{name} running with progress", interval=0.25)
    return result


def test_worker_killed_and_pods_deleted_mid_job(farm: ChaosFarm, clips: dict) -> None:
    """Three workers each run a slow job; one worker is SIGKILLed, one Pod deleted (graceful: the worker
    drains), one Pod force-deleted (the operator requeues at once while the old process still runs).
    Every job still succeeds exactly once, from its current attempt, with nothing left behind."""
    paced = copy_clip(clips["paced"], farm.media)
    short = copy_clip(clips["short"], farm.media)
    farm.pool("cpu", "cpu", minWorkers=3, maxWorkers=3, maxConcurrentJobs=1, autoscaling={"enabled": False})
    farm.start_operator()
    farm.start_workers("--restart-delay", "2")
    farm.wait_ready("cpu", 3)
    victims = ["kill", "delete", "force"]
    # Read in real time: each victim encodes for 8 s whatever this machine's speed, so it is hit mid-encode.
    docs = [farm.job_doc(v, str(paced), realtime=True, resources=ONE_CPU, priority=100) for v in victims]
    docs += [farm.job_doc(f"filler-{i}", str(short), resources=ONE_CPU) for i in range(6)]
    with JobRecorder(farm.cluster, farm.namespace) as rec:
        farm.apply_all(docs)
        workers = {v: _running_with_progress(farm, v)["worker"] for v in victims}
        assert len(set(workers.values())) == 3, workers
        faults: dict[str, float] = {}
        faults["kill"] = time.time()
        os.kill(farm.worker_pid(workers["kill"]), signal.SIGKILL)
        faults["delete"] = time.time()
        farm.cluster.kubectl("delete", "pod", workers["delete"], "-n", farm.namespace, "--wait=false")
        faults["force"] = time.time()
        farm.cluster.kubectl(
            "delete", "pod", workers["force"], "-n", farm.namespace, "--grace-period=0", "--force", "--wait=false"
        )
        farm.wait_all(timeout=150)
        # Recovered: the victim runs again (or, drained in time, finished) after its fault.
        recover = {v: rec.wait_first(t, "Running", "Succeeded", name=v, timeout=1) - t for v, t in faults.items()}
    found = invariants.check(farm)
    print(found.summary(), found.redone, found.overlaps, recover)
    s = {v: status(farm.get_job(v)) for v in victims}
    assert s["kill"]["attempt"] == 2, s["kill"]  # its restarted worker handed it back (or its Lease expired)
    assert s["force"]["attempt"] == 2 and s["force"]["worker"] != workers["force"], s["force"]
    assert not s["kill"].get("failed") and not s["force"].get("failed")  # a lost worker is no failure
    assert max(recover.values()) < 30, recover
    report(
        ScenarioResult(
            "worker SIGKILL / Pod delete / force delete", found.jobs,
            "SIGKILL worker, delete Pod, force-delete Pod (mid-encode)", len(found.lost), len(found.twice),
            max(recover.values()), f"redone {len(found.redone)} (the killed and force-deleted)",
        )
    )  # fmt: skip


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_partitioned_worker_is_fenced(farm: ChaosFarm, clips: dict) -> None:
    """SIGSTOP a worker's agent mid-encode (its ffmpeg child keeps running and finishes): its Lease
    expires, the job is requeued and redone on the other worker. SIGCONT: the stale attempt's writes are
    refused, the job stays Succeeded with the other worker's result and files, redone exactly once."""
    paced = copy_clip(clips["paced"], farm.media)
    farm.pool("cpu", "cpu", minWorkers=2, maxWorkers=2, maxConcurrentJobs=1, autoscaling={"enabled": False})
    farm.start_operator()
    farm.start_workers()
    farm.wait_ready("cpu", 2)
    with JobRecorder(farm.cluster, farm.namespace) as rec:
        farm.job("split", str(paced), realtime=True, resources=ONE_CPU)  # encodes for 8 s on any machine
        first = _running_with_progress(farm, "split")["worker"]
        pid = farm.worker_pid(first)
        stopped = time.time()
        os.kill(pid, signal.SIGSTOP)
        try:
            rerun = rec.wait_first(stopped, "Running", name="split", timeout=60)
            done = farm.wait_phase("split", "Succeeded", "Failed", timeout=60)
            s = status(done)
            assert s["phase"] == "Succeeded" and s["attempt"] == 2 and s["worker"] != first, s
            out = Path(s["outputs"][0]["path"])
            before = _sha(out)
        finally:
            os.kill(pid, signal.SIGCONT)
        log = farm.root / "workers" / f"{first}.log"
        wait_for(lambda: "attempt split/1 ended" in log.read_text(), 30, "the stale attempt to end")
        time.sleep(1)
    after = status(farm.get_job("split"))
    ended = [ln for ln in log.read_text().splitlines() if "attempt split/1 ended" in ln]
    assert ended and not ended[-1].endswith("Succeeded"), ended
    assert after["phase"] == "Succeeded" and after["attempt"] == 2 and after["result"]["worker"] == s["worker"], after
    assert after["completionTime"] == s["completionTime"]
    assert _sha(out) == before, "the stale attempt replaced the published output"
    # The resumed worker renews its Lease again and takes new work.
    farm.job("after", str(paced), [{"name": "out", "video": {"codec": "h264", "preset": "ultrafast"}}])
    farm.wait_phase("after", "Succeeded", timeout=60)
    found = invariants.check(farm)
    print(found.summary(), found.redone, found.overlaps)
    report(
        ScenarioResult(
            "partitioned worker (SIGSTOP agent)", found.jobs, "SIGSTOP worker agent past its Lease, then SIGCONT",
            len(found.lost), len(found.twice), rerun - stopped,
            f"stale attempt ended '{ended[-1].rsplit(': ', 1)[-1]}'; redone once; output unchanged",
        )
    )  # fmt: skip
