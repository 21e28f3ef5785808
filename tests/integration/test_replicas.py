"""Two operator replicas with --leader-elect against the local control plane: sums of job metrics over
both replicas are right, the standby takes over from a stopped leader and finishes the rest, a demoted
replica exports no stale job series, and a skewed wall clock neither steals a live Lease nor waits
forever, and a leader stopped mid scale-up creates no Pods once it wakes after the takeover (issue 17)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Farm
from ffrtmp.api.constants import LABEL_LEADER_TERM
from ffrtmp.conditions import parse_time
from ffrtmp.controller.leader import CLOCK_SKEW_ENV
from ffrtmp.controller.reconciler import STOP_BEFORE_POD_CREATES_ENV
from ffrtmp.dev.cluster import free_port
from helpers import Service, make_clip, operator_argv, start_service, wait_for

pytestmark = pytest.mark.integration

LEASE = "ffmpeg-rtmp-operator"
# Short timings keep the test quick; the same code runs with client-go's 15/10/2 s by default.
TIMING = (
    "--leader-elect-lease-duration", "4", "--leader-elect-renew-deadline", "3", "--leader-elect-retry-period", "0.5",
)  # fmt: skip
# Series that describe jobs and pools: only the leader may export them.
JOB_SERIES = (
    "ffrtmp_jobs", "ffrtmp_queue_depth", "ffrtmp_jobs_finished_total", "ffrtmp_jobs_failed_total",
    "job_duration_seconds", "ffrtmp_job_queue_seconds", "ffrtmp_worker_sla_compliance_rate", "ffrtmp_pool_",
    "ffrtmp_operator_worker_lease_age_seconds",
)  # fmt: skip


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """name -> [(labels, value)], as Prometheus would store one scrape (no `_created` samples)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if not s.name.endswith("_created"):
                out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def total(scrapes: list[dict[str, list[tuple[dict[str, str], float]]]], name: str, **labels: str) -> float:
    """`sum(name{labels})` over every replica's scrape."""
    return sum(
        v for s in scrapes for got, v in s.get(name, []) if all(got.get(k) == want for k, want in labels.items())
    )


def job_series(s: dict[str, list[tuple[dict[str, str], float]]]) -> list[str]:
    return sorted(name for name in s if name.startswith(JOB_SERIES))


def lease(farm: Farm) -> dict[str, Any]:
    spec: dict[str, Any] = farm.cluster.get("lease", LEASE, farm.namespace).get("spec") or {}
    return spec


def holder(farm: Farm) -> str | None:
    out = farm.cluster.kubectl("get", "lease", LEASE, "-n", farm.namespace, "-o", "json", check=False)
    if out.returncode != 0:
        return None
    value: str | None = (json.loads(out.stdout).get("spec") or {}).get("holderIdentity")
    return value


def identity(svc: Service) -> str:
    return f"{socket.gethostname()}-{svc.proc.pid}"


def start_replica(
    farm: Farm, name: str, metrics_port: int = 0, env: dict[str, str] | None = None, extra: tuple[str, ...] = ()
) -> Service:
    argv = operator_argv(
        farm.cluster, farm.namespace, "--leader-elect", "--leader-election-namespace", farm.namespace, *TIMING,
        "--metrics-port", str(metrics_port), *extra,
    )  # fmt: skip
    svc = start_service(name, argv, farm.root / "logs", env=env)
    farm.services[name] = svc
    return svc


def signal_group(svc: Service, sig: int) -> None:
    os.killpg(svc.proc.pid, sig)


def stopped(svc: Service) -> bool:
    """The process is stopped (SIGSTOP): state T in /proc."""
    stat = Path(f"/proc/{svc.proc.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


def worker_pods(farm: Farm) -> list[dict[str, Any]]:
    return [p for p in farm.cluster.list("pods", farm.namespace) if not p["metadata"].get("deletionTimestamp")]


def succeeded(farm: Farm) -> int:
    return sum(1 for j in farm.jobs() if (j.get("status") or {}).get("phase") == "Succeeded")


def test_two_replicas_sum_right_take_over_and_drop_stale_series(farm: Farm) -> None:
    clip = make_clip(farm.media / "clip.mp4", seconds=2)
    farm.pool("cpu", minWorkers=1, maxConcurrentJobs=2, autoscaling={"enabled": False})
    port_a, port_b = free_port(), free_port()
    a = start_replica(farm, "operator-a", port_a)
    wait_for(lambda: holder(farm) == identity(a), 60, "operator-a to lead")
    b = start_replica(farm, "operator-b", port_b)
    farm.start_workers()
    wait_for(
        lambda: (farm.cluster.get("wp", "cpu", farm.namespace).get("status") or {}).get("readyWorkers"),
        90,
        "a ready worker",
    )
    wait_for(lambda: scrape(port_b).get("ffrtmp_operator_leader"), 60, "operator-b to serve metrics")

    # 1. Both replicas run and see every transition; only the leader counts and exports.
    for i in range(4):
        farm.job(f"one-{i}", str(clip))
    farm.wait_all(timeout=180)
    wait_for(lambda: total([scrape(port_a)], "ffrtmp_jobs", phase="Succeeded") == 4, 60, "the leader's gauges")
    both = [scrape(port_a), scrape(port_b)]
    assert total(both, "ffrtmp_jobs_finished_total", phase="Succeeded") == 4
    assert total(both, "ffrtmp_jobs", phase="Succeeded") == 4
    assert total(both, "job_duration_seconds_count") == 4
    assert total(both, "ffrtmp_pool_ready_workers") == 1
    assert total(both, "ffrtmp_operator_leader") == 1
    assert job_series(both[1]) == [], "the standby exports job series"
    assert total([both[1]], "ffrtmp_operator_event_loop_lag_seconds_count") >= 1  # its own metrics: yes

    # 2. Stop the leader mid-run (SIGSTOP: alive, silent); the standby takes over and finishes the rest.
    for i in range(6):
        farm.job(f"two-{i}", str(clip), realtime=True)
    wait_for(lambda: any((j.get("status") or {}).get("phase") == "Running" for j in farm.jobs()), 90, "a job running")
    before = lease(farm)
    signal_group(a, signal.SIGSTOP)
    try:
        wait_for(lambda: holder(farm) == identity(b), 60, "operator-b to take the Lease over")
        assert lease(farm)["leaseTransitions"] == before["leaseTransitions"] + 1
        jobs = farm.wait_all(timeout=240)
    finally:
        signal_group(a, signal.SIGCONT)
    assert succeeded(farm) == 10, [(j["metadata"]["name"], j.get("status")) for j in jobs]

    # 3. The demoted replica, running again, exports no job series (nothing stale, nothing frozen)
    # and does not take the Lease back.
    wait_for(lambda: total([scrape(port_b)], "ffrtmp_jobs", phase="Succeeded") == 10, 60, "the new leader's gauges")
    demoted = scrape(port_a)
    assert job_series(demoted) == [], job_series(demoted)
    assert total([demoted], "ffrtmp_operator_leader") == 0
    assert holder(farm) == identity(b)

    # 4. More jobs with the demoted replica alive: the sum over both grows by exactly their number.
    counted = total([scrape(port_a), scrape(port_b)], "ffrtmp_jobs_finished_total")
    for i in range(3):
        farm.job(f"three-{i}", str(clip))
    farm.wait_all(timeout=180)
    wait_for(lambda: total([scrape(port_b)], "ffrtmp_jobs", phase="Succeeded") == 13, 60, "the new leader's gauges")
    both = [scrape(port_a), scrape(port_b)]
    assert total(both, "ffrtmp_jobs_finished_total") == counted + 3
    assert total(both, "ffrtmp_jobs", phase="Succeeded") == 13
    assert job_series(both[0]) == []
    assert total(both, "ffrtmp_operator_leader") == 1
    assert holder(farm) == identity(b)


def test_a_skewed_clock_neither_steals_a_live_lease_nor_waits_forever(farm: Farm) -> None:
    """Replica B's wall clock runs an hour ahead (the test hook shifts the clock it writes renewTime
    with). Judged by renewTime against its own clock, B would take A's live Lease at once; judged by
    renewTime against C's clock, C would wait an hour for B's. Both go by what they observed."""
    hour = 3600.0
    a = start_replica(farm, "operator-a")
    wait_for(lambda: holder(farm) == identity(a), 60, "operator-a to lead")
    b = start_replica(farm, "operator-b", env={CLOCK_SKEW_ENV: str(hour)})
    transitions = lease(farm)["leaseTransitions"]
    # B sees A's Lease renewed every 0.5 s: it never stays unchanged for 4 s. Watch B for 3 lease periods.
    end = time.monotonic() + 12
    while time.monotonic() < end:
        assert holder(farm) == identity(a), "a skewed replica took a live Lease"
        time.sleep(0.5)
    assert lease(farm)["leaseTransitions"] == transitions
    a.kill()
    wait_for(lambda: holder(farm) == identity(b), 60, "operator-b to take the Lease from a dead holder")
    # B writes renewTime from its skewed clock: an hour in the future.
    wait_for(lambda: (parse_time(lease(farm)["renewTime"]) or 0) - time.time() > hour - 120, 30, "a skewed renewTime")
    c = start_replica(farm, "operator-c")
    end = time.monotonic() + 12
    while time.monotonic() < end:
        assert holder(farm) == identity(b), "a replica took a live Lease"
        time.sleep(0.5)
    b.kill()
    # B's last renewTime says it is valid for another hour; C goes by when it last saw it change.
    wait_for(lambda: holder(farm) == identity(c), 60, "operator-c to take the Lease (not wait an hour)")
    assert lease(farm)["leaseTransitions"] == transitions + 2


def test_a_leader_stopped_mid_scale_up_creates_no_pods_after_the_takeover(farm: Farm) -> None:
    """The leader decides to add workers and is stopped before it sends the creates (the test hook stops
    it exactly there). The standby takes over and creates the two Pods the queue needs; the old leader,
    resumed, drops its creates unsent. The pool ends with the new leader's two Pods, not more."""
    port_a = free_port()
    a = start_replica(farm, "operator-a", port_a, env={STOP_BEFORE_POD_CREATES_ENV: "1"})
    wait_for(lambda: holder(farm) == identity(a), 60, "operator-a to lead")
    b = start_replica(farm, "operator-b")
    term_a = lease(farm)["leaseTransitions"]
    # No stand-in workers: the queued jobs only make the autoscaler ask for two Pods (KWOK runs them).
    # The jobs come first, so that the pool's first decision sees both.
    for i in range(2):
        farm.job(f"job-{i}", str(farm.media / "clip.mp4"))
    farm.pool("cpu", minWorkers=0, maxWorkers=2, maxConcurrentJobs=1)
    wait_for(lambda: stopped(a), 60, "operator-a to stop itself before creating Pods")
    decided = re.search(r"stopping this process before creating (\d+) Pods", a.tail(200))
    assert decided is not None, a.tail(50)
    try:
        assert worker_pods(farm) == []
        wait_for(lambda: holder(farm) == identity(b), 60, "operator-b to take the Lease over")
        wait_for(lambda: len(worker_pods(farm)) == 2, 60, "operator-b's two worker Pods")
    finally:
        signal_group(a, signal.SIGCONT)
    fenced = "ffrtmp_operator_fenced_writes_total"
    dropped = int(decided.group(1))
    wait_for(lambda: total([scrape(port_a)], fenced, kind="Pod") == dropped, 30, "operator-a to drop its creates")
    assert "not leading any more" in a.tail(200)
    time.sleep(2)  # a create sent after all would show by now
    pods = worker_pods(farm)
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    assert farm.cluster.get("wp", "cpu", farm.namespace)["status"]["desiredWorkers"] == 2
    term_b = lease(farm)["leaseTransitions"]
    assert term_b == term_a + 1
    assert {p["metadata"]["labels"].get(LABEL_LEADER_TERM) for p in pods} == {str(term_b)}
    assert holder(farm) == identity(b)
