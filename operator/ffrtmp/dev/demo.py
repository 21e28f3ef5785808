"""`ffrtmp demo`: the whole system on this machine, in one command.

Starts (or restarts) the local control plane, installs the chart's CRDs and RBAC with Helm, runs
the operator and stand-in workers for a CPU pool, submits an MP4 job and an HLS ladder made from a
generated clip, shows their progress, checks the outputs and says how to look around.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ffrtmp.dev.cluster import LocalCluster, free_port, repo_root

NAMESPACE = "demo"
RELEASE_NAMESPACE = "ffmpeg-rtmp"
BAR = 30


def _say(text: str) -> None:
    print(text, flush=True)


def _step(text: str) -> None:
    _say(f"\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"==> {text}")


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, text=True, capture_output=True, check=True, timeout=300, **kwargs)


def make_clip(path: Path, seconds: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _run([
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=30:duration={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path),
    ])  # fmt: skip


def manifests(media: Path, output: Path) -> list[dict[str, Any]]:
    api = "ffmpeg-rtmp.io/v1alpha1"
    clip = str(media / "sample.mp4")
    return [
        {
            "apiVersion": api, "kind": "WorkerPool", "metadata": {"name": "cpu"},
            "spec": {
                "accelerator": "cpu", "maxConcurrentJobs": 2, "minWorkers": 0, "maxWorkers": 2,
                "mediaRoots": [str(media)], "outputRoot": str(output), "terminationGracePeriodSeconds": 30,
            },
        },
        {
            "apiVersion": api, "kind": "TranscodeJob", "metadata": {"name": "sample-mp4"},
            "spec": {
                "input": {"uri": clip},
                "outputs": [{"name": "720p", "container": "mp4",
                             "video": {"codec": "h264", "crf": 26, "preset": "fast", "height": 720},
                             "audio": {"codec": "aac", "bitrate": "128k"}}],
                "slaSeconds": 300,
            },
        },
        {
            "apiVersion": api, "kind": "TranscodeJob", "metadata": {"name": "sample-hls"},
            "spec": {
                "input": {"uri": clip},
                "outputs": [
                    {"name": f"{height}p", "container": "hls",
                     "video": {"codec": "h264", "bitrate": bitrate, "height": height, "preset": "veryfast"}}
                    for height, bitrate in ((720, "2500k"), (480, "1200k"), (360, "700k"))
                ],
                "hls": {"segmentSeconds": 4, "playlistType": "vod"},
                "thumbnails": {"intervalSeconds": 4, "width": 320},
                "priority": 10,
            },
        },
    ]  # fmt: skip


def _bar(job: dict[str, Any]) -> str:
    status = job.get("status") or {}
    phase = status.get("phase") or "Pending"
    pct = float((status.get("progress") or {}).get("percent") or 0.0)
    if phase == "Succeeded":
        pct = 100.0
    filled = int(BAR * pct / 100)
    where = f"on {status['worker']}" if status.get("worker") else ""
    name = job["metadata"]["name"]
    return f"  {name:<12} [{'#' * filled}{'.' * (BAR - filled)}] {pct:5.1f}%  {phase:<10} {where}"


class Demo:
    def __init__(self, root: Path, *, stop_at_end: bool) -> None:
        self.root = root.resolve()
        self.repo = repo_root()
        self.cluster = LocalCluster(self.root / "cluster")
        self.media = self.root / "media"
        self.output = self.root / "output"
        self.stop_at_end = stop_at_end

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.cluster.kubectl(*args, input=input).stdout

    def run(self) -> int:
        started = time.monotonic()
        _step("starting the local control plane (etcd, kube-apiserver, scheduler, controllers, KWOK nodes)")
        self.cluster.up()
        _say(self.kubectl("get", "nodes", "-L", "ffmpeg-rtmp.io/accelerator").rstrip())

        _step("installing the chart (CRDs, ServiceAccounts, RBAC) with Helm")
        self.kubectl("create", "namespace", NAMESPACE)
        self.kubectl("label", "namespace", NAMESPACE, "pod-security.kubernetes.io/enforce=restricted")
        helm = str(self.cluster.bin_dir / "helm")
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)}
        _run([helm, "upgrade", "--install", "ffmpeg-rtmp", str(self.repo / "charts" / "ffmpeg-rtmp"),
              "--namespace", RELEASE_NAMESPACE, "--create-namespace", "--set", "operator.enabled=false",
              "--set", "tests.enabled=false", "--set", f"watchNamespaces={{{NAMESPACE}}}"], env=env)  # fmt: skip
        self.kubectl("wait", "--for=condition=Established", "crd/transcodejobs.ffmpeg-rtmp.io", "--timeout=60s")

        _step(f"generating a 12 s 720p test clip in {self.media}")
        shutil.rmtree(self.output, ignore_errors=True)
        self.output.mkdir(parents=True)
        make_clip(self.media / "sample.mp4")

        _step("starting the operator and the stand-in worker kubelet (local processes)")
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        kubeconfig = str(self.cluster.kubeconfig)
        self._spawn("demo-operator", logs, [
            sys.executable, "-m", "ffrtmp.cli", "operator", "--kubeconfig", kubeconfig, "--namespace", NAMESPACE,
            "--metrics-port", str(free_port()), "--health-port", str(free_port()),
        ])  # fmt: skip
        self._spawn("demo-workers", logs, [
            sys.executable, "-m", "ffrtmp.cli", "dev", "workers", "--namespace", NAMESPACE,
            "--kubeconfig", kubeconfig, "--state-dir", str(self.root / "workers"),
            "--env", "FFRTMP_PROGRESS_INTERVAL=1",
        ])  # fmt: skip

        _step("submitting a WorkerPool, an MP4 job and an HLS ladder")
        docs = manifests(self.media, self.output)
        self.kubectl(
            "apply", "-n", NAMESPACE, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
        )
        ok = self._watch(timeout=600)
        _say("")
        _say(self.kubectl("get", "tj,wp", "-n", NAMESPACE).rstrip())
        if ok:
            ok = self._check_outputs()
        self._finish(ok, time.monotonic() - started)
        return 0 if ok else 1

    def _spawn(self, name: str, logs: Path, argv: list[str]) -> None:
        with open(logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.cluster.register(name, proc.pid)

    def _watch(self, timeout: float) -> bool:
        tty = sys.stdout.isatty()
        deadline = time.monotonic() + timeout
        shown = 0
        last = ""
        while time.monotonic() < deadline:
            jobs = json.loads(self.kubectl("get", "tj", "-n", NAMESPACE, "-o", "json"))["items"]
            lines = [_bar(j) for j in sorted(jobs, key=lambda j: j["metadata"]["name"])]
            text = "\n".join(lines)
            if tty:
                sys.stdout.write(f"\033[{shown}F" if shown else "")
                sys.stdout.write("\n".join(line + "\033[K" for line in lines) + "\n")
                sys.stdout.flush()
                shown = len(lines)
            elif text != last:
                _say(text)
            last = text
            phases = [(j.get("status") or {}).get("phase") for j in jobs]
            if jobs and all(p in ("Succeeded", "Failed") for p in phases):
                for j in jobs:
                    if (j.get("status") or {}).get("phase") == "Failed":
                        _say(f"  {j['metadata']['name']} failed: {j['status'].get('message')}")
                return all(p == "Succeeded" for p in phases)
            time.sleep(0.5)
        _say("  timed out waiting for the jobs")
        return False

    def _check_outputs(self) -> bool:
        _step("checking the outputs with ffprobe")
        ok = True
        for name in ("sample-mp4", "sample-hls"):
            job = json.loads(self.kubectl("get", "tj", name, "-n", NAMESPACE, "-o", "json"))
            for out in job["status"].get("outputs", []):
                path = Path(out["path"])
                valid = path.exists() and (path.is_dir() or out.get("codec") is not None)
                ok &= valid
                size = f"{out.get('width')}x{out.get('height')}" if out.get("width") else ""
                codec, mark = out.get("codec") or "", "ok " if valid else "BAD"
                _say(f"  {mark} {name}/{out['name']:<10} {codec:<6} {size:<9} {out['bytes']:>9} bytes  {path}")
        return ok

    def _finish(self, ok: bool, seconds: float) -> None:
        _say("")
        _say(f"{'Demo finished' if ok else 'Demo FAILED'} in {seconds:.0f}s. Outputs are in {self.output}")
        if self.stop_at_end:
            self.cluster.down()
            _say("The control plane was stopped.")
            return
        _say("The control plane, the operator and the workers are still running. Look around with:")
        _say(f"  export KUBECONFIG={self.cluster.kubeconfig}")
        _say(f"  kubectl get tj,wp -n {NAMESPACE}        # kubectl from {self.cluster.bin_dir} is the matching version")
        _say(f"  kubectl describe tj sample-hls -n {NAMESPACE}")
        _say(f"  kubectl apply -n {NAMESPACE} -f examples/mp4-h264-1080p.yaml  # input.uri: a file in {self.media}")
        down = f"{sys.executable} -m ffrtmp.cli dev cluster down --dir {self.cluster.root}"
        _say(f"Stop everything with: make demo-down   (or: {down})")
