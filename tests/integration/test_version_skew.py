"""Version skew (issue 17): a TranscodeJob that uses fields of a newer CRD version is run by this
operator and worker, which do not know those fields (they ignore them; they used to fail the job
InvalidSpec). The API server would prune unknown fields, so the test installs a newer CRD, this
one's schema plus one field under spec and one under spec.outputs[], and puts the CRD back after."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from conftest import Farm
from helpers import REPO, TestCluster, ffprobe, make_clip, transcode_job, wait_for

pytestmark = pytest.mark.integration

CRD = REPO / "crds" / "ffmpeg-rtmp.io_transcodejobs.yaml"
FUTURE = {"type": "string", "maxLength": 64, "description": "A field of a later version."}


def newer_crd() -> dict[str, Any]:
    crd: dict[str, Any] = copy.deepcopy(yaml.safe_load(CRD.read_text()))
    [version] = crd["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["futureSpecField"] = FUTURE
    spec["properties"]["outputs"]["items"]["properties"]["futureOutputField"] = FUTURE
    return crd


def apply_crd(cluster: TestCluster, text: str) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=text)


@pytest.fixture
def newer_job_crd(cluster: TestCluster, namespace: str) -> Iterator[None]:
    apply_crd(cluster, yaml.safe_dump(newer_crd()))
    probe = transcode_job("probe", "/m/a.mp4", futureSpecField="x")

    def schema_in_use() -> bool:
        out = cluster.kubectl(
            "create", "-n", namespace, "--dry-run=server", "-o", "json", "-f", "-",
            input=yaml.safe_dump(probe), check=False,
        )  # fmt: skip
        return out.returncode == 0 and json.loads(out.stdout)["spec"].get("futureSpecField") == "x"

    try:
        wait_for(schema_in_use, 60, "the newer CRD schema to be served")
        yield
    finally:
        apply_crd(cluster, CRD.read_text())


def test_a_job_with_fields_of_a_newer_crd_runs(farm: Farm, newer_job_crd: None) -> None:
    clip = make_clip(farm.media / "clip.mp4", seconds=1)
    farm.pool("cpu", minWorkers=1, autoscaling={"enabled": False})
    farm.start_operator()
    farm.start_workers()
    outputs = [{"name": "out", "futureOutputField": "v2", "video": {"codec": "h264", "crf": 30, "preset": "ultrafast"}}]
    farm.job("future", str(clip), outputs, futureSpecField="v2")
    stored = farm.get_job("future")
    # The API server kept them: operator and worker really read a job with fields they do not know.
    assert stored["spec"]["futureSpecField"] == "v2"
    assert stored["spec"]["outputs"][0]["futureOutputField"] == "v2"
    job = farm.wait_phase("future", "Succeeded", "Failed", timeout=120)
    status = job["status"]
    assert status["phase"] == "Succeeded", status
    assert status["attempt"] == 1
    [out] = status["outputs"]
    assert {s["codec_type"] for s in ffprobe(out["path"])["streams"]} >= {"video"}
