"""Fenced status writes of a worker: ownership, the retry logic of FencedStatus.patch (progress) and
FencedStatus.update (everything else) on a stub client, and the local merge an update sends.
tests/integration/test_fence_writes.py checks on a real API server that both verbs write the same."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ffrtmp.kube.client import ApiError, merge_patched
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
    """merge_patch/replace and get answer from scripts: an object is returned, an exception raised. Both
    write verbs share one script; `calls` records (verb, path, body) of each write."""

    def __init__(self, writes: list[Obj | Exception], gets: list[Obj | Exception] | None = None) -> None:
        self.write_script = list(writes)
        self.get_script = list(gets or [])
        self.calls: list[tuple[str, str, Obj]] = []
        self.get_calls: list[str] = []

    async def merge_patch(self, path: str, body: Obj) -> Obj:
        self.calls.append(("patch", path, copy.deepcopy(body)))
        return self._answer(self.write_script.pop(0))

    async def replace(self, path: str, body: Obj) -> Obj:
        self.calls.append(("update", path, copy.deepcopy(body)))
        return self._answer(self.write_script.pop(0))

    async def get(self, path: str) -> Obj:
        self.get_calls.append(path)
        return self._answer(self.get_script.pop(0))

    @staticmethod
    def _answer(item: Obj | Exception) -> Obj:
        if isinstance(item, Exception):
            raise item
        return item

    def sent_versions(self) -> list[str]:
        return [body["metadata"]["resourceVersion"] for _, _, body in self.calls]

    def verbs(self) -> list[str]:
        return [verb for verb, _, _ in self.calls]


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


# --- FencedStatus.patch and .update ---------------------------------------------------------------

VERBS = ["patch", "update"]


async def write(f: FencedStatus, verb: str, status: Obj, **kwargs: Any) -> Obj:
    return await (f.patch if verb == "patch" else f.update)(status, **kwargs)


def sent_status(verb: str, body: Obj, before: Obj) -> Obj:
    """The status a write leaves on the server: a patch's is merged there, an update's is the body's."""
    return merge_patched(before.get("status") or {}, body["status"]) if verb == "patch" else body["status"]


async def test_a_patch_carries_the_resource_version_and_returns_the_new_object() -> None:
    client = StubClient([job(11)])
    f = fence(client, job(10))
    assert await f.patch(STATUS) == job(11)
    assert client.calls == [("patch", PATH + "/status", {"metadata": {"resourceVersion": "10"}, "status": STATUS})]
    assert f.writes == 1
    # The next write is fenced on what the last one returned.
    client.write_script.append(job(12))
    await f.patch(STATUS)
    assert client.sent_versions() == ["10", "11"]
    assert client.get_calls == []
    assert f.writes == 2


async def test_an_update_puts_the_last_seen_object_with_its_status_merged() -> None:
    seen = job(10)
    seen["metadata"]["managedFields"] = [{"manager": "ffrtmp-operator", "operation": "Update"}]
    seen["metadata"]["labels"] = {"team": "media"}
    seen["spec"] = {"input": {"uri": "/media/in.mp4"}}
    seen["status"].update(progress={"percent": 42.0, "fps": 25.0}, restarts=1, outputs=[{"name": "a"}, {"name": "b"}])
    before = copy.deepcopy(seen)
    client = StubClient([job(11)])
    f = fence(client, seen)
    change = {"phase": "Succeeded", "progress": {"percent": 100.0}, "restarts": None, "outputs": [{"name": "c"}]}
    assert await f.update(change) == job(11)
    ((verb, path, body),) = client.calls
    assert (verb, path) == ("update", PATH + "/status")
    assert body["status"] == {
        "worker": "cpu-a", "attempt": 2, "phase": "Succeeded",
        "progress": {"percent": 100.0, "fps": 25.0},  # merged: fps kept
        "outputs": [{"name": "c"}],  # a list is replaced, not merged
    }  # fmt: skip
    # Everything else as last seen, resourceVersion included (the fence); managedFields left to the server.
    assert {k: v for k, v in body.items() if k != "status"} == {
        **{k: v for k, v in before.items() if k != "status"},
        "metadata": {k: v for k, v in before["metadata"].items() if k != "managedFields"},
    }
    assert body["metadata"]["resourceVersion"] == "10"
    assert seen == before, "the last seen object itself is left as it was"
    assert f.obj == job(11) and f.writes == 1


async def test_progress_is_a_patch_and_every_other_write_an_update() -> None:
    """The verb is what the API server's priority and fairness sees (charts/.../flowcontrol.yaml)."""
    client = StubClient([job(11), job(12), job(13)])
    f = fence(client, job(10))
    await f.update({"phase": "Running"})
    await f.patch({"progress": {"percent": 1.0}})
    await f.update_until({"result": {"outcome": "Succeeded"}})
    assert client.verbs() == ["update", "patch", "update"]


@pytest.mark.parametrize("verb", VERBS)
async def test_a_conflict_while_the_attempt_is_still_ours_is_retried_on_the_newer_version(verb: str) -> None:
    newer = [job(12), job(13)]
    newer[1]["status"]["message"] = "written by the operator meanwhile"
    client = StubClient([conflict(), conflict(), job(14)], gets=copy.deepcopy(newer))
    f = fence(client, job(10))
    assert await write(f, verb, STATUS) == job(14)
    assert client.sent_versions() == ["10", "12", "13"]
    assert client.verbs() == [verb] * 3
    assert client.get_calls == [PATH, PATH]
    # Each retry writes the same change onto the version it was re-read as: the operator's message stays.
    before = [job(10), *newer]
    for (_, _, body), base in zip(client.calls, before, strict=True):
        assert sent_status(verb, body, base) == merge_patched(base["status"], STATUS)
    assert sent_status(verb, client.calls[2][2], newer[1])["message"] == "written by the operator meanwhile"
    assert f.writes == 1
    assert f.obj == job(14)


@pytest.mark.parametrize("verb", VERBS)
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
async def test_a_conflict_that_shows_another_owner_or_the_end_raises_superseded(
    verb: str, newer: Obj, why: str
) -> None:
    client = StubClient([conflict()], gets=[newer])
    f = fence(client, job(10))
    with pytest.raises(Superseded, match=why):
        await write(f, verb, STATUS)
    assert len(client.calls) == 1  # never written over the newer attempt
    assert f.writes == 0


@pytest.mark.parametrize("verb", VERBS)
async def test_a_deleted_job_raises_superseded_on_write(verb: str) -> None:
    client = StubClient([not_found()])
    with pytest.raises(Superseded, match="job was deleted") as info:
        await write(fence(client, job(10)), verb, STATUS)
    assert isinstance(info.value.__cause__, ApiError)
    assert client.get_calls == []


@pytest.mark.parametrize("verb", VERBS)
async def test_a_job_deleted_after_a_conflict_raises_superseded_on_the_re_read(verb: str) -> None:
    client = StubClient([conflict()], gets=[not_found()])
    with pytest.raises(Superseded, match="job was deleted"):
        await write(fence(client, job(10)), verb, STATUS)


@pytest.mark.parametrize("verb", VERBS)
async def test_a_job_that_is_no_longer_ours_is_not_written_at_all(verb: str) -> None:
    client = StubClient([])
    with pytest.raises(Superseded, match="job is Failed"):
        await write(fence(client, job(10, phase="Failed")), verb, STATUS)
    assert client.calls == []


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("where", ["write", "get"])
async def test_other_api_errors_propagate(verb: str, where: str) -> None:
    error = ApiError(500, "InternalError", "etcdserver: request timed out")
    client = StubClient([error] if where == "write" else [conflict()], gets=[error])
    with pytest.raises(ApiError) as info:
        await write(fence(client, job(10)), verb, STATUS)
    assert info.value.status == 500


@pytest.mark.parametrize("verb", VERBS)
async def test_endless_conflicts_give_up_after_the_attempts_with_a_409(verb: str) -> None:
    client = StubClient([conflict()] * 3, gets=[job(11), job(12), job(13)])
    f = fence(client, job(10))
    with pytest.raises(ApiError) as info:
        await write(f, verb, STATUS, attempts=3)
    assert info.value.conflict
    assert client.sent_versions() == ["10", "11", "12"]
    assert f.writes == 0


async def test_update_until_retries_through_an_outage_and_stops_at_a_refusal() -> None:
    down = ConnectionRefusedError(111, "Connect call failed")
    client = StubClient([down, ApiError(503, "ServiceUnavailable", "etcd"), job(11)])
    f = fence(client, job(10))
    assert await f.update_until(STATUS, seconds=30) == job(11)
    assert client.verbs() == ["update"] * 3 and client.sent_versions() == ["10"] * 3
    forbidden = ApiError(403, "Forbidden", "denied by the worker identity policy")
    client = StubClient([forbidden])
    with pytest.raises(ApiError, match="Forbidden"):
        await fence(client, job(10)).update_until(STATUS, seconds=30)
    assert len(client.calls) == 1


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
