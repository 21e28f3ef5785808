"""Job lifecycle decisions: stores built from raw API objects, one `decide_jobs` pass at a time."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ffrtmp.conditions import now_iso
from ffrtmp.controller.lifecycle import (
    DeleteJob,
    JobDecisions,
    JobEvent,
    PatchStatus,
    decide_jobs,
    retry_backoff,
)
from ffrtmp.controller.settings import OperatorSettings
from ffrtmp.controller.state import Store
from ffrtmp.kube.client import merge_patched

pytestmark = pytest.mark.unit

Obj = dict[str, Any]
NOW = 1_700_000_000.0
NS = "media"
SETTINGS = OperatorSettings()


# --- factories: objects as the API server returns them --------------------------------------------


def micro(t: float) -> str:
    """A Lease's MicroTime."""
    return now_iso(t)[:-1] + f".{round((t % 1) * 1e6):06d}Z"


def pool_obj(name: str = "cpu", accelerator: str = "cpu", *, ns: str = NS, slots: int = 1, **spec: Any) -> Obj:
    return {
        "apiVersion": "ffmpeg-rtmp.io/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"uid-pool-{ns}-{name}",
            "generation": 1,
            "resourceVersion": "10",
            "creationTimestamp": now_iso(NOW - 86400),
        },
        "spec": {"accelerator": accelerator, "maxConcurrentJobs": slots, **spec},
        "status": {},
    }


def pod_obj(
    name: str,
    pool: str = "cpu",
    *,
    ns: str = NS,
    node: str | None = "node-1",
    phase: str = "Running",
    deleting: bool = False,
) -> Obj:
    meta: Obj = {
        "name": name,
        "namespace": ns,
        "uid": f"uid-pod-{ns}-{name}",
        "resourceVersion": "20",
        "creationTimestamp": now_iso(NOW - 3600),
        "labels": {"app.kubernetes.io/component": "worker", "ffmpeg-rtmp.io/pool": pool},
        "ownerReferences": [{"kind": "WorkerPool", "name": pool, "controller": True}],
    }
    if deleting:
        meta["deletionTimestamp"] = now_iso(NOW - 1)
    spec: Obj = {"containers": [{"name": "worker", "image": "worker:1"}]}
    if node is not None:
        spec["nodeName"] = node
    conditions = [{"type": "PodScheduled", "status": "True"}] if node else []
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": spec,
        "status": {"phase": phase, "conditions": conditions},
    }


def lease_obj(
    worker: str,
    *,
    ns: str = NS,
    renewed: float = NOW - 2,
    duration: int = 15,
    encoder: str | None = "ok: libx264",
    draining: bool = False,
) -> Obj:
    annotations: Obj = {}
    if encoder is not None:
        annotations["ffmpeg-rtmp.io/encoder-self-test"] = encoder
    if draining:
        annotations["ffmpeg-rtmp.io/draining"] = "true"
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": f"ffrtmp-worker-{worker}",
            "namespace": ns,
            "resourceVersion": "30",
            "annotations": annotations,
        },
        "spec": {"holderIdentity": worker, "leaseDurationSeconds": duration, "renewTime": micro(renewed)},
    }


def job_spec(**fields: Any) -> Obj:
    return {
        "input": {"uri": "/media/in/talk.mp4"},
        "outputs": [{"name": "720p", "container": "mp4", "video": {"codec": "h264", "height": 720, "crf": 23}}],
        "accelerator": "cpu",
        **fields,
    }


def job_obj(
    name: str = "job", *, ns: str = NS, rv: str = "100", spec: Obj | None = None, status: Obj | None = None
) -> Obj:
    obj: Obj = {
        "apiVersion": "ffmpeg-rtmp.io/v1alpha1",
        "kind": "TranscodeJob",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"uid-job-{ns}-{name}",
            "generation": 1,
            "resourceVersion": rv,
            "creationTimestamp": now_iso(NOW - 300),
        },
        "spec": spec if spec is not None else job_spec(),
    }
    if status is not None:
        obj["status"] = status
    return obj


def active_status(
    phase: str = "Running",
    *,
    worker: str = "cpu-a",
    attempt: int = 1,
    failed: int = 0,
    scheduled: float = NOW - 60,
    started: float | None = NOW - 55,
    heartbeat: float | None = NOW - 5,
    result: Obj | None = None,
) -> Obj:
    status: Obj = {
        "phase": phase,
        "pool": "cpu",
        "worker": worker,
        "node": "node-1",
        "accelerator": "cpu",
        "attempt": attempt,
        "queuedTime": now_iso(NOW - 290),
        "scheduledTime": now_iso(scheduled),
        "message": f"assigned to worker {worker} on node node-1",
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Queued",
                "status": "False",
                "reason": "Scheduled",
                "message": "",
                "lastTransitionTime": now_iso(scheduled),
            },
            {
                "type": "Scheduled",
                "status": "True",
                "reason": "Assigned",
                "message": "",
                "lastTransitionTime": now_iso(scheduled),
            },
            {
                "type": "Running",
                "status": "True" if phase == "Running" else "False",
                "reason": "Started",
                "message": "",
                "lastTransitionTime": now_iso(scheduled),
            },
        ],
    }
    if failed:
        status["failed"] = failed
    if phase == "Running" and started is not None:
        status["startTime"] = now_iso(started)
    if phase == "Running" and heartbeat is not None:
        status["heartbeatTime"] = now_iso(heartbeat)
    if result is not None:
        status["result"] = result
    return status


def store_of(*objs: Obj) -> Store:
    store = Store()
    for obj in objs:
        put = {
            "TranscodeJob": store.put_job,
            "Pod": store.put_pod,
            "Lease": store.put_lease,
            "WorkerPool": store.put_pool,
        }
        put[obj["kind"]](obj)
    return store


def worker(name: str = "cpu-a", pool: str = "cpu", **lease: Any) -> tuple[Obj, Obj]:
    """A ready worker: a running Pod on a node and a fresh Lease with a passed self-test."""
    return pod_obj(name, pool), lease_obj(name, **lease)


def conditions(status: Obj) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def only_patch(decisions: JobDecisions) -> PatchStatus:
    assert len(decisions.actions) == 1, decisions.actions
    action = decisions.actions[0]
    assert isinstance(action, PatchStatus)
    return action


def apply(store: Store, obj: Obj, action: PatchStatus) -> Obj:
    assert action.resource_version == obj["metadata"]["resourceVersion"]
    new = copy.deepcopy(obj)
    new["status"] = merge_patched(obj.get("status") or {}, action.status)
    new["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
    store.put_job(new)
    return new


# --- admission and first assignment ---------------------------------------------------------------


def test_new_job_with_a_free_ready_worker_is_scheduled_fenced_on_its_resource_version() -> None:
    store = store_of(pool_obj(), *worker(), job_obj(rv="4711"))
    decisions = decide_jobs(store, NOW, SETTINGS)
    action = only_patch(decisions)
    message = "assigned to worker cpu-a on node node-1"
    t = now_iso(NOW)
    assert action == PatchStatus(
        key="media/job",
        resource_version="4711",
        status={
            "phase": "Scheduled",
            "pool": "cpu",
            "worker": "cpu-a",
            "node": "node-1",
            "accelerator": "cpu",
            "attempt": 1,
            "scheduledTime": t,
            "notBefore": None,
            "reason": None,
            "progress": None,
            "heartbeatTime": None,
            "startTime": None,
            "message": message,
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": "Queued",
                    "status": "False",
                    "reason": "Scheduled",
                    "message": message,
                    "lastTransitionTime": t,
                    "observedGeneration": 1,
                },
                {
                    "type": "Scheduled",
                    "status": "True",
                    "reason": "Assigned",
                    "message": message,
                    "lastTransitionTime": t,
                    "observedGeneration": 1,
                },
                {
                    "type": "Running",
                    "status": "False",
                    "reason": "Scheduled",
                    "message": "waiting for the worker to start ffmpeg",
                    "lastTransitionTime": t,
                    "observedGeneration": 1,
                },
            ],
            "queuedTime": t,
        },
        event=JobEvent("Normal", "Scheduled", f"attempt 1: {message}"),
    )
    assert decisions.waiting_by_pool == {}


def test_the_next_attempt_number_follows_the_last_one_and_queued_time_is_kept() -> None:
    status = {"phase": "Queued", "attempt": 2, "failed": 1, "queuedTime": now_iso(NOW - 200), "conditions": []}
    store = store_of(pool_obj(), *worker(), job_obj(status=status))
    action = only_patch(decide_jobs(store, NOW, SETTINGS))
    assert action.status["attempt"] == 3
    assert "queuedTime" not in action.status  # first queued time stays
    assert "failed" not in action.status


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (job_spec(accelerator="cpu"), "no cpu WorkerPool in namespace media"),
        (job_spec(accelerator="auto"), "no WorkerPool in namespace media"),
        (
            job_spec(accelerator="auto", poolRef={"name": "gpu"}),
            "WorkerPool gpu (poolRef) does not exist in namespace media",
        ),
    ],
)
def test_new_job_without_a_matching_pool_is_queued_with_no_matching_pool(spec: Obj, message: str) -> None:
    store = store_of(pool_obj("cpu", ns="elsewhere"), job_obj(spec=spec))
    action = only_patch(decide_jobs(store, NOW, SETTINGS))
    assert action.status["phase"] == "Queued"
    assert action.status["message"] == message
    assert action.status["queuedTime"] == now_iso(NOW)
    assert conditions(action.status) == {
        "Queued": ("True", "NoMatchingPool"),
        "Scheduled": ("False", "NoMatchingPool"),
        "Running": ("False", "NoMatchingPool"),
    }
    assert action.event == JobEvent("Normal", "Queued", message)


def test_a_field_of_a_newer_crd_version_is_ignored_not_invalid() -> None:
    """Version skew: an operator one release behind its CRD queues and schedules such a job."""
    spec = {**job_spec(), "futureField": 1}
    spec["outputs"] = [{**o, "futureOutputField": "x"} for o in spec["outputs"]]
    store = store_of(pool_obj(), *worker(), job_obj(spec=spec))
    action = only_patch(decide_jobs(store, NOW, SETTINGS))
    assert action.status["phase"] == "Scheduled", action.status


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ({k: v for k, v in job_spec().items() if k != "input"}, "spec.input: Field required"),
        (job_spec(outputs=[{"name": "Not_A_DNS_Label"}]), "spec.outputs.0.name: String should match pattern"),
    ],
)
def test_invalid_spec_fails_at_once_even_with_a_free_worker(spec: Obj, why: str) -> None:
    store = store_of(pool_obj(), *worker(), job_obj(spec=spec))
    action = only_patch(decide_jobs(store, NOW, SETTINGS))
    assert action.status["phase"] == "Failed"
    assert action.status["reason"] == "InvalidSpec"
    assert action.status["message"].startswith(f"invalid spec: {why}")
    assert action.status["completionTime"] == now_iso(NOW)
    assert conditions(action.status)["Failed"] == ("True", "InvalidSpec")
    assert action.event is not None
    assert (action.event.type, action.event.reason) == ("Warning", "InvalidSpec")


# --- suspend and resume ---------------------------------------------------------------------------


def test_suspending_a_running_job_stops_the_attempt_and_holds_it_pending() -> None:
    job = job_obj(spec=job_spec(suspend=True), status=active_status("Running"))
    store = store_of(pool_obj(), *worker(), job)
    action = only_patch(decide_jobs(store, NOW, SETTINGS))
    message = "suspended: spec.suspend is true; stopped attempt 1 on cpu-a"
    assert action.resource_version == "100"
    assert action.status["phase"] == "Pending"
    assert action.status["worker"] is None and action.status["node"] is None
    assert action.status["message"] == message
    assert conditions(action.status) == {
        "Queued": ("False", "JobSuspended"),
        "Scheduled": ("False", "JobSuspended"),
        "Running": ("False", "JobSuspended"),
        "Suspended": ("True", "JobSuspended"),
    }
    assert action.event == JobEvent("Normal", "Suspended", message)
    # Applied, the next pass has nothing more to say, and the freed worker gets nothing from it.
    apply(store, job, action)
    assert decide_jobs(store, NOW + 1, SETTINGS).actions == []


def test_resuming_requeues_and_the_next_pass_schedules() -> None:
    job = job_obj(spec=job_spec(suspend=True))
    store = store_of(pool_obj(), *worker(), job)
    suspended = only_patch(decide_jobs(store, NOW, SETTINGS))
    assert suspended.status["message"] == "suspended: spec.suspend is true"
    job = apply(store, job, suspended)

    job["spec"]["suspend"] = False
    job["metadata"]["generation"] = 2
    job["metadata"]["resourceVersion"] = "200"
    store.put_job(job)
    resumed = only_patch(decide_jobs(store, NOW + 10, SETTINGS))
    assert resumed.status["phase"] == "Queued"
    assert resumed.status["message"] == "resumed: spec.suspend is false"
    assert conditions(resumed.status)["Suspended"] == ("False", "JobResumed")
    assert conditions(resumed.status)["Queued"] == ("True", "Resumed")
    assert resumed.event == JobEvent("Normal", "Resumed", "resumed: spec.suspend is false")
    job = apply(store, job, resumed)

    scheduled = only_patch(decide_jobs(store, NOW + 11, SETTINGS))
    assert scheduled.status["phase"] == "Scheduled"
    assert scheduled.status["worker"] == "cpu-a"
    assert scheduled.status["observedGeneration"] == 2


# --- results of attempts --------------------------------------------------------------------------


def failed_result(attempt: int = 1, *, retryable: bool = True, reason: str = "FfmpegError") -> Obj:
    return {
        "attempt": attempt,
        "worker": "cpu-a",
        "outcome": "Failed",
        "reason": reason,
        "message": "ffmpeg exited with status 1",
        "retryable": retryable,
        "stderrTail": "Conversion failed!",
    }


def test_retry_backoff_doubles_and_is_capped() -> None:
    assert [retry_backoff(n, SETTINGS) for n in range(0, 9)] == [10, 10, 20, 40, 80, 160, 320, 360, 360]
    custom = OperatorSettings(retry_backoff_seconds=5, retry_backoff_max_seconds=30)
    assert [retry_backoff(n, custom) for n in range(1, 6)] == [5, 10, 20, 30, 30]


@pytest.mark.parametrize(("failed", "delay"), [(0, 10), (1, 20), (2, 40)])
def test_retryable_failure_below_the_backoff_limit_is_requeued_with_backoff(failed: int, delay: int) -> None:
    attempt = failed + 1
    status = active_status(attempt=attempt, failed=failed, result=failed_result(attempt))
    store = store_of(pool_obj(), *worker(), job_obj(spec=job_spec(backoffLimit=3), status=status))
    action = only_patch(decide_jobs(store, NOW, SETTINGS))
    message = f"attempt {attempt} failed: FfmpegError: ffmpeg exited with status 1; retry {failed + 1}/3 in {delay}s"
    assert action.status["phase"] == "Queued"
    assert action.status["failed"] == failed + 1
    assert action.status["notBefore"] == now_iso(NOW + delay)
    assert action.status["reason"] == "FfmpegError"
    assert action.status["worker"] is None
    assert action.status["message"] == message
    assert conditions(action.status)["Queued"] == ("True", "BackoffRetry")
    assert action.event == JobEvent("Warning", "Retrying", message)


def test_a_job_in_backoff_waits_silently_and_wakes_the_loop_at_not_before() -> None:
    status = active_status(attempt=1, result=failed_result(1))
    job = job_obj(status=status)
    store = store_of(pool_obj(), *worker(), job)
    job = apply(store, job, only_patch(decide_jobs(store, NOW, SETTINGS)))

    later = decide_jobs(store, NOW + 5, SETTINGS)
    assert later.actions == []  # the free worker does not get it, and the retry message stays
    assert later.wake_at == NOW + 10
    assert later.waiting_by_pool == {"media/cpu": 1}

    due = only_patch(decide_jobs(store, NOW + 10, SETTINGS))
    assert due.status["phase"] == "Scheduled"
    assert due.status["attempt"] == 2


@pytest.mark.parametrize("limit", [0, 3])
def test_retryable_failure_at_the_backoff_limit_fails_the_job(limit: int) -> None:
    status = active_status(attempt=limit + 1, failed=limit, result=failed_result(limit + 1))
    store = store_of(pool_obj(), *worker(), job_obj(spec=job_spec(backoffLimit=limit), status=status))
    action = only_patch(decide_jobs(store, NOW, SETTINGS))
    message = f"attempt {limit + 1} failed: FfmpegError: ffmpeg exited with status 1; backoffLimit ({limit}) reached"
    assert action.status["phase"] == "Failed"
    assert action.status["reason"] == "FfmpegError"
    assert action.status["failed"] == limit + 1
    assert action.status["message"] == message
    assert action.status["completionTime"] == now_iso(NOW)
    assert conditions(action.status)["Failed"] == ("True", "FfmpegError")
    assert action.event == JobEvent("Warning", "FfmpegError", message)


def test_non_retryable_failure_fails_at_once_with_the_results_reason() -> None:
    result = failed_result(1, retryable=False, reason="InputNotFound")
    result["message"] = "/media/in/talk.mp4: No such file or directory"
    store = store_of(pool_obj(), *worker(), job_obj(spec=job_spec(backoffLimit=5), status=active_status(result=result)))
    action = only_patch(decide_jobs(store, NOW, SETTINGS))
    message = "attempt 1 failed: InputNotFound: /media/in/talk.mp4: No such file or directory"
    assert action.status["phase"] == "Failed"
    assert action.status["reason"] == "InputNotFound"
    assert action.status["message"] == message
    assert action.status["failed"] == 1
    assert action.event == JobEvent("Warning", "InputNotFound", message)


def test_handed_back_attempt_is_requeued_without_counting_a_failure() -> None:
    result = {"attempt": 2, "worker": "cpu-a", "outcome": "HandedBack", "message": "worker draining"}
    store = store_of(pool_obj(), *worker(), job_obj(status=active_status(attempt=2, failed=1, result=result)))
    action = only_patch(decide_jobs(store, NOW, SETTINGS))
    message = "attempt 2 handed back by cpu-a (worker draining); requeued"
    assert action.status["phase"] == "Queued"
    assert "failed" not in action.status
    assert "notBefore" not in action.status
    assert action.status["worker"] is None
    assert conditions(action.status)["Queued"] == ("True", "HandedBack")
    assert action.event == JobEvent("Normal", "HandedBack", message)


def test_a_result_of_an_older_attempt_is_ignored() -> None:
    store = store_of(pool_obj(), *worker(), job_obj(status=active_status(attempt=2, result=failed_result(1))))
    assert decide_jobs(store, NOW, SETTINGS).actions == []


# --- lost workers ---------------------------------------------------------------------------------


def lost_case(name: str) -> tuple[list[Obj], Obj, str]:
    """(other objects, job status, expected fragment of the message)."""
    pod, lease = worker()
    running = active_status("Running")
    if name == "pod missing":
        return [lease], running, "worker Pod cpu-a no longer exists"
    if name == "pod terminated":
        return [pod_obj("cpu-a", phase="Failed"), lease], running, "worker Pod cpu-a has terminated"
    if name == "lease expired":
        # renewTime + leaseDuration (15) + grace (5) is one second in the past.
        return [pod, lease_obj("cpu-a", renewed=NOW - 21)], running, "stopped renewing its Lease 21s ago"
    if name == "no lease":
        return [pod], active_status("Scheduled", scheduled=NOW - 36), "worker cpu-a has no Lease"
    if name == "not started":
        status = active_status("Scheduled", scheduled=NOW - 121)
        return [pod, lease], status, "did not start the attempt within 120s"
    if name == "no heartbeat":
        status = active_status("Running", heartbeat=NOW - 601)
        return [pod, lease], status, "reported no progress for 601s"
    if name == "no heartbeat since start":
        status = active_status("Running", started=NOW - 700, heartbeat=None)
        return [pod, lease], status, "reported no progress for 700s"
    raise AssertionError(name)


LOST = [
    "pod missing",
    "pod terminated",
    "lease expired",
    "no lease",
    "not started",
    "no heartbeat",
    "no heartbeat since start",
]


@pytest.mark.parametrize("case", LOST)
def test_a_lost_worker_requeues_the_job_without_counting_a_failure(case: str) -> None:
    others, status, fragment = lost_case(case)
    status["failed"] = 2
    store = store_of(pool_obj(), *others, job_obj(status=status))
    action = only_patch(decide_jobs(store, NOW, SETTINGS))
    assert action.status["phase"] == "Queued"
    assert action.status["reason"] == "WorkerLost"
    assert action.status["worker"] is None
    assert action.status["startTime"] is None and action.status["scheduledTime"] is None
    assert "failed" not in action.status  # stays 2
    assert fragment in action.status["message"]
    assert action.status["message"].startswith("attempt 1 lost: ")
    assert action.status["message"].endswith("requeued (does not count against backoffLimit)")
    assert conditions(action.status)["Queued"] == ("True", "WorkerLost")
    assert action.event == JobEvent("Warning", "WorkerLost", action.status["message"])


@pytest.mark.parametrize(
    ("others", "status"),
    [
        ([lease_obj("cpu-a", renewed=NOW - 20)], active_status("Running")),  # exactly at the grace
        ([], active_status("Scheduled", scheduled=NOW - 35)),  # no Lease yet, within 30 s + grace
        ([lease_obj("cpu-a")], active_status("Scheduled", scheduled=NOW - 120)),
        ([lease_obj("cpu-a")], active_status("Running", heartbeat=NOW - 600)),
    ],
)
def test_a_worker_within_its_limits_keeps_the_job(others: list[Obj], status: Obj) -> None:
    store = store_of(pool_obj(), pod_obj("cpu-a"), *others, job_obj(status=status))
    assert decide_jobs(store, NOW, SETTINGS).actions == []


def test_lost_worker_timeouts_come_from_the_settings() -> None:
    custom = OperatorSettings(start_timeout_seconds=10, heartbeat_timeout_seconds=30, lease_grace_seconds=0)
    for status, fragment in [
        (active_status("Scheduled", scheduled=NOW - 11), "within 10s"),
        (active_status("Running", heartbeat=NOW - 31), "no progress for 31s"),
    ]:
        store = store_of(pool_obj(), *worker(), job_obj(status=status))
        assert decide_jobs(store, NOW, SETTINGS).actions == []
        assert fragment in only_patch(decide_jobs(store, NOW, custom)).status["message"]
    store = store_of(
        pool_obj(), pod_obj("cpu-a"), lease_obj("cpu-a", renewed=NOW - 16), job_obj(status=active_status())
    )
    assert decide_jobs(store, NOW, SETTINGS).actions == []
    assert only_patch(decide_jobs(store, NOW, custom)).status["reason"] == "WorkerLost"


# --- deadlines and TTL ----------------------------------------------------------------------------


def test_timeout_seconds_passed_fails_the_job_with_deadline_exceeded() -> None:
    status = active_status("Running", started=NOW - 61)
    store = store_of(pool_obj(), *worker(), job_obj(spec=job_spec(timeoutSeconds=60), status=status))
    action = only_patch(decide_jobs(store, NOW, SETTINGS))
    message = "ran longer than timeoutSeconds (60s); ffmpeg was stopped"
    assert action.status["phase"] == "Failed"
    assert action.status["reason"] == "DeadlineExceeded"
    assert action.status["message"] == message
    assert conditions(action.status)["Failed"] == ("True", "DeadlineExceeded")
    assert action.event == JobEvent("Warning", "DeadlineExceeded", message)


def test_timeout_not_yet_due_wakes_the_loop_at_the_deadline() -> None:
    status = active_status("Running", started=NOW - 30)
    store = store_of(pool_obj(), *worker(), job_obj(spec=job_spec(timeoutSeconds=60), status=status))
    decisions = decide_jobs(store, NOW, SETTINGS)
    assert decisions.actions == []
    assert decisions.wake_at == NOW + 30


def test_a_scheduled_job_that_never_started_is_timed_from_its_assignment() -> None:
    status = active_status("Scheduled", scheduled=NOW - 100)
    store = store_of(pool_obj(), *worker(), job_obj(spec=job_spec(timeoutSeconds=90), status=status))
    assert only_patch(decide_jobs(store, NOW, SETTINGS)).status["reason"] == "DeadlineExceeded"


def finished(phase: str, completed: float) -> Obj:
    return {"phase": phase, "attempt": 1, "completionTime": now_iso(completed), "conditions": []}


@pytest.mark.parametrize("phase", ["Succeeded", "Failed", "Cancelled"])
def test_ttl_passed_deletes_the_job_by_uid(phase: str) -> None:
    job = job_obj(spec=job_spec(ttlSecondsAfterFinished=3600), status=finished(phase, NOW - 3600))
    store = store_of(pool_obj(), *worker(), job)
    decisions = decide_jobs(store, NOW, SETTINGS)
    assert decisions.actions == [DeleteJob("media/job", "uid-job-media-job", "ttlSecondsAfterFinished (3600s) passed")]


def test_ttl_not_yet_due_does_nothing_but_wake_at_the_due_time() -> None:
    jobs = [
        job_obj("a", spec=job_spec(ttlSecondsAfterFinished=3600), status=finished("Succeeded", NOW - 100)),
        job_obj("b", spec=job_spec(ttlSecondsAfterFinished=60), status=finished("Failed", NOW - 10)),
        job_obj("c", status=finished("Succeeded", NOW - 10**6)),  # no TTL: kept forever
    ]
    decisions = decide_jobs(store_of(pool_obj(), *worker(), *jobs), NOW, SETTINGS)
    assert decisions.actions == []
    assert decisions.wake_at == NOW + 50


# --- which workers get jobs -----------------------------------------------------------------------


NOT_ACCEPTING: dict[str, tuple[list[Obj], set[str]]] = {
    "draining": ([pod_obj("cpu-a"), lease_obj("cpu-a", draining=True)], set()),
    "retiring": ([pod_obj("cpu-a"), lease_obj("cpu-a")], {"media/cpu-a"}),
    "stale lease": ([pod_obj("cpu-a"), lease_obj("cpu-a", renewed=NOW - 21)], set()),
    "no lease": ([pod_obj("cpu-a")], set()),
    "self-test failed": ([pod_obj("cpu-a"), lease_obj("cpu-a", encoder="failed: libx264: not built in")], set()),
    "self-test running": ([pod_obj("cpu-a"), lease_obj("cpu-a", encoder=None)], set()),
    "not on a node": ([pod_obj("cpu-a", node=None, phase="Pending"), lease_obj("cpu-a")], set()),
    "terminating": ([pod_obj("cpu-a", deleting=True), lease_obj("cpu-a")], set()),
    "terminated": ([pod_obj("cpu-a", phase="Failed"), lease_obj("cpu-a")], set()),
}


@pytest.mark.parametrize("case", sorted(NOT_ACCEPTING))
def test_a_worker_that_is_not_accepting_gets_nothing(case: str) -> None:
    objs, retiring = NOT_ACCEPTING[case]
    store = store_of(pool_obj(), *objs, job_obj())
    action = only_patch(decide_jobs(store, NOW, SETTINGS, retiring=retiring))
    assert action.status["phase"] == "Queued"
    assert conditions(action.status)["Queued"] == ("True", "NoReadyWorker")
    # With a ready worker next to it, the job goes to that one.
    store.put_pod(pod_obj("cpu-b"))
    store.put_lease(lease_obj("cpu-b"))
    action = only_patch(decide_jobs(store, NOW, SETTINGS, retiring=retiring))
    assert (action.status["phase"], action.status["worker"]) == ("Scheduled", "cpu-b")


def test_a_busy_worker_gets_nothing_and_the_job_waits_for_a_free_slot() -> None:
    running = job_obj("running", status=active_status())
    store = store_of(pool_obj(slots=1), *worker(), running, job_obj("next"))
    decisions = decide_jobs(store, NOW, SETTINGS)
    action = only_patch(decisions)
    assert action.key == "media/next"
    assert conditions(action.status)["Queued"] == ("True", "NoFreeSlot")
    assert decisions.waiting_by_pool == {"media/cpu": 1}


def test_slots_of_a_multi_slot_worker_fill_up_in_priority_order() -> None:
    jobs = [job_obj(f"j{i}", spec=job_spec(priority=i)) for i in range(5)]
    store = store_of(pool_obj(slots=3), *worker(), *jobs)
    decisions = decide_jobs(store, NOW, SETTINGS)
    scheduled = [a.key for a in decisions.actions if isinstance(a, PatchStatus) and a.status["phase"] == "Scheduled"]
    assert scheduled == ["media/j4", "media/j3", "media/j2"]
    assert decisions.waiting_by_pool == {"media/cpu": 2}


# --- no write storm -------------------------------------------------------------------------------


def test_a_queued_job_whose_reason_did_not_change_is_not_rewritten() -> None:
    job = job_obj()
    store = store_of(pool_obj(), job)  # a pool with no worker yet
    first = decide_jobs(store, NOW, SETTINGS)
    action = only_patch(first)
    assert conditions(action.status)["Queued"] == ("True", "NoReadyWorker")
    assert action.event is not None
    job = apply(store, job, action)
    for later in (NOW + 2, NOW + 60, NOW + 3600):
        again = decide_jobs(store, later, SETTINGS)
        assert again.actions == []
        assert again.waiting_by_pool == first.waiting_by_pool == {"media/cpu": 1}


def test_a_changed_reason_is_written_once_without_a_second_queued_event() -> None:
    job = job_obj()
    store = store_of(pool_obj(), job)
    job = apply(store, job, only_patch(decide_jobs(store, NOW, SETTINGS)))
    store.put_pool(pool_obj(paused=True))
    action = only_patch(decide_jobs(store, NOW + 1, SETTINGS))
    assert conditions(action.status)["Queued"] == ("True", "PoolPaused")
    assert action.event is None  # already Queued: no new Event for a new reason
    assert "queuedTime" not in action.status
    apply(store, job, action)
    assert decide_jobs(store, NOW + 2, SETTINGS).actions == []


# --- the autoscaler's input -----------------------------------------------------------------------


def test_waiting_jobs_are_attributed_to_the_pool_that_would_run_them() -> None:
    store = store_of(
        pool_obj("cpu", "cpu"),
        pool_obj("gpu", "nvenc"),
        job_obj("a", spec=job_spec(accelerator="cpu")),
        job_obj("b", spec=job_spec(accelerator="nvenc", hardwarePolicy="required")),
        job_obj("c", spec=job_spec(accelerator="nvenc", hardwarePolicy="required", poolRef={"name": "gpu"})),
    )
    assert decide_jobs(store, NOW, SETTINGS).waiting_by_pool == {"media/cpu": 1, "media/gpu": 2}


def test_a_preferred_hardware_job_without_such_a_pool_counts_for_the_cpu_pool_it_falls_back_to() -> None:
    store = store_of(pool_obj("cpu", "cpu", minWorkers=0), job_obj(spec=job_spec(accelerator="nvenc")))
    decisions = decide_jobs(store, NOW, SETTINGS)
    action = only_patch(decisions)
    assert action.status["message"] == (
        "no nvenc WorkerPool in namespace media, falling back to cpu: pool cpu has no worker yet (waiting for scale-up)"
    )
    assert decisions.waiting_by_pool == {"media/cpu": 1}


def test_a_job_whose_pool_ref_cannot_run_it_counts_for_no_pool() -> None:
    spec = job_spec(accelerator="nvenc", hardwarePolicy="required", poolRef={"name": "cpu"})
    store = store_of(pool_obj("cpu", "cpu"), job_obj(spec=spec))
    decisions = decide_jobs(store, NOW, SETTINGS)
    assert conditions(only_patch(decisions).status)["Queued"] == ("True", "NoMatchingPool")
    assert decisions.waiting_by_pool == {}


@pytest.mark.parametrize("accelerator", ["cpu", "auto"])
def test_a_waiting_job_counts_for_a_live_pool_not_a_paused_one(accelerator: str) -> None:
    store = store_of(
        pool_obj("a", "cpu", paused=True), pool_obj("b", "cpu"), job_obj(spec=job_spec(accelerator=accelerator))
    )
    decisions = decide_jobs(store, NOW, SETTINGS)
    assert only_patch(decisions).status["message"] == "pool b has no worker yet (waiting for scale-up); pool a paused"
    assert decisions.waiting_by_pool == {"media/b": 1}


# --- capacity over a whole pass -------------------------------------------------------------------


POOLS = [("cpu", "cpu"), ("gpu", "nvenc"), ("intel", "qsv")]


@st.composite
def stores(draw: st.DrawFn) -> tuple[Store, set[str]]:
    objs: list[Obj] = []
    slots: dict[str, int] = {}
    for name, acc in POOLS:
        if draw(st.integers(0, 3)) > 0:
            slots[name] = draw(st.integers(1, 3))
            objs.append(pool_obj(name, acc, slots=slots[name], paused=draw(st.integers(0, 5)) == 0))
    workers: list[str] = []
    for i in range(draw(st.integers(1, 6))):
        # Mostly workers of existing pools; now and then one of a pool that is gone.
        pool = draw(st.sampled_from(sorted(slots) * 4 + [p for p, _ in POOLS]))
        name = f"{pool}-{i}"
        workers.append(name)
        state = draw(
            st.sampled_from([*["ready"] * 6, "unscheduled", "no lease", "stale", "failed", "testing", "draining"])
        )
        objs.append(pod_obj(name, pool, node=None if state == "unscheduled" else "node-1"))
        if state != "no lease":
            objs.append(
                lease_obj(
                    name,
                    renewed=NOW - (30 if state == "stale" else draw(st.sampled_from([1, 10]))),
                    encoder={"failed": "failed: y", "testing": None}.get(state, "ok: x"),
                    draining=state == "draining",
                )
            )
    for i in range(draw(st.integers(1, 14))):
        spec = job_spec(
            accelerator=draw(st.sampled_from(["auto", "cpu", "nvenc", "qsv"])),
            hardwarePolicy=draw(st.sampled_from(["required", "preferred"])),
            priority=draw(st.integers(-1, 1)),
        )
        if spec["accelerator"] == "cpu":
            spec["hardwarePolicy"] = "preferred"
        kind = draw(st.sampled_from(["new", "new", "queued", "active", "active", "done"]))
        status: Obj | None = None
        if kind == "queued":
            status = {"phase": "Queued", "attempt": 1, "queuedTime": now_iso(NOW - 100), "conditions": []}
            if draw(st.booleans()):
                status["notBefore"] = now_iso(NOW + draw(st.sampled_from([-5, 5])))
        elif kind == "active" and workers:
            status = active_status(
                draw(st.sampled_from(["Scheduled", "Running"])),
                worker=draw(st.sampled_from(workers)),
                scheduled=NOW - 10,
                started=NOW - 5,
                heartbeat=NOW - 1,
            )
        elif kind == "done":
            status = finished("Succeeded", NOW - 10)
        objs.append(job_obj(f"j{i}", rv=str(100 + i), spec=spec, status=status))
    retiring = {f"{NS}/{w}" for w in workers if draw(st.integers(0, 9)) == 0}
    return store_of(*objs), retiring


@settings(max_examples=60, deadline=None)
@given(stores())
def test_no_worker_ever_gets_more_than_max_concurrent_jobs(snapshot: tuple[Store, set[str]]) -> None:
    store, retiring = snapshot
    decisions = decide_jobs(store, NOW, SETTINGS, retiring=retiring)
    scheduled = Counter(
        f"{NS}/{a.status['worker']}"
        for a in decisions.actions
        if isinstance(a, PatchStatus) and a.status.get("phase") == "Scheduled"
    )
    active = Counter(f"{j.namespace}/{j.worker}" for j in store.jobs.values() if j.active and j.worker)
    for key, count in scheduled.items():
        pod = store.pods[key]
        pool = store.pools[f"{NS}/{pod.pool}"]
        assert pool.spec is not None
        assert count + active[key] <= pool.spec.max_concurrent_jobs
        # ... and only an accepting worker of a live pool gets any.
        lease = store.leases[key]
        assert key not in retiring
        assert lease.encoder_ok is True and not lease.draining
        assert pod.node is not None and not pool.spec.paused
    # Every job gets at most one action, each fenced on the version it was decided on.
    keys = [a.key for a in decisions.actions]
    assert len(keys) == len(set(keys))
    for a in decisions.actions:
        if isinstance(a, PatchStatus):
            assert a.resource_version == store.jobs[a.key].resource_version
