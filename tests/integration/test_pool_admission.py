"""The chart's pool admission policy (templates/admission-policy.yaml) on a real API server: `helm
template` renders the ValidatingAdmissionPolicy and binding (the chart's defaults, or admin values), the
binding is narrowed to this test's namespace (the policy is cluster-scoped; other tests share the
cluster), and WorkerPools are sent with a server-side dry run. The operator's check, with the flags the
chart renders for it, must decide every pool as the policy does. Then the operator on a cluster without
the policy: a violating pool gets Degraded/PolicyViolation and no Pods."""

from __future__ import annotations

import contextlib
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


# Admin values for the parity test: each new list with something in it.
ADMIN_VALUES = {
    "worker.runtimeClassByAccelerator.nvenc": "nvidia",
    "worker.imagePullSecrets[0].name": "ghcr",
    "poolPolicy.allowedRuntimeClasses": "{kata}",
    "poolPolicy.allowedImagePullSecrets": "{quay}",
    "poolPolicy.allowedPriorityClasses": "{batch-low}",
    "poolPolicy.allowedPodLabelKeys": "{team,example.com/*}",
    "poolPolicy.allowedPodAnnotationKeys": "{example.com/*}",
    "poolPolicy.egress.allowedDestinations": "{media.internal,*.corp.example,10.20.0.0/16,192.168.50.7,fd00:20::/32}",
    "poolPolicy.egress.allowedUnproxiedProtocols": "{rtmp}",
}


def _template(cluster: TestCluster, template: str, values: dict[str, str]) -> list[dict[str, Any]]:
    sets = [a for k, v in values.items() for a in ("--set", f"{k}={v}")]
    out = subprocess.run(
        [str(cluster.bin_dir / "helm"), "template", RELEASE, str(REPO / "charts" / "ffmpeg-rtmp"),
         "--kube-version", "1.36.0", "-s", template, *sets],
        text=True, capture_output=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


def _rendered(cluster: TestCluster, suffix: str, namespace: str, values: dict[str, str]) -> list[dict[str, Any]]:
    docs = _template(cluster, "templates/admission-policy.yaml", values)
    for d in docs:
        d["metadata"]["name"] += f"-{suffix}"
        if d["kind"] == "ValidatingAdmissionPolicyBinding":
            d["spec"]["policyName"] += f"-{suffix}"
            d["spec"]["matchResources"] = {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            }
    return docs


@contextlib.contextmanager
def _policy(cluster: TestCluster, namespace: str, values: dict[str, str]) -> Iterator[list[dict[str, Any]]]:
    docs = _rendered(cluster, uuid.uuid4().hex[:5], namespace, values)
    cluster.apply(docs, namespace)
    try:
        yield docs
    finally:
        for d in docs:
            cluster.kubectl("delete", d["kind"], d["metadata"]["name"], "--wait=false", check=False)


@pytest.fixture
def policy(cluster: TestCluster, namespace: str) -> Iterator[list[dict[str, Any]]]:
    with _policy(cluster, namespace, {}) as docs:
        yield docs


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

    # What else reaches the Pod or widens what workers may do: nothing beyond the chart's own defaults.
    for spec, message in [
        ({"runtimeClassName": "runc-privileged"},
         "spec.runtimeClassName runc-privileged is not allowed by the cluster admin (allowed: none)"),
        ({"imagePullSecrets": [{"name": "other-teams-registry"}]},
         "spec.imagePullSecrets other-teams-registry is not allowed by the cluster admin (allowed: none)"),
        ({"priorityClassName": "system-node-critical"},
         "spec.priorityClassName system-node-critical is not allowed by the cluster admin (allowed: none)"),
        ({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}, {"operator": "Exists"},
                          {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]},
         "spec.tolerations (no key: every taint), node-role.kubernetes.io/control-plane is not allowed by the "
         "cluster admin (denied keys: node-role.kubernetes.io/control-plane, node-role.kubernetes.io/master"),
        ({"podAnnotations": {"iam.amazonaws.com/role": "admin"}},
         "spec.podAnnotations keys iam.amazonaws.com/role are not allowed by the cluster admin (allowed: none)"),
        ({"podLabels": {"aadpodidbinding": "admin"}},
         "spec.podLabels keys aadpodidbinding are not allowed by the cluster admin (allowed: none)"),
        ({"egress": {"allow": ["10.0.0.0/8", "169.254.169.254", "media.lan"]}},
         "spec.egress.allow 10.0.0.0/8, 169.254.169.254, media.lan is not allowed by the cluster admin "
         "(allowed: none)"),
        ({"egress": {"allowUnproxiedProtocols": ["rtmp"]}},
         "spec.egress.allowUnproxiedProtocols rtmp is not allowed by the cluster admin (allowed: none)"),
    ]:  # fmt: skip
        refused = _dry_run(cluster, namespace, _pool(**spec))
        assert refused.returncode != 0 and message in refused.stderr, (spec, refused.stderr)
    # Pod fields a pool has no way to set: the API server refuses them as unknown (strict field validation).
    host = _dry_run(cluster, namespace, _pool(hostNetwork=True, privileged=True))
    assert host.returncode != 0 and 'unknown field "spec.hostNetwork"' in host.stderr, host.stderr

    allowed = _pool(
        image="ghcr.io/ffmpeg-rtmp/worker:0.3.0",
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        imagePullSecrets=[],
        priorityClassName="",
        egress={"allow": [], "allowUnproxiedProtocols": []},
        serviceAccountName=WORKER_SA,
        volumes=[{"name": "work", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}}],
    )
    accepted = cluster.apply(allowed, namespace, check=False)
    assert accepted.returncode == 0, accepted.stderr
    assert cluster.get("workerpool", allowed["metadata"]["name"], namespace)["spec"]["serviceAccountName"] == WORKER_SA


# (spec, field named in both refusals, or None when allowed) under ADMIN_VALUES.
PARITY: list[tuple[dict[str, Any], str | None]] = [
    ({"runtimeClassName": "kata"}, None),
    ({"runtimeClassName": "nvidia"}, None),  # the chart's own, from worker.runtimeClassByAccelerator
    ({"runtimeClassName": "runc-privileged"}, "spec.runtimeClassName"),
    ({"imagePullSecrets": [{"name": "quay"}, {"name": "ghcr"}]}, None),
    ({"imagePullSecrets": [{"name": "ghcr"}, {"name": "other"}]}, "spec.imagePullSecrets"),
    ({"priorityClassName": "batch-low"}, None),
    ({"priorityClassName": "system-node-critical"}, "spec.priorityClassName"),
    ({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}, {"key": "dedicated", "value": "x"}]}, None),
    ({"tolerations": [{"operator": "Exists"}]}, "spec.tolerations"),
    ({"tolerations": [{"key": "node-role.kubernetes.io/master", "operator": "Exists"}]}, "spec.tolerations"),
    ({"podLabels": {"team": "a", "example.com/tier": "b"}, "podAnnotations": {"example.com/owner": "c"}}, None),
    ({"podLabels": {"teams": "a"}}, "spec.podLabels"),
    ({"podAnnotations": {"example.com.evil/x": "media"}}, "spec.podAnnotations"),
    ({"egress": {"allow": ["Media.Internal", "cdn.corp.example", "*.eu.corp.example", "10.20.3.0/24",
                           "10.20.1.1", "192.168.50.7", "fd00:20:1::/48"], "allowUnproxiedProtocols": ["rtmp"]}},
     None),
    ({"egress": {"allow": ["10.0.0.0/8"]}}, "spec.egress.allow"),
    ({"egress": {"allow": ["169.254.169.254"]}}, "spec.egress.allow"),
    ({"egress": {"allow": ["10.20.0.0/15"]}}, "spec.egress.allow"),
    ({"egress": {"allow": ["192.168.50.0/24"]}}, "spec.egress.allow"),
    ({"egress": {"allow": ["fd00::1"]}}, "spec.egress.allow"),
    ({"egress": {"allow": ["corp.example"]}}, "spec.egress.allow"),
    ({"egress": {"allow": ["*.media.internal"]}}, "spec.egress.allow"),
    ({"egress": {"allow": ["evilcorp.example"]}}, "spec.egress.allow"),
]  # fmt: skip


def test_the_policy_and_the_operator_decide_every_pool_alike(cluster: TestCluster, namespace: str) -> None:
    """With admin values: the CEL the chart renders and the operator's check, with the flags the chart
    renders for it, refuse the same pools, each naming the same field."""
    import argparse

    from ffrtmp.api.pool import WorkerPoolSpec
    from ffrtmp.controller.main import add_arguments, settings_from
    from ffrtmp.controller.policy import pool_policy_violations

    (deployment,) = _template(cluster, "templates/deployment.yaml", ADMIN_VALUES)
    flags = [a for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
             if a.startswith(("--worker-", "--pool-"))]  # fmt: skip
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    operator_policy = settings_from(parser.parse_args(flags)).pool_policy
    pools = [_pool(**spec) for spec, _ in PARITY]
    with _policy(cluster, namespace, ADMIN_VALUES):
        probe = _pool(runtimeClassName="runc-privileged")
        wait_for(lambda: _dry_run(cluster, namespace, probe).returncode != 0, 60, "the policy in force")
        # One request per pool, in one kubectl call: each is refused or accepted on its own.
        proc = cluster.apply(pools, namespace, "--dry-run=server", check=False)
    for doc, (spec, field) in zip(pools, PARITY, strict=True):
        name = doc["metadata"]["name"]
        refusal = next((line for line in proc.stderr.splitlines() if f'"{name}"' in line), None)
        violations = pool_policy_violations(WorkerPoolSpec.model_validate(doc["spec"]), operator_policy)
        if field is None:
            assert refusal is None and f"{name} created (server dry run)" in proc.stdout, (spec, refusal)
            assert violations == [], (spec, violations)
        else:
            assert refusal is not None and f"denied request: {field} " in refusal, (spec, proc.stderr)
            assert violations and all(v.startswith(field) for v in violations), (spec, violations)


def _degraded(farm: Farm, name: str) -> dict[str, Any]:
    status = farm.cluster.get("wp", name, farm.namespace).get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == "Degraded"), {})


def _pods(farm: Farm, pool: str) -> list[dict[str, Any]]:
    return farm.cluster.list("pods", farm.namespace, "-l", f"ffmpeg-rtmp.io/pool={pool}")


def test_operator_creates_no_pods_for_a_pool_that_breaks_its_policy(farm: Farm) -> None:
    farm.pool("hostile", minWorkers=1, volumes=[{"name": "root", "hostPath": {"path": "/"}}])
    farm.pool("fine", minWorkers=1, volumes=[{"name": "extra", "emptyDir": {}}])
    farm.pool("wide", minWorkers=1, runtimeClassName="runc-privileged",
              egress={"allow": ["169.254.169.254"], "allowUnproxiedProtocols": ["rtmp"]})  # fmt: skip
    farm.start_operator("--pool-allowed-service-accounts=transcoder")
    # The allowed pool gets its Pod: the operator has acted on both pools by then.
    wait_for(lambda: _pods(farm, "fine"), 60, "a worker Pod of the allowed pool")
    degraded = wait_for(
        lambda: (c := _degraded(farm, "hostile")).get("reason") == "PolicyViolation" and c, 60, "PolicyViolation"
    )
    assert degraded["status"] == "True"
    assert "spec.volumes[0].hostPath is not allowed by the cluster admin" in degraded["message"]
    assert _pods(farm, "hostile") == []
    wide = wait_for(
        lambda: (c := _degraded(farm, "wide")).get("reason") == "PolicyViolation" and c, 60, "PolicyViolation"
    )
    for needle in (
        "spec.runtimeClassName 'runc-privileged' is not allowed by the cluster admin (allowed: none)",
        "spec.egress.allow[0] '169.254.169.254' is not allowed by the cluster admin (allowed: none)",
        "spec.egress.allowUnproxiedProtocols[0] 'rtmp' is not allowed by the cluster admin (allowed: none)",
    ):
        assert needle in wide["message"], wide["message"]
    assert _pods(farm, "wide") == []
