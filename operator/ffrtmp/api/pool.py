"""WorkerPool: a set of identical worker Pods on one kind of node, sized by the queue."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ffrtmp.api.base import ApiModel, api_config, rules
from ffrtmp.api.common import Conditions, ResourceRequirements, Timestamp

PoolAccelerator = Literal["nvenc", "qsv", "vaapi", "cpu"]
InputProtocol = Literal["file", "http", "https", "rtmp", "rtmps"]
AbsolutePath = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^/[A-Za-z0-9._/-]*$")]


class Toleration(ApiModel):
    """A Pod toleration, as in the core API."""

    key: str | None = Field(default=None, max_length=253, description="Taint key to tolerate.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty means all."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, le=31536000, description="For NoExecute: how long to stay (at most a year)."
    )


class Autoscaling(ApiModel):
    """Queue-driven scaling; when disabled, `spec.replicas` (the /scale subresource) sets the size."""

    enabled: bool = Field(default=True, description="Size the pool from its queue.")
    target_utilization: int = Field(
        default=100,
        ge=10,
        le=100,
        description="Percent of slots to keep busy: 100 sizes the pool to exactly fit the queued and running jobs.",
    )
    scale_up_step: int = Field(default=10, ge=1, le=1000, description="Most workers added in one scaling decision.")
    scale_down_stabilization_seconds: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="Scale down only to the highest recommendation of this window (no flapping).",
    )
    idle_timeout_seconds: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="With minWorkers 0: scale to zero after the queue stayed empty this long.",
    )
    pending_timeout_seconds: int = Field(
        default=30,
        ge=5,
        le=3600,
        description="A new worker Pod unscheduled this long stops further scale-up (ScalingLimited).",
    )


class WorkerPoolSpec(ApiModel):
    """What the worker Pods look like and how many there may be."""

    model_config = api_config(
        json_schema_extra=rules(
            ("self.minWorkers <= self.maxWorkers", "minWorkers must not exceed maxWorkers"),
            (
                "!has(self.replicas) || (self.replicas >= self.minWorkers && self.replicas <= self.maxWorkers)",
                "replicas must lie within minWorkers..maxWorkers",
            ),
            ("self.accelerator == oldSelf.accelerator", "accelerator is immutable: create another pool"),
        )
    )

    accelerator: PoolAccelerator = Field(description="Encoder family of this pool's nodes: nvenc, qsv, vaapi or cpu.")
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        description="Worker image: ffmpeg plus the ffrtmp agent (default: the operator's --worker-image).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Pull policy of the worker container."
    )
    resources: ResourceRequirements | None = Field(
        default=None,
        description=(
            "cgroup requests/limits of each worker Pod. The device-plugin resource "
            "(nvidia.com/gpu, gpu.intel.com/i915) is added from the accelerator."
        ),
    )
    gpus_per_worker: int = Field(
        default=1, ge=1, le=16, description="Device-plugin units each worker of a GPU pool requests."
    )
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(
        default=None, max_length=16, description="Node labels the worker Pods require."
    )
    tolerations: list[Toleration] | None = Field(
        default=None,
        max_length=16,
        description="Tolerations; GPU pools tolerate nvidia.com/gpu and gpu.intel.com/i915 taints by default.",
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    affinity: dict[str, object] | None = Field(
        default=None,
        description="Pod affinity, as in the core API (passed through).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True, "type": "object"},
    )
    priority_class_name: str | None = Field(default=None, max_length=253, description="PriorityClass of workers.")
    service_account_name: str | None = Field(
        default=None, max_length=253, description="ServiceAccount of workers (the chart creates one)."
    )
    termination_grace_period_seconds: int = Field(
        default=600,
        ge=0,
        le=86400,
        description="How long a stopping worker may drain: running jobs finish, the rest are handed back.",
    )
    max_concurrent_jobs: int = Field(default=1, ge=1, le=64, description="Job slots per worker.")
    min_workers: int = Field(default=0, ge=0, le=1000, description="Never fewer workers than this.")
    max_workers: int = Field(default=10, ge=0, le=1000, description="Never more workers than this.")
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Worker count when autoscaling is disabled (`kubectl scale wp/NAME --replicas=N`).",
    )
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, description="Queue-driven scaling.")
    paused: bool = Field(default=False, description="Hand out no new jobs; running ones finish.")
    media_roots: list[AbsolutePath] = Field(
        default_factory=lambda: ["/media"],
        max_length=8,
        description="Folders file inputs may come from; anything else is InputNotAllowed.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    output_root: AbsolutePath = Field(
        default="/output", description="Folder each job writes into (`<output_root>/<namespace>/<job>/`)."
    )
    allowed_protocols: list[InputProtocol] = Field(
        default_factory=lambda: list[InputProtocol](["file", "http", "https", "rtmp", "rtmps"]),
        max_length=5,
        description="Input protocols workers accept (passed to ffmpeg's -protocol_whitelist too).",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    volumes: list[dict[str, object]] | None = Field(
        default=None,
        max_length=16,
        description="Extra Pod volumes (core API shape), e.g. the PVC with media and outputs.",
        json_schema_extra={
            "x-kubernetes-list-type": "atomic",
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    )
    volume_mounts: list[dict[str, object]] | None = Field(
        default=None,
        max_length=16,
        description="Mounts of those volumes in the worker container (core API shape).",
        json_schema_extra={
            "x-kubernetes-list-type": "atomic",
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    )


class Capacity(ApiModel):
    """The runbook's capacity formula applied to what the pool has done recently."""

    avg_job_seconds: float | None = Field(default=None, description="Average run time of recent jobs.")
    jobs_per_hour: float | None = Field(default=None, description="workers x maxConcurrentJobs x 3600 / avgJobSeconds.")


class WorkerPoolStatus(ApiModel):
    """Observed state of the pool."""

    replicas: int | None = Field(default=None, description="Worker Pods that exist (for /scale).")
    selector: str | None = Field(default=None, max_length=1024, description="Label selector of the worker Pods.")
    workers: int | None = Field(default=None, description="Worker Pods that exist.")
    ready_workers: int | None = Field(default=None, description="Workers that passed their encoder self-test.")
    desired_workers: int | None = Field(default=None, description="What the autoscaler (or replicas) asks for.")
    busy_slots: int | None = Field(default=None, description="Slots running a job.")
    free_slots: int | None = Field(default=None, description="Slots of ready workers with no job.")
    queued_jobs: int | None = Field(default=None, description="Jobs waiting for this pool.")
    running_jobs: int | None = Field(default=None, description="Jobs assigned to this pool's workers.")
    last_scale_time: Timestamp | None = Field(default=None, description="When the worker count last changed.")
    last_scale_reason: str | None = Field(default=None, max_length=1024, description="Why it changed.")
    capacity: Capacity | None = None
    conditions: Conditions | None = None
    observed_generation: int | None = Field(default=None, description="Last spec generation acted on.")


class WorkerPool(ApiModel):
    """A pool of worker Pods."""

    model_config = api_config(extra="ignore")

    api_version: str = Field(default="ffmpeg-rtmp.io/v1alpha1")
    kind: str = Field(default="WorkerPool")
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: WorkerPoolSpec
    status: WorkerPoolStatus | None = None
