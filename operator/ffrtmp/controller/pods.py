"""The worker Pod of a WorkerPool (pure): what `kubectl get pod -o yaml` shows for a worker."""

from __future__ import annotations

from typing import Any

from ffrtmp.api.constants import (
    API_VERSION,
    APP_NAME,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_LEADER_TERM,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_POOL,
    WORKER_COMPONENT,
)
from ffrtmp.api.pool import SCRATCH_DIR, ObjectStorage, WorkerPoolSpec
from ffrtmp.controller.settings import OperatorSettings

Obj = dict[str, Any]
WORKER_UID = 10001
METRICS_PORT = 9091
# Taints GPU nodes commonly carry; GPU workers tolerate them unless the pool sets its own.
DEFAULT_TOLERATIONS = {
    "nvenc": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "qsv": [{"key": "gpu.intel.com/i915", "operator": "Exists", "effect": "NoSchedule"}],
    "vaapi": [{"key": "gpu.intel.com/i915", "operator": "Exists", "effect": "NoSchedule"}],
}


# Accelerators that open a DRI render node (spec.renderDevice) and so need the host's render group.
RENDER_NODE_ACCELERATORS = ("qsv", "vaapi")


def worker_labels(pool_name: str) -> dict[str, str]:
    return {
        LABEL_NAME: APP_NAME,
        LABEL_COMPONENT: WORKER_COMPONENT,
        LABEL_INSTANCE: pool_name,
        LABEL_MANAGED_BY: "ffmpeg-rtmp-operator",
        LABEL_POOL: pool_name,
    }


def worker_selector(pool_name: str) -> str:
    """The label selector of a pool's workers (for /scale and `kubectl get pods -l`)."""
    return f"{LABEL_COMPONENT}={WORKER_COMPONENT},{LABEL_POOL}={pool_name}"


def _field_env(name: str, path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _resources(spec: WorkerPoolSpec, settings: OperatorSettings) -> Obj:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if spec.resources and spec.resources.requests:
        requests.update(spec.resources.requests.model_dump(exclude_none=True))
    if spec.resources and spec.resources.limits:
        limits.update(spec.resources.limits.model_dump(exclude_none=True))
    device = settings.device_resources.get(spec.accelerator)
    if device:
        # Extended resources are set in limits; requests default to them.
        limits[device] = str(spec.gpus_per_worker)
    out: Obj = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def object_storage_env(storage: ObjectStorage) -> list[Obj]:
    """The worker's object storage settings: its access key from the pool's Secret (secretKeyRef: the key
    is in the container's environment, never in the Pod spec), or `FFRTMP_S3_CREDENTIALS=ambient` (the
    Pod's own identity, which IRSA's or Pod Identity's webhook puts in its environment)."""
    env: list[Obj] = [
        {"name": "FFRTMP_S3_ENDPOINT", "value": storage.endpoint},
        {"name": "FFRTMP_S3_REGION", "value": storage.region},
        {"name": "FFRTMP_S3_PATH_STYLE", "value": "true" if storage.path_style else "false"},
    ]
    ambient, secret = storage.ambient_credentials, storage.credentials_secret_ref
    if ambient is not None:
        env += [
            {"name": "FFRTMP_S3_CREDENTIALS", "value": "ambient"},
            {"name": "FFRTMP_S3_SESSION_SECONDS", "value": str(ambient.session_seconds)},
        ]
        if ambient.sts_endpoint:
            env.append({"name": "FFRTMP_S3_STS_ENDPOINT", "value": ambient.sts_endpoint})
        return env
    assert secret is not None  # one of the two (the model's rule)

    def from_secret(name: str, key: str) -> Obj:
        return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key}}}

    return [
        *env,
        from_secret("FFRTMP_S3_ACCESS_KEY_ID", secret.access_key_id_key),
        from_secret("FFRTMP_S3_SECRET_ACCESS_KEY", secret.secret_access_key_key),
    ]


def storage_volumes(spec: WorkerPoolSpec) -> tuple[list[Obj], list[Obj]]:
    """The Pod volumes and container mounts of spec.storage: media read-only, output read-write."""
    volumes: list[Obj] = []
    mounts: list[Obj] = []
    if spec.storage is None:
        return volumes, mounts
    for i, media in enumerate(spec.storage.media or []):
        name = f"media-{i}"
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": media.claim_name, "readOnly": True}})
        mount: Obj = {"name": name, "mountPath": media.mount_path, "readOnly": True}
        if media.sub_path:
            mount["subPath"] = media.sub_path
        mounts.append(mount)
    output = spec.storage.output
    if output is not None:
        volumes.append({"name": "output", "persistentVolumeClaim": {"claimName": output.claim_name}})
        mount = {"name": "output", "mountPath": spec.output_root}
        if output.sub_path:
            mount["subPath"] = output.sub_path
        mounts.append(mount)
    return volumes, mounts


def build_worker_pod(
    pool_name: str,
    namespace: str,
    pool_uid: str,
    spec: WorkerPoolSpec,
    settings: OperatorSettings,
    leader_term: int | None = None,
) -> Obj:
    """A worker Pod owned by its pool: device-plugin request, cgroup limits, restricted security.
    `leader_term`: the creating leader's term (leader election on), so duplicates are detectable."""
    env: list[Obj] = [
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        _field_env("POD_UID", "metadata.uid"),
        _field_env("NODE_NAME", "spec.nodeName"),
        {"name": "FFRTMP_POOL", "value": pool_name},
        {"name": "FFRTMP_ACCELERATOR", "value": spec.accelerator},
        {"name": "FFRTMP_SLOTS", "value": str(spec.worker_slots())},
        {"name": "FFRTMP_MEDIA_ROOTS", "value": ":".join(spec.media_roots)},
        {"name": "FFRTMP_OUTPUT_ROOT", "value": spec.output_root},
        {"name": "FFRTMP_ALLOWED_PROTOCOLS", "value": ",".join(spec.allowed_protocols)},
        {"name": "FFRTMP_EGRESS_ALLOW", "value": ",".join(spec.egress.allow)},
        {"name": "FFRTMP_EGRESS_UNPROXIED", "value": ",".join(spec.egress.allow_unproxied_protocols)},
        {"name": "FFRTMP_EGRESS_DENY", "value": ",".join(settings.cluster_cidrs)},
        {"name": "FFRTMP_DRAIN_SECONDS", "value": str(max(spec.termination_grace_period_seconds - 10, 0))},
    ]
    if spec.object_storage is not None:
        env += object_storage_env(spec.object_storage)
    if spec.accelerator == "nvenc":
        env.append({"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,video,utility"})
    if spec.accelerator in RENDER_NODE_ACCELERATORS:
        env.append({"name": "FFRTMP_RENDER_DEVICE", "value": spec.render_device})
    storage_vols, storage_mounts = storage_volumes(spec)
    mounts: list[Obj] = [{"name": "scratch", "mountPath": SCRATCH_DIR}, *storage_mounts, *(spec.volume_mounts or [])]
    container: Obj = {
        "name": "worker",
        "image": spec.image or settings.worker_image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["ffrtmp", "worker"],
        "env": env,
        "ports": [{"name": "http-metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": METRICS_PORT}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": METRICS_PORT},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": _resources(spec, settings),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }
    pod_spec: Obj = {
        "containers": [container],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}}, *storage_vols, *(spec.volumes or [])],
    }
    if spec.accelerator in RENDER_NODE_ACCELERATORS:
        # The render node belongs to the host's render group; the non-root worker needs that gid.
        pod_spec["securityContext"]["supplementalGroups"] = [spec.render_group_id]
    service_account = spec.service_account_name or settings.worker_service_account
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    tolerations = (
        [t.to_api() for t in spec.tolerations]
        if spec.tolerations is not None
        else DEFAULT_TOLERATIONS.get(spec.accelerator)
    )
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if spec.affinity:
        pod_spec["affinity"] = spec.affinity
    if spec.priority_class_name:
        pod_spec["priorityClassName"] = spec.priority_class_name
    runtime_class = spec.runtime_class_name or settings.worker_runtime_classes.get(spec.accelerator)
    if runtime_class:
        pod_spec["runtimeClassName"] = runtime_class
    pull_secrets = (
        [s.name for s in spec.image_pull_secrets]
        if spec.image_pull_secrets is not None
        else list(settings.worker_image_pull_secrets)
    )
    if pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in pull_secrets]
    # Extra labels never replace the operator's own: its selectors and the pool's /scale rely on them.
    labels = {**settings.worker_pod_labels, **(spec.pod_labels or {}), **worker_labels(pool_name)}
    if leader_term is not None:
        labels[LABEL_LEADER_TERM] = str(leader_term)
    annotations = {**settings.worker_pod_annotations, **(spec.pod_annotations or {})}
    extra_meta: Obj = {"annotations": annotations} if annotations else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{pool_name}-",
            "namespace": namespace,
            "labels": labels,
            **extra_meta,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "WorkerPool",
                    "name": pool_name,
                    "uid": pool_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": pod_spec,
    }
