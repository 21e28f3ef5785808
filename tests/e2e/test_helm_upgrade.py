"""`helm upgrade` from the previous release (chart 0.1.0, taken from git) to this tree's chart with jobs in
flight, by the README's "Upgrading" commands: no job lost or run twice, the new CRD field accepted, and
version skew both ways on the way (this operator with the previous release's workers, which ignore the
new field; then workers of this tree, which honour it).

As in test_helm_install, there is no container runtime: the chart is installed with
`operator.enabled=false`, the operator runs as a local process with the chart's operator ServiceAccount
token, and the stand-in kubelet runs worker processes with Pod-bound tokens of the chart's worker
ServiceAccount. "The previous release" is the code of that commit: its chart is what `helm install`
gets, its operator/ is on the PYTHONPATH of its operator and workers (as its image would carry it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_helm_install import (
    CHART,
    Release,
    _create_namespace,
    _dump_worker_logs,
    _let_helm_create_crds,
    _workers_state,
)

from helpers import REPO, Service, TestCluster, ffprobe, make_clip, operator_argv, start_service, wait_for, workers_argv

pytestmark = [pytest.mark.e2e, pytest.mark.background]  # mostly waiting on rollouts and jobs

# The last commit of the release before this one (chart 0.1.0). Bump it with the chart version.
PREVIOUS_RELEASE = "2b9c3a25d59e60134fd2561c34cc13f18581fd5c"
PREVIOUS_CHART_VERSION = "0.1.0"


def extract_previous_release(into: Path) -> Path:
    """The previous release's operator/, charts/ and crds/ from git (`git archive`, no checkout)."""
    git = ["git", "-C", str(REPO)]
    if subprocess.run([*git, "cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}"], check=False).returncode != 0:
        pytest.skip(
            f"the previous release's commit {PREVIOUS_RELEASE[:12]} (chart {PREVIOUS_CHART_VERSION}) is not in this "
            "clone (a shallow clone?): `git fetch --unshallow` to run the upgrade test"
        )
    archive = into / "previous.tar"
    subprocess.run([*git, "archive", "-o", str(archive), PREVIOUS_RELEASE, "operator", "charts", "crds"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "previous", filter="data")
    root = into / "previous"
    chart = yaml.safe_load((root / "charts" / "ffmpeg-rtmp" / "Chart.yaml").read_text())
    assert chart["version"] == PREVIOUS_CHART_VERSION, chart["version"]
    return root


def readme_upgrade_block() -> list[str]:
    """The command block of the README's "Upgrading" section, line by line."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("\n## Upgrading\n") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "no bash block in the README's Upgrading section"
    return block.group(1).strip().splitlines()


def phase(c: TestCluster, ns: str, name: str) -> str | None:
    value: str | None = (c.get("tj", name, ns).get("status") or {}).get("phase")
    return value


def tags_of(path: str) -> dict[str, str]:
    tags: dict[str, str] = ffprobe(path)["format"].get("tags") or {}
    return tags


def test_helm_upgrade_from_the_previous_chart_with_jobs_in_flight(cluster: TestCluster, tmp_path: Path) -> None:
    previous = extract_previous_release(tmp_path)
    old_code = {"PYTHONPATH": str(previous / "operator")}
    suffix = uuid.uuid4().hex[:5]
    ns = f"e2e-upgrade-{suffix}"
    _create_namespace(cluster, ns, restricted=True)
    helm_env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "PATH": f"{cluster.bin_dir}:{os.environ.get('PATH', '')}",
        **{f"HELM_{k}_HOME": str(tmp_path / "helm" / k.lower()) for k in ("CACHE", "CONFIG", "DATA")},
    }
    # The previous chart's `helm install` creates the CRDs of its crds/ (where the cluster may lose them).
    crds_recreated = _let_helm_create_crds(cluster)
    print(f"CRDs created by the previous chart's helm install: {crds_recreated}")
    if not crds_recreated:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(previous / "crds"))
    rel = Release(cluster, f"up-{suffix}", ns, ns, tmp_path, helm_env, crds_recreated)
    media, output, logs, state = (tmp_path / d for d in ("media", "output", "logs", "workers"))
    output.mkdir()
    clip = make_clip(media / "clip.mp4", seconds=10)  # before the workers' storage check
    running: list[Service] = []
    try:
        old_chart = str(previous / "charts" / "ffmpeg-rtmp")
        rel.helm("install", rel.name, old_chart, "-n", ns, *rel.values_args(notifications=False))
        for crd in ("transcodejobs", "workerpools"):
            cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}.ffmpeg-rtmp.io")
        as_operator = TestCluster(rel.token_kubeconfig(rel.operator_sa), cluster.bin_dir, None)
        op_args = ("--worker-service-account", rel.worker_sa, "--leader-elect", "--leader-election-namespace", ns)

        def start_operator(name: str, env: dict[str, str] | None = None) -> Service:
            svc = start_service(name, operator_argv(as_operator, ns, *op_args), logs, env=env)
            running.append(svc)
            return svc

        def start_workers(name: str, *extra: str) -> Service:
            svc = start_service(name, workers_argv(cluster, ns, state, "--pod-bound-tokens", *extra), logs)
            running.append(svc)
            return svc

        def ready_workers() -> int:
            return int((cluster.get("wp", "cpu", ns).get("status") or {}).get("readyWorkers") or 0)

        old_operator = start_operator("operator-0.1.0", env=old_code)
        old_workers = start_workers("workers-0.1.0", "--env", f"PYTHONPATH={old_code['PYTHONPATH']}")
        cluster.apply({
            "apiVersion": "ffmpeg-rtmp.io/v1alpha1", "kind": "WorkerPool", "metadata": {"name": "cpu"},
            "spec": {
                "accelerator": "cpu", "mediaRoots": [str(media)], "outputRoot": str(output),
                "terminationGracePeriodSeconds": 20, "minWorkers": 1, "maxConcurrentJobs": 3,
                "autoscaling": {"enabled": False},
            },
        }, ns)  # fmt: skip
        wait_for(lambda: ready_workers() == 1, 120, "a ready worker of the previous release", interval=0.5)

        # 1. Jobs in flight on the previous release (input.realtime: each encode lasts the clip's 10 s).
        in_flight = [f"flight-{i}" for i in range(3)]
        for name in in_flight:
            cluster.apply(job(name, clip, realtime=True), ns)
        wait_for(lambda: all(phase(cluster, ns, n) == "Running" for n in in_flight), 60, "three jobs running")

        # 2. The README's upgrade, as written but for the release's name and namespace.
        for line in readme_upgrade_block():
            command = line.replace(" ffmpeg-rtmp charts/", f" {rel.name} charts/").replace("-n ffmpeg-rtmp", f"-n {ns}")
            out = subprocess.run(
                ["bash", "-c", command],
                cwd=REPO,
                check=False,
                env=helm_env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert out.returncode == 0, f"{command}\n{out.stdout}{out.stderr}"
        history = json.loads(rel.helm("history", rel.name, "-n", ns, "-o", "json").stdout)
        assert [(h["chart"], h["status"]) for h in history] == [
            (f"ffmpeg-rtmp-{PREVIOUS_CHART_VERSION}", "superseded"),
            (f"ffmpeg-rtmp-{yaml.safe_load((CHART / 'Chart.yaml').read_text())['version']}", "deployed"),
        ]
        # The operator rolls (its Deployment would): SIGTERM hands the Lease over to the new one.
        old_operator.stop()
        start_operator("operator-new")
        assert all(phase(cluster, ns, n) == "Running" for n in in_flight), "the jobs were not in flight"

        # 3. A job using the new CRD field: stored as given, run by a worker of the previous release,
        # which ignores the field (no tags in its file), and succeeds.
        tags = {"title": "Upgraded", "copyright": "(c) test"}
        skew = job("skew", clip, tags=tags)
        wait_for(lambda: server_keeps_tags(cluster, ns, skew), 60, "the new CRD schema to be served")
        cluster.apply(skew, ns)
        assert cluster.get("tj", "skew", ns)["spec"]["outputs"][0]["tags"] == tags
        jobs = wait_for(lambda: finished(cluster, ns, 4), 180, "the in-flight jobs and the skew job", interval=0.5)
        for j in jobs:
            s = j["status"]
            assert s["phase"] == "Succeeded", (j["metadata"]["name"], s)
            # One attempt, never handed back or redone: a job lost by the upgrade would be on attempt 2.
            assert s["attempt"] == 1 and s["result"]["attempt"] == 1 and not s.get("failed"), s
        skew_status = next(j["status"] for j in jobs if j["metadata"]["name"] == "skew")
        assert "title" not in tags_of(skew_status["outputs"][0]["path"]), "not a worker of the previous release"

        # 4. Workers of this tree (as their Pods are replaced): the new field takes effect.
        old_pods = {p["metadata"]["name"] for p in cluster.list("pods", ns)}
        old_workers.stop()
        # The stand-in kubelet deletes its Pods when it stops, as a node drain would: a kubelet started
        # while the old Pod still existed would run the new worker in it (and the operator never
        # replaces a live worker's Pod).
        wait_for(lambda: not {p["metadata"]["name"] for p in cluster.list("pods", ns)} & old_pods, 60,
                 "the old worker Pods deleted")  # fmt: skip
        start_workers("workers-new")

        def new_worker_ready() -> bool:
            pods = {p["metadata"]["name"] for p in cluster.list("pods", ns)}
            return bool(pods) and not pods & old_pods and ready_workers() == 1

        wait_for(new_worker_ready, 120, "the old worker Pod gone and a worker of this tree ready", interval=0.5)
        cluster.apply(job("tagged", clip, tags=tags), ns)
        all_jobs = wait_for(lambda: finished(cluster, ns, 5), 120, "the tagged job", interval=0.5)
        [tagged] = [j for j in all_jobs if j["metadata"]["name"] == "tagged"]
        assert tagged["status"]["phase"] == "Succeeded", tagged["status"]
        assert {k: tags_of(tagged["status"]["outputs"][0]["path"]).get(k) for k in tags} == tags

        # 5. Uninstall keeps the CRDs, and so the users' jobs (Helm never deletes crds/).
        rel.helm("uninstall", rel.name, "-n", ns, "--wait", "--timeout", "2m")
        rel.installed = False
        assert len(cluster.list("tj", ns)) == 5
    except BaseException:
        for svc in running:
            print(f"--- {svc.name} ---\n{svc.tail(60)}")
        _dump_worker_logs(state)
        raise
    finally:
        for svc in reversed(running):
            svc.stop()
        for info in _workers_state(state).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(info["pid"]), signal.SIGKILL)
        if rel.installed:
            rel.helm("uninstall", rel.name, "-n", ns, "--wait", "--timeout", "2m", check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        # Later tests of this session find this tree's CRDs, whatever happened above.
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"), check=False)


def job(name: str, clip: Path, *, realtime: bool = False, tags: dict[str, str] | None = None) -> dict[str, Any]:
    output: dict[str, Any] = {
        "name": "out",
        "video": {"codec": "h264", "crf": 32, "preset": "ultrafast", "height": 120},
    }
    if tags:
        output["tags"] = tags
    source: dict[str, Any] = {"uri": str(clip), **({"realtime": True} if realtime else {})}
    return {
        "apiVersion": "ffmpeg-rtmp.io/v1alpha1", "kind": "TranscodeJob", "metadata": {"name": name},
        "spec": {"input": source, "outputs": [output]},
    }  # fmt: skip


def server_keeps_tags(c: TestCluster, ns: str, doc: dict[str, Any]) -> bool:
    """A server-side dry run keeps spec.outputs[].tags (the old schema would prune it)."""
    out = c.kubectl("create", "-n", ns, "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(doc), check=False)
    if out.returncode != 0:
        print(f"dry run: {out.stderr.strip()}")
    return out.returncode == 0 and "tags" in json.loads(out.stdout)["spec"]["outputs"][0]


def finished(c: TestCluster, ns: str, count: int) -> list[dict[str, Any]] | None:
    jobs = c.list("tj", ns)
    done = [j for j in jobs if (j.get("status") or {}).get("phase") in ("Succeeded", "Failed")]
    return jobs if len(jobs) == count and len(done) == count else None
