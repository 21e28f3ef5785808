"""The worker agent with real ffmpeg: results, failures, self-test, drain, metrics."""

from __future__ import annotations

import os
import re
import time
import urllib.request
from typing import Any

import pytest

from conftest import Farm
from helpers import ffprobe, make_clip, wait_for

pytestmark = pytest.mark.integration

ONE_CPU = {"limits": {"cpu": "1"}}


def status(job: dict[str, Any]) -> dict[str, Any]:
    return job.get("status") or {}


def ready_pool(farm: Farm, name: str = "cpu", workers: int = 1) -> None:
    wait_for(
        lambda: status(farm.cluster.get("wp", name, farm.namespace)).get("readyWorkers") == workers,
        60,
        f"{workers} ready worker(s) in {name}",
    )


def test_job_succeeds_with_valid_output_and_monotonic_progress(farm: Farm) -> None:
    clip = make_clip(farm.media / "clip.mp4", seconds=6, size="640x360")
    farm.pool("cpu", minWorkers=1, autoscaling={"enabled": False})
    farm.start_operator()
    farm.start_workers()
    ready_pool(farm)
    outputs = [
        {
            "name": "sd",
            "video": {"codec": "h264", "crf": 28, "preset": "veryfast", "width": 480},
            "audio": {"codec": "aac", "bitrate": "96k"},
        }
    ]
    # Read in real time: 6 s of encoding whatever this machine's speed, so progress has steps to show.
    farm.job("watched", str(clip), outputs, realtime=True, resources=ONE_CPU)
    seen: list[float] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        s = status(farm.get_job("watched"))
        pct = (s.get("progress") or {}).get("percent")
        if pct is not None and (not seen or pct != seen[-1]):
            seen.append(pct)
        if s.get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(0.1)
    s = status(farm.get_job("watched"))
    assert s["phase"] == "Succeeded", s
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    assert seen[0] == 0.0 and seen[-1] == 100.0
    assert len([p for p in seen if 0 < p < 100]) >= 2, seen
    out = s["outputs"][0]
    assert out["codec"] == "h264" and out["width"] == 480 and out["height"] == 270
    assert abs(out["durationSeconds"] - 6) < 0.5
    probe = ffprobe(out["path"])
    codecs = {st["codec_type"]: st["codec_name"] for st in probe["streams"]}
    assert codecs == {"video": "h264", "audio": "aac"}
    assert int(probe["format"]["size"]) == out["bytes"]
    assert s["queuedTime"] and s["startTime"] and s["completionTime"]
    # The operator's decision is an Event; the worker's transitions are conditions (`--job-events all`
    # would repeat them as Started and Completed Events).
    reasons = [e["reason"] for e in farm.events("watched")]
    assert reasons == ["Scheduled"], reasons
    conditions = {c["type"]: c for c in s["conditions"]}
    assert conditions["Running"]["status"] == "False" and conditions["Complete"]["status"] == "True", conditions


@pytest.mark.parametrize(
    ("case", "reason", "words"),
    [
        ("missing", "InputNotFound", "does not exist"),
        ("random-bytes", "InvalidInput", ""),
        ("zero-byte", "InvalidInput", ""),
        ("bad-option", "FfmpegError", "nonsense"),
    ],
)
def test_bad_inputs_fail_with_reason_and_leave_nothing(farm: Farm, case: str, reason: str, words: str) -> None:
    farm.pool("cpu", minWorkers=1, autoscaling={"enabled": False})
    extra: dict[str, Any] = {}
    path = farm.media / f"{case}.mp4"
    if case == "random-bytes":
        path.write_bytes(bytes(range(256)) * 4096)
    elif case == "zero-byte":
        path.write_bytes(b"")
    elif case == "bad-option":
        make_clip(path, seconds=1)
        extra["extraArgs"] = ["-tune", "nonsense"]
    farm.start_operator()
    farm.start_workers()
    farm.job("bad", str(path), backoffLimit=2, **extra)
    s = status(farm.wait_phase("bad", "Failed", timeout=90))
    assert s["reason"] == reason, s
    assert words in s["message"], s["message"]
    assert len(s["message"]) < 600
    assert s["attempt"] == 1, "a permanent failure is not retried"
    assert s["result"]["stderrTail"] or case == "missing"
    job_dir = farm.output / farm.namespace / "bad"
    assert not job_dir.exists() or not any(job_dir.iterdir()), list(job_dir.iterdir())


def test_gpu_workers_fail_self_test_required_waits_preferred_falls_back(farm: Farm) -> None:
    clip = make_clip(farm.media / "clip.mp4", seconds=1)
    farm.pool("cpu", minWorkers=1, autoscaling={"enabled": False})
    farm.pool("nvenc", "nvenc", minWorkers=1, autoscaling={"enabled": False})
    farm.pool("qsv", "qsv", minWorkers=1, autoscaling={"enabled": False})
    farm.start_operator()
    farm.start_workers()
    ready_pool(farm)

    def degraded(pool: str) -> dict[str, Any] | None:
        conds = {c["type"]: c for c in status(farm.cluster.get("wp", pool, farm.namespace)).get("conditions", [])}
        d = conds.get("Degraded")
        return d if d and d["status"] == "True" and d["reason"] == "EncoderUnavailable" else None

    nvenc = wait_for(lambda: degraded("nvenc"), 60, "nvenc pool Degraded")
    assert "h264_nvenc" in nvenc["message"] and "libcuda" in nvenc["message"]
    qsv = wait_for(lambda: degraded("qsv"), 60, "qsv pool Degraded")
    assert "h264_qsv" in qsv["message"]
    pool = status(farm.cluster.get("wp", "nvenc", farm.namespace))
    assert pool["readyWorkers"] == 0 and pool["workers"] == 1
    lease = farm.cluster.list("lease", farm.namespace, "-l", "ffmpeg-rtmp.io/pool=nvenc")[0]
    assert lease["metadata"]["annotations"]["ffmpeg-rtmp.io/encoder-self-test"].startswith("failed: h264_nvenc")

    outputs = [{"name": "out", "video": {"codec": "h264", "crf": 30, "preset": "fast"}}]
    farm.job("must-gpu", str(clip), outputs, accelerator="nvenc", hardwarePolicy="required")
    farm.job("may-gpu", str(clip), outputs, accelerator="nvenc", hardwarePolicy="preferred")
    done = farm.wait_phase("may-gpu", "Succeeded", timeout=60)
    assert status(done)["pool"] == "cpu" and status(done)["accelerator"] == "cpu"
    waiting = status(farm.get_job("must-gpu"))
    assert waiting["phase"] == "Queued"
    queued = next(c for c in waiting["conditions"] if c["type"] == "Queued")
    assert queued["status"] == "True" and queued["reason"] == "NoReadyWorker", queued
    assert "nvenc" in queued["message"]


def test_a_pool_whose_output_root_is_not_writable_is_degraded_and_its_job_stays_queued(farm: Farm) -> None:
    if os.geteuid() == 0:
        unwritable = "/sys"  # sysfs refuses new files even to root
    else:
        (farm.root / "read-only").mkdir(mode=0o555)
        unwritable = str(farm.root / "read-only")
    clip = make_clip(farm.media / "clip.mp4", seconds=1)
    farm.pool("cpu", minWorkers=1, autoscaling={"enabled": False}, outputRoot=unwritable)
    farm.start_operator()
    farm.start_workers()
    ready_seen: list[dict[str, Any]] = []

    def degraded() -> dict[str, Any] | None:
        conds = {c["type"]: c for c in status(farm.cluster.get("wp", "cpu", farm.namespace)).get("conditions", [])}
        if conds.get("Ready", {}).get("status") == "True":
            ready_seen.append(conds["Ready"])
        d = conds.get("Degraded")
        return d if d and d["status"] == "True" and d["reason"] == "StorageUnavailable" else None

    cond = wait_for(degraded, 60, "pool Degraded with StorageUnavailable")
    assert f"output root {unwritable} is not writable: cannot create a file (Permission denied)" in cond["message"]
    lease = farm.cluster.list("lease", farm.namespace, "-l", "ffmpeg-rtmp.io/pool=cpu")[0]
    assert lease["metadata"]["annotations"]["ffmpeg-rtmp.io/storage-check"].startswith(
        f"failed: output root {unwritable}"
    )

    farm.job("waits", str(clip))

    def queued_reason() -> dict[str, Any] | None:
        degraded()
        conds = {c["type"]: c for c in status(farm.get_job("waits")).get("conditions", [])}
        q = conds.get("Queued")
        return q if q and q["reason"] == "StorageUnavailable" else None

    queued = wait_for(queued_reason, 60, "job Queued with StorageUnavailable")
    assert queued["status"] == "True"
    assert f"output root {unwritable} is not writable" in queued["message"], queued
    job = status(farm.get_job("waits"))
    assert job["phase"] == "Queued" and "worker" not in job, job
    pool = status(farm.cluster.get("wp", "cpu", farm.namespace))
    assert pool["readyWorkers"] == 0 and pool["workers"] == 1, pool
    ready = next(c for c in pool["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "NoReadyWorkers", ready
    assert ready_seen == [], f"the pool was Ready at some point: {ready_seen}"


def test_a_worker_whose_output_root_appears_late_recovers_and_runs_the_job(farm: Farm) -> None:
    late = farm.root / "mounted-late"
    clip = make_clip(farm.media / "clip.mp4", seconds=1)
    farm.pool("cpu", minWorkers=1, autoscaling={"enabled": False}, outputRoot=str(late))
    farm.start_operator()
    farm.start_workers()

    def degraded_reason() -> str | None:
        conds = {c["type"]: c for c in status(farm.cluster.get("wp", "cpu", farm.namespace)).get("conditions", [])}
        d = conds.get("Degraded")
        return d["message"] if d and d["reason"] == "StorageUnavailable" else None

    message = wait_for(degraded_reason, 60, "pool Degraded with StorageUnavailable")
    assert f"output root {late} is not writable: does not exist (no volume mounted there?)" in message
    farm.job("later", str(clip))
    late.mkdir()
    s = status(farm.wait_phase("later", "Succeeded", "Failed", timeout=120))
    assert s["phase"] == "Succeeded", s
    assert s["outputs"][0]["path"].startswith(str(late)), s["outputs"]
    ready_pool(farm)


def test_a_job_over_its_memory_limit_is_stopped_with_memory_limit_exceeded(farm: Farm) -> None:
    clip = make_clip(farm.media / "hd.mp4", seconds=4, size="1920x1080")
    farm.pool("cpu", minWorkers=1, autoscaling={"enabled": False})
    farm.start_operator()
    farm.start_workers()
    outputs = [{"name": "hd", "video": {"codec": "h264", "crf": 23, "preset": "medium"}}]
    farm.job("greedy", str(clip), outputs, resources={"limits": {"cpu": "1", "memory": "40Mi"}}, backoffLimit=2)
    s = status(farm.wait_phase("greedy", "Succeeded", "Failed", timeout=120))
    assert s["phase"] == "Failed" and s["reason"] == "MemoryLimitExceeded", s
    assert s["attempt"] == 1, "going over the job's own limit is not retried"
    match = re.search(
        r"ffmpeg used (\d+)Mi of resident memory, over the job's limit of 40Mi "
        r"\(spec\.resources\.limits\.memory\), and was stopped\.$",
        s["message"],
    )
    assert match and int(match[1]) > 40, s["message"]
    job_dir = farm.output / farm.namespace / "greedy"
    assert not job_dir.exists() or not any(job_dir.iterdir()), list(job_dir.iterdir())


def test_a_job_created_again_under_the_same_name_is_a_new_job_for_the_worker(farm: Farm) -> None:
    """The worker remembers the attempts it ran by the job's uid: a job deleted and created again
    with the same name runs its own attempt 1 (it was taken for a lost result and handed back)."""
    clip = make_clip(farm.media / "again.mp4", seconds=1)
    farm.pool("cpu", minWorkers=1, autoscaling={"enabled": False})
    farm.start_operator()
    farm.start_workers()
    ready_pool(farm)
    for round_ in (1, 2):
        farm.job("again", str(clip))
        s = status(farm.wait_phase("again", "Succeeded", "Failed", timeout=120))
        assert (s["phase"], s["attempt"]) == ("Succeeded", 1), (round_, s)
        farm.cluster.kubectl("delete", "tj", "again", "-n", farm.namespace, "--wait=true")


def test_sigterm_drains_running_job_to_completion(farm: Farm) -> None:
    clip = make_clip(farm.media / "clip.mp4", seconds=6)
    farm.pool("cpu", minWorkers=1, autoscaling={"enabled": False}, terminationGracePeriodSeconds=40)
    farm.start_operator()
    farm.start_workers()
    ready_pool(farm)
    # 6 s of encoding on any machine: still running when its Pod is deleted, done well within the drain.
    farm.job("finishing", str(clip), realtime=True, resources=ONE_CPU)
    running = farm.wait_phase("finishing", "Running", timeout=60)
    worker = status(running)["worker"]
    farm.cluster.kubectl("delete", "pod", worker, "-n", farm.namespace, "--wait=false")
    s = status(farm.wait_phase("finishing", "Succeeded", "Failed", timeout=90))
    assert s["phase"] == "Succeeded" and s["attempt"] == 1 and s["worker"] == worker, s


def test_sigterm_hands_back_what_cannot_finish(farm: Farm) -> None:
    clip = make_clip(farm.media / "paced.mp4", seconds=12)
    farm.pool("cpu", minWorkers=1, autoscaling={"enabled": False}, terminationGracePeriodSeconds=14)
    farm.start_operator()
    farm.start_workers()
    ready_pool(farm)
    # 12 s of encoding on any machine: longer than the 4 s drain (grace 14 s - 10 s).
    farm.job("handed", str(clip), realtime=True, resources=ONE_CPU, backoffLimit=0)
    first = status(farm.wait_phase("handed", "Running", timeout=60))["worker"]
    farm.cluster.kubectl("delete", "pod", first, "-n", farm.namespace, "--wait=false")
    handed = wait_for(
        lambda: next((e for e in farm.events("handed") if e["reason"] == "HandedBack"), None), 60, "HandedBack"
    )
    assert first in handed["message"]
    s = status(farm.wait_phase("handed", "Succeeded", "Failed", timeout=180))
    # backoffLimit 0: a handed-back attempt does not count as a failure.
    assert s["phase"] == "Succeeded" and s["attempt"] == 2 and s["worker"] != first, s
    assert not s.get("failed")


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def _value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not in metrics")


def test_worker_and_operator_metrics(farm: Farm) -> None:
    from ffrtmp.dev.cluster import free_port

    clip = make_clip(farm.media / "clip.mp4", seconds=1)
    farm.pool("cpu", minWorkers=1, maxConcurrentJobs=2, autoscaling={"enabled": False})
    operator_port = free_port()
    farm.start_operator("--metrics-port", str(operator_port))
    farm.start_workers()
    ready_pool(farm)
    for i in range(3):
        farm.job(f"ok-{i}", str(clip), slaSeconds=300)
    farm.job("broken", str(farm.media / "missing.mp4"))
    farm.wait_all(timeout=120)
    [info] = farm.workers_state().values()
    worker = _metrics(int(info["env"]["FFRTMP_METRICS_PORT"]))
    assert _value(worker, "ffrtmp_worker_jobs_completed_total", pool="cpu") == 3
    assert _value(worker, "ffrtmp_worker_jobs_failed_total", pool="cpu", reason="InputNotFound") == 1
    here = {"namespace": farm.namespace, "pool": "cpu"}
    assert _value(worker, "ffrtmp_job_input_bytes_total", **here) == 3 * clip.stat().st_size
    ok = [j for j in farm.jobs() if j["metadata"]["name"].startswith("ok-")]
    written = sum(o["bytes"] for j in ok for o in j["status"]["outputs"])
    assert written > 0 and _value(worker, "ffrtmp_job_output_bytes_total", **here) == written
    assert _value(worker, "job_duration_seconds_count", pool="cpu") == 4
    assert _value(worker, "ffrtmp_worker_active_jobs") == 0
    assert _value(worker, "ffrtmp_worker_free_slots") == 2
    assert _value(worker, "ffrtmp_worker_encoder_ok") == 1
    assert re.search(r"ffrtmp_worker_encode_fps \d", worker)
    # The Lease's health, measured where it could fail (issue 19).
    assert _value(worker, "ffrtmp_worker_lease_renew_seconds_count") >= 1
    assert _value(worker, "ffrtmp_worker_lease_renew_failures_total") == 0
    assert _value(worker, "ffrtmp_worker_event_loop_lag_seconds_count") >= 1
    # API reachability is a metric and readiness, not liveness (issue 16).
    assert _value(worker, "ffrtmp_worker_api_reachable") == 1
    assert _value(worker, "ffrtmp_worker_api_last_success_age_seconds") < 60
    port = int(info["env"]["FFRTMP_METRICS_PORT"])
    for path in ("healthz", "readyz"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=5) as resp:
            assert resp.status == 200

    def operator_metrics() -> str | None:
        text = _metrics(operator_port)
        return text if 'ffrtmp_jobs{namespace="' in text and "ffrtmp_pool_ready_workers{" in text else None

    ns = farm.namespace

    # Gauges are refreshed on the operator's next pass (at most every resync interval).
    def three_succeeded() -> bool:
        text = operator_metrics()
        try:
            return text is not None and _value(text, "ffrtmp_jobs", namespace=ns, pool="cpu", phase="Succeeded") == 3
        except AssertionError:
            return False

    wait_for(three_succeeded, 30, "operator metrics")
    op = _metrics(operator_port)
    assert _value(op, "ffrtmp_jobs_finished_total", namespace=ns, pool="cpu", phase="Succeeded") == 3
    assert _value(op, "ffrtmp_jobs_failed_total", namespace=ns, pool="cpu", reason="InputNotFound") == 1
    assert _value(op, "ffrtmp_worker_sla_compliance_rate", namespace=ns, pool="cpu") == 100.0
    assert _value(op, "ffrtmp_pool_ready_workers", namespace=ns, pool="cpu") == 1
    assert _value(op, "ffrtmp_pool_desired_workers", namespace=ns, pool="cpu") == 1
    assert _value(op, "job_duration_seconds_count", namespace=ns, pool="cpu") == 3
    assert _value(op, "ffrtmp_job_queue_seconds_count", namespace=ns, pool="cpu") >= 3
    assert _value(op, "ffrtmp_operator_leader") == 1
    [pod] = farm.workers_state()
    # Workers here renew a 5 s Lease every 1.7 s: the freshest renewal the operator saw is younger than that.
    assert 0 <= _value(op, "ffrtmp_operator_worker_lease_age_seconds", namespace=ns, worker=pod) < 5
    assert _value(op, "ffrtmp_operator_event_loop_lag_seconds_count") >= 1
