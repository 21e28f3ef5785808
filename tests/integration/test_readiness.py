"""/readyz: an operator whose RBAC forbids listing in one of its namespaces reports not ready, with
the status and path; granted the permissions, it becomes ready."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import Farm
from helpers import TestCluster, free_port, operator_argv, start_service, wait_for

pytestmark = pytest.mark.integration


def _readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def _admin_of(cluster: TestCluster, namespace: str, sa: str, sa_namespace: str) -> None:
    cluster.kubectl(
        "create", "rolebinding", f"{sa}-admin", "-n", namespace, "--clusterrole=cluster-admin",
        f"--serviceaccount={sa_namespace}:{sa}",
    )  # fmt: skip


@pytest.fixture
def forbidden(cluster: TestCluster, namespace: str) -> Iterator[str]:
    name = f"{namespace}-forbidden"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_not_ready_while_a_namespace_cannot_be_listed_then_ready(farm: Farm, forbidden: str) -> None:
    cluster, ns = farm.cluster, farm.namespace
    cluster.kubectl("create", "serviceaccount", "op", "-n", ns)
    _admin_of(cluster, ns, "op", ns)
    token = cluster.kubectl("create", "token", "op", "-n", ns, "--duration", "1h").stdout.strip()
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["users"] = [{"name": "op", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "op"
    kubeconfig = Path(farm.root / "op.kubeconfig")
    kubeconfig.write_text(yaml.safe_dump(config))

    port = free_port()
    argv = operator_argv(cluster, ns, "--namespace", forbidden, "--ready-port", str(port))
    argv[argv.index("--kubeconfig") + 1] = str(kubeconfig)
    operator = start_service("operator", argv, farm.root / "logs")
    farm.services["operator"] = operator

    def refused() -> str | None:
        code, text = _readyz(port)
        denied = f"403 Forbidden listing /apis/ffmpeg-rtmp.io/v1alpha1/namespaces/{forbidden}/"
        # its own namespace lists fine: only the forbidden one is left
        return text if code == 503 and denied in text and f"in {ns}:" not in text else None

    wait_for(refused, 60, "readyz to report only the forbidden lists")
    assert f"cannot list jobs in '{forbidden}': 403 Forbidden listing" in operator.tail(400)

    _admin_of(cluster, forbidden, "op", ns)
    wait_for(lambda: _readyz(port) == (200, "ok\n"), 60, "readyz to turn ready")
