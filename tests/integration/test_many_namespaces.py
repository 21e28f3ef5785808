"""An operator watching 25 namespaces (100 watches). Before watches had their own connection pool,
21 namespaces took every connection the writes had: watches timed out and relisted in a loop and
no worker became Ready."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from conftest import Farm
from helpers import TestCluster, make_clip

pytestmark = pytest.mark.integration


@pytest.fixture
def other_namespaces(cluster: TestCluster, namespace: str) -> Iterator[list[str]]:
    names = [f"{namespace}-n{i}" for i in range(24)]
    for name in names:
        cluster.kubectl("create", "namespace", name)
    yield names
    for name in names:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_twenty_five_namespaces_workers_get_ready_and_a_job_succeeds(farm: Farm, other_namespaces: list[str]) -> None:
    clip = make_clip(farm.media / "clip.mp4", seconds=1, size="160x120")
    farm.pool("cpu", "cpu", minWorkers=1, autoscaling={"enabled": False})
    farm.start_operator(*(arg for name in other_namespaces for arg in ("--namespace", name)))
    farm.start_workers()
    farm.job("one", str(clip), resources={"limits": {"cpu": "1"}})
    done = farm.wait_phase("one", "Succeeded", "Failed", timeout=180)
    assert done["status"]["phase"] == "Succeeded", done["status"]

    shown = farm.cluster.kubectl("get", "tj", "one", "-n", farm.namespace, "-o", "json", "--show-managed-fields")
    managers = {entry["manager"] for entry in json.loads(shown.stdout)["metadata"]["managedFields"]}
    assert {"ffrtmp-operator", "ffrtmp-worker"} <= managers, managers
