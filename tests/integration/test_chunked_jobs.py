"""A chunked job on the local control plane: the operator, two stand-in workers, real ffmpeg."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Farm
from ffrtmp.dev.cluster import free_port
from helpers import ffprobe, make_clip, wait_for

# Background: a third of these minutes is waiting (a killed worker's Lease to expire, an operator's
# restart, a suspended job's hold), and the main run is the suite's longer half.
pytestmark = [pytest.mark.integration, pytest.mark.background]

PARENT_LABEL = "ffmpeg-rtmp.io/parent"


def status(job: dict[str, Any]) -> dict[str, Any]:
    return job.get("status") or {}


OUTPUTS = [{"name": "main", "container": "mp4", "video": {"codec": "h264", "crf": 32, "preset": "ultrafast"}}]


def two_workers(farm: Farm) -> None:
    farm.pool("cpu", "cpu", minWorkers=2, maxWorkers=2, maxConcurrentJobs=1, autoscaling={"enabled": False})
    farm.start_workers()
    wait_for(lambda: status(farm.cluster.get("wp", "cpu", farm.namespace)).get("readyWorkers") == 2, 60, "2 workers")


def follow(farm: Farm, name: str, until: Callable[[], bool]) -> None:
    """Until `until()` or the job ends (what it went through: WatchedJobs)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if until() or farm.phase(name) in ("Succeeded", "Failed"):
            return
        time.sleep(0.3)
    raise AssertionError(f"{name} did not finish: {status(farm.get_job(name))}")


class WatchedJobs:
    """Every state the namespace's TranscodeJobs take, from `kubectl get tj --watch --output-watch-events
    -o json` started before the job exists: a poll of the list misses what lasts a fraction of a
    second (a plan task's summary; a stitch that runs, succeeds and is deleted with its parent between
    two polls)."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        self.last: dict[str, dict[str, Any]] = {}  # name -> its last state seen
        self.deleted: set[str] = set()
        self.summaries: dict[str, set[str]] = {}  # name -> every status.chunks.summary it showed
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [str(farm.cluster.bin_dir / "kubectl"), "--kubeconfig", str(farm.cluster.kubeconfig), "get", "tj",
             "-n", farm.namespace, "--watch", "--output-watch-events", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> WatchedJobs:
        self._thread.start()
        time.sleep(1)  # the watch's list is answered before the job is created
        return self

    def __exit__(self, *_: object) -> None:
        self._proc.terminate()
        self._proc.wait(10)
        self._thread.join(10)

    def _read(self) -> None:
        assert self._proc.stdout is not None
        pending = ""
        for line in self._proc.stdout:  # a JSON document per event (one line; indented ones are joined)
            pending += line
            try:
                event = json.loads(pending)
            except json.JSONDecodeError:
                continue
            pending = ""
            job = event["object"]
            name = job["metadata"]["name"]
            with self._lock:
                self.last[name] = job
                if event["type"] == "DELETED":
                    self.deleted.add(name)
                summary = (status(job).get("chunks") or {}).get("summary")
                if summary:
                    self.summaries.setdefault(name, set()).add(str(summary))

    def children(self, parent: str) -> dict[str, dict[str, Any]]:
        """Each child's last state, once the watch has seen every child of `parent` deleted (the
        operator deletes them when the parent ends)."""

        def last_states() -> dict[str, dict[str, Any]] | None:
            with self._lock:
                states = {
                    name: job
                    for name, job in self.last.items()
                    if (job["metadata"].get("labels") or {}).get(PARENT_LABEL) == parent
                }
                return states if states and set(states) <= self.deleted else None

        states: dict[str, dict[str, Any]] = wait_for(last_states, 60, f"the children of {parent} deleted")
        return {
            name: {"labels": job["metadata"]["labels"], "owner": job["metadata"]["ownerReferences"][0],
                   "spec": job["spec"], **status(job)}
            for name, job in states.items()
        }  # fmt: skip


class GaugeSampler:
    """The values the operator's ffrtmp_chunks_in_flight took, read every 50 ms in a thread (the gauges
    are refreshed at most once a second, so a slower sample can miss a short chunk phase)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.values: set[float] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError):
                self.values.update((metric_samples(self.port).get("ffrtmp_chunks_in_flight") or {}).values())

    def __enter__(self) -> GaugeSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


def metric_samples(port: int, prefix: str = "ffrtmp_chunk") -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The `prefix`* samples of the operator's (or a worker's) metrics: name -> {sorted labels: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith(prefix):
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_a_chunked_job_runs_on_two_workers_and_cleans_up(farm: Farm) -> None:
    # One keyframe: six exact 2 s cuts; 720p at veryfast, so that each chunk takes about a second.
    clip = make_clip(farm.media / "film.mp4", seconds=12, size="1280x720")
    outputs = [{"name": "main", "container": "mp4", "video": {"codec": "h264", "crf": 32, "preset": "veryfast"}}]
    port = free_port()
    farm.start_operator("--metrics-port", str(port))
    two_workers(farm)

    with WatchedJobs(farm) as watch, GaugeSampler(port) as gauge:
        farm.job("film", str(clip), outputs, chunking={"mode": "On", "chunkSeconds": 2},
                 resources={"limits": {"cpu": "1"}})  # fmt: skip
        follow(farm, "film", lambda: False)
        seen = watch.children("film")  # child name -> its last state
    summaries = watch.summaries.get("film", set())
    in_flight = gauge.values
    parent = farm.get_job("film")
    assert status(parent).get("phase") == "Succeeded", status(parent)

    chunks = status(parent)["chunks"]
    assert (chunks["total"], chunks["succeeded"], chunks["summary"]) == (6, 6, "6/6")
    assert chunks["plan"] == ",".join(str(s * 2_000_000) for s in range(7))
    assert "planning" in summaries and any(s.endswith("/6") and s != "6/6" for s in summaries), summaries
    parts = sorted(child["labels"]["ffmpeg-rtmp.io/chunk"] for child in seen.values())
    assert parts == ["audio", *(f"c{i:05d}" for i in range(6)), "plan", "stitch"]
    assert all(child["owner"]["uid"] == parent["metadata"]["uid"] for child in seen.values())
    assert all("chunking" not in child["spec"] for child in seen.values())
    workers = {child.get("worker") for name, child in seen.items() if name.startswith("film-c0")} - {None}
    assert len(workers) == 2, f"the chunks ran on {workers}"

    (output,) = status(parent)["outputs"]
    path = farm.output / farm.namespace / "film" / "main.mp4"
    assert output["path"] == str(path)
    probe = ffprobe(path)
    video = next(s for s in probe["streams"] if s["codec_type"] == "video")
    audio = next(s for s in probe["streams"] if s["codec_type"] == "audio")
    assert int(video["nb_frames"]) == 12 * 25
    assert abs(float(video["duration"]) - float(audio["duration"])) <= 1 / 25 + 1e-6
    assert not (path.parent / ".chunks").exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["main.mp4"]

    wait_for(
        lambda: not [j for j in farm.jobs() if (j["metadata"].get("labels") or {}).get(PARENT_LABEL)],
        60,
        "the children deleted",
    )

    # Every task's run time was observed once, by task; chunks were seen in flight on the two workers.
    ns_pool = (("namespace", farm.namespace), ("pool", "cpu"))
    # The workers counted the part of the input each task read: the plan's keyframe probe, the chunks
    # together and the audio the whole input once each, the stitch none (not the input once per task).
    read = sum(
        metric_samples(int(worker["env"]["FFRTMP_METRICS_PORT"]), "ffrtmp_job_input_bytes")[
            "ffrtmp_job_input_bytes_total"
        ][ns_pool]
        for worker in farm.workers_state().values()
    )
    assert read == pytest.approx(3 * clip.stat().st_size, rel=0.01), (read, clip.stat().st_size)
    assert in_flight & {1.0, 2.0}, in_flight
    assert max(in_flight) <= 2.0, in_flight
    counts = metric_samples(port)["ffrtmp_chunk_seconds_count"]
    assert counts == {
        (("task", "plan"),): 1,
        (("task", "video"),): 6,
        (("task", "audio"),): 1,
        (("task", "stitch"),): 1,
    }
    # None left in flight: the gauges are refreshed at most once a second, by a pass (one at least
    # every resync period, 2 s), so the last change shows within about 3 s.
    wait_for(
        lambda: ns_pool not in (metric_samples(port).get("ffrtmp_chunks_in_flight") or {}),
        10,
        "no chunk left in flight in the metrics",
    )


def test_suspend_holds_the_chunks_not_started_and_resume_finishes_the_job(farm: Farm) -> None:
    clip = make_clip(farm.media / "film.mp4", seconds=12, size="480x270")  # three 4 s chunks
    farm.start_operator()
    farm.pool("cpu", "cpu", minWorkers=1, maxWorkers=1, maxConcurrentJobs=1, autoscaling={"enabled": False})
    farm.start_workers()
    slow = [{"name": "main", "container": "mp4", "video": {"codec": "h264", "crf": 30, "preset": "slow"}}]
    chunking = {"mode": "On", "chunkSeconds": 4, "maxChunksInFlight": 2}
    farm.job("film", str(clip), slow, chunking=chunking, resources={"limits": {"cpu": "1"}})

    def children() -> dict[str, dict[str, Any]]:
        return {j["metadata"]["name"]: j for j in farm.jobs() if j["metadata"]["name"] != "film"}

    def a_chunk_running() -> dict[str, dict[str, Any]] | None:
        now = children()
        return (
            now
            if any(n.startswith("film-c0") and status(j).get("phase") == "Running" for n, j in now.items())
            else None
        )

    wait_for(a_chunk_running, 120, "a chunk running", interval=0.2)
    suspend = {"spec": {"suspend": True}}
    farm.cluster.kubectl("patch", "tj", "film", "-n", farm.namespace, "--type=merge", "-p", json.dumps(suspend))
    farm.wait_phase("film", "Pending", timeout=30)
    at_suspend = children()
    started = {n for n, j in at_suspend.items() if status(j).get("phase") in ("Scheduled", "Running", "Succeeded")}

    def settled() -> dict[str, dict[str, Any]] | None:
        now = children()
        return now if not [j for j in now.values() if status(j).get("phase") in ("Scheduled", "Running")] else None

    held = wait_for(settled, 120, "the started tasks finished")
    for name, job in held.items():
        phase = status(job).get("phase")
        if name in started:  # started before the suspend: finished, on its first attempt
            assert (phase, status(job).get("attempt")) == ("Succeeded", 1), (name, status(job))
        else:  # created, not started: suspended too, never assigned
            assert phase == "Pending" and not status(job).get("attempt"), (name, status(job))
            suspended = {c["type"]: c for c in status(job)["conditions"]}["Suspended"]
            assert (suspended["status"], suspended["reason"]) == ("True", "ParentSuspended")
    assert set(held) == set(at_suspend) and "film-stitch" not in held  # nothing created while suspended
    assert any(status(j).get("phase") == "Pending" for j in held.values()), "nothing was held"
    time.sleep(2)  # a hold holds: nothing is created or assigned meanwhile
    assert {n: status(j).get("phase") for n, j in children().items()} == {
        n: status(j).get("phase") for n, j in held.items()
    }
    parent = status(farm.get_job("film"))
    assert {c["type"]: c["status"] for c in parent["conditions"]}["Suspended"] == "True"
    assert parent["chunks"]["total"] == 3 and "startTime" not in parent

    resume = {"spec": {"suspend": False}}
    farm.cluster.kubectl("patch", "tj", "film", "-n", farm.namespace, "--type=merge", "-p", json.dumps(resume))
    parent = status(farm.wait_phase("film", "Succeeded", "Failed", timeout=180))
    assert parent["phase"] == "Succeeded", parent
    assert {c["type"]: c["status"] for c in parent["conditions"]}["Suspended"] == "False"
    assert (parent["chunks"]["summary"], parent["chunks"]["retried"]) == ("3/3", 0)
    probe = ffprobe(farm.output / farm.namespace / "film" / "main.mp4")
    assert int(next(s for s in probe["streams"] if s["codec_type"] == "video")["nb_frames"]) == 12 * 25


def test_an_operator_killed_mid_run_continues_the_stored_plan(farm: Farm) -> None:
    clip = make_clip(farm.media / "long.mp4", seconds=40, size="640x360")
    op = farm.start_operator()
    two_workers(farm)

    def some_chunks_done() -> bool:
        chunks = status(farm.get_job("long")).get("chunks") or {}
        return 2 <= int(chunks.get("succeeded") or 0) < int(chunks.get("total") or 0) - 4

    with WatchedJobs(farm) as watch:
        farm.job("long", str(clip), OUTPUTS, chunking={"mode": "On", "chunkSeconds": 2},
                 resources={"limits": {"cpu": "1"}})  # fmt: skip
        follow(farm, "long", some_chunks_done)
        plan = status(farm.get_job("long"))["chunks"]["plan"]
        op.kill()
        time.sleep(2)
        farm.start_operator(name="operator-2")
        follow(farm, "long", lambda: False)
        seen = watch.children("long")
    parent = status(farm.get_job("long"))
    assert parent["phase"] == "Succeeded", parent
    assert parent["chunks"]["plan"] == plan
    assert parent["chunks"]["summary"] == "20/20"
    chunks = {name: child for name, child in seen.items() if name.startswith("long-c0")}
    assert len(chunks) == 20
    # Nothing ran twice: every chunk, the audio, the plan and the stitch succeeded on their first attempt.
    assert {name: child.get("attempt") for name, child in seen.items()} == {name: 1 for name in seen}
    probe = ffprobe(farm.output / farm.namespace / "long" / "main.mp4")
    video = next(s for s in probe["streams"] if s["codec_type"] == "video")
    assert int(video["nb_frames"]) == 40 * 25


def test_deleting_a_chunked_job_mid_run_deletes_its_children(farm: Farm) -> None:
    clip = make_clip(farm.media / "long.mp4", seconds=40, size="640x360")
    farm.start_operator()
    two_workers(farm)
    farm.job("long", str(clip), OUTPUTS, chunking={"mode": "On", "chunkSeconds": 2}, resources={"limits": {"cpu": "1"}})

    def encoding() -> bool:
        return int((status(farm.get_job("long")).get("chunks") or {}).get("succeeded") or 0) >= 1

    wait_for(encoding, 120, "a chunk encoded")
    farm.cluster.kubectl("delete", "tj", "long", "-n", farm.namespace, "--wait=false")
    wait_for(lambda: not farm.jobs(), 60, "the parent and every child gone")
    # The workers stopped the chunks they were running: no ffmpeg of this test is left.
    wait_for(lambda: not any(str(farm.media) in line for line in ps_lines()), 30, "no ffmpeg left reading the input")


def test_a_child_failing_fails_the_parent_with_its_reason(farm: Farm) -> None:
    garbage = farm.media / "garbage.mp4"
    garbage.write_bytes(b"\\x00not a video\\xff" * 4096)
    farm.start_operator()
    two_workers(farm)
    farm.job("bad", str(garbage), OUTPUTS, chunking={"mode": "On", "chunkSeconds": 2})
    parent = status(farm.wait_phase("bad", "Failed", "Succeeded", timeout=120))
    assert (parent["phase"], parent["reason"]) == ("Failed", "InvalidInput"), parent
    assert "plan (bad-plan) failed" in parent["message"]
    wait_for(lambda: [j["metadata"]["name"] for j in farm.jobs()] == ["bad"], 60, "the children deleted")


def ps_lines() -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.startswith("ffmpeg")]


def test_a_killed_worker_costs_only_its_chunk(farm: Farm) -> None:
    clip = make_clip(farm.media / "film.mp4", seconds=12, size="1280x720")  # seconds per chunk at preset slower
    farm.start_operator()
    farm.pool("cpu", "cpu", minWorkers=2, maxWorkers=2, maxConcurrentJobs=1, autoscaling={"enabled": False})
    farm.start_workers("--restart-delay", "30")
    wait_for(lambda: status(farm.cluster.get("wp", "cpu", farm.namespace)).get("readyWorkers") == 2, 60, "2 workers")
    slow = [{"name": "main", "container": "mp4", "video": {"codec": "h264", "crf": 30, "preset": "slower"}}]

    def chunk_encoding() -> dict[str, Any] | None:
        for job in farm.jobs():
            if job["metadata"]["name"].startswith("film-c0") and status(job).get("phase") == "Running":
                return job
        return None

    with WatchedJobs(farm) as watch:
        farm.job("film", str(clip), slow, chunking={"mode": "On", "chunkSeconds": 2},
                 resources={"limits": {"cpu": "1"}})  # fmt: skip
        victim = wait_for(chunk_encoding, 120, "a chunk encoding", interval=0.2)
        worker = status(victim)["worker"]
        os.kill(int(farm.workers_state()[worker]["pid"]), signal.SIGKILL)
        follow(farm, "film", lambda: False)
        seen = watch.children("film")
    parent = status(farm.get_job("film"))
    assert parent["phase"] == "Succeeded", parent
    attempts = {name: child.get("attempt") for name, child in seen.items()}
    assert attempts == {name: 2 if name == victim["metadata"]["name"] else 1 for name in seen}, attempts
    assert seen[victim["metadata"]["name"]]["worker"] != worker
    probe = ffprobe(farm.output / farm.namespace / "film" / "main.mp4")
    assert int(next(s for s in probe["streams"] if s["codec_type"] == "video")["nb_frames"]) == 12 * 25
