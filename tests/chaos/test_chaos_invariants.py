"""The invariant checker catches what it claims to: each breach is staged on a fake farm (job status,
Events, worker logs, files) and must be reported; a clean run must pass. No cluster needed."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import invariants
import pytest

pytestmark = pytest.mark.chaos
NS = "ns"


@dataclass
class FakeCluster:
    events: list[dict[str, Any]] = field(default_factory=list)

    def kubectl(self, *args: str, **_: Any) -> SimpleNamespace:
        assert args[:2] == ("get", "events")
        return SimpleNamespace(stdout=json.dumps({"items": self.events}))

    def list(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        return [{"metadata": {"name": "cpu"}, "status": {"freeSlots": 1}}]


@dataclass
class FakeFarm:
    root: Path
    job_list: list[dict[str, Any]] = field(default_factory=list)
    cluster: FakeCluster = field(default_factory=FakeCluster)
    namespace: str = NS

    @property
    def output(self) -> Path:
        return self.root / "output"

    def jobs(self) -> list[dict[str, Any]]:
        return self.job_list

    def log(self, worker: str, *lines: str) -> None:
        path = self.root / "workers" / f"{worker}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write("2026-01-01 10:00:00,000 INFO ffrtmp.worker.agent: encoder self-test: ok\n")
            for i, line in enumerate(lines):
                f.write(f"2026-01-01 10:00:0{i + 1},000 INFO ffrtmp.worker.agent: {line}\n")

    def scheduled(self, job: str, attempt: int, worker: str) -> None:
        self.cluster.events.append({
            "involvedObject": {"name": job}, "type": "Normal", "reason": "Scheduled",
            "message": f"attempt {attempt}: assigned to worker {worker} on node n",
        })  # fmt: skip

    def succeeded(self, job: str, attempt: int, worker: str, clip: Path) -> None:
        out = self.output / NS / job / "out.mp4"
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clip, out)
        self.job_list.append({
            "metadata": {"name": job},
            "status": {
                "phase": "Succeeded", "attempt": attempt, "worker": worker, "outputs": [{"path": str(out)}],
                "result": {"attempt": attempt, "worker": worker, "outcome": "Succeeded"},
            },
        })  # fmt: skip


def _clean(tmp_path: Path, clip: Path) -> FakeFarm:
    farm = FakeFarm(tmp_path)
    farm.scheduled("j", 1, "w1")
    farm.log("w1", "started j attempt 1", "attempt j/1 ended: Succeeded")
    farm.succeeded("j", 1, "w1", clip)
    return farm


def test_a_clean_run_passes(tmp_path: Path, clips: dict[str, Path]) -> None:
    found = invariants.check(_clean(tmp_path, clips["one"]))
    assert (found.jobs, found.succeeded, found.lost, found.twice) == (1, 1, [], [])


def _run_twice(farm: FakeFarm) -> None:
    farm.scheduled("j", 2, "w2")
    farm.log("w2", "started j attempt 2", "attempt j/2 ended: Succeeded")
    farm.job_list[0]["status"].update(
        attempt=2, worker="w2", result={"attempt": 2, "worker": "w2", "outcome": "Succeeded"}
    )


def _stale_result(farm: FakeFarm) -> None:
    farm.job_list[0]["status"]["attempt"] = 2


def _unassigned_worker(farm: FakeFarm) -> None:
    farm.log("w9", "started j attempt 1", "attempt j/1 ended: Superseded")


def _leftover(farm: FakeFarm) -> None:
    (farm.output / NS / "j" / ".attempt-1-w1").mkdir()


def _failed_with_files(farm: FakeFarm) -> None:
    farm.job_list[0]["status"].update(phase="Failed", reason="InvalidInput", message="bad")


def _stuck(farm: FakeFarm) -> None:
    farm.job_list.append({"metadata": {"name": "waiting"}, "status": {"phase": "Queued"}})


def _broken_output(farm: FakeFarm) -> None:
    (farm.output / NS / "j" / "out.mp4").write_bytes(b"not a video")


@pytest.mark.parametrize(
    ("breach", "message"),
    [
        (_run_twice, "run twice 1"),
        (_stale_result, "does not belong to attempt 2"),
        (_unassigned_worker, "w9 ran attempt 1, assigned to w1"),
        (_leftover, "partial outputs left behind"),
        (_failed_with_files, "failed but left files"),
        (_stuck, "waiting is Queued with 1 free slot(s)"),
        (_broken_output, "ffprobe cannot read"),
    ],
    ids=lambda v: getattr(v, "__name__", "")[1:] or None,
)
def test_each_breach_is_reported(tmp_path: Path, clips: dict[str, Path], breach: Any, message: str) -> None:
    farm = _clean(tmp_path, clips["one"])
    breach(farm)
    with pytest.raises(AssertionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        invariants.check(farm, expect=("Succeeded",))
