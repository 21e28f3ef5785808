"""Operator settings: flags and environment, in one typed struct."""

from __future__ import annotations

from dataclasses import dataclass, field

from ffrtmp.controller.cadence import WriteBudget
from ffrtmp.controller.events import EventBudget
from ffrtmp.controller.notifications import NotificationSettings
from ffrtmp.controller.policy import PoolPolicy


@dataclass(frozen=True)
class OperatorSettings:
    """How the operator behaves; every field has a command-line flag."""

    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    worker_image: str = "ghcr.io/ffmpeg-rtmp/worker:0.3.0"
    worker_service_account: str | None = None
    # Defaults for every worker Pod (a WorkerPool's own fields win): pull secrets, extra labels and
    # annotations, and a RuntimeClass per accelerator (e.g. nvenc=nvidia where it is not the default).
    worker_image_pull_secrets: tuple[str, ...] = ()
    worker_pod_labels: dict[str, str] = field(default_factory=dict)
    worker_pod_annotations: dict[str, str] = field(default_factory=dict)
    worker_runtime_classes: dict[str, str] = field(default_factory=dict)
    # What a WorkerPool may put into worker Pods (image, serviceAccountName, volume sources, RuntimeClass,
    # pull secrets, PriorityClass, tolerations, Pod labels and annotations, egress allowlist): a pool that
    # breaks it gets Degraded/PolicyViolation and no Pods (policy.py).
    pool_policy: PoolPolicy = field(default_factory=PoolPolicy)
    # The cluster's Service and Pod CIDRs: workers' egress proxies refuse them (FFRTMP_EGRESS_DENY)
    # unless a pool's spec.egress.allow names them.
    cluster_cidrs: tuple[str, ...] = ()
    # Device-plugin resource of each accelerator (configurable: clusters name them differently).
    device_resources: dict[str, str] = field(
        default_factory=lambda: {
            "nvenc": "nvidia.com/gpu",
            "qsv": "gpu.intel.com/i915",
            "vaapi": "gpu.intel.com/i915",
        }
    )
    # A worker whose Lease was not renewed for leaseDuration + this is lost.
    lease_grace_seconds: float = 5.0
    # Backstops for a worker that is alive but lost track of a job: a Scheduled attempt not
    # started, or a Running one without a progress write, for this long is requeued (WorkerLost).
    start_timeout_seconds: float = 120.0
    heartbeat_timeout_seconds: float = 600.0
    # Retry backoff after a failed attempt: base * 2^(failures-1), capped (like a Job's pods).
    retry_backoff_seconds: float = 10.0
    retry_backoff_max_seconds: float = 360.0
    # Periodic pass even without events: timeouts, lost workers, TTL, autoscaling.
    resync_seconds: float = 2.0
    # Events on jobs: "decisions" (what the operator decided: Scheduled, Requeued, ... and every
    # Warning), "all" (also Started and Completed, which the worker's status writes already tell),
    # "failures" (Warnings only) or "none".
    job_events: str = "decisions"
    # Of those, and of the pools' Events: every Warning is written, Normal ones within this budget;
    # the rest are counted and summed up per namespace (events.py).
    event_budget: EventBudget = field(default_factory=EventBudget)
    max_parallel_writes: int = 32
    # Webhooks of jobs' spec.notifications: egress policy, timeout, retries, sender workers (notifier.py).
    notifications: NotificationSettings = field(default_factory=NotificationSettings)
    # The farm's steady API writes (Lease renewals, progress, Events): cadence.py sizes the periods.
    write_budget: WriteBudget = field(default_factory=WriteBudget)
    metrics_port: int = 9090
    health_port: int = 8080
    # /readyz: 200 once every watched kind in every namespace has been listed, else 503 and why.
    # kopf's /healthz on health_port is the liveness signal only. 0 = not served.
    ready_port: int = 0
