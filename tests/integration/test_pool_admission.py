"""The chart's pool admission policy (templates/admission-policy.yaml) on a real API server: `helm
template` renders the ValidatingAdmissionPolicy and binding with the chart's defaults, the binding is
narrowed to this test's namespace (the policy is cluster-scoped; other tests share the cluster), and
WorkerPools are sent with a server-side dry run. Then the operator's own check, on a cluster without
the policy: a violating pool gets Degraded/PolicyViolation and no Pods."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from conftest import Farm
from helpers import REPO, TestCluster, wait_for

pytestmark = pytest.mark.integration
RELEASE = "adm"
WORKER_SA = f"{RELEASE}-ffmpeg-rtmp-worker"


def _rendered(cluster: TestCluster, suffix: str, namespace: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(cluster.bin_dir / "helm"), "template", RELEASE, str(REPO / "charts" / "ffmpeg-rtmp"),
         "--kube-version", "1.36.0", "-s", "templates/admission-policy.yaml"],
        text=True, capture_output=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out) if d]
    for d in docs:
        d["metadata"]["name"] += f"-{suffix}"
        if d["kind"] == "ValidatingAdmissionPolicyBinding":
            d["spec"]["policyName"] += f"-{suffix}"
            d["spec"]["matchResources"] = {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            }
    return docs


@pytest.fixture
def policy(cluster: TestCluster, namespace: str) -> Iterator[list[dict[str, Any]]]:
    docs = _rendered(cluster, uuid.uuid4().hex[:5], namespace)
    cluster.apply(docs, namespace)
    yield docs
    for d in docs:
        cluster.kubectl("delete", d["kind"], d["metadata"]["name"], "--wait=false", check=False)


def _pool(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "ffmpeg-rtmp.io/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": f"p-{uuid.uuid4().hex[:6]}"},
        "spec": {"accelerator": "cpu", **spec},
    }


def _dry_run(cluster: TestCluster, namespace: str, doc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return cluster.apply(doc, namespace, "--dry-run=server", check=False)


def test_pool_admission_policy_refuses_each_violation_naming_the_field(
    cluster: TestCluster, namespace: str, policy: list[dict[str, Any]]
) -> None:
    host_path = _pool(volumes=[{"name": "ok", "emptyDir": {}}, {"name": "root", "hostPath": {"path": "/"}}])
    # The policy takes effect once the API server has compiled it: wait on that state.
    wait_for(lambda: _dry_run(cluster, namespace, host_path).returncode != 0, 60, "the policy in force")
    refused = _dry_run(cluster, namespace, host_path)
    assert "spec.volumes[1].hostPath is not allowed by the cluster admin (allowed: persistentVolumeClaim" in (
        refused.stderr
    ), refused.stderr

    image = _dry_run(cluster, namespace, _pool(image="evil.example/miner:latest"))
    assert image.returncode != 0
    assert "spec.image evil.example/miner:latest is not allowed by the cluster admin" in image.stderr, image.stderr

    account = _dry_run(cluster, namespace, _pool(serviceAccountName="cluster-admin-sa"))
    assert account.returncode != 0
    assert (
        f"spec.serviceAccountName cluster-admin-sa is not allowed by the cluster admin (allowed: {WORKER_SA})"
        in account.stderr
    ), account.stderr

    allowed = _pool(
        image="ghcr.io/ffmpeg-rtmp/worker:0.2.0",
        serviceAccountName=WORKER_SA,
        volumes=[{"name": "work", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}}],
    )
    accepted = cluster.apply(allowed, namespace, check=False)
    assert accepted.returncode == 0, accepted.stderr
    assert cluster.get("workerpool", allowed["metadata"]["name"], namespace)["spec"]["serviceAccountName"] == WORKER_SA


def _degraded(farm: Farm, name: str) -> dict[str, Any]:
    status = farm.cluster.get("wp", name, farm.namespace).get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == "Degraded"), {})


def _pods(farm: Farm, pool: str) -> list[dict[str, Any]]:
    return farm.cluster.list("pods", farm.namespace, "-l", f"ffmpeg-rtmp.io/pool={pool}")


def test_operator_creates_no_pods_for_a_pool_that_breaks_its_policy(farm: Farm) -> None:
    farm.pool("hostile", minWorkers=1, volumes=[{"name": "root", "hostPath": {"path": "/"}}])
    farm.pool("fine", minWorkers=1, volumes=[{"name": "extra", "emptyDir": {}}])
    farm.start_operator("--pool-allowed-service-accounts=transcoder")
    # The allowed pool gets its Pod: the operator has acted on both pools by then.
    wait_for(lambda: _pods(farm, "fine"), 60, "a worker Pod of the allowed pool")
    degraded = wait_for(
        lambda: (c := _degraded(farm, "hostile")).get("reason") == "PolicyViolation" and c, 60, "PolicyViolation"
    )
    assert degraded["status"] == "True"
    assert "spec.volumes[0].hostPath is not allowed by the cluster admin" in degraded["message"]
    assert _pods(farm, "hostile") == []
