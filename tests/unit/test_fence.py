"""Fenced status writes of a worker: ownership, and the retry logic of FencedStatus.patch on a stub client."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ffrtmp.kube.client import ApiError
from ffrtmp.worker.fence import FencedStatus, Superseded, owns

pytestmark = pytest.mark.unit

Obj = dict[str, Any]
PATH = "/apis/ffmpeg-rtmp.io/v1alpha1/namespaces/media/transcodejobs/job"


def job(rv: int, *, worker: str | None = "cpu-a", attempt: int | None = 2, phase: str | None = "Running") -> Obj:
    status: Obj = {}
    for key, value in (("worker", worker), ("attempt", attempt), ("phase", phase)):
        if value is not None:
            status[key] = value
    return {
        "apiVersion": "ffmpeg-rtmp.io/v1alpha1",
        "kind": "TranscodeJob",
        "metadata": {"name": "job", "namespace": "media", "uid": "uid-1", "resourceVersion": str(rv)},
        "status": status,
    }


def conflict() -> ApiError:
    return ApiError(
        409, "Conflict", 'Operation cannot be fulfilled on transcodejobs "job": the object has been modified'
    )


def not_found() -> ApiError:
    return ApiError(404, "NotFound", 'transcodejobs "job" not found')


class StubClient:
    """merge_patch and get answer from scripts: an object is returned, an exception raised."""

    def __init__(self, patches: list[Obj | Exception], gets: list[Obj | Exception] | None = None) -> None:
        self.patch_script = list(patches)
        self.get_script = list(gets or [])
        self.patch_calls: list[tuple[str, Obj]] = []
        self.get_calls: list[str] = []

    async def merge_patch(self, path: str, body: Obj) -> Obj:
        self.patch_calls.append((path, copy.deepcopy(body)))
        return self._answer(self.patch_script.pop(0))

    async def get(self, path: str) -> Obj:
        self.get_calls.append(path)
        return self._answer(self.get_script.pop(0))

    @staticmethod
    def _answer(item: Obj | Exception) -> Obj:
        if isinstance(item, Exception):
            raise item
        return item

    def sent_versions(self) -> list[str]:
        return [body["metadata"]["resourceVersion"] for _, body in self.patch_calls]


def fence(client: StubClient, obj: Obj, worker: str = "cpu-a", attempt: int = 2) -> FencedStatus:
    return FencedStatus(client, obj, worker, attempt)  # type: ignore[arg-type]


STATUS = {"phase": "Running", "progress": {"percent": 42.0}}


# --- owns -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        (job(1), None),
        (job(1, phase="Scheduled"), None),
        (job(1, worker="cpu-b"), "reassigned to cpu-b"),
        (job(1, worker=None, phase="Queued"), "reassigned to no worker"),
        (job(1, attempt=3), "attempt 2 superseded by attempt 3"),
        (job(1, attempt=None), "attempt 2 superseded by attempt None"),
        (job(1, phase="Succeeded"), "job is Succeeded"),
        (job(1, phase="Failed"), "job is Failed"),
        (job(1, phase="Cancelled"), "job is Cancelled"),
        (job(1, phase="Pending"), "job is Pending"),  # suspended: the operator cleared nothing else yet
        (job(1, phase="Queued"), "job is Queued"),
        ({"metadata": {"name": "job"}}, "reassigned to no worker"),
    ],
)
def test_owns(obj: Obj, why: str | None) -> None:
    assert owns(obj, "cpu-a", 2) == why


# --- FencedStatus.patch ---------------------------------------------------------------------------


async def test_a_patch_carries_the_resource_version_and_returns_the_new_object() -> None:
    client = StubClient([job(11)])
    f = fence(client, job(10))
    assert await f.patch(STATUS) == job(11)
    assert client.patch_calls == [(PATH + "/status", {"metadata": {"resourceVersion": "10"}, "status": STATUS})]
    assert f.writes == 1
    # The next write is fenced on what the last one returned.
    client.patch_script.append(job(12))
    await f.patch(STATUS)
    assert client.sent_versions() == ["10", "11"]
    assert client.get_calls == []
    assert f.writes == 2


async def test_a_conflict_while_the_attempt_is_still_ours_is_retried_on_the_newer_version() -> None:
    client = StubClient([conflict(), conflict(), job(14)], gets=[job(12), job(13)])
    f = fence(client, job(10))
    assert await f.patch(STATUS) == job(14)
    assert client.sent_versions() == ["10", "12", "13"]
    assert client.get_calls == [PATH, PATH]
    assert all(body["status"] == STATUS for _, body in client.patch_calls)
    assert f.writes == 1
    assert f.obj == job(14)


@pytest.mark.parametrize(
    ("newer", "why"),
    [
        (job(12, worker="cpu-b", attempt=3, phase="Scheduled"), "reassigned to cpu-b"),
        (job(12, attempt=3), "attempt 2 superseded by attempt 3"),
        (job(12, phase="Succeeded"), "job is Succeeded"),
        (job(12, phase="Failed"), "job is Failed"),
        (job(12, phase="Cancelled"), "job is Cancelled"),
        (job(12, worker=None, phase="Pending"), "reassigned to no worker"),
    ],
)
async def test_a_conflict_that_shows_another_owner_or_the_end_raises_superseded(newer: Obj, why: str) -> None:
    client = StubClient([conflict()], gets=[newer])
    f = fence(client, job(10))
    with pytest.raises(Superseded, match=why):
        await f.patch(STATUS)
    assert len(client.patch_calls) == 1  # never written over the newer attempt
    assert f.writes == 0


async def test_a_deleted_job_raises_superseded_on_patch() -> None:
    client = StubClient([not_found()])
    with pytest.raises(Superseded, match="job was deleted") as info:
        await fence(client, job(10)).patch(STATUS)
    assert isinstance(info.value.__cause__, ApiError)
    assert client.get_calls == []


async def test_a_job_deleted_after_a_conflict_raises_superseded_on_the_re_read() -> None:
    client = StubClient([conflict()], gets=[not_found()])
    with pytest.raises(Superseded, match="job was deleted"):
        await fence(client, job(10)).patch(STATUS)


async def test_a_job_that_is_no_longer_ours_is_not_written_at_all() -> None:
    client = StubClient([])
    with pytest.raises(Superseded, match="job is Failed"):
        await fence(client, job(10, phase="Failed")).patch(STATUS)
    assert client.patch_calls == []


@pytest.mark.parametrize("where", ["patch", "get"])
async def test_other_api_errors_propagate(where: str) -> None:
    error = ApiError(500, "InternalError", "etcdserver: request timed out")
    client = StubClient([error] if where == "patch" else [conflict()], gets=[error])
    with pytest.raises(ApiError) as info:
        await fence(client, job(10)).patch(STATUS)
    assert info.value.status == 500


async def test_endless_conflicts_give_up_after_the_attempts_with_a_409() -> None:
    client = StubClient([conflict()] * 3, gets=[job(11), job(12), job(13)])
    f = fence(client, job(10))
    with pytest.raises(ApiError) as info:
        await f.patch(STATUS, attempts=3)
    assert info.value.conflict
    assert client.sent_versions() == ["10", "11", "12"]
    assert f.writes == 0


def test_observe_keeps_the_newest_version_only() -> None:
    f = fence(StubClient([]), job(10))
    f.observe(job(9, phase="Succeeded"))
    assert f.obj["metadata"]["resourceVersion"] == "10"
    f.observe(job(100))  # numerically newer, not by string order
    assert f.obj["metadata"]["resourceVersion"] == "100"
    f.check()
    f.observe(job(101, attempt=3))
    with pytest.raises(Superseded):
        f.check()


def test_conditions_come_from_the_last_seen_object() -> None:
    obj = job(10)
    obj["status"]["conditions"] = [{"type": "Running", "status": "True"}]
    f = fence(StubClient([]), obj)
    assert f.conditions == [{"type": "Running", "status": "True"}]
    assert fence(StubClient([]), job(10)).conditions == []
