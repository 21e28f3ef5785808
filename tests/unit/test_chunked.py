"""Chunked jobs: the parent's steps decided over a store of parent and children."""

from __future__ import annotations

from typing import Any

import pytest

from ffrtmp.api.constants import LABEL_CHUNK, LABEL_PARENT
from ffrtmp.api.job import TranscodeJob
from ffrtmp.controller.chunked import CreateJob
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
    assert status["chunks"] == {"plan": PLAN, "total": 3, "succeeded": 0, "running": 0, "failed": 0, "summary": "0/3"}


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
