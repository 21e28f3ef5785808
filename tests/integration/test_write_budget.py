"""The write budget on the local control plane: a pool grows from 2 to 200 simulated workers, the
operator publishes longer renewal periods on their Leases, the workers take them, and the farm's
steady writes stay under a small budget that the workers' own periods would break.

The workers are the benchmarks' simulated agents (tests/bench/sim.py): the real worker agent (Lease,
watch, fenced progress writes) with an attempt that sleeps instead of running ffmpeg, on KWOK nodes,
so that 200 of them fit on this machine.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.common import pool_manifest, pool_path, sim_job, wait_until
from bench.sim import SimFarm
from conftest import Farm
from ffrtmp.api.cadence import ANNOTATION_CADENCE, Cadence
from ffrtmp.kube.client import KubeClient, resource_path
from ffrtmp.kube.config import load_config
from helpers import TestCluster

# A minute and a half of mostly waiting (rollout, renewal periods): `make test` runs it beside the rest.
pytestmark = [pytest.mark.integration, pytest.mark.background]

BUDGET = 40.0  # writes/s: 10 of them held for Events (the default), 20 for Lease renewals
WORKERS = 200
RUNNING = 40
WINDOW = 20.0  # seconds: two periods of the 10 s renewal the operator should publish


def writes_by_resource(cluster: TestCluster) -> dict[str, float]:
    """kube-apiserver's own count of mutating requests, by resource/subresource."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    out: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != "apiserver_request_total":
                continue
            if sample.labels.get("verb") not in ("POST", "PUT", "PATCH", "DELETE"):
                continue
            sub = sample.labels.get("subresource", "")
            out[sample.labels.get("resource", "") + ("/" + sub if sub else "")] += sample.value
    return out


async def test_a_pool_growing_to_200_workers_gets_longer_periods_and_stays_in_budget(farm: Farm) -> None:
    ns = farm.namespace
    client = KubeClient(load_config(str(farm.cluster.kubeconfig)), max_connections=WORKERS + 50, timeout=60)
    sims = SimFarm(client, ns, farm.root / "sim", progress_interval=5.0, lease_seconds=15).start()
    leases_path = resource_path("coordination.k8s.io", "v1", "leases", ns)
    jobs_path = resource_path("ffmpeg-rtmp.io", "v1alpha1", "transcodejobs", ns)
    own = Cadence(5, 15, 5)
    # The premise: at their own periods these workers alone would break the budget.
    assert WORKERS / own.renew_seconds + RUNNING / own.progress_seconds > BUDGET
    t0 = time.monotonic()
    try:
        farm.start_operator("--write-budget", str(BUDGET))
        small = {"minWorkers": 2, "maxWorkers": 2, "maxConcurrentJobs": 1, "autoscaling": {"enabled": False}}
        small["resources"] = {"requests": {"cpu": "10m", "memory": "16Mi"}}
        await client.create(pool_path(ns), pool_manifest("sim", **small))

        async def leases() -> list[dict[str, object]]:
            return list((await client.get(leases_path))["items"])

        async def two_ready() -> bool:
            return sims.ready_agents >= 2

        await wait_until(two_ready, 60, "2 simulated workers with Leases")
        print(f"{time.monotonic() - t0:.1f}s: two_ready")
        await asyncio.sleep(3)  # a few full passes of the operator
        assert all(ANNOTATION_CADENCE not in (lease["metadata"].get("annotations") or {}) for lease in await leases())
        assert all(agent.cadence == own for agent in sims.agents.values())

        for i in range(RUNNING):
            await client.create(
                resource_path("ffmpeg-rtmp.io", "v1alpha1", "transcodejobs", ns), sim_job(f"long-{i:02d}", 900)
            )
        await client.merge_patch(f"{pool_path(ns)}/sim", {"spec": {"minWorkers": WORKERS, "maxWorkers": WORKERS}})

        async def all_ready() -> bool:
            return sims.ready_agents >= WORKERS

        await wait_until(all_ready, 180, f"{WORKERS} simulated workers with Leases")
        print(f"{time.monotonic() - t0:.1f}s: all_ready")
        wanted = Cadence(10, 30, 5)  # 200 / 20 writes/s = 10 s; progress: 40 / (40 - 10 - 20) = 4 s -> 5 s

        async def published() -> bool:
            values = [(lease["metadata"].get("annotations") or {}).get(ANNOTATION_CADENCE) for lease in await leases()]
            return len(values) >= WORKERS and all(Cadence.parse(v) == wanted for v in values)

        await wait_until(published, 60, f"the cadence {wanted.annotation()} on every worker Lease")
        print(f"{time.monotonic() - t0:.1f}s: published")

        async def adopted() -> bool:
            return all(agent.cadence == wanted for agent in sims.agents.values())

        await wait_until(adopted, 2 * own.renew_seconds + 10, "every worker to take the published cadence")
        print(f"{time.monotonic() - t0:.1f}s: adopted")

        async def running() -> bool:
            jobs = (await client.get(jobs_path))["items"]
            return sum(1 for j in jobs if (j.get("status") or {}).get("phase") == "Running") >= RUNNING

        await wait_until(running, 60, f"{RUNNING} jobs Running")
        print(f"{time.monotonic() - t0:.1f}s: running")
        await asyncio.sleep(wanted.renew_seconds)  # the rollout's last writes land; renewals spread over the period
        renewals_before = renewal_count(sims)
        progress_before = sims.counters.get("progress_writes", 0)
        server_before = writes_by_resource(farm.cluster)
        started = time.monotonic()
        await asyncio.sleep(WINDOW)
        elapsed = time.monotonic() - started
        server_after = writes_by_resource(farm.cluster)
        renewals = (renewal_count(sims) - renewals_before) / elapsed
        progress = (sims.counters.get("progress_writes", 0) - progress_before) / elapsed
        server = {k: (server_after.get(k, 0) - server_before.get(k, 0)) / elapsed for k in server_after}
        print(f"farm writes/s: renewals {renewals:.1f}, progress {progress:.1f}; apiserver writes/s by resource: "
              + ", ".join(f"{k} {v:.1f}" for k, v in sorted(server.items()) if v > 0))  # fmt: skip
        # The workers' steady writes: what the budget leaves after the Event allowance, within one
        # renewal's worth of phase noise at the window's edges.
        assert renewals <= WORKERS / wanted.renew_seconds * 1.25
        assert renewals + progress <= BUDGET - 10
        # Every write the API server took in the window (Leases of KWOK's nodes included).
        assert sum(server.values()) <= BUDGET
    finally:
        await sims.close()
        await client.close()


def renewal_count(sims: SimFarm) -> float:
    value = sims.metrics.registry.get_sample_value("ffrtmp_worker_lease_renew_seconds_count")
    return float(value or 0)
