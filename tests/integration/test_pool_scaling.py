"""Queue-driven scaling on the local control plane, with real workers and real ffmpeg."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from conftest import Farm
from helpers import make_clip, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.background]  # mostly waiting on the autoscaler's windows


def status(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("status") or {}


def pool_status(farm: Farm, name: str) -> dict[str, Any]:
    return status(farm.cluster.get("wp", name, farm.namespace))


def worker_pods(farm: Farm, pool: str) -> list[dict[str, Any]]:
    pods = farm.cluster.list("pods", farm.namespace, "-l", f"ffmpeg-rtmp.io/pool={pool}")
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status(obj).get("conditions", []) if c["type"] == type_), {})


def test_scale_from_zero_on_a_burst_and_back_without_interrupting_jobs(farm: Farm) -> None:
    clip = make_clip(farm.media / "clip.mp4", seconds=2, size="320x240")
    farm.pool(
        "cpu",
        maxConcurrentJobs=2,
        minWorkers=0,
        maxWorkers=4,
        autoscaling={"enabled": True, "scaleDownStabilizationSeconds": 15, "idleTimeoutSeconds": 5},
    )
    farm.start_operator()
    farm.start_workers()
    wait_for(lambda: pool_status(farm, "cpu").get("desiredWorkers") == 0, 30, "the idle pool at 0 workers")
    assert worker_pods(farm, "cpu") == []

    outputs = [{"name": "out", "video": {"codec": "h264", "crf": 30, "preset": "veryfast", "height": 120}}]
    docs = [
        {
            "apiVersion": "ffmpeg-rtmp.io/v1alpha1",
            "kind": "TranscodeJob",
            "metadata": {"name": f"burst-{i:02d}"},
            "spec": {"input": {"uri": str(clip)}, "outputs": outputs, "resources": {"limits": {"cpu": "1"}}},
        }
        for i in range(40)
    ]
    submitted = time.monotonic()
    farm.cluster.apply(docs, farm.namespace)
    wait_for(lambda: worker_pods(farm, "cpu"), 30, "a first worker Pod", interval=0.05)
    first_pod = time.monotonic() - submitted
    wait_for(lambda: pool_status(farm, "cpu").get("readyWorkers", 0) >= 1, 60, "a ready worker", interval=0.1)
    first_ready = time.monotonic() - submitted
    wait_for(lambda: len(worker_pods(farm, "cpu")) == 4, 30, "the pool at maxWorkers", interval=0.1)
    at_max = time.monotonic() - submitted
    print(f"\nreaction: first Pod {first_pod:.2f}s, first Ready {first_ready:.2f}s, 4 Pods {at_max:.2f}s")

    jobs = farm.wait_all(timeout=300)
    assert all(status(j)["phase"] == "Succeeded" for j in jobs)
    done = time.monotonic()
    # Scale-down waits for the stabilization window, then removes idle workers only.
    wait_for(lambda: worker_pods(farm, "cpu") == [], 90, "the pool back at minWorkers (0)", interval=0.5)
    print(f"back to 0 workers {time.monotonic() - done:.1f}s after the last job finished")
    for j in farm.jobs():
        s = status(j)
        assert s["phase"] == "Succeeded" and s["attempt"] == 1, (j["metadata"]["name"], s)
    events = json.loads(
        farm.cluster.kubectl(
            "get", "events", "-n", farm.namespace, "--field-selector", "involvedObject.kind=WorkerPool", "-o", "json"
        ).stdout
    )["items"]
    reasons = [e["reason"] for e in events]
    assert "ScaledUp" in reasons and "ScaledDown" in reasons
    assert all(e["message"] for e in events)
    final = pool_status(farm, "cpu")
    assert final["desiredWorkers"] == 0 and final["lastScaleReason"]
    assert final["capacity"]["avgJobSeconds"] > 0


def test_gpu_pool_stops_at_what_fits(farm: Farm) -> None:
    # Two NVIDIA nodes with 4 GPUs each: only 2 workers asking for 4 GPUs fit.
    farm.pool(
        "nvenc",
        "nvenc",
        gpusPerWorker=4,
        maxConcurrentJobs=1,
        minWorkers=0,
        maxWorkers=6,
        autoscaling={"enabled": True, "pendingTimeoutSeconds": 5},
    )
    farm.start_operator()
    outputs = [{"name": "out", "video": {"codec": "h264", "bitrate": "2M", "preset": "p4"}}]
    docs = [
        {
            "apiVersion": "ffmpeg-rtmp.io/v1alpha1",
            "kind": "TranscodeJob",
            "metadata": {"name": f"gpu-{i}"},
            "spec": {
                "input": {"uri": "/media/x.mp4"},
                "outputs": outputs,
                "accelerator": "nvenc",
                "hardwarePolicy": "required",
            },
        }
        for i in range(8)
    ]
    farm.cluster.apply(docs, farm.namespace)

    def limited() -> dict[str, Any] | None:
        wp = farm.cluster.get("wp", "nvenc", farm.namespace)
        c = condition(wp, "ScalingLimited")
        return wp if c.get("status") == "True" and c.get("reason") == "Unschedulable" else None

    wp = wait_for(limited, 60, "ScalingLimited/Unschedulable")
    assert "Pending" in condition(wp, "ScalingLimited")["message"]
    try:
        wait_for(lambda: len(worker_pods(farm, "nvenc")) == 2, 60, "the pool capped at the 2 workers that fit")
    except AssertionError:
        print(json.dumps(pool_status(farm, "nvenc"), indent=1))
        print(farm.cluster.kubectl("get", "pods", "-n", farm.namespace, "-o", "wide").stdout)
        raise
    pods = worker_pods(farm, "nvenc")
    assert all(p["spec"].get("nodeName", "").startswith("gpu-") for p in pods)
    time.sleep(8)  # no piling up: it stays at what fits
    assert len(worker_pods(farm, "nvenc")) == 2
    assert pool_status(farm, "nvenc")["desiredWorkers"] == 2


def test_kubectl_scale_sets_workers_when_autoscaling_is_off(farm: Farm) -> None:
    farm.pool("cpu", minWorkers=0, maxWorkers=5, autoscaling={"enabled": False})
    farm.start_operator()
    farm.start_workers()
    farm.cluster.kubectl("scale", "wp/cpu", "--replicas=3", "-n", farm.namespace)
    wait_for(lambda: len(worker_pods(farm, "cpu")) == 3, 60, "3 worker Pods")
    wait_for(lambda: pool_status(farm, "cpu").get("readyWorkers") == 3, 60, "3 ready workers")
    scale = json.loads(
        farm.cluster.kubectl(
            "get", "--raw", f"/apis/ffmpeg-rtmp.io/v1alpha1/namespaces/{farm.namespace}/workerpools/cpu/scale"
        ).stdout
    )
    assert scale["spec"]["replicas"] == 3 and scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == "app.kubernetes.io/component=worker,ffmpeg-rtmp.io/pool=cpu"
    farm.cluster.kubectl("scale", "wp/cpu", "--replicas=1", "-n", farm.namespace)
    wait_for(lambda: len(worker_pods(farm, "cpu")) == 1, 60, "1 worker Pod")
    rejected = farm.cluster.kubectl("scale", "wp/cpu", "--replicas=9", "-n", farm.namespace, check=False)
    assert rejected.returncode != 0 and "replicas must lie within minWorkers..maxWorkers" in rejected.stderr
