"""The chart's worker identity policy (templates/admission-policy-workers.yaml) on a real API server, with
real Pod-bound tokens: `helm template` renders the worker ServiceAccount, Role, RoleBinding and the
ValidatingAdmissionPolicy + binding with the chart's defaults (the binding narrowed to this test's
namespace: the policy is cluster-scoped and other tests share the cluster). Two worker Pods exist (KWOK
may run them or not: a token only needs the Pod to exist with its uid), and `kubectl create token
--bound-object-kind Pod` mints each its token, as the kubelet's projected volume does. Every write below is
a real request with that token; a refusal is the API server's, with the policy's message. `kubectl auth
can-i` could not show any of this: it sees RBAC, not admission."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from ffrtmp.api.constants import LEASE_PREFIX
from ffrtmp.kube.client import merge_patched
from helpers import REPO, TestCluster, token_kubeconfig, transcode_job, wait_for

pytestmark = pytest.mark.integration
RELEASE = "wid"
WORKER_SA = f"{RELEASE}-ffmpeg-rtmp-worker"
POLICY = f"{RELEASE}-ffmpeg-rtmp-worker-identity"
LEADER_LEASE = "ffmpeg-rtmp-operator"  # the operator's (controller/handlers.py)
POD_NAME_KEY = "authentication.kubernetes.io/pod-name"


def _rendered(cluster: TestCluster, namespace: str, suffix: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(cluster.bin_dir / "helm"), "template", RELEASE, str(REPO / "charts" / "ffmpeg-rtmp"),
         "--namespace", namespace, "--kube-version", "1.36.0", "--set", "operator.enabled=false",
         "--set", "operator.serviceAccount.create=false",
         "-s", "templates/serviceaccount.yaml", "-s", "templates/rbac-worker.yaml",
         "-s", "templates/admission-policy-workers.yaml"],
        text=True, capture_output=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out) if d]
    for d in docs:
        if d["kind"] == "ValidatingAdmissionPolicyBinding":
            d["spec"]["policyName"] += f"-{suffix}"
            d["spec"]["matchResources"] = {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            }
        if d["kind"].startswith("ValidatingAdmissionPolicy"):
            d["metadata"]["name"] += f"-{suffix}"
    return docs


@dataclass
class Worker:
    pod: str
    uid: str
    kubectl: TestCluster  # kubectl with this Pod's bound token, nothing else


@dataclass
class Setup:
    cluster: TestCluster
    namespace: str
    policy: str
    w1: Worker
    w2: Worker
    unbound: TestCluster  # the same ServiceAccount, a token bound to no Pod


def _pod(name: str) -> dict[str, Any]:
    """A worker-like Pod that meets the restricted Pod Security Standard of the test namespace."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "identity-test"}},
        "spec": {
            "serviceAccountName": WORKER_SA,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "worker", "image": "registry.invalid/ffmpeg-rtmp/worker:test",
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }  # fmt: skip


def _token_cluster(cluster: TestCluster, token: str, path: Path) -> TestCluster:
    """kubectl for the admin kubeconfig's server and CA, authenticated by `token` only."""
    return TestCluster(token_kubeconfig(cluster, token, path), cluster.bin_dir, None)


def _worker(cluster: TestCluster, namespace: str, name: str, tmp: Path) -> Worker:
    uid = cluster.get("pod", name, namespace)["metadata"]["uid"]
    token = cluster.kubectl(
        "create", "token", WORKER_SA, "-n", namespace, "--duration", "1h",
        "--bound-object-kind", "Pod", "--bound-object-name", name, "--bound-object-uid", uid,
    ).stdout.strip()  # fmt: skip
    return Worker(name, uid, _token_cluster(cluster, token, tmp / f"{name}.kubeconfig"))


def _job(cluster: TestCluster, namespace: str, name: str, status: dict[str, Any]) -> None:
    """A job as the operator would leave it: created, then its status set (admin, not a worker)."""
    cluster.apply(transcode_job(name, "/media/in.mp4"), namespace)
    cluster.kubectl("patch", "tj", name, "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": status}))  # fmt: skip


def _lease(name: str, holder: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
    }


@pytest.fixture
def setup(cluster: TestCluster, namespace: str, tmp_path: Path) -> Iterator[Setup]:
    suffix = uuid.uuid4().hex[:5]
    docs = _rendered(cluster, namespace, suffix)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Role", "RoleBinding", "ServiceAccount", "ValidatingAdmissionPolicy",
                     "ValidatingAdmissionPolicyBinding"], kinds  # fmt: skip
    cluster.apply(docs, namespace)
    try:
        cluster.apply([_pod("w1"), _pod("w2")], namespace)
        # What the operator would have written: the leader Lease, w2's Lease, jobs in every state.
        cluster.apply([_lease(LEADER_LEASE, "operator-0"), _lease(f"{LEASE_PREFIX}w2", "w2")], namespace)
        running = {"phase": "Running", "attempt": 1, "pool": "cpu"}
        _job(cluster, namespace, "mine", {**running, "worker": "w1"})
        _job(cluster, namespace, "theirs", {**running, "worker": "w2"})
        _job(cluster, namespace, "queued", {"phase": "Queued", "attempt": 0, "pool": "cpu"})
        done = {"attempt": 1, "worker": "w1", "outcome": "Succeeded"}
        _job(cluster, namespace, "done", {"phase": "Succeeded", "attempt": 1, "worker": "w1", "result": done})
        unbound = cluster.kubectl("create", "token", WORKER_SA, "-n", namespace, "--duration", "1h").stdout.strip()
        yield Setup(
            cluster, namespace, f"{POLICY}-{suffix}",
            _worker(cluster, namespace, "w1", tmp_path), _worker(cluster, namespace, "w2", tmp_path),
            _token_cluster(cluster, unbound, tmp_path / "unbound.kubeconfig"),
        )  # fmt: skip
    finally:
        for d in docs:
            if d["kind"].startswith("ValidatingAdmissionPolicy"):
                cluster.kubectl("delete", d["kind"], d["metadata"]["name"], "--wait=false", check=False)


def _patch(as_: TestCluster, ns: str, kind: str, name: str, body: dict[str, Any], *sub: str) -> Any:
    return as_.kubectl("patch", kind, name, "-n", ns, "--type=merge", "-p", json.dumps(body), *sub, check=False)


def _status(as_: TestCluster, ns: str, name: str, status: dict[str, Any]) -> Any:
    return _patch(as_, ns, "tj", name, {"status": status}, "--subresource=status")


def _update_status(as_: TestCluster, admin: TestCluster, ns: str, name: str, status: dict[str, Any]) -> Any:
    """A PUT of the job's /status, as the worker sends every write but progress (FencedStatus.update)."""
    obj = admin.get("tj", name, ns)
    obj["status"] = merge_patched(obj.get("status") or {}, status)
    return as_.kubectl("replace", "--subresource=status", "-n", ns, "-f", "-", input=json.dumps(obj), check=False)


def _denied(proc: Any, policy: str, message: str) -> None:
    assert proc.returncode != 0, f"allowed: {proc.stdout}"
    # The API server's own refusal by this policy (not RBAC, not the CRD schema), with its message.
    assert f"ValidatingAdmissionPolicy '{policy}'" in proc.stderr, proc.stderr
    assert "denied request" in proc.stderr and message in proc.stderr, proc.stderr


def _allowed(proc: Any) -> None:
    assert proc.returncode == 0, proc.stderr


def test_pod_bound_token_names_the_pod(setup: Setup) -> None:
    """The premise: on this API server a token bound to a Pod puts the Pod's name in the user's extra."""
    for w in (setup.w1, setup.w2):
        who = json.loads(w.kubectl.kubectl("auth", "whoami", "-o", "json").stdout)["status"]["userInfo"]
        assert who["username"] == f"system:serviceaccount:{setup.namespace}:{WORKER_SA}"
        assert who["extra"][POD_NAME_KEY] == [w.pod], who
        assert who["extra"]["authentication.kubernetes.io/pod-uid"] == [w.uid], who
    who = json.loads(setup.unbound.kubectl("auth", "whoami", "-o", "json").stdout)["status"]["userInfo"]
    assert POD_NAME_KEY not in (who.get("extra") or {}), who


def test_a_worker_writes_only_what_is_its_own(setup: Setup) -> None:
    ns, policy, w1, w2 = setup.namespace, setup.policy, setup.w1.kubectl, setup.w2.kubectl
    c = setup.cluster
    leader_grab = {"spec": {"holderIdentity": "w1"}}
    # The policy takes effect once the API server has compiled it: wait on that state.
    wait_for(lambda: _patch(w1, ns, "lease", LEADER_LEASE, leader_grab).returncode != 0, 60, "the policy in force")

    # Leases: its own (create, renew) yes; another worker's, the operator's leader Lease, a new one
    # under another name, or its own held in another name: no.
    own = f"{LEASE_PREFIX}w1"
    _allowed(w1.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(_lease(own, "w1")), check=False))
    _allowed(_patch(w1, ns, "lease", own, {"spec": {"renewTime": "2026-12-02T15:00:00.000000Z"}}))
    only_own = f"worker Pod w1 may write only its own Lease {own}, not "
    _denied(_patch(w1, ns, "lease", LEADER_LEASE, leader_grab), policy, only_own + LEADER_LEASE)
    _denied(
        _patch(w1, ns, "lease", f"{LEASE_PREFIX}w2", {"spec": {"holderIdentity": "w1"}}),
        policy,
        only_own + f"{LEASE_PREFIX}w2",
    )
    made = w1.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(_lease(f"{LEASE_PREFIX}w3", "w1")), check=False)
    _denied(made, policy, only_own + f"{LEASE_PREFIX}w3")
    _denied(_patch(w1, ns, "lease", own, {"spec": {"holderIdentity": "w2"}}), policy,
            "worker Pod w1 may hold its Lease only in its own name, not w2")  # fmt: skip
    assert c.get("lease", LEADER_LEASE, ns)["spec"]["holderIdentity"] == "operator-0"
    assert c.get("lease", f"{LEASE_PREFIX}w2", ns)["spec"]["holderIdentity"] == "w2"

    # Job status: the job assigned to it, while Running, yes; another worker's job, a job assigned to
    # nobody, its own job once Succeeded, reassigning its job, a result in another's name: no.
    _allowed(_status(w1, ns, "mine", {"progress": {"percent": 42.0}, "heartbeatTime": "2026-12-02T15:00:00Z"}))
    assert c.get("tj", "mine", ns)["status"]["progress"]["percent"] == 42.0
    assigned = "worker Pod w1 may write only the status of jobs assigned to it; "
    forged = {"phase": "Succeeded", "result": {"attempt": 1, "worker": "w1", "outcome": "Succeeded"}}
    _denied(_status(w1, ns, "theirs", forged), policy,
            assigned + "theirs is assigned to w2")  # fmt: skip
    _denied(_status(w1, ns, "queued", {"phase": "Running", "worker": "w1", "attempt": 0}), policy,
            assigned + "queued is assigned to no worker")  # fmt: skip
    _denied(_status(w1, ns, "done", {"result": {"attempt": 1, "worker": "w1", "outcome": "Failed"}}), policy,
            "worker Pod w1 may write the status of done only while its attempt is Scheduled or Running, "
            "not Succeeded")  # fmt: skip
    reassign = "worker Pod w1 may not reassign mine: status.worker and status.attempt are set by the operator only"
    _denied(_status(w1, ns, "mine", {"worker": "w2"}), policy, reassign)
    _denied(_status(w1, ns, "mine", {"attempt": 2}), policy, reassign)
    _denied(_status(w1, ns, "mine", {"result": {"attempt": 1, "worker": "w2", "outcome": "Failed"}}), policy,
            "worker Pod w1 may write a result of mine only in its own name (status.result.worker)")  # fmt: skip
    assert c.get("tj", "theirs", ns)["status"]["phase"] == "Running"
    assert c.get("tj", "done", ns)["status"]["result"]["outcome"] == "Succeeded"

    # The other worker, symmetric: its job and Lease yes, w1's no.
    _allowed(_status(w2, ns, "theirs", {"progress": {"percent": 7.0}}))
    _allowed(_patch(w2, ns, "lease", f"{LEASE_PREFIX}w2", {"spec": {"renewTime": "2026-12-02T15:00:00.000000Z"}}))
    _denied(_status(w2, ns, "mine", {"progress": {"percent": 99.0}}), policy,
            "worker Pod w2 may write only the status of jobs assigned to it; mine is assigned to w1")  # fmt: skip
    _denied(_update_status(w2, c, ns, "mine", {"phase": "Failed"}), policy,
            "worker Pod w2 may write only the status of jobs assigned to it; mine is assigned to w1")  # fmt: skip
    _denied(_patch(w2, ns, "lease", own, {"spec": {"holderIdentity": "w2"}}), policy,
            f"worker Pod w2 may write only its own Lease {LEASE_PREFIX}w2, not {own}")  # fmt: skip

    # A worker's own finishing write passes (as the agent writes it: an update, Succeeded, with its result).
    finish = {"phase": "Succeeded", "result": {"attempt": 1, "worker": "w1", "outcome": "Succeeded"}}
    _allowed(_update_status(w1, c, ns, "mine", finish))
    assert c.get("tj", "mine", ns)["status"]["phase"] == "Succeeded"

    # The same ServiceAccount with a token bound to no Pod writes nothing: not even "its" Lease.
    _denied(_patch(setup.unbound, ns, "lease", own, {"spec": {"renewTime": "2026-12-02T15:01:00.000000Z"}}),
            policy, "a worker ServiceAccount may write only with a Pod-bound token")  # fmt: skip
    _denied(_status(setup.unbound, ns, "theirs", {"progress": {"percent": 1.0}}), policy,
            "a worker ServiceAccount may write only with a Pod-bound token")  # fmt: skip
