"""Chunked jobs: the parent's steps decided over a store of parent and children."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_lifecycle import NOW as LEASE_NOW
from test_lifecycle import conditions, pool_obj, store_of, worker

from ffrtmp.api.constants import LABEL_CHUNK, LABEL_PARENT
from ffrtmp.api.job import ChunksStatus, TranscodeJob
from ffrtmp.controller.chunked import RETRIES_SHOWN, CreateJob
from ffrtmp.controller.chunking import MAX_PLAN_CHARS, encode_boundaries, plan_chunks, plan_too_long
from ffrtmp.controller.lifecycle import DeleteJob, PatchStatus, decide_jobs
from ffrtmp.controller.settings import OperatorSettings
from ffrtmp.controller.state import Store

pytestmark = pytest.mark.unit

Obj = dict[str, Any]
NS = "media"
NOW = 1_000_000.0
PLAN = "0,2000000,4000000,6000000"
SETTINGS = OperatorSettings()
_rv = iter(range(1, 1_000_000))


def parent(chunks: Obj | None = None, phase: str | None = None, **chunking: Any) -> Obj:
    status: Obj = {"phase": phase} if phase else {}
    if chunks is not None:
        status["chunks"] = chunks
    return {
        "kind": "TranscodeJob",
        "metadata": {"name": "film", "namespace": NS, "uid": "u-film", "resourceVersion": str(next(_rv))},
        "spec": {
            "input": {"uri": "/media/film.mp4"},
            "outputs": [{"name": "main", "container": "mp4"}],
            "priority": 5,
            "poolRef": {"name": "cpu"},
            "ttlSecondsAfterFinished": 60,
            "chunking": {"mode": "On", "chunkSeconds": 2, **chunking},
        },
        "status": status,
    }


def child(part: str, phase: str, owner: str = "u-film", **status: Any) -> Obj:
    task: Obj = {"kind": {"plan": "Plan", "audio": "Audio", "stitch": "Stitch"}.get(part, "Video"), "parent": "film"}
    return {
        "kind": "TranscodeJob",
        "metadata": {
            "name": f"film-{part}", "namespace": NS, "uid": f"u-{part}", "resourceVersion": str(next(_rv)),
            "labels": {LABEL_PARENT: "film", LABEL_CHUNK: part},
            "ownerReferences": [{"kind": "TranscodeJob", "name": "film", "uid": owner}],
        },
        "spec": {"input": {"uri": "/media/film.mp4"}, "outputs": [{"name": "main", "container": "mp4"}],
                 "chunkTask": task},
        "status": {"phase": phase, **status},
    }  # fmt: skip


def decide(*objs: Obj) -> list[Any]:
    store = Store()
    for obj in objs:
        store.put_job(obj)
    return decide_jobs(store, NOW, SETTINGS).actions


def creates(actions: list[Any]) -> dict[str, Obj]:
    return {a.body["metadata"]["labels"][LABEL_CHUNK]: a.body for a in actions if isinstance(a, CreateJob)}


def parent_patch(actions: list[Any]) -> Obj:
    (patch,) = [a for a in actions if isinstance(a, PatchStatus) and a.key == f"{NS}/film"]
    status: Obj = patch.status
    return status


def test_a_new_chunked_job_gets_a_plan_child_and_is_never_assigned_itself() -> None:
    actions = decide(parent())
    made = creates(actions)
    assert list(made) == ["plan"]
    body = made["plan"]
    assert body["metadata"]["name"] == "film-plan"
    assert body["metadata"]["labels"] == {LABEL_PARENT: "film", LABEL_CHUNK: "plan"}
    assert body["metadata"]["ownerReferences"][0] | {} == {
        "apiVersion": "ffmpeg-rtmp.io/v1alpha1", "kind": "TranscodeJob", "name": "film", "uid": "u-film",
        "controller": True,
    }  # fmt: skip
    spec = body["spec"]
    assert spec["chunkTask"] == {"parent": "film", "kind": "Plan", "chunkSeconds": 2}
    assert "chunking" not in spec and "ttlSecondsAfterFinished" not in spec
    assert (spec["priority"], spec["poolRef"]) == (5, {"name": "cpu"})
    TranscodeJob.model_validate(body)  # a valid TranscodeJob the API server would take
    status = parent_patch(actions)
    assert (status["phase"], status["chunks"]["summary"]) == ("Running", "planning")
    assert "worker" not in status


def test_the_plan_a_plan_child_found_is_stored_on_the_parent() -> None:
    status = parent_patch(decide(parent(), child("plan", "Succeeded", chunks={"plan": PLAN})))
    assert status["chunks"] == {
        "plan": PLAN, "total": 3, "succeeded": 0, "running": 0, "failed": 0, "summary": "0/3",
        "retried": 0, "retries": [],
    }  # fmt: skip


def test_chunks_and_audio_are_created_up_to_max_chunks_in_flight() -> None:
    made = creates(decide(parent({"plan": PLAN}, "Running", maxChunksInFlight=2), child("plan", "Succeeded")))
    assert sorted(made) == ["audio", "c00000", "c00001"]
    assert made["c00001"]["spec"]["chunkTask"] == {
        "parent": "film", "kind": "Video", "index": 1, "startMicros": 2_000_000, "endMicros": 4_000_000,
    }  # fmt: skip
    # one chunk done: one more may start; existing children are never created again
    later = decide(
        parent({"plan": PLAN}, "Running", maxChunksInFlight=2),
        child("plan", "Succeeded"), child("audio", "Running"), child("c00000", "Succeeded"), child("c00001", "Running"),
    )  # fmt: skip
    assert sorted(creates(later)) == ["c00002"]


def test_progress_and_counts_aggregate_the_chunks() -> None:
    actions = decide(
        parent({"plan": PLAN}, "Running"),
        child("plan", "Succeeded"), child("audio", "Running"), child("c00000", "Succeeded"),
        child("c00001", "Running", progress={"percent": 50.0}), child("c00002", "Queued"),
    )  # fmt: skip
    status = parent_patch(actions)
    assert status["chunks"]["summary"] == "1/3"
    assert (status["chunks"]["succeeded"], status["chunks"]["running"]) == (1, 1)
    assert status["progress"]["percent"] == pytest.approx(49.0)  # (100 + 50 + 0) / 3 of 98 %
    assert creates(actions) == {}


def test_stitch_follows_every_chunk_and_the_audio_then_the_parent_succeeds_with_its_outputs() -> None:
    done = [child(p, "Succeeded") for p in ("plan", "audio", "c00000", "c00001", "c00002")]
    made = creates(decide(parent({"plan": PLAN}, "Running"), *done))
    assert list(made) == ["stitch"]
    assert made["stitch"]["spec"]["chunkTask"] == {"parent": "film", "kind": "Stitch", "plan": PLAN}
    outputs = [{"name": "main", "path": "/out/media/film/main.mp4", "bytes": 10}]
    status = parent_patch(
        decide(parent({"plan": PLAN}, "Running"), *done, child("stitch", "Succeeded", outputs=outputs))
    )
    assert (status["phase"], status["outputs"], status["chunks"]["summary"]) == ("Succeeded", outputs, "3/3")


def test_a_failed_child_fails_the_parent_with_its_reason() -> None:
    failed = child("c00001", "Failed", reason="InvalidInput", message="attempt 4 failed: corrupt frame")
    status = parent_patch(decide(parent({"plan": PLAN}, "Running"), child("plan", "Succeeded"), failed))
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidInput")
    assert "c00001" in status["message"] and "corrupt frame" in status["message"]


@pytest.mark.parametrize("parent_obj", [None, parent(phase="Succeeded"), parent(phase="Failed")])
def test_children_of_a_finished_or_deleted_parent_are_deleted(parent_obj: Obj | None) -> None:
    objs = [child("c00000", "Running"), child("plan", "Succeeded")]
    actions = decide(*objs, *([parent_obj] if parent_obj else []))
    assert sorted(a.key for a in actions if isinstance(a, DeleteJob)) == [f"{NS}/film-c00000", f"{NS}/film-plan"]


def test_children_of_an_earlier_job_of_the_same_name_are_deleted_not_adopted() -> None:
    actions = decide(parent(), child("plan", "Succeeded", owner="u-old", chunks={"plan": PLAN}))
    assert [a.key for a in actions if isinstance(a, DeleteJob)] == [f"{NS}/film-plan"]


def test_timeout_seconds_bounds_the_whole_chunked_job() -> None:
    job = parent({"plan": PLAN}, "Running")
    job["spec"]["timeoutSeconds"] = 60
    job["status"]["startTime"] = "1970-01-12T13:28:20Z"  # NOW - 1100 s
    actions = decide(job, child("plan", "Succeeded"), child("c00000", "Running"))
    (patch,) = [a for a in actions if isinstance(a, PatchStatus) and a.key == f"{NS}/film"]
    assert (patch.status["phase"], patch.status["reason"]) == ("Failed", "DeadlineExceeded")
    assert patch.event is not None and patch.event.reason == "DeadlineExceeded"
    job["spec"]["timeoutSeconds"] = 3600
    store = Store()
    for obj in (job, child("plan", "Succeeded"), child("c00000", "Running")):
        store.put_job(obj)
    decisions = decide_jobs(store, NOW, SETTINGS)
    assert decisions.wake_at == pytest.approx(NOW - 1100 + 3600)
    assert parent_patch(decisions.actions)["phase"] == "Running"


def test_the_parent_tells_its_steps_in_events() -> None:
    planned = decide(parent(), child("plan", "Succeeded", chunks={"plan": PLAN}))
    (patch,) = [a for a in planned if isinstance(a, PatchStatus)]
    assert patch.event is not None and (patch.event.reason, patch.event.message) == (
        "Planned", "planned 3 chunks of about 2 s",
    )  # fmt: skip


# --- suspend ------------------------------------------------------------------------------------


def suspended(job: Obj) -> Obj:
    job["spec"]["suspend"] = True
    return job


def test_a_chunked_job_created_suspended_creates_nothing_and_is_pending() -> None:
    actions = decide(suspended(parent()))
    assert creates(actions) == {}
    (patch,) = [a for a in actions if isinstance(a, PatchStatus)]
    assert patch.status["phase"] == "Pending"
    assert conditions(patch.status)["Suspended"] == ("True", "JobSuspended")
    assert patch.event is not None and patch.event.reason == "Suspended"


def test_suspending_mid_run_holds_what_has_not_started_and_lets_started_chunks_finish() -> None:
    job = suspended(parent({"plan": PLAN}, "Running", maxChunksInFlight=2))
    job["status"]["startTime"] = "1970-01-12T13:40:00Z"
    running, queued = child("c00000", "Running", worker="cpu-a", attempt=1), child("c00001", "Queued")
    objs = [job, child("plan", "Succeeded"), running, queued, pool_obj(slots=4), *worker()]
    actions = decide_jobs(store_of(*objs), LEASE_NOW, SETTINGS).actions
    assert creates(actions) == {}  # neither the audio nor the next chunk
    status = parent_patch(actions)
    assert status["phase"] == "Pending" and status["startTime"] is None
    assert status["message"] == "suspended: spec.suspend is true; 1 task(s) already started finish, nothing new starts"
    assert status["chunks"]["plan"] == PLAN and status["chunks"]["running"] == 1
    patches = {a.key: a for a in actions if isinstance(a, PatchStatus)}
    assert f"{NS}/film-c00000" not in patches  # the running chunk is left alone: it finishes
    held = patches[f"{NS}/film-c00001"].status
    assert held["phase"] == "Pending"
    assert conditions(held)["Suspended"] == ("True", "ParentSuspended")
    assert "its chunked parent film is suspended" in held["message"]


def test_a_child_waiting_for_a_slot_is_not_assigned_while_its_parent_is_suspended() -> None:
    job = suspended(parent({"plan": PLAN}, "Running"))
    objs = [job, child("plan", "Succeeded"), child("c00000", "Queued"), pool_obj(slots=4), *worker()]
    actions = decide_jobs(store_of(*objs), LEASE_NOW, SETTINGS).actions
    assigned = [a.key for a in actions if isinstance(a, PatchStatus) and a.status.get("phase") == "Scheduled"]
    assert assigned == []
    job["spec"]["suspend"] = False  # the same store unsuspended: the chunk gets the free slot
    actions = decide_jobs(store_of(*objs), LEASE_NOW, SETTINGS).actions
    assigned = [a.key for a in actions if isinstance(a, PatchStatus) and a.status.get("phase") == "Scheduled"]
    assert assigned == [f"{NS}/film-c00000"]


def with_suspended_condition(job: Obj, reason: str = "JobSuspended") -> Obj:
    job["status"]["conditions"] = [
        {
            "type": "Suspended",
            "status": "True",
            "reason": reason,
            "message": "",
            "lastTransitionTime": "1970-01-12T13:40:00Z",
        }
    ]
    return job


def test_unsuspending_continues_where_it_was() -> None:
    job = with_suspended_condition(parent({"plan": PLAN}, "Pending", maxChunksInFlight=2))
    held = with_suspended_condition(child("c00001", "Pending"), "ParentSuspended")
    actions = decide(job, child("plan", "Succeeded"), child("c00000", "Succeeded"), held)
    assert sorted(creates(actions)) == ["audio", "c00002"]  # c00001 exists: one more fits maxChunksInFlight 2
    patches = {a.key: a for a in actions if isinstance(a, PatchStatus)}
    resumed = patches[f"{NS}/film"]
    assert resumed.status["phase"] == "Running" and resumed.status["startTime"]
    assert conditions(resumed.status)["Suspended"] == ("False", "JobResumed")
    assert resumed.event is not None and resumed.event.reason == "Resumed"
    requeued = patches[f"{NS}/film-c00001"].status
    assert requeued["phase"] == "Queued" and conditions(requeued)["Suspended"][0] == "False"


def test_a_suspended_parent_still_finishes_when_its_started_stitch_succeeds_or_a_chunk_fails() -> None:
    done = [child(p, "Succeeded") for p in ("plan", "audio", "c00000", "c00001", "c00002")]
    outputs = [{"name": "main", "path": "/out/media/film/main.mp4", "bytes": 10}]
    stitched = child("stitch", "Succeeded", outputs=outputs)
    status = parent_patch(
        decide(with_suspended_condition(suspended(parent({"plan": PLAN}, "Pending"))), *done, stitched)
    )
    assert status["phase"] == "Succeeded"
    assert conditions(status)["Suspended"] == ("False", "Completed")
    failed = child("c00001", "Failed", reason="InvalidInput", message="corrupt")
    status = parent_patch(decide(suspended(parent({"plan": PLAN}, "Pending")), child("plan", "Succeeded"), failed))
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidInput")


def test_a_plan_found_while_suspended_is_stored_and_nothing_more_starts() -> None:
    job = with_suspended_condition(suspended(parent(phase="Pending")))
    actions = decide(job, child("plan", "Succeeded", chunks={"plan": PLAN}))
    assert creates(actions) == {}
    status = parent_patch(actions)
    assert (status["phase"], status["chunks"]["plan"], status["chunks"]["summary"]) == ("Pending", PLAN, "0/3")


def test_children_never_carry_the_parents_suspend() -> None:
    job = parent()
    job["spec"]["suspend"] = False
    assert "suspend" not in creates(decide(job))["plan"]["spec"]


PHASES = [None, "Pending", "Queued", "Scheduled", "Running", "Succeeded"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(PHASES), min_size=3, max_size=3), st.sampled_from([None, "Running", "Succeeded"]))
def test_a_suspended_parent_never_starts_anything_and_never_stops_a_started_task(
    chunk_phases: list[str | None], audio: str | None
) -> None:
    job = suspended(parent({"plan": PLAN}, "Running"))
    children = [child(f"c{i:05d}", p, worker="cpu-a", attempt=1) for i, p in enumerate(chunk_phases) if p]
    children += [child("plan", "Succeeded"), *([child("audio", audio, worker="cpu-a")] if audio else [])]
    objs = [job, *children, pool_obj(slots=8), *worker()]
    actions = decide_jobs(store_of(*objs), LEASE_NOW, SETTINGS).actions
    assert not [a for a in actions if isinstance(a, CreateJob | DeleteJob)]
    started = {f"{NS}/{c['metadata']['name']}" for c in children if c["status"]["phase"] in ("Scheduled", "Running")}
    for a in actions:
        if isinstance(a, PatchStatus) and a.key != f"{NS}/film":
            assert a.key not in started, a  # a started task is never touched: it finishes
            assert a.status["phase"] == "Pending", a  # a waiting one is held, never assigned


# --- a compact parent status --------------------------------------------------------------------


def two_hour_plan() -> str:
    """2 h of 29.97 fps video with a keyframe every 2.002 s, in 10 s chunks: 720 chunks of 10.01 s."""
    keyframes = [i * 2_002_000 for i in range(3600)]
    return encode_boundaries(plan_chunks(720 * 10_010_000, 10, keyframes))


def test_the_parent_status_stays_small_at_720_chunks_each_retried() -> None:
    plan = two_hour_plan()
    assert plan.count(",") == 720
    every_chunk = [
        child(f"c{i:05d}", "Succeeded", attempt=2 + i % 3, failed=i % 2, reason="WorkerLost" if i % 2 == 0 else None)
        for i in range(720)
    ]
    done = [child(p, "Succeeded") for p in ("plan", "audio")]
    status = parent_patch(decide(parent({"plan": plan}, "Running"), *done, *every_chunk))
    chunks = status["chunks"]
    assert (chunks["summary"], chunks["retried"], len(chunks["retries"])) == ("720/720", 720, RETRIES_SHOWN)
    assert [r["attempts"] for r in chunks["retries"]] == [4] * RETRIES_SHOWN  # the most attempts first
    assert chunks["retries"][:2] == [  # then the most failures, then by name
        {"part": "c00005", "attempts": 4, "failures": 1},
        {"part": "c00011", "attempts": 4, "failures": 1},
    ]
    ChunksStatus.model_validate(chunks)  # within the CRD's bounds
    plan_bytes = len(plan)
    status_bytes = len(json.dumps(chunks, separators=(",", ":")))
    print(f"720 chunks: plan {plan_bytes} bytes, status.chunks {status_bytes} bytes")
    assert plan_bytes < 9_000 and status_bytes < 10_500, (plan_bytes, status_bytes)


def test_a_retry_record_tells_the_last_reason_known() -> None:
    lost = child("c00000", "Queued", attempt=1, reason="WorkerLost")  # requeued, not yet assigned again
    result = {"attempt": 2, "worker": "cpu-a", "outcome": "Failed", "reason": "FfmpegError", "retryable": True}
    failed_once = child("c00001", "Running", attempt=3, failed=1, result=result)
    fine = child("c00002", "Running", attempt=1)
    actions = decide(parent({"plan": PLAN}, "Running"), child("plan", "Succeeded"), lost, failed_once, fine)
    chunks = parent_patch(actions)["chunks"]
    assert chunks["retried"] == 2
    assert chunks["retries"] == [
        {"part": "c00001", "attempts": 3, "failures": 1, "reason": "FfmpegError"},
        {"part": "c00000", "attempts": 1, "failures": 0, "reason": "WorkerLost"},
    ]


def test_a_plan_too_long_to_store_is_refused_with_what_to_change() -> None:
    assert ChunksStatus.model_fields["plan"].metadata[0].max_length == MAX_PLAN_CHARS
    assert plan_too_long(two_hour_plan(), 10) is None
    four_hours = encode_boundaries(plan_chunks(4 * 3600 * 1_000_000, 2))
    reason = plan_too_long(four_hours, 2)
    assert reason is not None and "7200 chunks of 2 s" in reason and "chunkSeconds" in reason
