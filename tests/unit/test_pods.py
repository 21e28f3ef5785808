"""The worker Pod: complete manifests compared against expected dicts, plus the restricted-PSS invariants."""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

import pytest
from pydantic import ValidationError

from ffrtmp.api.pool import JOB_SECRETS_DIR, WorkerPoolSpec
from ffrtmp.controller.pods import DEFAULT_TOLERATIONS, build_worker_pod, worker_labels, worker_selector
from ffrtmp.controller.settings import OperatorSettings

pytestmark = pytest.mark.unit

Obj = dict[str, Any]
NS = "media"
POOL_UID = "0a1b2c3d-0000-4000-8000-000000000001"
IMAGE = "registry.example/ffrtmp/worker:1.2.3"
SETTINGS = OperatorSettings(worker_image=IMAGE, worker_service_account="ffrtmp-worker")


POD_SECURITY: Obj = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def spec(**fields: Any) -> WorkerPoolSpec:
    return WorkerPoolSpec.model_validate(fields)


def expected_pod(
    pool: str,
    accelerator: str,
    *,
    slots: str = "1",
    resources: Obj | None = None,
    drain: str = "590",
    grace: int = 600,
    image: str = IMAGE,
    extra_env: list[Obj] | None = None,
    mounts: list[Obj] | None = None,
    volumes: list[Obj] | None = None,
    pod_spec_extra: Obj | None = None,
    media_roots: str = "/media",
    output_root: str = "/output",
) -> Obj:
    """The whole manifest, spelt out: a change to the Pod shows up here as a diff."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{pool}-",
            "namespace": NS,
            "labels": {
                "app.kubernetes.io/name": "ffmpeg-rtmp",
                "app.kubernetes.io/component": "worker",
                "app.kubernetes.io/instance": pool,
                "app.kubernetes.io/managed-by": "ffmpeg-rtmp-operator",
                "ffmpeg-rtmp.io/pool": pool,
            },
            "ownerReferences": [
                {
                    "apiVersion": "ffmpeg-rtmp.io/v1alpha1",
                    "kind": "WorkerPool",
                    "name": pool,
                    "uid": POOL_UID,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "containers": [
                {
                    "name": "worker",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["ffrtmp", "worker"],
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "FFRTMP_POOL", "value": pool},
                        {"name": "FFRTMP_ACCELERATOR", "value": accelerator},
                        {"name": "FFRTMP_SLOTS", "value": slots},
                        {"name": "FFRTMP_MEDIA_ROOTS", "value": media_roots},
                        {"name": "FFRTMP_OUTPUT_ROOT", "value": output_root},
                        {"name": "FFRTMP_ALLOWED_PROTOCOLS", "value": "file,http,https,rtmp,rtmps"},
                        {"name": "FFRTMP_EGRESS_ALLOW", "value": ""},
                        {"name": "FFRTMP_EGRESS_UNPROXIED", "value": ""},
                        {"name": "FFRTMP_EGRESS_DENY", "value": ""},
                        {"name": "FFRTMP_DRAIN_SECONDS", "value": drain},
                        *(extra_env or []),
                    ],
                    "ports": [{"name": "http-metrics", "containerPort": 9091, "protocol": "TCP"}],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": 9091}, "periodSeconds": 5},
                    "livenessProbe": {
                        "httpGet": {"path": "/healthz", "port": 9091},
                        "periodSeconds": 10,
                        "failureThreshold": 6,
                    },
                    "resources": resources or {},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "readOnlyRootFilesystem": True,
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}, *(mounts or [])],
                }
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": grace,
            "automountServiceAccountToken": True,
            "enableServiceLinks": False,
            "securityContext": POD_SECURITY,
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}}, *(volumes or [])],
            **(pod_spec_extra or {}),
        },
    }


def assert_restricted(pod: Obj) -> None:
    """What the restricted Pod Security Standard checks (plus a read-only root filesystem)."""
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in spec and "hostPID" not in spec and "hostIPC" not in spec
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True
        assert sc["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost")
        assert sc["readOnlyRootFilesystem"] is True
        assert not sc.get("privileged", False)
        assert all("hostPort" not in p for p in c.get("ports", []))
    assert spec["volumes"][0] == {"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}}


def assert_owned_and_labelled(pod: Obj, pool: str) -> None:
    owners = pod["metadata"]["ownerReferences"]
    assert len(owners) == 1
    assert owners[0]["kind"] == "WorkerPool" and owners[0]["name"] == pool and owners[0]["uid"] == POOL_UID
    assert owners[0]["controller"] is True
    labels = pod["metadata"]["labels"]
    assert labels == worker_labels(pool)
    # worker_selector selects exactly what the Pod carries.
    for term in worker_selector(pool).split(","):
        key, _, value = term.partition("=")
        assert labels[key] == value


# --- complete manifests ---------------------------------------------------------------------------


def test_cpu_pool_with_resources_node_selector_priority_and_settings_service_account() -> None:
    pool_spec = spec(
        accelerator="cpu",
        maxConcurrentJobs=2,
        resources={"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"cpu": "4", "memory": "4Gi"}},
        nodeSelector={"node-role.example/transcode": "true"},
        priorityClassName="batch-low",
    )
    pod = build_worker_pod("cpu", NS, POOL_UID, pool_spec, SETTINGS)
    assert pod == expected_pod(
        "cpu",
        "cpu",
        slots="2",
        resources={"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"cpu": "4", "memory": "4Gi"}},
        pod_spec_extra={
            "serviceAccountName": "ffrtmp-worker",
            "nodeSelector": {"node-role.example/transcode": "true"},
            "priorityClassName": "batch-low",
        },
    )
    assert "tolerations" not in pod["spec"]  # a cpu pool tolerates nothing by default
    assert_restricted(pod)
    assert_owned_and_labelled(pod, "cpu")


def test_pool_service_account_and_image_override_the_settings() -> None:
    pool_spec = spec(
        accelerator="cpu",
        serviceAccountName="custom-sa",
        image="example/ffmpeg:7",
        imagePullPolicy="Always",
        terminationGracePeriodSeconds=5,
    )
    pod = build_worker_pod("cpu", NS, POOL_UID, pool_spec, SETTINGS)
    want = expected_pod(
        "cpu", "cpu", image="example/ffmpeg:7", drain="0", grace=5, pod_spec_extra={"serviceAccountName": "custom-sa"}
    )
    want["spec"]["containers"][0]["imagePullPolicy"] = "Always"
    assert pod == want


def test_no_service_account_anywhere_leaves_the_namespace_default() -> None:
    pod = build_worker_pod("cpu", NS, POOL_UID, spec(accelerator="cpu"), OperatorSettings(worker_image=IMAGE))
    assert pod == expected_pod("cpu", "cpu")
    assert "serviceAccountName" not in pod["spec"]


@pytest.mark.parametrize(("gpus", "want"), [(None, "1"), (2, "2")])
def test_nvenc_pool_requests_gpus_and_tolerates_the_gpu_taint(gpus: int | None, want: str) -> None:
    fields: Obj = {"accelerator": "nvenc", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}
    if gpus is not None:
        fields["gpusPerWorker"] = gpus
    pod = build_worker_pod("gpu", NS, POOL_UID, spec(**fields), SETTINGS)
    assert pod == expected_pod(
        "gpu",
        "nvenc",
        resources={"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"nvidia.com/gpu": want}},
        extra_env=[{"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,video,utility"}],
        pod_spec_extra={
            "serviceAccountName": "ffrtmp-worker",
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    )
    assert_restricted(pod)
    assert_owned_and_labelled(pod, "gpu")


def test_qsv_pool_uses_the_device_resource_name_from_settings() -> None:
    settings = OperatorSettings(
        worker_image=IMAGE,
        device_resources={"nvenc": "nvidia.com/gpu", "qsv": "gpu.intel.com/xe", "vaapi": "gpu.intel.com/xe"},
    )
    pod = build_worker_pod("intel", NS, POOL_UID, spec(accelerator="qsv", maxConcurrentJobs=4), settings)
    assert pod == expected_pod(
        "intel",
        "qsv",
        slots="4",
        resources={"limits": {"gpu.intel.com/xe": "1"}},
        extra_env=[{"name": "FFRTMP_RENDER_DEVICE", "value": "/dev/dri/renderD128"}],
        pod_spec_extra={
            "tolerations": [{"key": "gpu.intel.com/i915", "operator": "Exists", "effect": "NoSchedule"}],
            "securityContext": {**POD_SECURITY, "supplementalGroups": [109]},
        },
    )
    # No NVIDIA variables outside nvenc pools.
    assert all(e["name"] != "NVIDIA_DRIVER_CAPABILITIES" for e in pod["spec"]["containers"][0]["env"])
    assert_restricted(pod)


def test_an_accelerator_without_a_device_resource_requests_none() -> None:
    settings = OperatorSettings(worker_image=IMAGE, device_resources={"nvenc": "nvidia.com/gpu"})
    pod = build_worker_pod("va", NS, POOL_UID, spec(accelerator="vaapi"), settings)
    assert pod["spec"]["containers"][0]["resources"] == {}


@pytest.mark.parametrize(
    ("tolerations", "want"),
    [
        (
            [
                {
                    "key": "dedicated",
                    "operator": "Equal",
                    "value": "video",
                    "effect": "NoExecute",
                    "tolerationSeconds": 60,
                }
            ],
            [
                {
                    "key": "dedicated",
                    "operator": "Equal",
                    "value": "video",
                    "effect": "NoExecute",
                    "tolerationSeconds": 60,
                }
            ],
        ),
        ([{"operator": "Exists"}], [{"operator": "Exists"}]),
        ([], None),  # an explicit empty list opts out of the defaults
    ],
)
def test_explicit_tolerations_replace_the_defaults(tolerations: list[Obj], want: list[Obj] | None) -> None:
    pod = build_worker_pod("gpu", NS, POOL_UID, spec(accelerator="nvenc", tolerations=tolerations), SETTINGS)
    expected = expected_pod(
        "gpu",
        "nvenc",
        resources={"limits": {"nvidia.com/gpu": "1"}},
        extra_env=[{"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,video,utility"}],
        pod_spec_extra={"serviceAccountName": "ffrtmp-worker", **({"tolerations": want} if want else {})},
    )
    assert pod == expected


def test_extra_volumes_and_mounts_come_after_the_scratch_dir_and_affinity_passes_through() -> None:
    volumes: list[Obj] = [
        {"name": "media", "persistentVolumeClaim": {"claimName": "media", "readOnly": True}},
        {"name": "output", "persistentVolumeClaim": {"claimName": "output"}},
    ]
    mounts: list[Obj] = [
        {"name": "media", "mountPath": "/media", "readOnly": True},
        {"name": "output", "mountPath": "/output"},
    ]
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
            }
        }
    }
    pool_spec = spec(accelerator="cpu", volumes=volumes, volumeMounts=mounts, affinity=affinity)
    pod = build_worker_pod("cpu", NS, POOL_UID, pool_spec, SETTINGS)
    assert pod == expected_pod(
        "cpu",
        "cpu",
        mounts=mounts,
        volumes=volumes,
        pod_spec_extra={"serviceAccountName": "ffrtmp-worker", "affinity": affinity},
    )
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["scratch", "media", "output"]
    assert [m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]] == ["scratch", "media", "output"]
    assert_restricted(pod)


def test_storage_claims_mount_media_read_only_at_their_roots_and_output_read_write() -> None:
    pool_spec = spec(
        accelerator="cpu",
        mediaRoots=["/media", "/archive"],
        outputRoot="/srv/out",
        storage={
            "media": [
                {"claimName": "media-library", "mountPath": "/media"},
                {"claimName": "archive.v2", "mountPath": "/archive", "subPath": "films/2024"},
            ],
            "output": {"claimName": "renditions", "subPath": "farm-a"},
        },
        volumes=[{"name": "fonts", "configMap": {"name": "fonts"}}],
        volumeMounts=[{"name": "fonts", "mountPath": "/usr/share/fonts/extra", "readOnly": True}],
    )
    pod = build_worker_pod("cpu", NS, POOL_UID, pool_spec, SETTINGS)
    assert pod == expected_pod(
        "cpu",
        "cpu",
        extra_env=[],
        mounts=[
            {"name": "media-0", "mountPath": "/media", "readOnly": True},
            {"name": "media-1", "mountPath": "/archive", "readOnly": True, "subPath": "films/2024"},
            {"name": "output", "mountPath": "/srv/out", "subPath": "farm-a"},
            {"name": "fonts", "mountPath": "/usr/share/fonts/extra", "readOnly": True},
        ],
        volumes=[
            {"name": "media-0", "persistentVolumeClaim": {"claimName": "media-library", "readOnly": True}},
            {"name": "media-1", "persistentVolumeClaim": {"claimName": "archive.v2", "readOnly": True}},
            {"name": "output", "persistentVolumeClaim": {"claimName": "renditions"}},
            {"name": "fonts", "configMap": {"name": "fonts"}},
        ],
        pod_spec_extra={"serviceAccountName": "ffrtmp-worker"},
        media_roots="/media:/archive",
        output_root="/srv/out",
    )
    assert_restricted(pod)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"storage": {"media": [{"claimName": "m", "mountPath": "/films"}]}},
            "every storage.media mountPath must be one of mediaRoots (/films is not)",
        ),
        (
            {
                "mediaRoots": ["/media"],
                "storage": {
                    "media": [{"claimName": "a", "mountPath": "/media"}, {"claimName": "b", "mountPath": "/media"}]
                },
            },
            "two storage.media claims must not share a mountPath",
        ),
        (
            {
                "mediaRoots": ["/media", "/output"],
                "storage": {"media": [{"claimName": "a", "mountPath": "/output"}], "output": {"claimName": "o"}},
            },
            "no storage.media claim may use that mountPath",
        ),
        (
            {
                "storage": {"output": {"claimName": "o"}},
                "volumes": [{"name": "x", "emptyDir": {}}],
                "volumeMounts": [{"name": "x", "mountPath": "/output"}],
            },
            "a volumeMounts entry must not use a mountPath that spec.storage mounts",
        ),
        (
            {"mediaRoots": ["/tmp"], "storage": {"media": [{"claimName": "m", "mountPath": "/tmp"}]}},
            "/tmp is the worker's scratch volume: spec.storage cannot mount a claim there",
        ),
        (
            {"outputRoot": "/tmp", "storage": {"output": {"claimName": "o"}}},
            "/tmp is the worker's scratch volume: spec.storage cannot mount a claim there",
        ),
        ({"volumes": [{"name": "scratch", "emptyDir": {}}]}, "are the worker Pod's own: choose another name (scratch)"),
        (
            {"storage": {"media": [{"claimName": "m", "mountPath": "/media"}]}, "volumes": [{"name": "media-0"}]},
            "are the worker Pod's own: choose another name (media-0)",
        ),
        (
            {"storage": {"output": {"claimName": "o"}}, "volumes": [{"name": "output", "emptyDir": {}}]},
            "are the worker Pod's own: choose another name (output)",
        ),
        (
            {"jobSecrets": ["media"], "volumes": [{"name": "job-secret-0", "emptyDir": {}}]},
            "are the worker Pod's own: choose another name (job-secret-0)",
        ),
        ({"jobSecrets": ["Media"]}, "should match pattern"),
        ({"storage": {"output": {"claimName": "o", "subPath": "../etc"}}}, "should match pattern"),
        ({"storage": {"output": {"claimName": "o", "subPath": "/abs"}}}, "should match pattern"),
        ({"storage": {"output": {"claimName": "Output"}}}, "should match pattern"),
    ],
)
def test_storage_paths_are_checked_like_the_crd_does(fields: Obj, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        spec(accelerator="cpu", **fields)


def test_job_secrets_are_mounted_read_only_one_folder_each_and_named_to_the_worker() -> None:
    pod = build_worker_pod("cpu", NS, POOL_UID, spec(accelerator="cpu", jobSecrets=["media", "stream.keys"]), SETTINGS)
    volumes, (container,) = pod["spec"]["volumes"], pod["spec"]["containers"]
    assert volumes[1:] == [
        {"name": "job-secret-0", "secret": {"secretName": "media", "optional": True, "defaultMode": 0o440}},
        {"name": "job-secret-1", "secret": {"secretName": "stream.keys", "optional": True, "defaultMode": 0o440}},
    ]
    assert container["volumeMounts"][1:] == [
        {"name": "job-secret-0", "mountPath": f"{JOB_SECRETS_DIR}/media", "readOnly": True},
        {"name": "job-secret-1", "mountPath": f"{JOB_SECRETS_DIR}/stream.keys", "readOnly": True},
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FFRTMP_JOB_SECRETS"] == "media,stream.keys" and env["FFRTMP_JOB_SECRETS_DIR"] == JOB_SECRETS_DIR
    assert not [e for e in container["env"] if "secretKeyRef" in (e.get("valueFrom") or {})], "never in the env"
    assert_restricted(pod)
    plain = build_worker_pod("cpu", NS, POOL_UID, spec(accelerator="cpu"), SETTINGS)
    assert not any(e["name"].startswith("FFRTMP_JOB_SECRETS") for e in plain["spec"]["containers"][0]["env"])


@pytest.mark.parametrize("accelerator", ["qsv", "vaapi"])
def test_render_node_pools_get_the_render_group_and_device_from_the_pool(accelerator: str) -> None:
    pool_spec = spec(accelerator=accelerator, renderDevice="/dev/dri/renderD129", renderGroupId=993)
    pod = build_worker_pod("intel", NS, POOL_UID, pool_spec, SETTINGS)
    assert pod["spec"]["securityContext"] == {**POD_SECURITY, "supplementalGroups": [993]}
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["FFRTMP_RENDER_DEVICE"] == "/dev/dri/renderD129"
    assert_restricted(pod)


@pytest.mark.parametrize("accelerator", ["cpu", "nvenc"])
def test_other_pools_get_no_render_group_or_device(accelerator: str) -> None:
    pod = build_worker_pod("p", NS, POOL_UID, spec(accelerator=accelerator, renderGroupId=993), SETTINGS)
    assert pod["spec"]["securityContext"] == POD_SECURITY
    assert all(e["name"] != "FFRTMP_RENDER_DEVICE" for e in pod["spec"]["containers"][0]["env"])


def test_media_roots_protocols_and_output_root_reach_the_worker_env() -> None:
    pool_spec = spec(
        accelerator="cpu", mediaRoots=["/mnt/a", "/mnt/b"], outputRoot="/srv/out", allowedProtocols=["file", "https"]
    )
    env = {
        e["name"]: e.get("value")
        for e in build_worker_pod("cpu", NS, POOL_UID, pool_spec, SETTINGS)["spec"]["containers"][0]["env"]
    }
    assert env["FFRTMP_MEDIA_ROOTS"] == "/mnt/a:/mnt/b"
    assert env["FFRTMP_OUTPUT_ROOT"] == "/srv/out"
    assert env["FFRTMP_ALLOWED_PROTOCOLS"] == "file,https"


@pytest.mark.parametrize("accelerator", ["cpu", "nvenc", "qsv", "vaapi"])
def test_every_pod_is_restricted_owned_and_labelled(accelerator: str) -> None:
    pod = build_worker_pod("p", NS, POOL_UID, spec(accelerator=accelerator), SETTINGS)
    assert_restricted(pod)
    assert_owned_and_labelled(pod, "p")


def test_building_a_pod_does_not_share_state_between_pods() -> None:
    """The manifest is a fresh object each time: mutating one Pod must not change the next."""
    defaults = copy.deepcopy(DEFAULT_TOLERATIONS)
    first = build_worker_pod("gpu", NS, POOL_UID, spec(accelerator="nvenc"), SETTINGS)
    second = build_worker_pod("gpu", NS, POOL_UID, spec(accelerator="nvenc"), SETTINGS)
    assert first == second
    first["metadata"]["labels"]["extra"] = "x"
    first["spec"]["containers"][0]["env"].append({"name": "X", "value": "1"})
    assert second == build_worker_pod("gpu", NS, POOL_UID, spec(accelerator="nvenc"), SETTINGS)
    assert defaults == DEFAULT_TOLERATIONS


def test_worker_selector() -> None:
    assert worker_selector("gpu") == "app.kubernetes.io/component=worker,ffmpeg-rtmp.io/pool=gpu"


# -- worker extras: pull secrets, labels, annotations, RuntimeClass --------------------------------

EXTRAS = OperatorSettings(
    worker_image=IMAGE,
    worker_image_pull_secrets=("ghcr",),
    worker_pod_labels={"team": "media", "app.kubernetes.io/component": "not-a-worker"},
    worker_pod_annotations={"example.com/owner": "platform"},
    worker_runtime_classes={"nvenc": "nvidia"},
)


def test_operator_defaults_for_worker_extras() -> None:
    pod = build_worker_pod("gpu", "media", "uid", WorkerPoolSpec(accelerator="nvenc"), EXTRAS)
    assert pod["spec"]["runtimeClassName"] == "nvidia"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "ghcr"}]
    labels = pod["metadata"]["labels"]
    assert labels["team"] == "media"
    assert labels["app.kubernetes.io/component"] == "worker"  # the operator's own label wins
    assert pod["metadata"]["annotations"] == {"example.com/owner": "platform"}
    cpu = build_worker_pod("cpu", "media", "uid", WorkerPoolSpec(accelerator="cpu"), EXTRAS)
    assert "runtimeClassName" not in cpu["spec"]  # the RuntimeClass is per accelerator


def test_pool_fields_win_over_the_operator_defaults() -> None:
    s = WorkerPoolSpec.model_validate(
        {
            "accelerator": "nvenc",
            "runtimeClassName": "nvidia-cdi",
            "imagePullSecrets": [{"name": "quay"}, {"name": "ghcr2"}],
            "podLabels": {"team": "video", "ffmpeg-rtmp.io/pool": "other"},
            "podAnnotations": {"example.com/owner": "video", "example.com/cost": "gpu"},
        }
    )
    pod = build_worker_pod("gpu", "media", "uid", s, EXTRAS)
    assert pod["spec"]["runtimeClassName"] == "nvidia-cdi"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "quay"}, {"name": "ghcr2"}]
    assert pod["metadata"]["labels"]["team"] == "video"
    assert pod["metadata"]["labels"]["ffmpeg-rtmp.io/pool"] == "gpu"
    assert pod["metadata"]["annotations"] == {"example.com/owner": "video", "example.com/cost": "gpu"}
    none = WorkerPoolSpec.model_validate({"accelerator": "nvenc", "imagePullSecrets": []})
    assert "imagePullSecrets" not in build_worker_pod("gpu", "media", "uid", none, EXTRAS)["spec"]


def test_no_extras_by_default() -> None:
    pod = build_worker_pod("gpu", "media", "uid", WorkerPoolSpec(accelerator="nvenc"), SETTINGS)
    assert not {"runtimeClassName", "imagePullSecrets"} & pod["spec"].keys()
    assert "annotations" not in pod["metadata"]


def test_a_bad_runtime_class_name_is_refused() -> None:
    with pytest.raises(ValidationError):
        WorkerPoolSpec.model_validate({"accelerator": "nvenc", "runtimeClassName": "Not_A_Name"})


def test_operator_flags_for_worker_extras() -> None:
    import argparse

    from ffrtmp.controller import main

    parser = argparse.ArgumentParser()
    main.add_arguments(parser)
    args = parser.parse_args(
        [
            "--worker-image-pull-secret=ghcr", "--worker-image-pull-secret=quay",
            "--worker-pod-label=team=media", "--worker-pod-annotation=example.com/a=b=c",
            "--worker-runtime-class=nvenc=nvidia",
        ]
    )  # fmt: skip
    s = main.settings_from(args)
    assert s.worker_image_pull_secrets == ("ghcr", "quay")
    assert s.worker_pod_labels == {"team": "media"}
    assert s.worker_pod_annotations == {"example.com/a": "b=c"}
    assert s.worker_runtime_classes == {"nvenc": "nvidia"}
    with pytest.raises(SystemExit, match="--worker-pod-label takes KEY=VALUE"):
        main.settings_from(parser.parse_args(["--worker-pod-label=oops"]))


def test_egress_allowlist_unproxied_protocols_and_cluster_cidrs_reach_the_worker_env() -> None:
    pool_spec = spec(
        accelerator="cpu", egress={"allow": ["10.1.2.3/32", "media.internal"], "allowUnproxiedProtocols": ["rtmp"]}
    )
    settings = dataclasses.replace(SETTINGS, cluster_cidrs=("10.96.0.0/12", "10.244.0.0/16"))
    env = {
        e["name"]: e.get("value")
        for e in build_worker_pod("cpu", NS, POOL_UID, pool_spec, settings)["spec"]["containers"][0]["env"]
    }
    assert env["FFRTMP_EGRESS_ALLOW"] == "10.1.2.3/32,media.internal"
    assert env["FFRTMP_EGRESS_UNPROXIED"] == "rtmp"
    assert env["FFRTMP_EGRESS_DENY"] == "10.96.0.0/12,10.244.0.0/16"


def test_object_storage_reaches_the_worker_env_and_its_key_comes_from_the_secret() -> None:
    storage = {"endpoint": "http://minio.storage:9000", "pathStyle": True,
               "credentialsSecretRef": {"name": "media-s3", "secretAccessKeyKey": "secret"}}  # fmt: skip
    pool_spec = spec(accelerator="cpu", objectStorage=storage)
    pod = build_worker_pod("cpu", NS, POOL_UID, pool_spec, SETTINGS)
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["FFRTMP_S3_ENDPOINT"]["value"] == "http://minio.storage:9000"
    assert env["FFRTMP_S3_REGION"]["value"] == "us-east-1"
    assert env["FFRTMP_S3_PATH_STYLE"]["value"] == "true"
    assert env["FFRTMP_S3_ACCESS_KEY_ID"] == {
        "name": "FFRTMP_S3_ACCESS_KEY_ID",
        "valueFrom": {"secretKeyRef": {"name": "media-s3", "key": "AWS_ACCESS_KEY_ID"}},
    }
    assert env["FFRTMP_S3_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "media-s3", "key": "secret"}
    plain = build_worker_pod("cpu", NS, POOL_UID, spec(accelerator="cpu"), SETTINGS)["spec"]["containers"][0]["env"]
    assert not any(e["name"].startswith("FFRTMP_S3_") for e in plain)


@pytest.mark.parametrize(
    "endpoint",
    ["s3.amazonaws.com", "ftp://h", "https://h/path", "https://user:pw@h", "https://h:99999999", "https://h?x=1"],
)
def test_object_storage_endpoints_are_scheme_host_and_port_only(endpoint: str) -> None:
    with pytest.raises(ValidationError, match="endpoint"):
        spec(accelerator="cpu", objectStorage={"endpoint": endpoint, "credentialsSecretRef": {"name": "s"}})
