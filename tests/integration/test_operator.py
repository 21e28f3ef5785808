"""The operator with real worker agents running real ffmpeg, on the local control plane."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from conftest import Farm
from ffrtmp.kube import KubeClient, load_config
from ffrtmp.worker.fence import FencedStatus, Superseded
from helpers import ffprobe, make_clip, wait_for

pytestmark = pytest.mark.integration

ONE_CPU = {"limits": {"cpu": "1"}}


def status(job: dict[str, Any]) -> dict[str, Any]:
    return job.get("status") or {}


def ts(value: str) -> float:
    return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%SZ"))


def test_pools_land_on_matching_nodes_and_missing_gpus_degrade(farm: Farm) -> None:
    farm.start_operator()
    farm.pool("cpu", "cpu", minWorkers=1, autoscaling={"enabled": False})
    farm.pool("nvenc", "nvenc", minWorkers=1, autoscaling={"enabled": False})
    farm.pool("qsv", "qsv", minWorkers=1, autoscaling={"enabled": False})
    farm.pool("huge", "nvenc", minWorkers=1, gpusPerWorker=8, autoscaling={"enabled": False})

    def nodes() -> dict[str, str] | None:
        pods = farm.cluster.list("pods", farm.namespace)
        placed = {p["metadata"]["labels"]["ffmpeg-rtmp.io/pool"]: p["spec"].get("nodeName", "") for p in pods}
        return placed if all(placed.get(k) for k in ("cpu", "nvenc", "qsv")) else None

    placed = wait_for(nodes, 60, "worker Pods of three pools scheduled")
    # A cpu pool without a nodeSelector may use any untainted node (intel-1 too, when other tests' Pods
    # fill the cpu nodes): never a tainted GPU node.
    assert not placed["cpu"].startswith("gpu-"), placed
    assert placed["nvenc"].startswith("gpu-")
    assert placed["qsv"] == "intel-1"
    pods = {p["metadata"]["labels"]["ffmpeg-rtmp.io/pool"]: p for p in farm.cluster.list("pods", farm.namespace)}
    assert pods["nvenc"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pods["qsv"]["spec"]["containers"][0]["resources"]["limits"]["gpu.intel.com/i915"] == "1"
    assert not pods["huge"]["spec"].get("nodeName")

    def degraded() -> dict[str, Any] | None:
        conds = {c["type"]: c for c in status(farm.cluster.get("wp", "huge", farm.namespace)).get("conditions", [])}
        d = conds.get("Degraded")
        return d if d and d["status"] == "True" else None

    cond = wait_for(degraded, 60, "pool huge Degraded")
    assert cond["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in cond["message"]


def test_fifty_jobs_three_workers_two_slots(farm: Farm) -> None:
    clip = make_clip(farm.media / "clip.mp4", seconds=2, size="320x240")
    farm.pool(
        "cpu",
        "cpu",
        maxConcurrentJobs=2,
        minWorkers=3,
        maxWorkers=3,
        paused=True,
        autoscaling={"enabled": False},
    )
    farm.start_operator()
    farm.start_workers()
    wait_for(
        lambda: status(farm.cluster.get("wp", "cpu", farm.namespace)).get("readyWorkers") == 3,
        60,
        "3 ready workers",
    )
    docs = []
    for i in range(50):
        docs.append({
            "apiVersion": "ffmpeg-rtmp.io/v1alpha1", "kind": "TranscodeJob", "metadata": {"name": f"job-{i:02d}"},
            "spec": {"input": {"uri": str(clip)}, "priority": (i % 5) * 10, "resources": ONE_CPU,
                     "outputs": [{"name": "out", "video": {"codec": "h264", "crf": 32, "preset": "ultrafast",
                                                           "height": 120}}]},
        })  # fmt: skip
    farm.cluster.apply(docs, farm.namespace)
    wait_for(
        lambda: all(status(j).get("phase") == "Queued" for j in farm.jobs()) and len(farm.jobs()) == 50,
        60,
        "50 queued",
    )
    farm.cluster.kubectl("patch", "wp", "cpu", "-n", farm.namespace, "--type=merge", "-p", '{"spec":{"paused":false}}')
    jobs = farm.wait_all(timeout=300)
    assert all(status(j)["phase"] == "Succeeded" for j in jobs), [status(j).get("message") for j in jobs]
    # Never more than 2 running per worker: overlap of [start, completion] intervals per worker.
    by_worker: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for j in jobs:
        s = status(j)
        assert s["attempt"] == 1 and s["result"]["attempt"] == 1
        by_worker[s["worker"]].append((ts(s["startTime"]), ts(s["completionTime"])))
        out = ffprobe(s["outputs"][0]["path"])
        video = next(st for st in out["streams"] if st["codec_type"] == "video")
        assert video["codec_name"] == "h264" and video["height"] == 120
    assert len(by_worker) == 3
    for worker, spans in by_worker.items():
        # Times have 1 s resolution: count jobs running strictly inside each start second.
        for start, _ in spans:
            running = sum(1 for s, e in spans if s <= start and e > start)
            assert running <= 2, f"{worker} ran {running} jobs at once"
    # Priorities honoured: a higher priority job was never scheduled after a lower one.
    sched = sorted((ts(status(j)["scheduledTime"]), -j["spec"]["priority"]) for j in jobs)
    first_batch = [p for t, p in sched[:6]]
    assert sorted(first_batch) == first_batch[: len(first_batch)] or min(-p for p in first_batch) == 40
    for a in jobs:
        for b in jobs:
            if a["spec"]["priority"] > b["spec"]["priority"]:
                assert ts(status(a)["scheduledTime"]) <= ts(status(b)["scheduledTime"])


def test_killed_worker_requeues_job_and_late_write_is_fenced(farm: Farm) -> None:
    clip = make_clip(farm.media / "paced.mp4", seconds=8)
    farm.pool("cpu", "cpu", maxConcurrentJobs=1, minWorkers=2, maxWorkers=2, autoscaling={"enabled": False})
    farm.start_operator()
    farm.start_workers("--restart-delay", "30")
    wait_for(
        lambda: status(farm.cluster.get("wp", "cpu", farm.namespace)).get("readyWorkers") == 2,
        60,
        "2 ready workers",
    )
    farm.job("victim", str(clip), realtime=True, resources=ONE_CPU)  # 8 s of encoding on any machine
    running = farm.wait_phase("victim", "Running", timeout=60)
    first_worker = status(running)["worker"]
    wait_for(lambda: (status(farm.get_job("victim")).get("progress") or {}).get("percent", 0) > 0, 30, "progress")
    os.kill(int(farm.workers_state()[first_worker]["pid"]), signal.SIGKILL)

    requeued = wait_for(
        lambda: next((e for e in farm.events("victim") if e["reason"] == "WorkerLost"), None),
        60,
        "WorkerLost event",
    )
    assert first_worker in requeued["message"]
    done = farm.wait_phase("victim", "Succeeded", "Failed", timeout=120)
    s = status(done)
    assert s["phase"] == "Succeeded", s
    assert s["attempt"] == 2 and s["worker"] != first_worker
    assert s.get("failed") in (None, 0)  # a lost worker does not count against backoffLimit
    assert not list((farm.output / farm.namespace / "victim").glob(".attempt-*"))

    # The killed worker's late write (attempt 1) must be rejected.
    async def late_write() -> str:
        async with KubeClient(load_config(str(farm.cluster.kubeconfig))) as client:
            stale = json.loads(json.dumps(running))
            fence = FencedStatus(client, stale, first_worker, 1)
            try:
                await fence.patch({"progress": {"percent": 99.0}, "message": "late write"})
            except Superseded as e:
                return str(e)
            return "accepted"

    outcome = asyncio.run(late_write())
    assert outcome != "accepted"
    assert status(farm.get_job("victim"))["phase"] == "Succeeded"
    assert status(farm.get_job("victim")).get("message") != "late write"


def test_operator_sigkill_midflight_every_job_succeeds_once(farm: Farm) -> None:
    clip = make_clip(farm.media / "clip.mp4", seconds=4, size="320x240")
    farm.pool("cpu", "cpu", maxConcurrentJobs=3, minWorkers=3, maxWorkers=3, autoscaling={"enabled": False})
    op = farm.start_operator()
    farm.start_workers()
    wait_for(
        lambda: status(farm.cluster.get("wp", "cpu", farm.namespace)).get("readyWorkers") == 3,
        60,
        "3 ready workers",
    )
    for i in range(30):
        farm.job(
            f"j{i:02d}",
            str(clip),
            [{"name": "out", "video": {"codec": "h264", "crf": 30, "preset": "medium"}}],
            resources=ONE_CPU,
        )
    wait_for(lambda: sum(1 for j in farm.jobs() if status(j).get("phase") == "Running") >= 3, 60, "jobs running")
    op.kill()
    time.sleep(3)
    farm.start_operator(name="operator-2")
    jobs = farm.wait_all(timeout=300)
    for j in jobs:
        s = status(j)
        assert s["phase"] == "Succeeded", (j["metadata"]["name"], s)
        assert s["result"]["attempt"] == s["attempt"]
        assert s["attempt"] == 1, f"{j['metadata']['name']} ran {s['attempt']} times"
        assert len(s["outputs"]) == 1


def test_timeout_fails_with_deadline_exceeded_and_stops_ffmpeg(farm: Farm) -> None:
    clip = make_clip(farm.media / "paced.mp4", seconds=8)
    farm.pool("cpu", "cpu", minWorkers=1, autoscaling={"enabled": False})
    farm.start_operator()
    farm.start_workers()
    farm.job("slow", str(clip), realtime=True, timeoutSeconds=2, resources=ONE_CPU)  # cannot end within 2 s
    started = time.monotonic()
    done = farm.wait_phase("slow", "Failed", timeout=60)
    assert status(done)["reason"] == "DeadlineExceeded"
    assert time.monotonic() - started < 30
    # ffmpeg is gone within the kill grace and left nothing behind.
    wait_for(
        lambda: not list((farm.output / farm.namespace / "slow").glob(".attempt-*")),
        15,
        "partial output removed",
    )
    wait_for(lambda: "slow" not in _ffmpeg_cmdlines(farm.output), 15, "ffmpeg stopped")


def _ffmpeg_cmdlines(output: Path) -> str:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("ffmpeg") and str(output) in cmd:
                found.append(cmd)
    return "\n".join(found)


def test_retryable_failure_retries_then_succeeds(farm: Farm) -> None:
    """The output folder is unwritable for the first attempt (a full or read-only disk), then fixed."""
    clip = make_clip(farm.media / "clip.mp4", seconds=2)
    farm.pool("cpu", "cpu", minWorkers=1, autoscaling={"enabled": False})
    blocker = farm.output / farm.namespace / "flaky"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the job's folder must go")
    farm.start_operator()
    farm.start_workers()
    farm.job("flaky", str(clip), backoffLimit=3)
    wait_for(lambda: (status(farm.get_job("flaky")).get("failed") or 0) >= 1, 60, "first attempt failed")
    blocker.unlink()
    done = farm.wait_phase("flaky", "Succeeded", "Failed", timeout=90)
    s = status(done)
    assert s["phase"] == "Succeeded", s
    assert s["attempt"] >= 2 and s["failed"] >= 1
    assert any(e["reason"] == "Retrying" for e in farm.events("flaky"))


def test_permanent_failure_fails_at_once(farm: Farm) -> None:
    farm.pool("cpu", "cpu", minWorkers=1, autoscaling={"enabled": False})
    farm.start_operator()
    farm.start_workers()
    farm.job("missing", str(farm.media / "nope.mp4"), backoffLimit=5)
    done = farm.wait_phase("missing", "Failed", timeout=60)
    s = status(done)
    assert s["reason"] == "InputNotFound"
    assert s["attempt"] == 1
    assert "nope.mp4" in s["message"]
    conds = {c["type"]: c for c in s["conditions"]}
    assert conds["Failed"]["status"] == "True" and conds["Failed"]["reason"] == "InputNotFound"
    farm.cluster.kubectl("wait", "--for=condition=Failed", "tj/missing", "-n", farm.namespace, "--timeout=5s")


def test_delete_running_job_stops_ffmpeg(farm: Farm) -> None:
    clip = make_clip(farm.media / "paced.mp4", seconds=8)
    farm.pool("cpu", "cpu", minWorkers=1, autoscaling={"enabled": False})
    farm.start_operator()
    farm.start_workers()
    farm.job("doomed", str(clip), realtime=True, resources=ONE_CPU)
    farm.wait_phase("doomed", "Running", timeout=60)
    wait_for(lambda: "doomed" in _ffmpeg_cmdlines(farm.output), 15, "ffmpeg running")
    farm.cluster.kubectl("delete", "tj", "doomed", "-n", farm.namespace)
    wait_for(lambda: "doomed" not in _ffmpeg_cmdlines(farm.output), 20, "ffmpeg stopped after delete")
    wait_for(lambda: not (farm.output / farm.namespace / "doomed").exists(), 10, "partial output removed")


def test_suspend_holds_and_resume_runs(farm: Farm) -> None:
    clip = make_clip(farm.media / "clip.mp4", seconds=2)
    farm.pool("cpu", "cpu", minWorkers=1, autoscaling={"enabled": False})
    farm.start_operator()
    farm.start_workers()
    farm.job("held", str(clip), suspend=True)
    wait_for(
        lambda: any(
            c["type"] == "Suspended" and c["status"] == "True"
            for c in status(farm.get_job("held")).get("conditions", [])
        ),
        30,
        "Suspended",
    )
    time.sleep(3)
    assert status(farm.get_job("held"))["phase"] == "Pending"
    farm.cluster.kubectl(
        "patch", "tj", "held", "-n", farm.namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    done = farm.wait_phase("held", "Succeeded", timeout=60)
    conds = {c["type"]: c for c in status(done)["conditions"]}
    assert conds["Suspended"]["status"] == "False"


def test_ttl_deletes_finished_job(farm: Farm) -> None:
    clip = make_clip(farm.media / "clip.mp4", seconds=1)
    farm.pool("cpu", "cpu", minWorkers=1, autoscaling={"enabled": False})
    farm.start_operator()
    farm.start_workers()
    farm.job("shortlived", str(clip), ttlSecondsAfterFinished=2)
    farm.wait_phase("shortlived", "Succeeded", timeout=60)
    wait_for(
        lambda: farm.cluster.kubectl("get", "tj", "shortlived", "-n", farm.namespace, check=False).returncode != 0,
        30,
        "TTL deletion",
    )
    assert (farm.output / farm.namespace / "shortlived" / "out.mp4").exists()  # outputs outlive the job object
