"""Job metrics with two replicas: only the leader counts and exports them; a demoted replica drops them."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_lifecycle import NOW, job_obj, job_spec, pool_obj

from ffrtmp.api.constants import LABEL_CHUNK, LABEL_PARENT
from ffrtmp.controller.metrics import OperatorMetrics
from ffrtmp.controller.reconciler import Reconciler
from ffrtmp.controller.settings import OperatorSettings
from ffrtmp.kube.client import KubeClient
from ffrtmp.kube.config import KubeConfig

pytestmark = pytest.mark.unit
JOB_SERIES = (
    "ffrtmp_jobs", "ffrtmp_queue_depth", "ffrtmp_jobs_finished_total", "ffrtmp_jobs_failed_total",
    "job_duration_seconds", "ffrtmp_job_queue_seconds", "ffrtmp_worker_sla_compliance_rate",
    "ffrtmp_pool_workers", "ffrtmp_pool_ready_workers", "ffrtmp_operator_worker_lease_age_seconds",
    "ffrtmp_chunk_seconds", "ffrtmp_chunks_in_flight",
)  # fmt: skip


class Lead:
    """Stands in for LeaderElector.is_leader (the one attribute the reconciler and metrics read)."""

    def __init__(self, leading: bool) -> None:
        self.is_leader = leading
        self.identity = "me"


def samples(metrics: OperatorMetrics) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            key = s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
            out[key] = s.value
    return out


def job_series(metrics: OperatorMetrics) -> list[str]:
    return [k for k in samples(metrics) if k.startswith(JOB_SERIES)]


def reconciler(lead: Lead) -> tuple[Reconciler, OperatorMetrics]:
    metrics = OperatorMetrics(leading=lambda: lead.is_leader)
    client = KubeClient(KubeConfig(server="http://127.0.0.1:9"))
    return Reconciler(client, OperatorSettings(), metrics, lead), metrics  # type: ignore[arg-type]


def finish(r: Reconciler, name: str, labels: dict[str, str] | None = None) -> None:
    """A job goes Running, then Succeeded, as the worker writes it (a chunked job's child: `labels`)."""
    running: dict[str, Any] = {
        "phase": "Running", "worker": "cpu-a", "attempt": 1, "pool": "cpu",
        "queuedTime": "2023-11-14T22:08:20Z", "startTime": "2023-11-14T22:10:00Z",
    }  # fmt: skip
    objs = [
        job_obj(name, rv="1", spec=job_spec(), status={"phase": "Queued", "pool": "cpu"}),
        job_obj(name, rv="2", spec=job_spec(), status=running),
        job_obj(name, rv="3", spec=job_spec(), status={**running, "phase": "Succeeded", "completionTime": DONE}),
    ]
    for event, obj in zip(("ADDED", "MODIFIED", "MODIFIED"), objs, strict=True):
        obj["metadata"]["labels"] = labels or {}
        r.on_job(event, obj)


DONE = "2023-11-14T22:12:00Z"  # 120 s after the start above


def test_only_the_leader_counts_and_exports() -> None:
    leader_lead, standby_lead = Lead(True), Lead(False)
    (leader, lm), (standby, sm) = reconciler(leader_lead), reconciler(standby_lead)
    for r in (leader, standby):
        r.on_event("pools", "ADDED", pool_obj())
        for i in range(3):
            finish(r, f"j{i}")
        r.metrics.refresh(r.store, {"media/cpu": 2}, NOW)
    ls, ss = samples(lm), samples(sm)
    finished = "ffrtmp_jobs_finished_total{namespace=media,phase=Succeeded,pool=cpu}"
    assert ls[finished] == 3
    assert ls["ffrtmp_jobs{namespace=media,phase=Succeeded,pool=cpu}"] == 3
    assert ls["job_duration_seconds_count{namespace=media,pool=cpu}"] == 3
    assert ls["ffrtmp_operator_leader{}"] == 1 and ss["ffrtmp_operator_leader{}"] == 0
    # The standby exports no job series at all, though its store holds the same jobs.
    assert job_series(sm) == []
    assert len(standby.store.jobs) == 3
    # Sums over both replicas, as Prometheus computes them, are the number of jobs.
    assert sum(d.get(finished, 0) for d in (ls, ss)) == 3


def test_a_demoted_replica_drops_its_job_metrics_and_counts_again_from_zero() -> None:
    lead = Lead(True)
    r, m = reconciler(lead)
    r.on_event("pools", "ADDED", pool_obj())
    finish(r, "a")
    m.refresh(r.store, {}, NOW)
    assert job_series(m)
    lead.is_leader = False
    assert job_series(m) == []  # hidden at once, before anything else runs
    m.drop_job_metrics()  # what the reconciler does when the elector reports the loss
    finish(r, "b")  # seen while standing by: not counted
    lead.is_leader = True
    assert job_series(m) == []  # nothing stale comes back with the lead
    finish(r, "c")
    assert samples(m)["ffrtmp_jobs_finished_total{namespace=media,phase=Succeeded,pool=cpu}"] == 1


def test_chunk_task_times_by_task_and_chunks_in_flight() -> None:
    r, m = reconciler(Lead(True))
    r.on_event("pools", "ADDED", pool_obj())
    for part in ("plan", "c00000", "c00001", "audio", "stitch"):
        finish(r, f"film-{part}", {LABEL_PARENT: "film", LABEL_CHUNK: part})
    running = {"phase": "Running", "worker": "cpu-a", "attempt": 1, "pool": "cpu"}
    for part in ("c00002", "c00003"):
        obj = job_obj(f"film-{part}", rv="1", spec=job_spec(), status=running)
        obj["metadata"]["labels"] = {LABEL_PARENT: "film", LABEL_CHUNK: part}
        r.on_job("ADDED", obj)
    m.refresh(r.store, {}, NOW)
    got = samples(m)
    counts = {k: v for k, v in got.items() if k.startswith("ffrtmp_chunk_seconds_count")}
    assert counts == {
        "ffrtmp_chunk_seconds_count{task=plan}": 1, "ffrtmp_chunk_seconds_count{task=video}": 2,
        "ffrtmp_chunk_seconds_count{task=audio}": 1, "ffrtmp_chunk_seconds_count{task=stitch}": 1,
    }  # fmt: skip
    assert got["ffrtmp_chunk_seconds_sum{task=video}"] == 240.0
    assert got["ffrtmp_chunks_in_flight{namespace=media,pool=cpu}"] == 2
    finish(r, "plain")  # a job that is no chunked job's child is no chunk task
    assert samples(m)["ffrtmp_chunk_seconds_count{task=video}"] == 2
