"""WorkerPool: a set of identical worker Pods on one kind of node, sized by the queue."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from ffrtmp.api.base import ApiModel, api_config, rules
from ffrtmp.api.common import Conditions, LocalObjectReference, ResourceRequirements, Timestamp

PoolAccelerator = Literal["nvenc", "qsv", "vaapi", "cpu"]
InputProtocol = Literal["file", "http", "https", "rtmp", "rtmps"]
# Kubernetes label and annotation keys: an optional DNS-subdomain prefix and `/`, then a name of up to
# 63 alphanumerics, '-', '_', '.'; label values the same name rule, or empty. (In CEL and Python alike.)
METADATA_KEY_PATTERN = (
    "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = "^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
AbsolutePath = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^/[A-Za-z0-9._/-]*$")]
# A folder inside a volume: relative, and no step starts with a dot (so never `..`).
SubPath = Annotated[
    str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$")
]
ClaimName = Annotated[
    str,
    Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
]
DEFAULT_MEDIA_ROOTS = ("/media",)  # the CRD has no list defaults: CEL rules spell this out
DEFAULT_RENDER_DEVICE = "/dev/dri/renderD128"
SCRATCH_DIR = "/tmp"  # an emptyDir in every worker Pod
DEFAULT_RENDER_GROUP_ID = 109


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


class MediaClaim(ApiModel):
    """A PersistentVolumeClaim with input media, mounted read-only at one of the pool's mediaRoots."""

    claim_name: ClaimName = Field(description="Name of the PersistentVolumeClaim, in the pool's namespace.")
    mount_path: AbsolutePath = Field(description="Where it is mounted: one of spec.mediaRoots.")
    sub_path: SubPath | None = Field(
        default=None,
        description="Folder inside the volume to mount instead of its root (relative; no step may start with a dot).",
    )


class OutputClaim(ApiModel):
    """A PersistentVolumeClaim mounted read-write at the pool's outputRoot; jobs write into it."""

    claim_name: ClaimName = Field(description="Name of the PersistentVolumeClaim, in the pool's namespace.")
    sub_path: SubPath | None = Field(
        default=None,
        description="Folder inside the volume to mount instead of its root (relative; no step may start with a dot).",
    )


class PoolStorage(ApiModel):
    """Where worker Pods read media and write outputs. Each worker checks at start that every media
    root is readable and the output root writable; until then it takes no job."""

    media: list[MediaClaim] | None = Field(
        default=None,
        max_length=8,
        description="Claims with input media, each mounted read-only at one of spec.mediaRoots.",
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    output: OutputClaim | None = Field(
        default=None, description="The claim mounted read-write at spec.outputRoot, where jobs write."
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


UnproxiedProtocol = Literal["rtmp"]
# Entries of this shape are addresses or CIDRs, never host names: they must parse as such.
ADDRESS_LIKE = r"^([0-9.]+|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)(/[0-9]+)?$"
# A host name (optionally `*.` for every name under a domain), an IPv4/IPv6 address, or a CIDR.
EgressDestination = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        pattern=r"^((\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*|[0-9A-Fa-f:.]+(/[0-9]{1,3})?)$",
    ),
]


class PoolEgress(ApiModel):
    """Where jobs of this pool may connect. Every http(s) and rtmps connection ffmpeg makes (redirects,
    each HLS playlist and segment, live playlist reloads) goes through the worker's egress proxy, which resolves
    the name and refuses loopback, private (RFC 1918, fc00::/7), link-local (169.254.0.0/16 with cloud
    metadata, fe80::/10), CGNAT (100.64.0.0/10), multicast, reserved and unspecified addresses, the
    cluster's Service and Pod ranges and the API server, unless `allow` names them. A refused job fails
    with reason DestinationNotAllowed."""

    allow: list[EgressDestination] = Field(
        default_factory=list,
        max_length=64,
        description=(
            "Destinations jobs may reach although the default policy refuses them: host names (`media.internal`, "
            "`*.corp.example`: the name as written in the URL), IP addresses or CIDRs (`10.20.0.0/16`). A listed "
            "name or network is reachable even when it is private, loopback or inside the cluster."
        ),
        json_schema_extra={
            "x-kubernetes-list-type": "set",
            **rules(
                (
                    f"self.all(a, !a.matches('{ADDRESS_LIKE}') || isIP(a) || isCIDR(a))",
                    "spec.egress.allow entries that are addresses must be valid IPs or CIDRs (e.g. 10.1.0.0/16)",
                )
            ),
        },
    )
    allow_unproxied_protocols: list[UnproxiedProtocol] = Field(
        default_factory=list,
        max_length=1,
        description=(
            "Network protocols ffmpeg cannot send through the egress proxy: rtmp (inputs and restream outputs; "
            "rtmps goes through the proxy like https). Refused (DestinationNotAllowed) unless listed here. "
            "When listed, the worker checks the URL's host against the policy once before ffmpeg starts; "
            "ffmpeg's own connection (and any later "
            "DNS answer) is not checked, so pair this with the chart's NetworkPolicy."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    @model_validator(mode="after")
    def _parsable(self) -> PoolEgress:
        from ffrtmp.egress.policy import EgressPolicy

        EgressPolicy.build(self.allow)  # EgressConfigError (a ValueError) names the bad entry
        return self


SecretKey = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
# scheme://host[:port], host a DNS name, an IPv4 address or a bracketed IPv6 address; an optional trailing `/`.
ENDPOINT_PATTERN = (
    r"^https?://([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/?$"
)


class ObjectStorageCredentials(ApiModel):
    """A Secret in the pool's namespace holding an access key: it reaches each worker Pod as environment
    variables (secretKeyRef), never through a job's spec or status."""

    name: ClaimName = Field(description="Name of the Secret, in the pool's namespace.")
    access_key_id_key: SecretKey = Field(
        default="AWS_ACCESS_KEY_ID", description="The Secret's key holding the access key id."
    )
    secret_access_key_key: SecretKey = Field(
        default="AWS_SECRET_ACCESS_KEY", description="The Secret's key holding the secret access key."
    )


_ONE_CREDENTIAL_SOURCE = (
    "spec.objectStorage needs exactly one of credentialsSecretRef (an access key in a Secret) and "
    "ambientCredentials (the worker Pod's identity: IRSA, EKS Pod Identity)"
)


class AmbientCredentials(ApiModel):
    """Credentials from the worker Pod's own identity instead of a Secret: EKS Pod Identity
    (AWS_CONTAINER_CREDENTIALS_FULL_URI), IAM Roles for Service Accounts or any OIDC web identity
    federation (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE, exchanged at STS), or AWS_ACCESS_KEY_ID in the
    Pod's environment, in that order. The identity is the worker ServiceAccount's (for IRSA, annotated
    `eks.amazonaws.com/role-arn`)."""

    sts_endpoint: str | None = Field(
        default=None,
        max_length=253,
        pattern=ENDPOINT_PATTERN,
        description=(
            "The STS endpoint for web identity (scheme, host, port). Default: AWS_ENDPOINT_URL_STS of the Pod, "
            "else `https://sts.<region>.amazonaws.com`. The worker's own request, not through the egress proxy."
        ),
    )
    session_seconds: int = Field(
        default=3600,
        ge=900,
        le=43200,
        description=(
            "DurationSeconds asked of STS for web identity sessions (at most the role's maximum session "
            "duration). An `s3://` input URL cannot outlive the session it was signed with: a job reading its "
            "input for longer needs a longer session."
        ),
    )


class ObjectStorage(ApiModel):
    """The S3-compatible object storage this pool's jobs read `s3://` inputs from and upload `spec.destination`
    to. The endpoint must be reachable under the pool's egress policy (`spec.egress.allow` for private,
    loopback or in-cluster addresses): the worker's uploads and ffmpeg's reads both go through it.
    Credentials: `credentialsSecretRef` (an access key) or `ambientCredentials` (the Pod's identity)."""

    model_config = api_config(
        json_schema_extra=rules(
            (
                "has(self.credentialsSecretRef) != has(self.ambientCredentials)",
                _ONE_CREDENTIAL_SOURCE,
            ),
        )
    )

    endpoint: str = Field(
        max_length=253,
        pattern=ENDPOINT_PATTERN,
        description=(
            "`https://s3.eu-west-1.amazonaws.com`, `https://storage.googleapis.com` (HMAC keys), "
            "`http://minio.storage.svc:9000`: scheme, host and port only."
        ),
    )
    region: str = Field(
        default="us-east-1",
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9][a-z0-9-]*$",
        description="The region requests are signed for (SigV4); most S3-compatible servers accept us-east-1.",
    )
    path_style: bool = Field(
        default=False,
        description=(
            "Address buckets as `endpoint/bucket/key` (MinIO, Ceph, most self-hosted servers) instead of "
            "`bucket.endpoint/key` (AWS's virtual-hosted style)."
        ),
    )
    credentials_secret_ref: ObjectStorageCredentials | None = Field(
        default=None,
        description=(
            "The Secret with the access key (keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY unless named "
            "otherwise). A worker Pod reads it when it starts: after rotating the key, delete the pool's idle "
            "workers (or let the autoscaler replace them)."
        ),
    )
    ambient_credentials: AmbientCredentials | None = Field(
        default=None,
        description=(
            "Use the worker Pod's own identity instead of a Secret (`{}` for the defaults): IRSA (the worker "
            "ServiceAccount annotated `eks.amazonaws.com/role-arn`: chart value worker.serviceAccount.annotations), "
            "EKS Pod Identity (an association for that ServiceAccount), or AWS_ACCESS_KEY_ID in the Pod's "
            "environment. Temporary credentials are fetched again before they expire."
        ),
    )

    @model_validator(mode="after")
    def _one_credential_source(self) -> ObjectStorage:
        """The CEL rule above, for specs that did not pass the API server."""
        if (self.credentials_secret_ref is None) == (self.ambient_credentials is None):
            raise ValueError(_ONE_CREDENTIAL_SOURCE)
        return self


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
            (
                "!has(self.nvencSessionsPerGpu) || self.accelerator == 'nvenc'",
                "nvencSessionsPerGpu applies to nvenc pools only",
            ),
            (
                "!has(self.storage) || !has(self.storage.media)"
                " || self.storage.media.all(m, m.mountPath in (has(self.mediaRoots) ? self.mediaRoots : "
                f"{list(DEFAULT_MEDIA_ROOTS)}))",
                "every storage.media mountPath must be one of mediaRoots",
            ),
            (
                "!has(self.storage) || !has(self.storage.media)"
                " || self.storage.media.all(a, self.storage.media.exists_one(b, b.mountPath == a.mountPath))",
                "two storage.media claims must not share a mountPath",
            ),
            (
                "!has(self.storage) || !has(self.storage.media) || !has(self.storage.output)"
                " || !self.storage.media.exists(m, m.mountPath == self.outputRoot)",
                "storage.output is mounted at outputRoot: no storage.media claim may use that mountPath",
            ),
            (
                "!has(self.volumeMounts) || !has(self.storage) || self.volumeMounts.all(v,"
                " ((!has(self.storage.output) || v.mountPath != self.outputRoot)"
                " && (!has(self.storage.media) || !self.storage.media.exists(m, m.mountPath == v.mountPath))))",
                "a volumeMounts entry must not use a mountPath that spec.storage mounts",
            ),
            (
                f"!has(self.storage) || ((!has(self.storage.output) || self.outputRoot != '{SCRATCH_DIR}')"
                f" && (!has(self.storage.media) || !self.storage.media.exists(m, m.mountPath == '{SCRATCH_DIR}')))",
                f"{SCRATCH_DIR} is the worker's scratch volume: spec.storage cannot mount a claim there",
            ),
            (
                "!has(self.volumes) || self.volumes.all(v, v.name != 'scratch'"
                " && (!has(self.storage) || !has(self.storage.output) || v.name != 'output')"
                " && (!has(self.storage) || !has(self.storage.media) || !v.name.startsWith('media-')))",
                "spec.volumes names 'scratch', 'output' (with storage.output) and 'media-<n>' (with storage.media) "
                "are the worker Pod's own: choose another name",
            ),
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
    runtime_class_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        description=(
            "RuntimeClass of worker Pods, e.g. `nvidia` on clusters where NVIDIA's container runtime is not the "
            "default (default: the operator's --worker-runtime-class for the accelerator, else none)."
        ),
    )
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        default=None,
        max_length=16,
        description="Secrets to pull the worker image (default: the operator's --worker-image-pull-secret).",
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    pod_labels: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(
        default=None,
        max_length=32,
        description="Extra labels of worker Pods, over the operator's defaults; the operator's own labels win.",
        json_schema_extra=rules(
            (f"self.all(k, k.matches('{METADATA_KEY_PATTERN}'))", "podLabels keys must be label keys (prefix/name)"),
            (
                f"self.all(k, self[k].matches('{LABEL_VALUE_PATTERN}'))",
                "podLabels values must be label values (alphanumerics, '-', '_', '.')",
            ),
        ),
    )
    pod_annotations: dict[str, Annotated[str, Field(max_length=4096)]] | None = Field(
        default=None,
        max_length=32,
        description="Extra annotations of worker Pods, over the operator's defaults.",
        json_schema_extra=rules(
            (f"self.all(k, k.matches('{METADATA_KEY_PATTERN}'))", "podAnnotations keys must be prefix/name keys"),
        ),
    )
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
    nvenc_sessions_per_gpu: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description=(
            "nvenc pools: concurrent NVENC encode sessions one GPU allows (GeForce drivers cap them; data-centre "
            "GPUs do not). Each worker then takes at most this x gpusPerWorker jobs at once, whatever "
            "maxConcurrentJobs says. Every encoded rendition of a job opens its own session: size it for the ladder."
        ),
    )
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
        default_factory=lambda: list(DEFAULT_MEDIA_ROOTS),
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
    egress: PoolEgress = Field(
        default_factory=PoolEgress,
        description=(
            "Which network destinations jobs may reach. Every http(s) and rtmps connection ffmpeg makes (redirects, "
            "HLS segments, playlist reloads) goes through the worker's egress proxy, which refuses loopback, "
            "private, link-local (cloud metadata), CGNAT, multicast and reserved addresses, the cluster's "
            "Service and Pod ranges and the API server unless `allow` lists them (the API server: never). "
            "A refused job fails with reason DestinationNotAllowed."
        ),
    )
    object_storage: ObjectStorage | None = Field(
        default=None,
        description=(
            "S3-compatible object storage for jobs with `s3://` inputs or a `spec.destination`. The endpoint must "
            "be reachable under the pool's egress policy (`spec.egress.allow` for private, loopback or in-cluster "
            "addresses): ffmpeg's reads and the worker's uploads both go through the egress proxy. Jobs that need "
            "object storage are scheduled only to pools that have it."
        ),
    )
    storage: PoolStorage | None = Field(
        default=None,
        description=(
            "PersistentVolumeClaims with media (read-only at mediaRoots) and for outputs (read-write at "
            "outputRoot). Without it those folders must come from volumes/volumeMounts, or workers fail "
            "their storage check."
        ),
    )
    render_device: AbsolutePath = Field(
        default=DEFAULT_RENDER_DEVICE,
        description="qsv/vaapi pools: the DRI render node the encoder opens (`ls /dev/dri` on the node).",
    )
    render_group_id: int = Field(
        default=DEFAULT_RENDER_GROUP_ID,
        ge=0,
        le=2147483647,
        description=(
            "qsv/vaapi pools: gid owning the render node, added to the worker's supplementalGroups so it may "
            "open it. It varies by host: `stat -c %g /dev/dri/renderD128` or `getent group render` on the node "
            "(109 is common on Debian)."
        ),
    )
    volumes: list[dict[str, object]] | None = Field(
        default=None,
        max_length=16,
        description="Extra Pod volumes (core API shape), an escape hatch beside spec.storage.",
        json_schema_extra={
            "x-kubernetes-list-type": "atomic",
            "items": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                # Declared so that CEL can refuse the names of the worker Pod's own volumes.
                "required": ["name"],
                "properties": {"name": {"type": "string", "maxLength": 63, "description": "Volume name."}},
            },
        },
    )
    volume_mounts: list[dict[str, object]] | None = Field(
        default=None,
        max_length=16,
        description="Mounts of those volumes in the worker container (core API shape).",
        json_schema_extra={
            "x-kubernetes-list-type": "atomic",
            "items": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                # Declared so that CEL can compare mount paths with spec.storage's.
                "required": ["name", "mountPath"],
                "properties": {
                    "name": {"type": "string", "maxLength": 253, "description": "Name of a volume in spec.volumes."},
                    "mountPath": {
                        "type": "string",
                        "maxLength": 1024,
                        "description": "Where it is mounted in the container.",
                    },
                },
            },
        },
    )

    @model_validator(mode="after")
    def _storage_paths(self) -> WorkerPoolSpec:
        """The storage rules of the CEL above, for specs that did not pass the API server."""
        problem = storage_path_problem(self) or reserved_volume_problem(self)
        if self.nvenc_sessions_per_gpu is not None and self.accelerator != "nvenc":
            problem = problem or "nvencSessionsPerGpu applies to nvenc pools only"
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _pod_metadata(self) -> WorkerPoolSpec:
        """The podLabels/podAnnotations rules of the CEL above, for specs that did not pass the API server."""
        for what, keys in (("podLabels", self.pod_labels or {}), ("podAnnotations", self.pod_annotations or {})):
            bad = [k for k in keys if not re.fullmatch(METADATA_KEY_PATTERN, k)]
            if bad:
                raise ValueError(f"{what} key {bad[0]!r} is not a prefix/name key")
        bad = [v for v in (self.pod_labels or {}).values() if not re.fullmatch(LABEL_VALUE_PATTERN, v)]
        if bad:
            raise ValueError(f"podLabels value {bad[0]!r} is not a label value")
        return self

    def worker_slots(self) -> int:
        """Job slots of each worker: maxConcurrentJobs, capped by the NVENC sessions of its GPUs."""
        if self.accelerator == "nvenc" and self.nvenc_sessions_per_gpu is not None:
            return min(self.max_concurrent_jobs, self.nvenc_sessions_per_gpu * self.gpus_per_worker)
        return self.max_concurrent_jobs


def storage_path_problem(spec: WorkerPoolSpec) -> str | None:
    """What is wrong with where spec.storage mounts its claims, or None (pure; mirrors the CEL)."""
    if spec.storage is None:
        return None
    media = [m.mount_path for m in spec.storage.media or []]
    outside = [p for p in media if p not in spec.media_roots]
    if outside:
        return f"every storage.media mountPath must be one of mediaRoots ({outside[0]} is not)"
    if len(set(media)) != len(media):
        return "two storage.media claims must not share a mountPath"
    taken = set(media)
    if spec.storage.output is not None:
        if spec.output_root in taken:
            return "storage.output is mounted at outputRoot: no storage.media claim may use that mountPath"
        taken.add(spec.output_root)
    if any(m.get("mountPath") in taken for m in spec.volume_mounts or []):
        return "a volumeMounts entry must not use a mountPath that spec.storage mounts"
    if SCRATCH_DIR in taken:
        return f"{SCRATCH_DIR} is the worker's scratch volume: spec.storage cannot mount a claim there"
    return None


def reserved_volume_problem(spec: WorkerPoolSpec) -> str | None:
    """A spec.volumes name that build_worker_pod uses itself, or None (pure; mirrors the CEL)."""
    storage = spec.storage
    has_output = storage is not None and storage.output is not None
    has_media = storage is not None and bool(storage.media)

    def reserved(name: str) -> bool:
        return name == "scratch" or (has_output and name == "output") or (has_media and name.startswith("media-"))

    taken = [str(v.get("name")) for v in spec.volumes or [] if reserved(str(v.get("name")))]
    if taken:
        return (
            "spec.volumes names 'scratch', 'output' (with storage.output) and 'media-<n>' (with storage.media) "
            f"are the worker Pod's own: choose another name ({taken[0]})"
        )
    return None


class Capacity(ApiModel):
    """The runbook's capacity formula applied to what the pool has done recently."""

    avg_job_seconds: float | None = Field(default=None, description="Average run time of recent jobs.")
    jobs_per_hour: float | None = Field(default=None, description="workers x maxConcurrentJobs x 3600 / avgJobSeconds.")


class WorkerPoolStatus(ApiModel):
    """Observed state of the pool."""

    replicas: int | None = Field(default=None, description="Worker Pods that exist (for /scale).")
    selector: str | None = Field(default=None, max_length=1024, description="Label selector of the worker Pods.")
    workers: int | None = Field(default=None, description="Worker Pods that exist.")
    ready_workers: int | None = Field(
        default=None, description="Workers that passed their storage check and encoder self-test."
    )
    desired_workers: int | None = Field(default=None, description="What the autoscaler (or replicas) asks for.")
    busy_slots: int | None = Field(default=None, description="Slots running a job.")
    free_slots: int | None = Field(default=None, description="Slots of ready workers with no job.")
    queued_jobs: int | None = Field(default=None, description="Jobs waiting for this pool.")
    encoders: str | None = Field(
        default=None,
        max_length=1024,
        description=(
            "Video encoders every ready worker passed its self-test with, comma-separated (e.g. "
            "`h264_nvenc,hevc_nvenc`): a job needing another encoder waits as NoCapableWorker."
        ),
    )
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
