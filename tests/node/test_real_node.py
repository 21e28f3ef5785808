"""The product as it ships, on a real node: the image built here, the chart's operator Deployment
and the worker Pods as real containers (containerd + runc) under a real kubelet, storage from
PersistentVolumeClaims, probes answered by the kubelet, memory limits enforced by real cgroups.

The module fixture runs README.md's "Without Docker" block as written (but `make setup`, which
`make test` has run, and its last line, `down`, which the teardown runs and checks: nothing left
on the host). The tests then share that cluster and release, in file order; the first one checks
the README's own job. One kubelet per host: this is the only module that starts one.

Where the host cannot run a node (not root, no cgroups/bridge netfilter, tools missing), the
module skips with the reason; `.ci/run` sets FFRTMP_REQUIRE_REAL_NODE=1, which turns that skip
into a failure, so the project's CI always runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ffrtmp.dev import node as host_node
from ffrtmp.dev.cluster import default_bin_dir
from ffrtmp.worker.memory import parse_oom_kills
from helpers import REPO, TestCluster, ffprobe, make_clip, transcode_job, wait_for, worker_pool

# Background: the real node's tests mostly wait on the kubelet (probes, restarts, Pod deletion) and
# are the only ones that start a node, so they run beside the rest (hack/test.sh).
pytestmark = [pytest.mark.node, pytest.mark.background]

README_HEADING = "## Without Docker: a real node on this machine"
HOST_DIR = Path("/tmp/ffmpeg-rtmp")
RELEASE, RELEASE_NS, NS = "ffmpeg-rtmp", "ffmpeg-rtmp", "media"
DEV_DIR = REPO / ".dev" / "node"
Obj = dict[str, Any]


def _require(reason: str) -> None:
    if os.environ.get("FFRTMP_REQUIRE_REAL_NODE") == "1":
        pytest.fail(f"the real node is required here (FFRTMP_REQUIRE_REAL_NODE=1) but cannot run: {reason}")
    pytest.skip(f"real node unavailable: {reason}")


def readme_block() -> list[str]:
    """The shell commands of the README's real-node block, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    section = text.split(README_HEADING, 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's real-node section has no bash block"
    commands: list[str] = []
    for raw in block.group(1).replace("\\\n", " ").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


@dataclass
class Quickstart:
    cluster: TestCluster
    env: dict[str, str]
    down: str
    timings: dict[str, float]

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(["helm", *args], env=self.env, text=True, capture_output=True, timeout=300, check=False)
        if check and out.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)}: {out.stderr}{out.stdout}")
        return out

    def pods(self, *selector: str) -> list[Obj]:
        return self.cluster.list("pods", NS, *selector)

    def job(self, name: str) -> Obj:
        return self.cluster.get("tj", name, NS)


def _run_block(commands: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run the README commands in one bash (exports carry over), timing each one."""
    script = ["set -euo pipefail"]
    for i, cmd in enumerate(commands):
        script += [f'echo "@@ {i} $(date +%s.%N)" >&2', cmd]
    script.append(f'echo "@@ {len(commands)} $(date +%s.%N)" >&2')
    script.append('echo "@@env"; env')
    proc = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=REPO, env=env, text=True, capture_output=True, timeout=1800, check=False
    )
    marks = [(int(m.group(1)), float(m.group(2))) for m in re.finditer(r"^@@ (\d+) ([\d.]+)$", proc.stderr, re.M)]
    if proc.returncode != 0:
        failed = commands[marks[-1][0]] if marks and marks[-1][0] < len(commands) else "?"
        raise AssertionError(f"README command failed ({proc.returncode}): {failed}\n{proc.stderr[-4000:]}")
    timings = {commands[i][:60]: round(marks[k + 1][1] - t, 1) for k, (i, t) in enumerate(marks[:-1])}
    exported = proc.stdout.split("@@env\n", 1)[1]
    for line in exported.splitlines():
        key, _, value = line.partition("=")
        if key in ("KUBECONFIG", "PATH"):
            env[key] = value
    return timings


@pytest.fixture(scope="module")
def quickstart() -> Iterator[Quickstart]:
    bin_dir = default_bin_dir()
    if reason := host_node.unavailable_reason(bin_dir):
        _require(reason)
    if shutil.which("podman") is None:
        _require("podman is not installed (make setup installs it): the image cannot be built")
    if HOST_DIR.exists():
        shutil.rmtree(HOST_DIR)
    commands = readme_block()
    down = next(c for c in commands if " dev cluster down" in c)
    run = [c for c in commands if not c.startswith("make ") and c != down]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    timings: dict[str, float] = {}
    try:
        timings = _run_block(run, env)
        cluster = TestCluster(Path(env["KUBECONFIG"]), bin_dir, None)
        qs = Quickstart(cluster, env, down, timings)
        print("\nREADME real-node block, seconds per command:")
        for cmd, seconds in timings.items():
            print(f"  {seconds:7.1f}  {cmd}")
        yield qs
        # The tests' own pools and jobs first (their worker Pods go with them: owner references).
        cluster.kubectl("delete", "tj,wp", "--all", "-n", NS, "--wait=true", "--timeout=120s")
        # helm uninstall leaves nothing of the release (the CRDs stay, as Helm documents).
        qs.helm("uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout", "3m")

        def release_objects() -> list[str]:
            kinds = "all,sa,role,rolebinding,cm,secret,lease,pdb,networkpolicy"
            selector = "app.kubernetes.io/instance=" + RELEASE
            out = cluster.kubectl("get", kinds, "-n", RELEASE_NS, "-o", "name", "-l", selector).stdout.split()
            cluster_wide = "clusterrole,clusterrolebinding,validatingadmissionpolicy,validatingadmissionpolicybinding"
            out += cluster.kubectl("get", cluster_wide, "-o", "name", "-l", selector).stdout.split()
            return out + [f"pod/{p['metadata']['name']}" for p in qs.pods()]

        # Pods go after their owners, asynchronously: wait, then show what stayed.
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not release_objects(), 120, "nothing of the release left", interval=1)
        assert release_objects() == []
    finally:
        out = subprocess.run(
            ["bash", "-c", down], cwd=REPO, env=env, text=True, capture_output=True, timeout=300, check=False
        )
        shutil.rmtree(HOST_DIR, ignore_errors=True)
    assert out.returncode == 0 and "left behind" not in out.stdout, f"down: {out.stdout}{out.stderr}"
    assert host_node.unavailable_reason(bin_dir) is None, "a second `up` would be refused after down"


# -- the README's job, the operator and worker Pods --------------------------------------------


def test_readme_job_succeeds_with_output_in_the_claim(quickstart: Quickstart) -> None:
    job = quickstart.job("trailer-1080p")
    assert job["status"]["phase"] == "Succeeded", job["status"]
    files = list((HOST_DIR / "output" / NS / "trailer-1080p").glob("*.mp4"))
    assert len(files) == 1, files
    video = next(s for s in ffprobe(files[0])["streams"] if s["codec_type"] == "video")
    assert (video["codec_name"], video["height"]) == ("h264", 1080)
    worker = job["status"]["worker"]
    pod = quickstart.cluster.get("pod", worker, NS)
    assert pod["spec"]["nodeName"] == host_node.NODE_NAME


def test_operator_runs_in_a_pod_with_its_service_account_token(quickstart: Quickstart) -> None:
    pods = quickstart.cluster.list("pods", RELEASE_NS, "-l", "app.kubernetes.io/component=operator")
    assert len(pods) == 1
    pod = pods[0]
    assert pod["spec"]["nodeName"] == host_node.NODE_NAME
    assert pod["status"]["phase"] == "Running"

    def ready() -> bool:
        got = quickstart.cluster.list("pods", RELEASE_NS, "-l", "app.kubernetes.io/component=operator")
        return all(c["ready"] for p in got for c in p["status"]["containerStatuses"])

    # Readiness is false while the API answers slowly (see /readyz); on a loaded host it may flap.
    wait_for(ready, 120, "the operator Pod Ready", interval=1)
    # In-cluster config: the projected, expiring ServiceAccount token and nothing else.
    assert pod["spec"]["serviceAccountName"] == f"{RELEASE}-operator"
    projected = [v for v in pod["spec"]["volumes"] if "projected" in v]
    assert any("serviceAccountToken" in s for v in projected for s in v["projected"]["sources"])
    env = {e["name"] for c in pod["spec"]["containers"] for e in c.get("env", [])}
    assert "KUBECONFIG" not in env


def test_the_cpu_pool_and_mp4_examples_work_as_written(quickstart: Quickstart) -> None:
    """examples/workerpool-cpu.yaml (claims `media` and `renditions`, subPath farm-a) replaces the
    README's pool; examples/mp4-h264-1080p.yaml runs again on it. It runs before the tests that add
    pools of their own, so the example job (no poolRef) has only this pool to go to."""
    qs = quickstart
    renditions = HOST_DIR / "renditions"
    (renditions / "farm-a").mkdir(parents=True)
    for folder in (renditions, renditions / "farm-a"):
        folder.chmod(0o777)
    for name, path, mode in (
        ("media", HOST_DIR / "media", "ReadOnlyMany"),
        ("renditions", renditions, "ReadWriteMany"),
    ):
        qs.cluster.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"examples-{name}"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": [mode], "storageClassName": "",
                     "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(path), "type": "Directory"}},
        }))  # fmt: skip
        qs.cluster.apply({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"accessModes": [mode], "storageClassName": "", "volumeName": f"examples-{name}",
                     "resources": {"requests": {"storage": "1Gi"}}},
        }, NS)  # fmt: skip
    qs.cluster.kubectl("delete", "wp", "cpu", "-n", NS, "--wait=true")
    # Its worker Pods go after it (garbage collection); none of them may take the example's job.
    wait_for(lambda: not qs.pods("-l", "ffmpeg-rtmp.io/pool=cpu"), 120, "the README pool's workers gone", interval=1)
    qs.cluster.kubectl("delete", "tj", "trailer-1080p", "-n", NS, "--ignore-not-found", "--wait=true")
    qs.cluster.kubectl("apply", "-n", NS, "-f", str(REPO / "examples" / "workerpool-cpu.yaml"))
    qs.cluster.kubectl("apply", "-n", NS, "-f", str(REPO / "examples" / "mp4-h264-1080p.yaml"))
    done = wait_for(lambda: _finished(qs, "trailer-1080p"), 300, "the example job finished", interval=1)["status"]
    assert done["phase"] == "Succeeded", done
    pool = qs.cluster.get("wp", "cpu", NS)
    assert pool["spec"]["storage"]["output"]["subPath"] == "farm-a"
    files = list((renditions / "farm-a" / NS / "trailer-1080p").glob("*.mp4"))
    assert len(files) == 1, (files, done.get("worker"), sorted(str(p) for p in HOST_DIR.rglob("*.mp4")))
    assert ffprobe(files[0])["format"]["format_name"].startswith("mov,mp4")


@pytest.fixture(scope="module")
def handback_pool(quickstart: Quickstart) -> str:
    """A pool that keeps one worker, with a short grace period: a stopped worker drains for
    grace-10 s, then hands its jobs back."""
    quickstart.cluster.apply(_pool("handback", minWorkers=1, maxWorkers=2, terminationGracePeriodSeconds=15), NS)
    return "handback"


def test_worker_pod_is_restricted_and_answers_logs_and_exec(quickstart: Quickstart, handback_pool: str) -> None:
    pod = wait_for(lambda: _ready_worker(quickstart, handback_pool), 180, "a Ready worker", interval=1)
    name = pod["metadata"]["name"]
    ns = json.loads(quickstart.cluster.kubectl("get", "namespace", NS, "-o", "json").stdout)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"

    def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return quickstart.cluster.kubectl("exec", "-n", NS, name, "-c", "worker", "--", "sh", "-c", cmd, check=check)

    assert sh("id -u").stdout.strip() == "10001"
    status = sh("cat /proc/self/status").stdout
    assert re.search(r"^CapEff:\s+0+$", status, re.M), status
    assert re.search(r"^Seccomp:\s+2$", status, re.M), status  # filter mode: RuntimeDefault
    denied = sh("touch /probe-root-fs", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert sh("ls /media").stdout.split() == ["trailer.mov"]
    logs = quickstart.cluster.kubectl("logs", "-n", NS, name, "-c", "worker").stdout
    assert "self-test" in logs or "selftest" in logs, logs[-2000:]


def test_helm_test_passes(quickstart: Quickstart) -> None:
    out = quickstart.helm("test", RELEASE, "-n", RELEASE_NS, "--timeout", "3m", check=False)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "Phase:          Succeeded" in out.stdout, out.stdout


# -- failures handled by the real kubelet and cgroups ---------------------------------------------


def _ready_worker(qs: Quickstart, pool: str) -> Obj | None:
    for pod in qs.pods("-l", f"ffmpeg-rtmp.io/pool={pool}"):
        statuses = pod["status"].get("containerStatuses") or []
        running = pod["status"].get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")
        if running and statuses and all(s["ready"] for s in statuses):
            return pod
    return None


def _pool(name: str, **spec: Any) -> Obj:
    base: Obj = {
        "nodeSelector": {host_node.NODE_LABEL: "true"},
        "storage": {"media": [{"claimName": "ffrtmp-media", "mountPath": "/media"}],
                    "output": {"claimName": "ffrtmp-output"}},
    }  # fmt: skip
    return worker_pool(name, **{**base, **spec})


def _finished(qs: Quickstart, name: str) -> Obj | None:
    job = qs.job(name)
    return job if job.get("status", {}).get("phase") in ("Succeeded", "Failed") else None


@pytest.fixture(scope="module")
def long_clip(quickstart: Quickstart) -> str:
    make_clip(HOST_DIR / "media" / "long.mp4", seconds=30)
    return "/media/long.mp4"


def _start_long_job(qs: Quickstart, name: str, clip: str, pool: str) -> Obj:
    """A 30 s real-time job on `pool`, once it runs with progress (so acting on it hits a live encode)."""
    qs.cluster.apply(transcode_job(name, clip, realtime=True, poolRef={"name": pool}, backoffLimit=3), NS)
    job: Obj = wait_for(
        lambda: (j := qs.job(name)).get("status", {}).get("progress", {}).get("percent", 0) > 5 and j,
        180, f"job {name} running with progress", interval=1,
    )  # fmt: skip
    return job


def test_deleting_a_busy_worker_pod_hands_the_job_back(
    quickstart: Quickstart, long_clip: str, handback_pool: str
) -> None:
    qs = quickstart
    job = _start_long_job(qs, "handback", long_clip, handback_pool)
    first = job["status"]["worker"]
    deleted_at = time.monotonic()
    qs.cluster.kubectl("delete", "pod", first, "-n", NS, "--wait=false")
    wait_for(lambda: qs.cluster.kubectl("get", "pod", first, "-n", NS, check=False).returncode != 0,
             60, "the deleted worker Pod gone", interval=0.5)  # fmt: skip
    print(f"deleted busy worker Pod gone after {time.monotonic() - deleted_at:.1f}s (grace period 15 s)")
    done = wait_for(lambda: _finished(qs, "handback"), 300, "job handback finished", interval=2)
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert status["attempt"] == 2 and status["worker"] != first, status
    files = sorted(p.name for p in (HOST_DIR / "output" / NS / "handback").iterdir())
    assert len(files) == 1 and files[0].endswith(".mp4"), files  # published once, no partial of attempt 1
    reasons = qs.cluster.kubectl("get", "events", "-n", NS, "--field-selector", "involvedObject.name=handback",
                                 "-o", "jsonpath={.items[*].reason}").stdout.split()  # fmt: skip
    # HandedBack (not WorkerLost): the worker drained and gave the job back within its grace period.
    assert "HandedBack" in reasons and "WorkerLost" not in reasons, reasons


def test_container_memory_limit_is_oomkilled_by_the_cgroup(quickstart: Quickstart) -> None:
    qs = quickstart
    qs.cluster.apply(_pool("small", minWorkers=1, maxWorkers=1,
                           resources={"limits": {"memory": "400Mi"}, "requests": {"memory": "400Mi"}}), NS)  # fmt: skip
    wait_for(lambda: _ready_worker(qs, "small"), 180, "a Ready worker of pool small", interval=1)
    # An 8K H.264 encode needs gigabytes (x264 keeps dozens of 50 MB frames in its lookahead).
    hog = [{"name": "8k", "video": {"codec": "h264", "preset": "medium", "crf": 30, "width": 7680, "height": 4320}}]
    qs.cluster.apply(transcode_job("oom", "/media/trailer.mov", hog, poolRef={"name": "small"}, backoffLimit=1), NS)
    status = wait_for(lambda: _finished(qs, "oom"), 300, "job oom finished", interval=1)["status"]
    # Retried per backoffLimit (1): two attempts, both killed by the cgroup's OOM killer.
    assert (status["phase"], status["reason"], status["attempt"]) == ("Failed", "OOMKilled", 2), status
    assert not (HOST_DIR / "output" / NS / "oom").exists() or not any((HOST_DIR / "output" / NS / "oom").iterdir())
    pod = qs.cluster.get("pod", status["worker"], NS)
    assert _cgroup_oom_kills(pod) >= 2, "the worker Pod's memory cgroups recorded fewer OOM kills than attempts"


def _cgroup_oom_kills(pod: Obj) -> int:
    """OOM kills recorded by the Pod's memory cgroups (cgroup v1: `oom_kill` of memory.oom_control)."""
    uid = pod["metadata"]["uid"]
    base = Path("/sys/fs/cgroup/memory/kubepods")
    for path in (base / f"pod{uid}", base / pod["status"]["qosClass"].lower() / f"pod{uid}"):
        if path.is_dir():
            kills = 0
            for control in path.rglob("memory.oom_control"):
                kills += parse_oom_kills(control.read_text()) or 0
            return kills
    raise AssertionError(f"no memory cgroup for Pod {uid} under {base}")


def test_job_over_its_own_memory_limit_ends_memory_limit_exceeded(quickstart: Quickstart) -> None:
    qs = quickstart
    hog = [{"name": "8k", "video": {"codec": "h264", "preset": "medium", "crf": 30, "width": 7680, "height": 4320}}]
    job = transcode_job(
        "overmem",
        "/media/trailer.mov",
        hog,
        poolRef={"name": "cpu"},
        backoffLimit=1,
        resources={"limits": {"memory": "300Mi"}},
    )
    qs.cluster.apply(job, NS)
    status = wait_for(lambda: _finished(qs, "overmem"), 240, "job overmem finished", interval=1)["status"]
    # Not retried: the same job needs the same memory on any worker.
    assert (status["phase"], status["reason"], status["attempt"]) == ("Failed", "MemoryLimitExceeded", 1), status
    out = HOST_DIR / "output" / NS / "overmem"
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_pool_whose_output_is_not_writable_is_degraded_and_its_jobs_wait(quickstart: Quickstart) -> None:
    qs = quickstart
    readonly = HOST_DIR / "readonly-output"
    readonly.mkdir(mode=0o755)  # root's, not writable for uid 10001
    qs.cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "ffrtmp-readonly-output"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(readonly), "type": "Directory"}},
    }))  # fmt: skip
    qs.cluster.apply({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "ffrtmp-readonly-output"},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": "ffrtmp-readonly-output",
                 "resources": {"requests": {"storage": "1Gi"}}},
    }, NS)  # fmt: skip
    pool = _pool("broken", minWorkers=1, maxWorkers=1)
    pool["spec"]["storage"]["output"] = {"claimName": "ffrtmp-readonly-output"}
    qs.cluster.apply(pool, NS)
    qs.cluster.apply(transcode_job("waits", "/media/trailer.mov", poolRef={"name": "broken"}), NS)

    def degraded() -> Obj | None:
        conditions = qs.cluster.get("wp", "broken", NS).get("status", {}).get("conditions", [])
        by_type = {c["type"]: c for c in conditions}
        d = by_type.get("Degraded")
        return d if d and d["status"] == "True" and d["reason"] == "StorageUnavailable" else None

    condition = wait_for(degraded, 180, "pool broken Degraded/StorageUnavailable", interval=1)
    assert "/output" in condition["message"], condition
    ready = {c["type"]: c for c in qs.cluster.get("wp", "broken", NS)["status"]["conditions"]}["Ready"]
    assert ready["status"] == "False", ready
    job = qs.job("waits")
    assert job["status"]["phase"] == "Queued", job["status"]
    queued = {c["type"]: c for c in job["status"]["conditions"]}["Queued"]
    assert "StorageUnavailable" in queued["reason"] + queued.get("message", ""), queued
    qs.cluster.kubectl("delete", "tj", "waits", "-n", NS)
    qs.cluster.kubectl("delete", "wp", "broken", "-n", NS)


def test_liveness_restarts_a_hung_agent_and_its_job_requeues(
    quickstart: Quickstart, long_clip: str, handback_pool: str
) -> None:
    qs = quickstart
    job = _start_long_job(qs, "hung", long_clip, handback_pool)
    worker = job["status"]["worker"]
    pod = qs.cluster.get("pod", worker, NS)
    restarts_before = pod["status"]["containerStatuses"][0]["restartCount"]
    agent = _container_init_pid(pod)
    os.kill(agent, signal.SIGSTOP)  # the agent's event loop stops; its ffmpeg child keeps going
    restarted = wait_for(
        lambda: (p := qs.cluster.get("pod", worker, NS))["status"]["containerStatuses"][0]["restartCount"]
        > restarts_before and p,
        180, "the kubelet restarting the hung worker container", interval=2,
    )  # fmt: skip
    last = restarted["status"]["containerStatuses"][0]["lastState"].get("terminated", {})
    assert last, restarted["status"]["containerStatuses"][0]
    events = qs.cluster.kubectl("get", "events", "-n", NS, "--field-selector", f"involvedObject.name={worker}",
                                "-o", "jsonpath={.items[*].message}").stdout  # fmt: skip
    assert "Liveness probe failed" in events, events[-2000:]
    done = wait_for(lambda: _finished(qs, "hung"), 300, "job hung finished", interval=2)["status"]
    assert done["phase"] == "Succeeded" and done["attempt"] >= 2, done


def _container_init_pid(pod: Obj) -> int:
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if container_id in cgroup and b"worker" in cmdline and any(b"ffrtmp" in part for part in cmdline[:2]):
            return int(pid)
    raise AssertionError(f"no agent process found for container {container_id}")
