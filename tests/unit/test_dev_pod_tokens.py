"""The stand-in kubelet's Pod-bound tokens: the TokenRequest it sends and the kubeconfig it writes."""

from __future__ import annotations

import json
from pathlib import Path

from ffrtmp.dev.workers import TOKEN_SECONDS, token_kubeconfig, token_request
from ffrtmp.kube.config import KubeConfig, load_kubeconfig


def test_token_request_binds_the_token_to_the_pod() -> None:
    pod = {"metadata": {"name": "cpu-abc12", "namespace": "media", "uid": "0c6f-11"}}
    assert token_request(pod) == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": TOKEN_SECONDS,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "cpu-abc12", "uid": "0c6f-11"},
        },
    }


def test_token_kubeconfig_reads_the_token_file_on_every_request(tmp_path: Path) -> None:
    token = tmp_path / "w.token"
    token.write_text("first\n")
    base = KubeConfig(server="https://127.0.0.1:6443", ca_data=b"-----CA-----", cert_data=b"admin", key_data=b"k")
    path = tmp_path / "w.kubeconfig"
    path.write_text(json.dumps(token_kubeconfig(base, token)))
    loaded = load_kubeconfig(path)
    assert loaded.server == base.server and loaded.ca_data == base.ca_data
    # The admin's client certificate is not handed on: the worker has only its token.
    assert loaded.cert_data is None and loaded.key_data is None and loaded.token is None
    assert loaded.bearer_token() == "first"
    token.write_text("second")
    assert loaded.bearer_token() == "second"
    assert not loaded.insecure
