"""A five-minute control-plane outage with encodes running (issue 16): kube-apiserver is frozen (SIGSTOP:
every request hangs, as behind a load balancer whose backend went away), then replaced by a new process
on the same port and etcd data (as after a managed upgrade). Workers must ride it out: liveness keeps
answering 200, no worker process is replaced, no ffmpeg is killed; encodes that finish during the outage
hold their result until the API server answers and then write it (fenced); every job succeeds at attempt 1.

Only with the local control plane (the process is ours to stop); the shared cluster is left healthy."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import invariants
import psutil
import pytest
from chaoslib import (
    ChaosFarm,
    JobRecorder,
    ScenarioResult,
    apiserver_ready,
    control_plane_healthy,
    kill_component,
    report,
    start_component,
    status,
)

from helpers import TestCluster, make_clip, wait_for

# Five minutes of waiting on a frozen API server: `make test` runs it beside the rest (hack/test.sh).
pytestmark = [pytest.mark.chaos, pytest.mark.background]

OUTAGE_SECONDS = 300.0
# Read in real time (input.realtime), 5 fps: "mid" encodes end about half-way through the outage (their
# result must wait for the API server), "long" ones run through it and end after it.
MID_SECONDS, LONG_SECONDS = 150, 335
ONE_CPU = {"limits": {"cpu": "1"}}


@pytest.fixture
def local_cluster(cluster: TestCluster) -> Iterator[TestCluster]:
    if cluster.local is None:
        pytest.skip("needs the local control plane (FFRTMP_TEST_KUBECONFIG points at another cluster)")
    yield cluster
    control_plane_healthy(cluster)


@dataclass
class Prober:
    """Polls every worker's /healthz once a second from a thread; keeps every answer that was not 200."""

    ports: dict[str, int]
    answers: int = 0
    bad: list[str] = field(default_factory=list)
    ok_at: dict[str, list[float]] = field(default_factory=dict)  # worker -> when it answered 200
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _probe(self, worker: str, port: int) -> None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                code = resp.status
        except urllib.error.HTTPError as e:
            code = e.code
        except OSError as e:
            self.bad.append(f"{time.strftime('%H:%M:%S')} {worker}: {e!r}")
            return
        self.answers += 1
        if code != 200:
            self.bad.append(f"{time.strftime('%H:%M:%S')} {worker}: /healthz {code}")
        else:
            self.ok_at.setdefault(worker, []).append(time.time())

    def minutes_answered(self, worker: str, since: float, until: float) -> set[int]:
        """The minutes of [since, until) in which `worker` answered 200 at least once."""
        return {int((t - since) // 60) for t in self.ok_at.get(worker, []) if since <= t < until}

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for worker, port in self.ports.items():
                self._probe(worker, port)

    def __enter__(self) -> Prober:
        self._thread = threading.Thread(target=self._run, name="healthz-prober", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def _ffmpegs(worker_pids: dict[str, int]) -> dict[str, psutil.Process]:
    """Job name -> the ffmpeg encoding it (a child of a worker; its output is in the job's attempt folder)."""
    found: dict[str, psutil.Process] = {}
    for pid in worker_pids.values():
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(pid).children():
                with contextlib.suppress(psutil.Error):
                    if child.name() != "ffmpeg":
                        continue
                    m = re.search(r"/([^/]+)/\.attempt-1-", " ".join(child.cmdline()))
                    if m:
                        found[m.group(1)] = child
    return found


def _alive(p: psutil.Process) -> bool:
    # Same process (pid and start time), not a zombie: is_running() checks the start time.
    with contextlib.suppress(psutil.Error):
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    return False


@pytest.mark.timeout(900)
def test_five_minute_api_outage_with_encodes_running(local_cluster: TestCluster, farm: ChaosFarm) -> None:
    mid = make_clip(farm.media / "mid.mp4", seconds=MID_SECONDS, rate=5, audio=False)
    long = make_clip(farm.media / "long.mp4", seconds=LONG_SECONDS, rate=5, audio=False)
    farm.pool("cpu", "cpu", minWorkers=2, maxWorkers=2, maxConcurrentJobs=2, autoscaling={"enabled": False})
    farm.start_operator()
    farm.start_workers()
    farm.wait_ready("cpu", 2)
    state = farm.workers_state()
    worker_pids = {pod: int(info["pid"]) for pod, info in state.items()}
    workers = {pod: psutil.Process(pid) for pod, pid in worker_pids.items()}
    ports = {pod: int(info["env"]["FFRTMP_METRICS_PORT"]) for pod, info in state.items()}
    names = {"mid-0": mid, "mid-1": mid, "long-0": long, "long-1": long}
    local = local_cluster.local
    assert local is not None
    with JobRecorder(farm.cluster, farm.namespace) as rec, Prober(ports) as prober:
        farm.apply_all([farm.job_doc(n, str(clip), realtime=True, resources=ONE_CPU) for n, clip in names.items()])
        encoding = wait_for(lambda: (f := _ffmpegs(worker_pids)).keys() == names.keys() and f, 90, "4 ffmpegs")
        assert all(status(farm.get_job(n)).get("phase") == "Running" for n in names)
        assert prober.answers > 0 and prober.bad == []

        apiserver = local.state.pids["kube-apiserver"]
        frozen = time.time()
        os.kill(apiserver, signal.SIGSTOP)
        mid_ended: dict[str, float] = {}
        try:
            while time.time() - frozen < OUTAGE_SECONDS:
                for name, proc in encoding.items():
                    if not _alive(proc) and name not in mid_ended:
                        mid_ended[name] = time.time() - frozen
                time.sleep(1.0)
            # The outage is over only for encodes: every worker process and every long ffmpeg is the one
            # that was there before it; the mid ones ended on their own (their results are checked below).
            assert all(_alive(w) for w in workers.values()), "a worker process was replaced"
            assert sorted(mid_ended) == ["mid-0", "mid-1"], f"encodes ended during the outage: {mid_ended}"
            held = {n: [p.name for p in (farm.output / farm.namespace / n).glob(".attempt-1-*")] for n in mid_ended}
            assert all(held.values()), f"a finished encode's attempt folder is gone: {held}"
        finally:
            # Replaced by a new process on the same port and data; the stopped one goes with SIGKILL.
            argv = kill_component(local, "kube-apiserver")
            start_component(local, "kube-apiserver", argv)
            wait_for(lambda: apiserver_ready(local_cluster), 120, "kube-apiserver /readyz", interval=0.5)
        back = time.time()
        down = back - frozen
        first_result = rec.wait_first(back, "Succeeded", timeout=120) - back
        farm.wait_all(timeout=180)
        long_done = max(t.at for t in rec.snapshot() if t.phase == "Succeeded") - back
    found = invariants.check(farm)
    print(found.summary(), f"down {down:.0f}s", mid_ended, f"first result {first_result:.1f}s", long_done)

    # No worker restarted: liveness answered 200 all along, the same processes, the kubelet restarted none.
    assert prober.bad == [], prober.bad[:20]
    minutes = set(range(int(OUTAGE_SECONDS // 60)))
    for pod in workers:  # the probes covered the whole outage, not just its ends
        assert prober.minutes_answered(pod, frozen, frozen + OUTAGE_SECONDS) == minutes, pod
    assert all(_alive(w) for w in workers.values())
    assert {pod: int(info["pid"]) for pod, info in farm.workers_state().items()} == worker_pids
    assert all(info["restarts"] == 0 for info in farm.workers_state().values())
    # No ffmpeg died: every job succeeded with its first attempt, from the encode that was running.
    for job in farm.jobs():
        s = status(job)
        assert (s["phase"], s["attempt"], s["result"]["attempt"]) == ("Succeeded", 1, 1), s
    assert found.redone == {} and found.lost == [] and found.twice == []
    logs = "\n".join(p.read_text(errors="replace") for p in (farm.root / "workers").glob("*.log"))
    assert not re.findall(r"attempt \S+ (?:crashed|broke)", logs)
    assert farm.services["operator"].proc.poll() is None, "the operator exited"
    report(
        ScenarioResult(
            "kube-apiserver frozen 5 min, encodes running", found.jobs,
            f"SIGSTOP kube-apiserver {OUTAGE_SECONDS:.0f} s, then SIGKILL + restart (down {down:.0f} s)",
            len(found.lost), len(found.twice), first_result,
            f"redone 0; 2 workers, 0 restarts, {prober.answers} /healthz all 200; 4 ffmpegs never killed "
            f"(2 ended mid-outage at {min(mid_ended.values()):.0f}-{max(mid_ended.values()):.0f} s, results "
            f"written {first_result:.1f} s after the API returned; 2 ended {long_done:.0f} s after it); "
            "recover = API back to first result written",
        )
    )  # fmt: skip
