"""Session fixtures: a real control plane (started once), a namespace per test, a real S3 server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ffrtmp.dev.cluster import LocalCluster, default_bin_dir
from helpers import REPO, TestCluster, wait_for
from s3server import S3Server


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """The local control plane, or the cluster FFRTMP_TEST_KUBECONFIG points at (e.g. kind)."""
    existing = os.environ.get("FFRTMP_TEST_KUBECONFIG")
    if existing:
        c = TestCluster(Path(existing), default_bin_dir(), None)
        c.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        yield c
        return
    local = LocalCluster(tmp_path_factory.mktemp("cluster"))
    local.up()
    try:
        c = TestCluster(local.kubeconfig, local.bin_dir, local)
        c.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        c.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                  "crd/transcodejobs.ffmpeg-rtmp.io", "crd/workerpools.ffmpeg-rtmp.io")  # fmt: skip
        yield c
    finally:
        local.down()


@pytest.fixture
def namespace(cluster: TestCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test (enforcing the restricted Pod Security Standard), deleted after."""
    base = "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    wait_for(
        lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        30,
        "default SA",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """versitygw on a free loopback port (POSIX backend in a temp folder), started once; tests make buckets."""
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()
