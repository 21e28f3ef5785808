"""The chart's API Priority and Fairness objects (templates/flowcontrol.yaml) on a real kube-apiserver (APF is on
by default). `helm template` renders the ServiceAccounts, the RBAC and the FlowSchemas and
PriorityLevelConfigurations for this test's namespace (watchNamespaces: nothing else cluster-wide); the
release name is unique, the cluster-scoped objects are deleted afterwards. Requests are sent with tokens of
the operator's and of the worker's ServiceAccount, minted with the TokenRequest API (`kubectl create
token`), and kube-apiserver's own counter `apiserver_flowcontrol_dispatched_requests_total{flow_schema,
priority_level}` tells where each one was classified.

Then a flood of progress reports (apf_flood.py, in a process of its own) as the worker, while the operator's
status writes are timed: with the chart's objects and, for comparison, with its FlowSchemas deleted (every
request of both ServiceAccounts in the cluster's `workload-low` level). The latencies are printed, never
asserted: they depend on the machine."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ffrtmp.api.constants import GROUP, JOB_PLURAL, VERSION
from ffrtmp.kube import KubeClient, load_config
from ffrtmp.kube.client import resource_path
from ffrtmp.worker.fence import FencedStatus
from helpers import REPO, TestCluster, token_kubeconfig, transcode_job, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.background]  # two minutes, mostly the flood's fixed windows
Obj = dict[str, Any]
Counts = dict[tuple[str, str], float]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
WORKER = "w-0"
FLOOD_JOBS = int(os.environ.get("FFRTMP_APF_FLOOD_JOBS", "200"))
MEASURE_SECONDS = float(os.environ.get("FFRTMP_APF_MEASURE_SECONDS", "8"))
CONTROL_JOBS = [f"control-{i}" for i in range(4)]


@dataclass
class Release:
    cluster: TestCluster
    namespace: str
    fullname: str
    docs: list[Obj]
    operator_kubeconfig: Path
    worker_kubeconfig: Path

    def schema(self, suffix: str) -> str:
        return f"{self.fullname}-{suffix}"

    def level(self, suffix: str) -> str:
        return f"{self.fullname}-{suffix}"

    def job_path(self, name: str) -> str:
        return resource_path(GROUP, VERSION, JOB_PLURAL, self.namespace, name)


def _render(cluster: TestCluster, release: str, namespace: str) -> list[Obj]:
    out = subprocess.run(
        [str(cluster.bin_dir / "helm"), "template", release, str(REPO / "charts" / "ffmpeg-rtmp"),
         "--namespace", namespace, "--kube-version", "1.36.0", "--set", "operator.enabled=false",
         "--set", f"watchNamespaces={{{namespace}}}",
         "-s", "templates/serviceaccount.yaml", "-s", "templates/rbac-operator.yaml",
         "-s", "templates/rbac-worker.yaml", "-s", "templates/flowcontrol.yaml"],
        text=True, capture_output=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


def _token_kubeconfig(cluster: TestCluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig for the test cluster's server and CA that authenticates as `account` only."""
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration", "1h").stdout.strip()
    return token_kubeconfig(cluster, token, path)


def _in_force(cluster: TestCluster, name: str) -> bool:
    """The API server has digested the FlowSchema: it found its priority level (condition Dangling False)."""
    out = cluster.kubectl("get", "flowschema", name, "-o", "json", check=False)
    if out.returncode != 0:
        return False
    conditions = json.loads(out.stdout).get("status", {}).get("conditions", [])
    return any(c["type"] == "Dangling" and c["status"] == "False" for c in conditions)


@pytest.fixture
def release(cluster: TestCluster, namespace: str, tmp_path: Path) -> Iterator[Release]:
    name = f"apf-{uuid.uuid4().hex[:5]}"
    docs = _render(cluster, name, namespace)
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == ["FlowSchema", "PriorityLevelConfiguration", "Role", "RoleBinding", "ServiceAccount"], kinds
    cluster_scoped = [d for d in docs if d["kind"] in ("FlowSchema", "PriorityLevelConfiguration")]
    try:
        cluster.apply(docs, namespace)
        fullname = f"{name}-ffmpeg-rtmp"
        for d in of_kind(docs, "FlowSchema"):
            wait_for(lambda d=d: _in_force(cluster, d["metadata"]["name"]), 30, f"{d['metadata']['name']} in force")
        accounts = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d["metadata"]["name"]
                    for d in of_kind(docs, "ServiceAccount")}  # fmt: skip
        yield Release(
            cluster, namespace, fullname, docs,
            _token_kubeconfig(cluster, namespace, accounts["operator"], tmp_path / "operator.kubeconfig"),
            _token_kubeconfig(cluster, namespace, accounts["worker"], tmp_path / "worker.kubeconfig"),
        )  # fmt: skip
    finally:
        for d in cluster_scoped:
            cluster.kubectl("delete", d["kind"], d["metadata"]["name"], "--ignore-not-found", "--wait=false")


def of_kind(docs: list[Obj], kind: str) -> list[Obj]:
    return [d for d in docs if d["kind"] == kind]


def _scrape(cluster: TestCluster) -> Samples:
    """kube-apiserver's apiserver_flowcontrol_* samples, from its /metrics (read as the admin, whose requests
    are exempt: flow schema and priority level `exempt`)."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("apiserver_flowcontrol_")
        for s in family.samples
    }


def _dispatched(cluster: TestCluster, samples: Samples | None = None) -> Counts:
    """apiserver_flowcontrol_dispatched_requests_total by (flow_schema, priority_level)."""
    out: Counts = {}
    for (name, labels), value in (samples or _scrape(cluster)).items():
        if name == "apiserver_flowcontrol_dispatched_requests_total":
            keys = dict(labels)
            out[(keys["flow_schema"], keys["priority_level"])] = value
    assert out, "kube-apiserver exports no apiserver_flowcontrol_dispatched_requests_total: is APF on?"
    return out


def _delta(before: Counts, after: Counts, schemas: set[str] | None = None) -> Counts:
    """What changed, of the flow schemas named (default: all)."""
    return {
        key: after[key] - before.get(key, 0.0)
        for key in after
        if (schemas is None or key[0] in schemas) and after[key] != before.get(key, 0.0)
    }


async def _assigned(admin: KubeClient, cluster: TestCluster, namespace: str, name: str, phase: str) -> None:
    cluster.apply(transcode_job(name, "/media/in.mp4"), namespace)
    status = {"phase": phase, "worker": WORKER, "attempt": 1, "pool": "cpu"}
    await admin.merge_patch(resource_path(GROUP, VERSION, JOB_PLURAL, namespace, name) + "/status", {"status": status})


@pytest.fixture
async def clients(release: Release) -> AsyncIterator[tuple[KubeClient, KubeClient, KubeClient]]:
    admin = KubeClient(load_config(str(release.cluster.kubeconfig)))
    operator = KubeClient(load_config(str(release.operator_kubeconfig)), component="ffrtmp-operator")
    worker = KubeClient(load_config(str(release.worker_kubeconfig)), component="ffrtmp-worker")
    try:
        yield admin, operator, worker
    finally:
        for c in (admin, operator, worker):
            await c.close()


async def test_each_request_lands_in_its_priority_level(
    release: Release, clients: tuple[KubeClient, KubeClient, KubeClient]
) -> None:
    admin, operator, worker = clients
    c, ns = release.cluster, release.namespace
    ours = {release.schema(s) for s in ("operator", "worker-results", "worker-leases", "worker-progress")}
    watched = ours | {"service-accounts"}
    control, liveness, progress = (release.level(s) for s in ("control", "liveness", "progress"))
    c.apply(transcode_job("job", "/media/in.mp4"), ns)
    path = release.job_path("job")

    async def classified(request: Any) -> tuple[Any, Counts]:
        before = _dispatched(c)
        result = await request
        return result, _delta(before, _dispatched(c), watched)

    # The operator assigns the job (a status merge patch fenced on its resourceVersion, as the operator
    # writes it): control, whatever the verb.
    obj = await admin.get(path)
    assign = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
              "status": {"phase": "Scheduled", "worker": WORKER, "attempt": 1, "pool": "cpu"}}  # fmt: skip
    obj, seen = await classified(operator.merge_patch(path + "/status", assign))
    assert seen == {(release.schema("operator"), control): 1}
    _, seen = await classified(operator.list_all(resource_path(GROUP, VERSION, JOB_PLURAL, ns)))
    assert seen == {(release.schema("operator"), control): 1}

    # The worker, through its own fenced writer: Running and the result are updates (control), a progress
    # report is a patch (progress).
    fence = FencedStatus(worker, obj, WORKER, 1)
    _, seen = await classified(fence.update({"phase": "Running"}))
    assert seen == {(release.schema("worker-results"), control): 1}
    _, seen = await classified(fence.patch({"progress": {"percent": 50.0}}))
    assert seen == {(release.schema("worker-progress"), progress): 1}
    result = {"attempt": 1, "worker": WORKER, "outcome": "Succeeded"}
    done, seen = await classified(fence.update({"phase": "Succeeded", "result": result}))
    assert seen == {(release.schema("worker-results"), control): 1}
    assert done["status"]["phase"] == "Succeeded" and done["status"]["progress"] == {"percent": 50.0}

    # Its Lease: created, then renewed with a merge patch as the agent renews it: liveness.
    leases = resource_path("coordination.k8s.io", "v1", "leases", ns)
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": f"ffrtmp-worker-{WORKER}"},
             "spec": {"holderIdentity": WORKER, "leaseDurationSeconds": 15}}  # fmt: skip
    _, seen = await classified(worker.create(leases, lease))
    assert seen == {(release.schema("worker-leases"), liveness): 1}
    renew = {"spec": {"renewTime": "2026-12-02T15:00:00.000000Z"}}
    _, seen = await classified(worker.merge_patch(f"{leases}/ffrtmp-worker-{WORKER}", renew))
    assert seen == {(release.schema("worker-leases"), liveness): 1}

    # The worker's reads stay in the cluster's defaults (FlowSchema service-accounts, level workload-low).
    _, seen = await classified(worker.get(path))
    assert {k: v for k, v in seen.items() if k[0] in ours} == {}
    assert seen.get(("service-accounts", "workload-low"), 0) >= 1, seen


def _percentiles(samples: list[float]) -> str:
    ms = sorted(x * 1000 for x in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"n={len(ms)} p50={statistics.median(ms):.1f}ms p99={p99:.1f}ms max={ms[-1]:.1f}ms"


async def _control_writes(release: Release, operator: KubeClient, seconds: float) -> list[float]:
    """The operator's status writes, back to back on each control job (each fenced on the last answer's
    resourceVersion, as the operator's assignments are): their latencies."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def writer(path: str) -> None:
        obj = await operator.get(path)
        i = 0
        while time.monotonic() < deadline:
            i += 1
            body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                    "status": {"message": f"assignment {i}"}}  # fmt: skip
            started = time.monotonic()
            obj = await operator.merge_patch(path + "/status", body)
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.01)

    await asyncio.gather(*(writer(release.job_path(name)) for name in CONTROL_JOBS))
    return latencies


@dataclass
class Flood:
    control: list[float]  # the operator's write latencies during the flood
    stats: Obj  # apf_flood.py's
    before: Samples
    after: Samples


def _mean_ms(flood: Flood, metric: str, level: str, **match: str) -> str:
    """The mean of a histogram's observations during the flood, for one priority level (all flow schemas)."""
    totals = {"_sum": 0.0, "_count": 0.0}
    for (name, labels), value in flood.after.items():
        keys = dict(labels)
        suffix = name.removeprefix(metric)
        if suffix in totals and keys.get("priority_level") == level and match.items() <= keys.items():
            totals[suffix] += value - flood.before.get((name, labels), 0.0)
    return f"{totals['_sum'] / totals['_count'] * 1000:.0f}ms" if totals["_count"] else "-"


async def _with_flood(release: Release, operator: KubeClient, jobs: list[str]) -> Flood:
    before = _scrape(release.cluster)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "operator"),
                                                                        os.environ.get("PYTHONPATH")]))}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("apf_flood.py")), str(release.worker_kubeconfig),
        release.namespace, WORKER, str(MEASURE_SECONDS + 1), *jobs,
        stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        assert line.strip() == b"started", line
        latencies = await _control_writes(release, operator, MEASURE_SECONDS)
        stats = json.loads(await asyncio.wait_for(proc.stdout.readline(), 120))
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    return Flood(latencies, stats, before, _scrape(release.cluster))


async def test_operator_writes_during_a_flood_of_progress_reports(
    release: Release, clients: tuple[KubeClient, KubeClient, KubeClient]
) -> None:
    admin, operator, _ = clients
    c, ns = release.cluster, release.namespace
    jobs = [f"flood-{i:04d}" for i in range(FLOOD_JOBS)]
    c.apply([transcode_job(name, "/media/in.mp4") for name in [*jobs, *CONTROL_JOBS]], ns)
    running = {"status": {"phase": "Running", "worker": WORKER, "attempt": 1, "pool": "cpu"}}
    sem = asyncio.Semaphore(32)

    async def assign(name: str) -> None:
        async with sem:
            await admin.merge_patch(release.job_path(name) + "/status", running)

    await asyncio.gather(*(assign(name) for name in [*jobs, *CONTROL_JOBS]))
    control, progress = release.level("control"), release.level("progress")

    quiet = await _control_writes(release, operator, MEASURE_SECONDS)
    prioritized = await _with_flood(release, operator, jobs)
    # Classification, not timing: the flood went to the progress level, the operator's writes to control.
    dispatched = _delta(_dispatched(c, prioritized.before), _dispatched(c, prioritized.after))
    assert dispatched.get((release.schema("worker-progress"), progress), 0) >= prioritized.stats["writes"], dispatched
    assert dispatched.get((release.schema("operator"), control), 0) >= len(prioritized.control), dispatched
    # Of the levels that exist now (the gauge outlives a deleted level for a while).
    levels = {n.split("/")[-1] for n in c.kubectl("get", "prioritylevelconfigurations", "-o", "name").stdout.split()}
    gauge = "apiserver_flowcontrol_nominal_limit_seats"
    seats = {level: v for (name, labels), v in prioritized.after.items()
             if name == gauge and (level := dict(labels)["priority_level"]) in levels}  # fmt: skip

    # The same without the chart's FlowSchemas: both ServiceAccounts share the cluster's workload-low level.
    for d in of_kind(release.docs, "FlowSchema"):
        c.kubectl("delete", "flowschema", d["metadata"]["name"])

    async def unclassified() -> bool:
        before = _dispatched(c)
        await operator.get(release.job_path(CONTROL_JOBS[0]))
        return _delta(before, _dispatched(c), {"service-accounts"}) != {}

    deadline = time.monotonic() + 30
    while not await unclassified():
        assert time.monotonic() < deadline, "the deleted FlowSchemas still classify requests"
        await asyncio.sleep(0.5)
    shared = await _with_flood(release, operator, jobs)

    def waits(flood: Flood, *levels: str) -> str:
        """Mean time in the APF queue (execute=true: requests that were then served) and mean execution."""
        wait, execution = (
            "apiserver_flowcontrol_request_wait_duration_seconds",
            "apiserver_flowcontrol_request_execution_seconds",
        )
        return ", ".join(
            f"{level.removeprefix(release.fullname + '-')}: queued {_mean_ms(flood, wait, level, execute='true')}"
            f" executing {_mean_ms(flood, execution, level)}"
            for level in levels
        )

    print(
        f"\nAPI priority and fairness: {FLOOD_JOBS} workers' progress reports back to back, {len(CONTROL_JOBS)}"
        f" operator status writers, {MEASURE_SECONDS:.0f} s each; nominal seats {json.dumps(seats)}\n"
        f"  operator status writes, no flood:              {_percentiles(quiet)}\n"
        f"  operator status writes, flood, chart's APF:    {_percentiles(prioritized.control)}\n"
        f"  operator status writes, flood, no FlowSchemas: {_percentiles(shared.control)}\n"
        f"  progress reports, chart's APF:    {json.dumps(prioritized.stats)}\n"
        f"  progress reports, no FlowSchemas: {json.dumps(shared.stats)}\n"
        f"  APF, chart's: {waits(prioritized, control, progress)}\n"
        f"  APF, no FlowSchemas: {waits(shared, 'workload-low')}"
    )
