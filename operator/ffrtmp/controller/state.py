"""Compact views of the objects the operator watches, and the in-memory store of them.

The store is only a cache of the API server: it is rebuilt from watches after a restart.
Views are parsed once per event so that a pass over 10,000 jobs stays cheap.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from ffrtmp.api.cadence import ANNOTATION_CADENCE
from ffrtmp.api.constants import (
    ANNOTATION_DRAINING,
    ANNOTATION_ENCODER,
    ANNOTATION_ENCODERS,
    ANNOTATION_STORAGE,
    CHUNKED_CONDITION,
    LABEL_CHUNK,
    LABEL_PARENT,
    LABEL_POOL,
)
from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.api.notifications import NotificationsSpec, TargetDelivery
from ffrtmp.api.pool import WorkerPoolSpec
from ffrtmp.conditions import condition, is_false, parse_time
from ffrtmp.ffmpeg.encoders import VIDEO_CODECS

Obj = dict[str, Any]
ACTIVE_PHASES = ("Scheduled", "Running")
TERMINAL_PHASES = ("Succeeded", "Failed", "Cancelled")


def key_of(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


@dataclass(frozen=True, slots=True)
class AttemptResultView:
    attempt: int
    worker: str
    outcome: str
    reason: str
    message: str
    retryable: bool
    stderr_tail: str


@dataclass(frozen=True, slots=True)
class JobView:
    key: str
    namespace: str
    name: str
    uid: str
    resource_version: str
    generation: int
    created: float
    # spec
    invalid: str | None  # why the spec is invalid, or None
    priority: int
    accelerator: str
    hardware_policy: str
    pool_ref: str | None
    codecs: tuple[str, ...]  # the video codecs it encodes (h264, hevc, av1), sorted
    object_storage: bool  # it reads an s3:// input or uploads to spec.destination
    secrets: tuple[str, ...]  # the Secrets its credentials come from (credential_secrets)
    suspend: bool
    timeout_seconds: int | None
    backoff_limit: int
    ttl_seconds: int | None
    sla_seconds: int | None
    # status
    phase: str | None
    worker: str | None
    pool: str | None
    attempt: int
    failed: int
    queued_time: float | None
    not_before: float | None
    scheduled_time: float | None
    start_time: float | None
    completion_time: float | None
    heartbeat_time: float | None
    result: AttemptResultView | None
    queued_reason: str | None
    suspended: bool
    # The conditions as the API server sent them, kept as JSON text: they are read only to write a
    # new status, and 10,000 jobs' decoded condition dicts would cost about 2 kB each.
    conditions_json: str
    message: str | None
    # Chunked jobs (controller/chunked.py). On a parent with spec.chunking.mode On: its spec as JSON
    # (the children are made from it) and its status.chunks. On a child: its parent and part labels.
    chunked_spec: str | None = None
    chunks: Obj | None = None
    parent: str | None = None
    part: str | None = None
    uid_of_owner: str | None = None
    # status.chunks.plan (a Plan child's result), status.reason, status.outputs (of a stitch child or a job
    # with notifications), progress percent
    chunk_plan: str | None = None
    reason: str | None = None
    outputs_json: str | None = None
    percent: float | None = None
    # spec.notifications (parsed) and status.notifications: only on jobs with webhooks.
    notifications: NotificationsSpec | None = None
    notification_records: tuple[TargetDelivery, ...] = ()

    @property
    def conditions(self) -> list[Obj]:
        decoded: list[Obj] = json.loads(self.conditions_json)
        return decoded

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES


def _spec_verdict(spec_json: str) -> str | None:
    """Why a job's spec is invalid, or None."""
    try:
        TranscodeJobSpec.from_api_json(spec_json)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"spec.{where}: {first['msg']}" if where else first["msg"]
    return None


_SPEC_VERDICTS: OrderedDict[tuple[str, int, int], str | None] = OrderedDict()
_SPEC_VERDICTS_MAX = 16384


def _validate_spec(uid: str, generation: int, spec: Obj) -> str | None:
    """The spec's verdict, cached per (uid, generation, hash of the spec's text): a status event does
    not validate again, and the cache keeps no copy of the spec (10,000 jobs' spec texts were about
    3 MB). The hash keeps two different specs apart where the uid and generation do not (objects
    made outside the API server)."""
    spec_json = json.dumps(spec, sort_keys=True)
    key = (uid, generation, hash(spec_json))
    if key in _SPEC_VERDICTS:
        _SPEC_VERDICTS.move_to_end(key)
        return _SPEC_VERDICTS[key]
    verdict = _SPEC_VERDICTS[key] = _spec_verdict(spec_json)
    if len(_SPEC_VERDICTS) > _SPEC_VERDICTS_MAX:
        _SPEC_VERDICTS.popitem(last=False)
    return verdict


@lru_cache(maxsize=1024)
def _notifications_spec(spec_json: str) -> NotificationsSpec | None:
    """spec.notifications parsed once per distinct value; None when it is invalid (the job's validation says why)."""
    try:
        return NotificationsSpec.from_api_json(spec_json)
    except ValidationError:
        return None


def _notification_records(status: Obj) -> tuple[TargetDelivery, ...]:
    out = []
    for item in status.get("notifications") or []:
        try:
            out.append(TargetDelivery.from_api(item))
        except ValidationError:
            continue  # not ours to repair: the target starts a new record
    return tuple(out)


def encoded_codecs(spec: Obj) -> tuple[str, ...]:
    """The video codecs a job's outputs encode (an output without `video` encodes h264), sorted."""
    codecs = set()
    for output in spec.get("outputs") or []:
        video = (output.get("video") if isinstance(output, dict) else None) or {}
        codec = str(video.get("codec") or "h264") if isinstance(video, dict) else "h264"
        if codec in VIDEO_CODECS:
            codecs.add(codec)
    return tuple(sorted(codecs))


def credential_secrets(spec: Obj) -> tuple[str, ...]:
    """The Secrets a job's credentials come from (input.uriFrom, input.headersFrom, outputs[].urlFrom), sorted:
    it runs only in pools that list them all in spec.jobSecrets."""
    job_input = spec.get("input") or {}
    sources = [job_input.get("uriFrom"), *(job_input.get("headersFrom") or [])]
    sources += [o.get("urlFrom") for o in spec.get("outputs") or [] if isinstance(o, dict)]
    names = {str(ref["name"]) for s in sources if isinstance(s, dict) and isinstance(ref := s.get("secretKeyRef"), dict)
             and ref.get("name")}  # fmt: skip
    return tuple(sorted(names))


def parse_job(obj: Obj) -> JobView:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    generation = int(meta.get("generation", 1))
    result = status.get("result")
    result_view = None
    if isinstance(result, dict) and "attempt" in result:
        result_view = AttemptResultView(
            attempt=int(result["attempt"]),
            worker=str(result.get("worker", "")),
            outcome=str(result.get("outcome", "")),
            reason=str(result.get("reason") or ""),
            message=str(result.get("message") or ""),
            retryable=bool(result.get("retryable", False)),
            stderr_tail=str(result.get("stderrTail") or ""),
        )
    labels = meta.get("labels") or {}
    chunking = spec.get("chunking") or {}
    chunked = chunking.get("mode") == "On" or (
        chunking.get("mode") == "Auto" and not is_false(status.get("conditions"), CHUNKED_CONDITION)
    )
    chunks = status.get("chunks") if isinstance(status.get("chunks"), dict) else None
    owners = [o for o in meta.get("ownerReferences") or [] if o.get("kind") == "TranscodeJob"]
    progress = status.get("progress") or {}
    queued = condition(status.get("conditions"), "Queued")
    suspended = condition(status.get("conditions"), "Suspended")
    pool_ref = spec.get("poolRef") or {}
    notify = spec.get("notifications")
    notifications = _notifications_spec(json.dumps(notify, sort_keys=True)) if isinstance(notify, dict) else None
    return JobView(
        key=f"{meta.get('namespace', '')}/{meta['name']}",
        namespace=meta.get("namespace", ""),
        name=meta["name"],
        uid=meta.get("uid", ""),
        resource_version=meta.get("resourceVersion", ""),
        generation=generation,
        created=parse_time(meta.get("creationTimestamp")) or 0.0,
        invalid=_validate_spec(meta.get("uid", ""), generation, spec),
        priority=int(spec.get("priority", 0)),
        accelerator=str(spec.get("accelerator", "auto")),
        hardware_policy=str(spec.get("hardwarePolicy", "preferred")),
        pool_ref=pool_ref.get("name"),
        codecs=encoded_codecs(spec),
        object_storage=str((spec.get("input") or {}).get("uri", "")).startswith("s3://") or "destination" in spec,
        secrets=credential_secrets(spec),
        suspend=bool(spec.get("suspend", False)),
        timeout_seconds=spec.get("timeoutSeconds"),
        backoff_limit=int(spec.get("backoffLimit", 3)),
        ttl_seconds=spec.get("ttlSecondsAfterFinished"),
        sla_seconds=spec.get("slaSeconds"),
        phase=status.get("phase"),
        worker=status.get("worker"),
        pool=status.get("pool"),
        attempt=int(status.get("attempt") or 0),
        failed=int(status.get("failed") or 0),
        queued_time=parse_time(status.get("queuedTime")),
        not_before=parse_time(status.get("notBefore")),
        scheduled_time=parse_time(status.get("scheduledTime")),
        start_time=parse_time(status.get("startTime")),
        completion_time=parse_time(status.get("completionTime")),
        heartbeat_time=parse_time(status.get("heartbeatTime")),
        result=result_view,
        queued_reason=queued.get("reason") if queued and queued.get("status") == "True" else None,
        suspended=bool(suspended and suspended.get("status") == "True"),
        conditions_json=json.dumps(status.get("conditions") or [], separators=(",", ":")),
        message=status.get("message"),
        chunked_spec=json.dumps(spec, sort_keys=True) if chunked else None,
        chunks=chunks if chunked else None,
        parent=labels.get(LABEL_PARENT),
        part=labels.get(LABEL_CHUNK),
        uid_of_owner=owners[0].get("uid") if owners else None,
        chunk_plan=(chunks or {}).get("plan") if spec.get("chunkTask") else None,
        reason=status.get("reason"),
        outputs_json=json.dumps(status.get("outputs") or [])
        if labels.get(LABEL_CHUNK) == "stitch" or notifications is not None
        else None,
        percent=progress.get("percent") if isinstance(progress, dict) else None,
        notifications=notifications,
        notification_records=_notification_records(status) if notifications is not None else (),
    )


@dataclass(frozen=True, slots=True)
class WorkerPod:
    key: str
    namespace: str
    name: str
    uid: str
    pool: str
    node: str | None
    created: float
    deleting: bool
    failed: bool  # phase Failed/Succeeded: the Pod will not run again
    unschedulable: str | None  # the scheduler's message while it cannot place the Pod
    resource_version: str

    @property
    def pool_key(self) -> str:
        """The store key of the WorkerPool this Pod belongs to."""
        return f"{self.namespace}/{self.pool}"


def parse_worker_pod(obj: Obj) -> WorkerPod:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    scheduled = condition(status.get("conditions"), "PodScheduled")
    unschedulable = None
    if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        unschedulable = str(scheduled.get("message") or "unschedulable")
    return WorkerPod(
        key=f"{meta.get('namespace', '')}/{meta['name']}",
        namespace=meta.get("namespace", ""),
        name=meta["name"],
        uid=meta.get("uid", ""),
        pool=(meta.get("labels") or {}).get(LABEL_POOL, ""),
        node=spec.get("nodeName"),
        created=parse_time(meta.get("creationTimestamp")) or 0.0,
        deleting=bool(meta.get("deletionTimestamp")),
        failed=status.get("phase") in ("Failed", "Succeeded"),
        unschedulable=unschedulable,
        resource_version=meta.get("resourceVersion", ""),
    )


@dataclass(frozen=True, slots=True)
class WorkerLease:
    key: str  # namespace/worker-pod-name
    renew_time: float | None
    duration: float
    encoder_ok: bool | None  # None: self-test not finished
    encoder_message: str
    draining: bool
    resource_version: str
    # None: check not finished. A Lease without the annotation (a worker from before the check) passes.
    storage_ok: bool | None = True
    storage_message: str = ""
    # The encoders that passed the worker's self-test; None: not said (a worker from before the
    # capability test), taken as able to run any codec.
    encoders: frozenset[str] | None = None
    name: str = ""  # the Lease object's name
    cadence: str | None = None  # the cadence annotation the operator published on it (api/cadence.py)


def parse_encoders_annotation(value: object) -> frozenset[str] | None:
    """`libx264,libx265,libsvtav1` as a set; None when the annotation is absent."""
    if value is None:
        return None
    return frozenset(name.strip() for name in str(value).split(",") if name.strip())


def parse_lease(obj: Obj) -> WorkerLease:
    meta, spec = obj["metadata"], obj.get("spec") or {}
    annotations = meta.get("annotations") or {}
    encoder = str(annotations.get(ANNOTATION_ENCODER, ""))
    encoder_ok = _check_ok(encoder)
    storage = annotations.get(ANNOTATION_STORAGE)
    holder = spec.get("holderIdentity") or meta["name"]
    return WorkerLease(
        key=f"{meta.get('namespace', '')}/{holder}",
        renew_time=parse_time(spec.get("renewTime")),
        duration=float(spec.get("leaseDurationSeconds") or 15),
        encoder_ok=encoder_ok,
        encoder_message=encoder.partition(":")[2].strip(),
        draining=annotations.get(ANNOTATION_DRAINING) == "true",
        resource_version=meta.get("resourceVersion", ""),
        storage_ok=_check_ok(str(storage)) if storage is not None else True,
        storage_message=str(storage or "").partition(":")[2].strip(),
        encoders=parse_encoders_annotation(annotations.get(ANNOTATION_ENCODERS)),
        name=meta["name"],
        cadence=annotations.get(ANNOTATION_CADENCE),
    )


def _check_ok(annotation: str) -> bool | None:
    """`ok: ...` True, `failed: ...` False, anything else (`pending`) None."""
    if annotation.startswith("ok"):
        return True
    if annotation.startswith("failed"):
        return False
    return None


@dataclass(frozen=True, slots=True)
class PoolObj:
    key: str
    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    spec: WorkerPoolSpec | None
    invalid: str | None
    status: Obj


def parse_pool(obj: Obj) -> PoolObj:
    meta = obj["metadata"]
    try:
        spec: WorkerPoolSpec | None = WorkerPoolSpec.from_api(obj.get("spec") or {})
        invalid = None
    except ValidationError as e:
        spec, invalid = None, str(e.errors()[0]["msg"])
    return PoolObj(
        key=f"{meta.get('namespace', '')}/{meta['name']}",
        namespace=meta.get("namespace", ""),
        name=meta["name"],
        uid=meta.get("uid", ""),
        generation=int(meta.get("generation", 1)),
        resource_version=meta.get("resourceVersion", ""),
        spec=spec,
        invalid=invalid,
        status=obj.get("status") or {},
    )


@dataclass
class Store:
    """The operator's view of the cluster, fed by watch events."""

    jobs: dict[str, JobView] = field(default_factory=dict)
    pods: dict[str, WorkerPod] = field(default_factory=dict)
    leases: dict[str, WorkerLease] = field(default_factory=dict)
    pools: dict[str, PoolObj] = field(default_factory=dict)
    # Set once each kind was listed: until then "missing" does not mean "gone".
    synced: set[str] = field(default_factory=set)
    # When the operator last regained the API server after losing it: no worker could renew its
    # Lease before then, so Leases are judged from this time at the earliest.
    api_ok_since: float = 0.0

    def put_job(self, obj: Obj) -> JobView:
        view = parse_job(obj)
        old = self.jobs.get(view.key)
        # A watch event older than what we wrote ourselves must not roll the view back.
        if old is not None and old.uid == view.uid and _rv_older(view.resource_version, old.resource_version):
            return old
        self.jobs[view.key] = view
        return view

    def of_kind(self, kind: str) -> dict[str, Any]:
        """The views of a kind as the watches name it: jobs, pools, pods or leases."""
        views: dict[str, dict[str, Any]] = {
            "jobs": self.jobs, "pools": self.pools, "pods": self.pods, "leases": self.leases,
        }  # fmt: skip
        return views[kind]

    def put(self, kind: str, obj: Obj) -> object:
        put: dict[str, Callable[[Obj], object]] = {
            "jobs": self.put_job, "pools": self.put_pool, "pods": self.put_pod, "leases": self.put_lease,
        }  # fmt: skip
        return put[kind](obj)

    # The response to our own write (a Pod create, a pool status patch) can arrive after the watch
    # already delivered a newer version (the Pod bound to a node): never roll the view back.
    def put_pod(self, obj: Obj) -> WorkerPod:
        return _put_newest(self.pods, parse_worker_pod(obj))

    def put_lease(self, obj: Obj) -> WorkerLease:
        return _put_newest(self.leases, parse_lease(obj))

    def put_pool(self, obj: Obj) -> PoolObj:
        return _put_newest(self.pools, parse_pool(obj))


class _Versioned(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def resource_version(self) -> str: ...


V = TypeVar("V", bound=_Versioned)


def _put_newest(current: dict[str, V], view: V) -> V:
    old = current.get(view.key)
    if old is not None and _rv_older(view.resource_version, old.resource_version):
        return old
    current[view.key] = view
    return view


def store_key(kind: str, obj: Obj) -> str:
    """The store's key of an object of a kind: "namespace/name", for a Lease "namespace/holder"."""
    if kind == "leases":
        holder = (obj.get("spec") or {}).get("holderIdentity") or obj["metadata"]["name"]
        return f"{obj['metadata'].get('namespace', '')}/{holder}"
    return key_of(obj)


def _rv_older(candidate: str, current: str) -> bool:
    """resourceVersions are opaque, but on etcd-backed servers they are increasing integers."""
    try:
        return int(candidate) < int(current)
    except ValueError:
        return False
