"""A real `helm install` of charts/ffmpeg-rtmp into the local control plane, and the operator and
workers running with nothing but the chart's ServiceAccounts and RBAC.

There is no container runtime here, so the chart is installed with `operator.enabled=false`: Helm
creates the CRDs, ServiceAccounts and RBAC (no Deployment). The operator then runs as a local
process with a token of the chart's operator ServiceAccount, and the stand-in kubelet
(`ffrtmp dev workers`, which itself plays the kubelet with admin rights) starts `ffrtmp worker`
processes with a token of the chart's worker ServiceAccount bound to the worker's Pod, as the kubelet
does (`--pod-bound-tokens`). A TranscodeJob that succeeds proves that the chart's RBAC and its worker
identity admission policy let a worker do its work; `kubectl auth can-i` proves the RBAC is not more
than needed, and the worker's own token is refused the leader Lease.

The tests share one release (module fixture) and run in file order: the last one uninstalls it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import (
    REPO,
    Service,
    TestCluster,
    ffprobe,
    make_clip,
    operator_argv,
    services,
    start_service,
    wait_for,
    workers_argv,
)

pytestmark = pytest.mark.e2e

CHART = REPO / "charts" / "ffmpeg-rtmp"
CRDS = ("transcodejobs.ffmpeg-rtmp.io", "workerpools.ffmpeg-rtmp.io")
LEADER_LEASE = "ffmpeg-rtmp-operator"  # fixed in ffrtmp.controller.handlers
NOTIFICATION_SECRET = "webhook-signing"  # notifications.secretNames of the release


@dataclass
class Release:
    cluster: TestCluster
    name: str
    namespace: str  # release namespace = the watched (worker) namespace, PSS restricted
    other: str  # another namespace, never watched
    root: Path
    helm_env: dict[str, str]
    crds_recreated: bool
    notes: str = ""
    installed: bool = True

    @property
    def fullname(self) -> str:
        return f"{self.name}-ffmpeg-rtmp"

    @property
    def operator_sa(self) -> str:
        return f"{self.fullname}-operator"

    @property
    def worker_sa(self) -> str:
        return f"{self.fullname}-worker"

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.cluster.bin_dir / "helm"), *args],
            env=self.helm_env, text=True, capture_output=True, timeout=300, check=False,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    def values_args(self, *extra: str, notifications: bool = True) -> list[str]:
        """`notifications`: False for a chart before 0.3 (no `notifications` value; its schema refuses it)."""
        return [
            "--set", "operator.enabled=false",
            "--set", f"watchNamespaces={{{self.namespace}}}",
            # The local operator runs with --leader-elect: the chart must let it hold its Lease.
            "--set", "operator.leaderElection.enabled=true",
            # Jobs' webhooks may name this Secret: the operator may get it, and no other.
            *(["--set", f"notifications.secretNames={{{NOTIFICATION_SECRET}}}"] if notifications else []),
            *extra,
        ]  # fmt: skip

    def token_kubeconfig(self, sa: str) -> Path:
        """A kubeconfig with a 1h token of `sa` (server and CA taken from the admin kubeconfig)."""
        token = self.cluster.kubectl("create", "token", sa, "-n", self.namespace, "--duration=1h").stdout.strip()
        assert token.count(".") == 2, token
        admin = yaml.safe_load(self.cluster.kubeconfig.read_text())
        ctx_name = admin["current-context"]
        ctx = next(c["context"] for c in admin["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in admin["clusters"] if c["name"] == ctx["cluster"])
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {
                "server": cluster["server"],
                "certificate-authority-data": cluster["certificate-authority-data"],
            }}],
            "users": [{"name": sa, "user": {"token": token}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": sa, "namespace": self.namespace}}],
            "current-context": "e2e",
        }  # fmt: skip
        path = self.root / f"{sa}.kubeconfig"
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path


def _create_namespace(cluster: TestCluster, name: str, restricted: bool) -> None:
    cluster.kubectl("create", "namespace", name)
    if restricted:
        cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    wait_for(lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0, 30, "default SA")


def _count_custom_objects(cluster: TestCluster) -> int:
    total = 0
    for crd in CRDS:
        out = cluster.kubectl("get", crd, "-A", "-o", "name", check=False)
        total += len(out.stdout.split()) if out.returncode == 0 else 0
    return total


def _let_helm_create_crds(cluster: TestCluster) -> bool:
    """The session fixture applied the CRDs already, and Helm skips CRDs that exist. On our own
    throw-away control plane, with no TranscodeJob or WorkerPool left anywhere, delete them so that
    the chart's crds/ really are installed by Helm. Never on a cluster from FFRTMP_TEST_KUBECONFIG."""
    if cluster.local is None:
        return False
    try:
        wait_for(lambda: _count_custom_objects(cluster) == 0, 60, "no TranscodeJob/WorkerPool left", interval=1)
    except AssertionError:
        return False
    cluster.kubectl("delete", "crd", *CRDS, "--wait=true", "--timeout=60s")
    return True


@pytest.fixture(scope="module")
def release(cluster: TestCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    root = tmp_path_factory.mktemp("helm-e2e")
    suffix = uuid.uuid4().hex[:5]
    namespace, other = f"e2e-helm-{suffix}", f"e2e-other-{suffix}"
    _create_namespace(cluster, namespace, restricted=True)
    _create_namespace(cluster, other, restricted=True)
    helm_env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "HELM_CACHE_HOME": str(root / "helm" / "cache"),
        "HELM_CONFIG_HOME": str(root / "helm" / "config"),
        "HELM_DATA_HOME": str(root / "helm" / "data"),
    }
    rel = Release(cluster, f"e2e-{suffix}", namespace, other, root, helm_env, _let_helm_create_crds(cluster))
    try:
        # No --kube-version: a real install checks Chart.yaml's kubeVersion against the API server's
        # own version (helm's built-in default, used only for offline `helm template`, may be older).
        out = rel.helm("install", rel.name, str(CHART), "--namespace", namespace, *rel.values_args(), "--timeout", "2m")
        rel.notes = out.stdout
        print(f"helm install {rel.name}: CRDs created by Helm: {rel.crds_recreated}")
        yield rel
    finally:
        if rel.installed:
            rel.helm("uninstall", rel.name, "--namespace", namespace, "--wait", "--timeout", "2m", check=False)
        for ns in (namespace, other):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        if rel.crds_recreated:
            # Whatever happened above, later tests of this session find the CRDs in place.
            cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"), check=False)


def _get(cluster: TestCluster, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
    args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
    obj: dict[str, Any] = json.loads(cluster.kubectl(*args).stdout)
    return obj


def _names(cluster: TestCluster, kinds: str, *args: str) -> set[str]:
    out = cluster.kubectl("get", kinds, "-o", "name", *args).stdout
    return set(out.split())


# --------------------------------------------------------------------------------------------
# install


def test_install_creates_crds_service_accounts_and_rbac_only(release: Release) -> None:
    c, ns = release.cluster, release.namespace
    status = json.loads(release.helm("status", release.name, "-n", ns, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed" and status["version"] == 1
    # NOTES.txt tells how to run the operator outside the cluster, with leader election.
    assert "operator.enabled=false" in release.notes, release.notes
    assert f"--leader-elect --leader-election-namespace={ns}" in release.notes, release.notes
    for crd in CRDS:
        c.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")
    if release.crds_recreated:
        # Helm installed them from the chart's crds/ (it does not label or track CRDs).
        for crd in CRDS:
            labels = _get(c, "crd", crd)["metadata"].get("labels") or {}
            assert "app.kubernetes.io/managed-by" not in labels
    selector = f"app.kubernetes.io/instance={release.name}"
    f = release.fullname
    assert _names(c, "serviceaccount,role,rolebinding", "-n", ns, "-l", selector) == {
        f"serviceaccount/{f}-operator",
        f"serviceaccount/{f}-worker",
        f"role.rbac.authorization.k8s.io/{f}-operator",
        f"role.rbac.authorization.k8s.io/{f}-worker",
        f"role.rbac.authorization.k8s.io/{f}-operator-leader-election",
        f"rolebinding.rbac.authorization.k8s.io/{f}-operator",
        f"rolebinding.rbac.authorization.k8s.io/{f}-worker",
        f"rolebinding.rbac.authorization.k8s.io/{f}-operator-leader-election",
        f"role.rbac.authorization.k8s.io/{f}-operator-notification-secrets",
        f"rolebinding.rbac.authorization.k8s.io/{f}-operator-notification-secrets",
    }
    # Namespaced mode grants nothing cluster-wide; the admission policies are cluster-scoped.
    assert _names(c, "clusterrole,clusterrolebinding", "-l", selector) == set()
    policies = "validatingadmissionpolicy,validatingadmissionpolicybinding"
    assert _names(c, policies, "-l", selector) == {
        f"validatingadmissionpolicy.admissionregistration.k8s.io/{f}-{p}" for p in ("workerpools", "worker-identity")
    } | {
        f"validatingadmissionpolicybinding.admissionregistration.k8s.io/{f}-{p}"
        for p in ("workerpools", "worker-identity")
    }
    # API priority and fairness: cluster-scoped too, named after the release.
    assert _names(c, "flowschema,prioritylevelconfiguration", "-l", selector) == {
        f"flowschema.flowcontrol.apiserver.k8s.io/{f}-{s}"
        for s in ("operator", "worker-results", "worker-leases", "worker-progress")
    } | {
        f"prioritylevelconfiguration.flowcontrol.apiserver.k8s.io/{f}-{p}" for p in ("control", "liveness", "progress")
    }
    # operator.enabled=false: nothing that would need a container runtime.
    assert not _names(c, "deployment,service,pod", "-n", ns, "-l", selector)
    assert not _names(c, "serviceaccount,role,rolebinding", "-n", release.other, "-l", selector)


# --------------------------------------------------------------------------------------------
# a job end to end with the chart's ServiceAccounts


def test_transcode_job_succeeds_with_chart_service_accounts(release: Release, tmp_path: Path) -> None:
    c, ns = release.cluster, release.namespace
    media, output = tmp_path / "media", tmp_path / "output"
    output.mkdir()
    clip = make_clip(media / "clip.mp4", seconds=2, size="320x240")
    op_kc = release.token_kubeconfig(release.operator_sa)
    as_operator = TestCluster(op_kc, c.bin_dir, None)
    logs, state = tmp_path / "logs", tmp_path / "workers"
    operator = start_service("operator", operator_argv(
        as_operator, ns, "--worker-service-account", release.worker_sa,
        "--leader-elect", "--leader-election-namespace", ns,
    ), logs)  # fmt: skip
    # The stand-in kubelet watches Pods with admin rights (it is the kubelet); the worker processes
    # it starts get a token of their Pod's ServiceAccount (the chart's worker one), bound to the Pod.
    workers = start_service("workers", workers_argv(c, ns, state, "--pod-bound-tokens"), logs)
    try:
        _run_one_job(release, media, output, clip, operator.log, workers.log, state, [operator, workers])
    finally:
        # The stand-in kubelet stops its workers; none may outlive the test.
        for info in _workers_state(state).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(info["pid"]), signal.SIGKILL)


def _run_one_job(
    release: Release, media: Path, output: Path, clip: Path, op_log: Path, workers_log: Path, state: Path,
    started: list[Service],
) -> None:  # fmt: skip
    c, ns = release.cluster, release.namespace
    with services(*started):
        pool = {
            "apiVersion": "ffmpeg-rtmp.io/v1alpha1",
            "kind": "WorkerPool",
            "metadata": {"name": "cpu"},
            "spec": {
                "accelerator": "cpu",
                "mediaRoots": [str(media)],
                "outputRoot": str(output),
                "terminationGracePeriodSeconds": 20,
                "minWorkers": 1,
                "autoscaling": {"enabled": False},
            },
        }
        c.apply(pool, ns)

        def ready() -> bool:
            return ((c.get("wp", "cpu", ns).get("status") or {}).get("readyWorkers") or 0) >= 1

        try:
            wait_for(ready, 120, "a ready worker (its Lease written with the worker token)", interval=0.5)
        except AssertionError:
            _dump_worker_logs(state)
            raise
        video = {"codec": "h264", "crf": 32, "preset": "ultrafast", "height": 120}
        job = {
            "apiVersion": "ffmpeg-rtmp.io/v1alpha1",
            "kind": "TranscodeJob",
            "metadata": {"name": "hello"},
            "spec": {"input": {"uri": str(clip)}, "outputs": [{"name": "out", "video": video}]},
        }
        c.apply(job, ns)

        def finished() -> dict[str, Any] | None:
            s = c.get("tj", "hello", ns).get("status") or {}
            return s if s.get("phase") in ("Succeeded", "Failed") else None

        try:
            s = wait_for(finished, 180, "TranscodeJob hello to finish", interval=0.5)
        except AssertionError:
            print(json.dumps(c.get("tj", "hello", ns).get("status"), indent=1))
            _dump_worker_logs(state)
            raise
        assert s["phase"] == "Succeeded", s
        assert s["attempt"] == 1 and s["result"]["attempt"] == 1
        probed = next(st for st in ffprobe(s["outputs"][0]["path"])["streams"] if st["codec_type"] == "video")
        assert probed["codec_name"] == "h264" and probed["height"] == 120

        # Worker Pods were admitted in the restricted namespace, under the chart's worker ServiceAccount.
        assert _get(c, "namespace", ns)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        pods = c.list("pods", ns, "-l", "app.kubernetes.io/component=worker")
        assert pods, "no worker Pod"
        for pod in pods:
            assert pod["spec"]["serviceAccountName"] == release.worker_sa
            assert pod["spec"].get("nodeName"), pod["metadata"]["name"]
        assert s["worker"] in {p["metadata"]["name"] for p in pods}
        # ... and the namespace really enforces "restricted": a privileged Pod is refused.
        bad = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "privileged"},
            "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]},
        }
        refused = c.apply(bad, ns, "--dry-run=server", check=False)
        assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr, refused.stderr

        # The worker wrote its own Lease with its token; the operator holds the leader Lease.
        leases = {lease["metadata"]["name"]: lease for lease in c.list("leases.coordination.k8s.io", ns)}
        assert f"ffrtmp-worker-{s['worker']}" in leases, sorted(leases)
        assert (leases[LEADER_LEASE]["spec"].get("holderIdentity") or "").strip()
        # Nothing was refused along the way (the RBAC and the admission policy are enough, not just
        # enough to limp along).
        for log in [op_log, workers_log, *state.glob("*.log")]:
            text = log.read_text(errors="replace")
            assert "Forbidden" not in text and " 403" not in text, f"{log.name}:\n{text[-3000:]}"
        # The worker's token names its Pod, and with it the leader Lease is out of reach.
        as_worker = TestCluster(state / f"{s['worker']}.kubeconfig", c.bin_dir, None)
        who = json.loads(as_worker.kubectl("auth", "whoami", "-o", "json").stdout)["status"]["userInfo"]
        assert who["username"] == f"system:serviceaccount:{ns}:{release.worker_sa}", who
        assert who["extra"]["authentication.kubernetes.io/pod-name"] == [s["worker"]], who
        grab = as_worker.kubectl(
            "patch", "lease", LEADER_LEASE, "-n", ns, "--type=merge", "-p", '{"spec":{"holderIdentity":"evil"}}',
            check=False,
        )  # fmt: skip
        assert grab.returncode != 0, grab.stdout
        assert f"{release.fullname}-worker-identity" in grab.stderr, grab.stderr
        assert f"may write only its own Lease ffrtmp-worker-{s['worker']}, not {LEADER_LEASE}" in grab.stderr

        # Leave no worker behind: delete the pool and its Pods (the stand-in stops their workers).
        c.kubectl("delete", "wp", "cpu", "-n", ns, "--wait=false")
        c.kubectl("delete", "pods", "-n", ns, "-l", "app.kubernetes.io/component=worker", "--wait=false")
        wait_for(lambda: not _workers_state(state), 60, "stand-in workers to stop", interval=0.5)


def _workers_state(state: Path) -> dict[str, Any]:
    path = state / "workers.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _dump_worker_logs(state: Path) -> None:
    for log in state.glob("*.log"):
        print(f"--- {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))


# --------------------------------------------------------------------------------------------
# RBAC: exactly what each ServiceAccount needs


def _can_i(release: Release, sa: str, verb: str, resource: str, namespace: str | None, *extra: str) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as=system:serviceaccount:{release.namespace}:{sa}", *extra]
    if namespace is not None:
        args += ["-n", namespace]
    proc = release.cluster.kubectl(*args, check=False)
    answer = proc.stdout.strip().split()[0] if proc.stdout.strip() else ""
    assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {proc.stderr}{proc.stdout}"
    return answer == "yes"


def _matrix(release: Release, sa: str, cases: list[tuple[bool, str, str, str | None, tuple[str, ...]]]) -> None:
    def one(case: tuple[bool, str, str, str | None, tuple[str, ...]]) -> str | None:
        want, verb, resource, ns, extra = case
        got = _can_i(release, sa, verb, resource, ns, *extra)
        if got == want:
            return None
        where = f"-n {ns}" if ns else "cluster-wide"
        answer = "yes" if got else "no"
        return f"{sa}: can-i {verb} {resource} {' '.join(extra)} {where}: {answer}, want {'yes' if want else 'no'}"

    with ThreadPoolExecutor(4) as pool:
        wrong = [w for w in pool.map(one, cases) if w]
    assert not wrong, "\n".join(wrong)


TJ, WP, LEASES = "transcodejobs.ffmpeg-rtmp.io", "workerpools.ffmpeg-rtmp.io", "leases.coordination.k8s.io"
STATUS = ("--subresource=status",)


def test_worker_service_account_rbac(release: Release) -> None:
    ns, other = release.namespace, release.other
    yes: list[tuple[str, str, str | None, tuple[str, ...]]] = [
        ("get", TJ, ns, ()), ("list", TJ, ns, ()), ("watch", TJ, ns, ()),
        ("get", TJ, ns, STATUS), ("patch", TJ, ns, STATUS), ("update", TJ, ns, STATUS),
        ("create", LEASES, ns, ()), ("get", LEASES, ns, ()), ("update", LEASES, ns, ()), ("patch", LEASES, ns, ()),
    ]  # fmt: skip
    no: list[tuple[str, str, str | None, tuple[str, ...]]] = [
        ("delete", TJ, ns, ()), ("create", TJ, ns, ()), ("update", TJ, ns, ()), ("patch", TJ, ns, ()),
        ("deletecollection", TJ, ns, ()),
        ("get", "secrets", ns, ()), ("list", "secrets", ns, ()),
        ("list", "pods", ns, ()), ("get", "pods", ns, ()), ("create", "pods", ns, ()), ("delete", "pods", ns, ()),
        ("create", "pods", ns, ("--subresource=exec",)),
        ("get", WP, ns, ()), ("list", WP, ns, ()), ("patch", WP, ns, STATUS),
        ("list", LEASES, ns, ()), ("watch", LEASES, ns, ()), ("delete", LEASES, ns, ()),
        ("create", "events", ns, ()), ("create", "serviceaccounts", ns, ("--subresource=token",)),
        # Another namespace: nothing at all.
        ("get", TJ, other, ()), ("list", TJ, other, ()), ("patch", TJ, other, STATUS),
        ("create", LEASES, other, ()), ("update", LEASES, other, ()), ("list", "pods", other, ()),
        ("get", "secrets", other, ()),
        # Cluster-scoped.
        ("list", "nodes", None, ()), ("get", "nodes", None, ()), ("list", "namespaces", None, ()),
        ("list", "customresourcedefinitions.apiextensions.k8s.io", None, ()),
    ]  # fmt: skip
    _matrix(release, release.worker_sa, [(True, *c) for c in yes] + [(False, *c) for c in no])


def test_operator_service_account_rbac(release: Release) -> None:
    ns, other = release.namespace, release.other
    leader = f"{LEASES}/{LEADER_LEASE}"
    yes: list[tuple[str, str, str | None, tuple[str, ...]]] = [
        *[(v, TJ, ns, ()) for v in ("get", "list", "watch", "create", "delete")],
        *[(v, TJ, ns, STATUS) for v in ("get", "patch", "update")],
        *[(v, WP, ns, ()) for v in ("get", "list", "watch")],
        *[(v, WP, ns, STATUS) for v in ("get", "patch", "update")],
        *[(v, "pods", ns, ()) for v in ("list", "watch", "create", "delete")],
        *[(v, LEASES, ns, ()) for v in ("get", "list", "watch", "delete")],
        ("create", LEASES, ns, ()), ("get", leader, ns, ()), ("update", leader, ns, ()), ("patch", leader, ns, ()),
        ("create", "events", ns, ()),
        ("get", f"secrets/{NOTIFICATION_SECRET}", ns, ()),
    ]  # fmt: skip
    no: list[tuple[str, str, str | None, tuple[str, ...]]] = [
        ("get", "secrets", ns, ()), ("list", "secrets", ns, ()), ("list", "secrets", None, ("--all-namespaces",)),
        ("watch", "secrets", ns, ()), ("get", "secrets/another-secret", ns, ()),
        ("update", f"secrets/{NOTIFICATION_SECRET}", ns, ()), ("get", f"secrets/{NOTIFICATION_SECRET}", other, ()),
        ("get", "configmaps", ns, ()),
        ("create", "roles.rbac.authorization.k8s.io", ns, ()),
        ("create", "rolebindings.rbac.authorization.k8s.io", ns, ()),
        ("create", "clusterroles.rbac.authorization.k8s.io", None, ()),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", None, ()),
        ("delete", "nodes", None, ()), ("list", "nodes", None, ()),
        ("create", "pods", ns, ("--subresource=exec",)), ("get", "pods", ns, ("--subresource=log",)),
        ("update", "pods", ns, ()), ("patch", "pods", ns, ()),
        # create: a chunked job's children (plan, chunks, audio, stitch); a job's spec is never rewritten.
        ("update", TJ, ns, ()), ("patch", TJ, ns, ()), ("patch", "events", ns, ()),
        ("create", WP, ns, ()), ("update", WP, ns, ()), ("patch", WP, ns, ()), ("delete", WP, ns, ()),
        # Only its own leader Lease may be renewed; worker Leases are read and deleted, never written.
        ("update", f"{LEASES}/ffrtmp-worker-somepod", ns, ()), ("patch", f"{LEASES}/ffrtmp-worker-somepod", ns, ()),
        ("create", "serviceaccounts", ns, ("--subresource=token",)), ("impersonate", "serviceaccounts", ns, ()),
        # Namespaced mode: nothing outside the watched namespace, nothing cluster-wide.
        ("list", "namespaces", None, ()), ("watch", "namespaces", None, ()), ("create", "namespaces", None, ()),
        *[(v, "customresourcedefinitions.apiextensions.k8s.io", None, ()) for v in ("get", "list", "watch")],
        ("list", TJ, other, ()), ("create", "pods", other, ()), ("create", LEASES, other, ()),
        ("list", TJ, None, ("--all-namespaces",)),
    ]  # fmt: skip
    _matrix(release, release.operator_sa, [(True, *c) for c in yes] + [(False, *c) for c in no])


# --------------------------------------------------------------------------------------------
# upgrade and uninstall


def test_helm_upgrade_with_a_changed_value(release: Release) -> None:
    c, ns, other = release.cluster, release.namespace, release.other
    release.helm(
        "upgrade", release.name, str(CHART), "--namespace", ns,
        *release.values_args("--set", "commonLabels.e2e-upgrade=two", "--set", f"worker.extraNamespaces={{{other}}}"),
        "--timeout", "2m",
    )  # fmt: skip
    status = json.loads(release.helm("status", release.name, "-n", ns, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed" and status["version"] == 2
    f = release.fullname
    # The new label reached existing objects, and the worker ServiceAccount + Role the new value asks for exist.
    for kind, name, where in (
        ("role", f"{f}-operator-leader-election", ns),
        ("serviceaccount", f"{f}-worker", ns),
        ("serviceaccount", f"{f}-worker", other),
        ("role", f"{f}-worker", other),
        ("rolebinding", f"{f}-worker", other),
    ):
        labels = _get(c, kind, name, where)["metadata"]["labels"]
        assert labels.get("e2e-upgrade") == "two", (kind, name, labels)
    # The other namespace's worker Role binds that namespace's worker ServiceAccount only.
    assert _can_i(release, release.worker_sa, "list", TJ, other) is False
    other_worker = f"--as=system:serviceaccount:{other}:{f}-worker"
    assert c.kubectl("auth", "can-i", "list", TJ, "-n", other, other_worker, check=False).stdout.strip() == "yes"
    assert c.kubectl("auth", "can-i", "list", TJ, "-n", ns, other_worker, check=False).stdout.strip().startswith("no")


def test_helm_uninstall_removes_the_release_objects(release: Release) -> None:
    """Last: no ServiceAccount or RBAC of the release is left; the CRDs (and users' jobs) stay."""
    c, ns = release.cluster, release.namespace
    worker = TestCluster(release.token_kubeconfig(release.worker_sa), c.bin_dir, None)
    assert worker.kubectl("get", "tj", "-n", ns, check=False).returncode == 0
    c.apply(
        {
            "apiVersion": "ffmpeg-rtmp.io/v1alpha1",
            "kind": "TranscodeJob",
            "metadata": {"name": "kept"},
            "spec": {"input": {"uri": "/nonexistent/in.mp4"}, "outputs": [{"name": "out"}], "suspend": True},
        },
        ns,
    )
    started = time.monotonic()
    release.helm("uninstall", release.name, "--namespace", ns, "--wait", "--timeout", "2m")
    release.installed = False
    assert time.monotonic() - started < 120
    assert release.helm("status", release.name, "-n", ns, check=False).returncode != 0
    selector = f"app.kubernetes.io/instance={release.name}"
    assert not _names(c, "serviceaccount,role,rolebinding", "-A", "-l", selector)
    assert not _names(c, "clusterrole,clusterrolebinding", "-l", selector)
    assert not _names(c, "flowschema,prioritylevelconfiguration", "-l", selector)
    f = release.fullname
    for kind, name, where in (
        ("serviceaccount", f"{f}-operator", ns),
        ("serviceaccount", f"{f}-worker", ns),
        ("serviceaccount", f"{f}-worker", release.other),
        ("role", f"{f}-operator-leader-election", ns),
    ):
        args = ["get", kind, name] + (["-n", where] if where else [])
        assert "NotFound" in c.kubectl(*args, check=False).stderr, (kind, name)
    # Helm never deletes CRDs of crds/: they and the objects in them stay.
    for crd in CRDS:
        c.kubectl("get", "crd", crd)
    assert c.get("tj", "kept", ns)["spec"]["suspend"] is True
    # A token handed out before grants nothing now (no binding), and soon is not accepted at all: it
    # died with its ServiceAccount (the API server caches a good token for a few seconds).
    assert worker.kubectl("get", "tj", "-n", ns, check=False).returncode != 0

    def unauthorized() -> bool:
        return "Unauthorized" in worker.kubectl("get", "tj", "-n", ns, check=False).stderr

    wait_for(unauthorized, 30, "the deleted ServiceAccount's token to be refused", interval=1)
