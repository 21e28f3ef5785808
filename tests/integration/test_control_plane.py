"""The local control plane is a real Kubernetes: scheduler, device plugins (simulated), GC."""

from __future__ import annotations

import json

import pytest

from helpers import TestCluster, wait_for

pytestmark = pytest.mark.integration

RESTRICTED = {
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
}


def pod(name: str, resources: dict[str, str], tolerations: list[dict[str, str]] | None = None) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "c", "image": "worker:test", "resources": {"limits": resources}, **RESTRICTED}],
            "tolerations": tolerations or [],
        },
    }


GPU_TOLERATION = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_nodes_advertise_gpu_and_qsv_capacity(cluster: TestCluster) -> None:
    nodes = {
        n["metadata"]["name"]: n for n in json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    }
    assert {"cpu-1", "cpu-2", "gpu-1", "gpu-2", "intel-1"} <= set(nodes)
    for name, node in nodes.items():
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", name
    assert nodes["gpu-1"]["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert nodes["gpu-2"]["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in nodes["gpu-1"]["spec"]["taints"]
    assert nodes["intel-1"]["status"]["allocatable"]["gpu.intel.com/i915"] == "2"
    assert "nvidia.com/gpu" not in nodes["cpu-1"]["status"]["allocatable"]
    table = cluster.kubectl(
        "get", "nodes", "-o", "custom-columns=NAME:.metadata.name,GPU:.status.allocatable.nvidia\\.com/gpu"
    ).stdout
    assert "gpu-1" in table and "4" in table


def test_scheduler_places_pods_by_device_plugin_requests(cluster: TestCluster, namespace: str) -> None:
    cluster.apply(
        [
            pod("wants-nvidia", {"nvidia.com/gpu": "1"}, GPU_TOLERATION),
            pod("wants-intel", {"gpu.intel.com/i915": "1"}),
            pod("wants-too-many", {"nvidia.com/gpu": "5"}, GPU_TOLERATION),
            pod("wants-cpu", {"cpu": "1"}),
        ],
        namespace,
    )

    def node_of(name: str) -> str:
        return str(cluster.get("pod", name, namespace)["spec"].get("nodeName", ""))

    wait_for(lambda: node_of("wants-nvidia") and node_of("wants-intel") and node_of("wants-cpu"), 60, "pods bound")
    assert node_of("wants-nvidia") in ("gpu-1", "gpu-2")
    assert node_of("wants-intel") == "intel-1"
    assert node_of("wants-cpu") in ("cpu-1", "cpu-2")  # GPU nodes are tainted
    wait_for(
        lambda: cluster.get("pod", "wants-nvidia", namespace)["status"].get("phase") == "Running",
        60,
        "pod Running",
    )

    def failed_scheduling() -> bool:
        events = cluster.kubectl(
            "get", "events", "-n", namespace, "--field-selector",
            "involvedObject.name=wants-too-many,reason=FailedScheduling", "-o", "json",
        ).stdout  # fmt: skip
        items = json.loads(events)["items"]
        return any("nvidia.com/gpu" in e["message"] for e in items)

    wait_for(failed_scheduling, 60, "FailedScheduling event naming nvidia.com/gpu")
    too_many = cluster.get("pod", "wants-too-many", namespace)
    assert too_many["status"]["phase"] == "Pending"
    assert not too_many["spec"].get("nodeName")


def test_garbage_collector_deletes_owned_children(cluster: TestCluster, namespace: str) -> None:
    cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    owner = cluster.get("configmap", "owner", namespace)
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
            ],
        },
    }
    cluster.apply(child, namespace)
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(
        lambda: cluster.kubectl("get", "configmap", "child", "-n", namespace, check=False).returncode != 0,
        60,
        "the garbage collector to delete the child",
    )


def test_versions_are_the_pinned_ones(cluster: TestCluster) -> None:
    out = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == "v1.36.3"
    if cluster.local is not None:
        assert out["serverVersion"]["gitVersion"] == "v1.36.3"
