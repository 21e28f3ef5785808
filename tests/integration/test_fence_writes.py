"""A worker's two kinds of status write on a real API server: progress as a merge patch (FencedStatus.patch),
everything else as a PUT of /status with the status merged locally (FencedStatus.update). The same writes
through either verb must leave the same status, and an update must be fenced exactly as a patch is: a
real 409 on a stale resourceVersion, a re-read, a retry while the attempt is ours, Superseded otherwise."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ffrtmp.api.constants import GROUP, JOB_PLURAL, VERSION
from ffrtmp.conditions import now_iso
from ffrtmp.kube import KubeClient, load_config
from ffrtmp.kube.client import resource_path
from ffrtmp.worker.fence import FencedStatus, Superseded
from helpers import TestCluster, transcode_job

pytestmark = pytest.mark.integration
Obj = dict[str, Any]
WORKER = "w-0"


@pytest.fixture
async def client(cluster: TestCluster) -> AsyncIterator[KubeClient]:
    async with KubeClient(load_config(str(cluster.kubeconfig)), component="ffrtmp-worker") as c:
        yield c


async def _assigned(client: KubeClient, cluster: TestCluster, namespace: str, name: str) -> Obj:
    """A job as the operator leaves it for a worker: Scheduled on WORKER, attempt 1."""
    cluster.apply(transcode_job(name, "/media/in.mp4"), namespace)
    path = resource_path(GROUP, VERSION, JOB_PLURAL, namespace, name)
    assigned = {"phase": "Scheduled", "worker": WORKER, "attempt": 1, "pool": "cpu", "reason": "Assigned"}
    return await client.merge_patch(path + "/status", {"status": assigned})


def _writes() -> list[Obj]:
    """What an attempt writes, in order: Running, progress, a restart, the result (with nulls that delete)."""
    now = now_iso(time.time())
    running = [{"type": "Running", "status": "True", "reason": "Started", "message": "w-0",
                "lastTransitionTime": now}]  # fmt: skip
    done = [{"type": "Running", "status": "False", "reason": "Completed", "message": "1 output",
             "lastTransitionTime": now},
            {"type": "Complete", "status": "True", "reason": "Completed", "message": "1 output",
             "lastTransitionTime": now}]  # fmt: skip
    return [
        {"phase": "Running", "startTime": now, "heartbeatTime": now, "progress": {"percent": 0.0},
         "reason": None, "message": "attempt 1 on w-0", "conditions": running},
        {"progress": {"percent": 42.5, "fps": 25.0, "speed": 1.5, "outTimeSeconds": 4.2, "totalBytes": 1000},
         "heartbeatTime": now},
        {"restarts": 1, "message": "live input lost; restart 1 in 2s"},
        {"phase": "Succeeded", "completionTime": now, "progress": {"percent": 100.0, "fps": None, "speed": None},
         "outputs": [{"name": "out", "path": "/output/out.mp4", "bytes": 1234, "codec": "h264"}],
         "restarts": None, "message": "1 output(s) written by w-0", "reason": None,
         "result": {"attempt": 1, "worker": WORKER, "outcome": "Succeeded", "finishTime": now},
         "conditions": done},
    ]  # fmt: skip


async def test_patch_and_update_write_the_same_status(client: KubeClient, cluster: TestCluster, namespace: str) -> None:
    by_patch = FencedStatus(client, await _assigned(client, cluster, namespace, "by-patch"), WORKER, 1)
    by_update = FencedStatus(client, await _assigned(client, cluster, namespace, "by-update"), WORKER, 1)
    for step, status in enumerate(_writes()):
        patched = await by_patch.patch(status)
        updated = await by_update.update(status)
        assert updated["status"] == patched["status"], f"write {step}: {status}"
    final = updated["status"]
    assert final["phase"] == "Succeeded" and final["progress"] == {"percent": 100.0, "outTimeSeconds": 4.2,
                                                                   "totalBytes": 1000}  # fmt: skip
    assert "restarts" not in final and "reason" not in final
    assert final["worker"] == WORKER and final["attempt"] == 1 and final["pool"] == "cpu"
    # The update left the rest of the object alone, and the server kept its managedFields: the
    # creator's entry and the status writes' entry of this client's field manager.
    assert updated["spec"] == patched["spec"]
    managers = {(m["manager"], m["operation"], m.get("subresource", "")) for m in updated["metadata"]["managedFields"]}
    assert ("ffrtmp-worker", "Update", "status") in managers
    assert any(sub == "" for _, _, sub in managers), managers


async def test_a_stale_update_is_retried_while_the_attempt_is_ours(
    client: KubeClient, cluster: TestCluster, namespace: str
) -> None:
    obj = await _assigned(client, cluster, namespace, "stale")
    fence = FencedStatus(client, obj, WORKER, 1)
    # The operator writes meanwhile (the worker does not see it): the update meets a real 409.
    await client.merge_patch(fence.path + "/status", {"status": {"phase": "Running", "message": "by the operator"}})
    result = {"attempt": 1, "worker": WORKER, "outcome": "Failed", "reason": "FfmpegError"}
    written = await fence.update({"phase": "Failed", "result": result})
    assert written["status"]["phase"] == "Failed" and written["status"]["result"] == result
    assert written["status"]["message"] == "by the operator", "the retry wrote onto the re-read version"
    assert fence.writes == 1


@pytest.mark.parametrize(
    ("meanwhile", "why"),
    [
        ({"worker": "w-1", "attempt": 2, "phase": "Scheduled"}, "reassigned to w-1"),
        ({"phase": "Cancelled"}, "job is Cancelled"),
        (None, "job was deleted"),
    ],
)
async def test_a_stale_update_over_a_newer_attempt_is_superseded_and_writes_nothing(
    client: KubeClient, cluster: TestCluster, namespace: str, meanwhile: Obj | None, why: str
) -> None:
    obj = await _assigned(client, cluster, namespace, "late")
    fence = FencedStatus(client, obj, WORKER, 1)
    if meanwhile is None:
        await client.delete(fence.path)
    else:
        await client.merge_patch(fence.path + "/status", {"status": meanwhile})
    before = None if meanwhile is None else await client.get(fence.path)
    result = {"attempt": 1, "worker": WORKER, "outcome": "Succeeded"}
    with pytest.raises(Superseded, match=why):
        await fence.update({"phase": "Succeeded", "result": result})
    if before is not None:
        assert await client.get(fence.path) == before
    assert fence.writes == 0
