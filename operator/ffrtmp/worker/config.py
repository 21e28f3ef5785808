"""The worker's environment contract (the same in a Pod and as a local stand-in process)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ffrtmp.api.pool import DEFAULT_RENDER_DEVICE
from ffrtmp.egress.guard import DEFAULT_LIBRARY, LIBRARY_ENV
from ffrtmp.egress.policy import EgressPolicy
from ffrtmp.storage.credentials import (
    DEFAULT_SESSION_SECONDS,
    CredentialSource,
    FixedCredentials,
    ambient_source,
    session_name_for,
)
from ffrtmp.storage.s3 import Endpoint
from ffrtmp.storage.sigv4 import Credentials

# The pool's object storage (controller.pods.object_storage_env); ffmpeg's environment never has them.
OBJECT_STORAGE_ENV_PREFIX = "FFRTMP_S3_"


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


@dataclass(frozen=True)
class ObjectStorageConfig:
    """The pool's spec.objectStorage as the worker gets it: where, and whose credentials (the access key
    from the pool's Secret, or the Pod's own identity: `FFRTMP_S3_CREDENTIALS=ambient`)."""

    endpoint: Endpoint
    credentials: CredentialSource

    @classmethod
    def from_env(cls, e: Mapping[str, str]) -> ObjectStorageConfig | None:
        """None without FFRTMP_S3_ENDPOINT; a ValueError naming what is missing (never a value)."""
        endpoint = e.get("FFRTMP_S3_ENDPOINT")
        if not endpoint:
            return None
        region = e.get("FFRTMP_S3_REGION") or "us-east-1"
        where = Endpoint(endpoint, region, e.get("FFRTMP_S3_PATH_STYLE") == "true")
        if e.get("FFRTMP_S3_CREDENTIALS") == "ambient":
            session_seconds = int(e.get("FFRTMP_S3_SESSION_SECONDS") or DEFAULT_SESSION_SECONDS)
            source = ambient_source(
                e, region=region, sts_endpoint=e.get("FFRTMP_S3_STS_ENDPOINT") or None,
                session_name=session_name_for(e.get("POD_NAME") or "worker"), session_seconds=session_seconds,
            )  # fmt: skip
            return cls(where, source)
        missing = [n for n in ("FFRTMP_S3_ACCESS_KEY_ID", "FFRTMP_S3_SECRET_ACCESS_KEY") if not e.get(n)]
        if missing:
            raise ValueError(f"FFRTMP_S3_ENDPOINT is set but {' and '.join(missing)} is empty (the pool's Secret)")
        key = Credentials(e["FFRTMP_S3_ACCESS_KEY_ID"], e["FFRTMP_S3_SECRET_ACCESS_KEY"])
        return cls(where, FixedCredentials(key, "the pool's credentialsSecretRef"))


@dataclass(frozen=True)
class WorkerConfig:
    pod_name: str
    namespace: str
    pool: str
    accelerator: str = "cpu"
    slots: int = 1
    pod_uid: str | None = None
    node_name: str | None = None
    media_roots: tuple[str, ...] = ("/media",)
    output_root: str = "/output"
    allowed_protocols: tuple[str, ...] = ("file", "http", "https", "rtmp", "rtmps")
    # Egress (spec.egress of the pool, the operator's --cluster-cidrs): see ffrtmp.egress.policy.
    egress_allow: tuple[str, ...] = ()
    egress_unproxied: tuple[str, ...] = ()
    egress_deny: tuple[str, ...] = ()  # the cluster's Service and Pod CIDRs
    api_server_addresses: tuple[str, ...] = ()  # filled in by the worker from its API endpoint
    # The connect guard preloaded into ffmpeg and ffprobe (ffrtmp.egress.guard); "off": none (development only).
    connect_guard: str = DEFAULT_LIBRARY
    scratch_dir: str = "/tmp"
    render_device: str = DEFAULT_RENDER_DEVICE
    object_storage: ObjectStorageConfig | None = None
    lease_seconds: int = 15
    renew_seconds: float = 5.0
    progress_interval: float = 5.0
    stall_seconds: float = 120.0
    kill_grace_seconds: float = 10.0
    drain_seconds: float = 590.0
    metrics_port: int = 9091
    # /readyz fails (and ffrtmp_worker_api_reachable is 0) after this long without a successful API
    # call; liveness never depends on the API server.
    api_stale_seconds: float = 60.0
    # /healthz fails when the event loop has not ticked for this long.
    loop_stale_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.api_stale_seconds <= 0:
            raise ValueError(f"FFRTMP_API_STALE_SECONDS must be > 0, got {self.api_stale_seconds}")
        if self.loop_stale_seconds <= 0:
            raise ValueError(f"FFRTMP_LOOP_STALE_SECONDS must be > 0, got {self.loop_stale_seconds}")
        self.egress_policy()  # bad FFRTMP_EGRESS_* entries stop the worker at start, named

    def egress_policy(self) -> EgressPolicy:
        """The policy the attempt's egress proxy enforces."""
        deny = [(cidr, "inside the cluster's Service or Pod range") for cidr in self.egress_deny]
        always = [(address, "the API server") for address in self.api_server_addresses]
        return EgressPolicy.build(self.egress_allow, deny, always)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> WorkerConfig:
        e = dict(os.environ if env is None else env)

        def get(name: str, default: str) -> str:
            return e.get(name) or default

        return cls(
            pod_name=e["POD_NAME"],
            namespace=e["POD_NAMESPACE"],
            pool=e["FFRTMP_POOL"],
            accelerator=get("FFRTMP_ACCELERATOR", "cpu"),
            slots=int(get("FFRTMP_SLOTS", "1")),
            pod_uid=e.get("POD_UID") or None,
            node_name=e.get("NODE_NAME") or None,
            media_roots=tuple(p for p in get("FFRTMP_MEDIA_ROOTS", "/media").split(":") if p),
            output_root=get("FFRTMP_OUTPUT_ROOT", "/output"),
            allowed_protocols=tuple(get("FFRTMP_ALLOWED_PROTOCOLS", "file,http,https,rtmp,rtmps").split(",")),
            egress_allow=_split(e.get("FFRTMP_EGRESS_ALLOW")),
            egress_unproxied=_split(e.get("FFRTMP_EGRESS_UNPROXIED")),
            egress_deny=_split(e.get("FFRTMP_EGRESS_DENY")),
            connect_guard=get(LIBRARY_ENV, DEFAULT_LIBRARY),
            scratch_dir=get("FFRTMP_SCRATCH_DIR", "/tmp"),
            render_device=get("FFRTMP_RENDER_DEVICE", DEFAULT_RENDER_DEVICE),
            object_storage=ObjectStorageConfig.from_env(e),
            lease_seconds=int(get("FFRTMP_LEASE_SECONDS", "15")),
            renew_seconds=float(get("FFRTMP_RENEW_SECONDS", "0"))
            or max(int(get("FFRTMP_LEASE_SECONDS", "15")) / 3, 1.0),
            progress_interval=float(get("FFRTMP_PROGRESS_INTERVAL", "5")),
            stall_seconds=float(get("FFRTMP_STALL_SECONDS", "120")),
            kill_grace_seconds=float(get("FFRTMP_KILL_GRACE_SECONDS", "10")),
            drain_seconds=float(get("FFRTMP_DRAIN_SECONDS", "590")),
            metrics_port=int(get("FFRTMP_METRICS_PORT", "9091")),
            api_stale_seconds=float(get("FFRTMP_API_STALE_SECONDS", "60")),
            loop_stale_seconds=float(get("FFRTMP_LOOP_STALE_SECONDS", "10")),
        )
