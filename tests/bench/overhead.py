"""Figure 6: overhead of the whole system over bare ffmpeg, with the REAL worker and REAL ffmpeg.

One 20 s 1280x720 clip (testsrc2 + sine, made here) transcoded by libx264 (crf 23, preset
veryfast, audio aac). The system path: the operator, a WorkerPool of one worker, the stand-in
kubelet `ffrtmp dev workers` running a real `ffrtmp worker` process (encoder self-test done and
the worker Ready before the job exists), then `kubectl apply -f job.yaml`; wall time from
starting kubectl to our watch seeing phase Succeeded. The bare path: the argv that
`ffrtmp.ffmpeg.argv.build_encode_plan` makes for the same spec on a cpu pool (what the worker
runs), started with subprocess and timed until exit; run on the same machine, interleaved with
the system runs (bare, system, bare, system, bare) and averaged.
Ratio = mean system / mean bare; ideal 1.0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.ffmpeg.argv import build_encode_plan
from ffrtmp.ffmpeg.inputs import check_input
from ffrtmp.kube.client import KubeClient

from .common import BenchEnv, JobWatch, Report, job_path, main, pool_manifest, pool_path, wait_pool_ready

NAME = "overhead"
PARAMS = {
    "small": {"seconds": 6, "size": "640x360"},
    "full": {"seconds": 20, "size": "1280x720"},
}
OUTPUTS = [{"name": "out", "video": {"codec": "h264", "crf": 23, "preset": "veryfast"}, "audio": {"codec": "aac"}}]
PROTOCOLS = ["file", "http", "https", "rtmp", "rtmps"]
RUNS = 2  # system runs; bare runs = RUNS + 1, interleaved


def workers_needed(scale: str) -> int:
    del scale
    return 1


def make_clip(path: Path, seconds: int, size: str, gop: int | None = None) -> None:
    """testsrc2 + a sine, x264 ultrafast (keyframes every `gop` frames, else x264's default) and aac."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keyframes = ["-g", str(gop)] if gop is not None else []
    subprocess.run([
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
        "-c:v", "libx264", "-preset", "ultrafast", *keyframes, "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
        str(path),
    ], check=True, timeout=600)  # fmt: skip


def bare_run(clip: Path, media: Path, work: Path, tag: str) -> tuple[float, list[list[str]]]:
    spec = TranscodeJobSpec.model_validate({"input": {"uri": str(clip)}, "outputs": OUTPUTS})
    url = check_input(str(clip), allowed_protocols=PROTOCOLS, media_roots=[str(media)])
    out, scratch = work / f"bare-{tag}", work / f"scratch-{tag}"
    out.mkdir(parents=True)
    scratch.mkdir(parents=True)
    plan = build_encode_plan(
        spec, "cpu", input_url=url, output_dir=str(out), scratch_dir=str(scratch),
        allowed_protocols=PROTOCOLS, input_has_audio=True,
    )  # fmt: skip
    started = time.monotonic()
    for argv in plan.passes:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600,
                       env={**os.environ, **plan.env})  # fmt: skip
    return time.monotonic() - started, plan.passes


def start_kubelet(env: BenchEnv, ns: str, work: Path) -> subprocess.Popen[bytes]:
    """The stand-in kubelet: a real `ffrtmp worker` process for the pool's worker Pod."""
    with open(env.root / "logs" / f"workers-{ns}.log", "ab") as log:
        return subprocess.Popen([
            sys.executable, "-m", "ffrtmp.cli", "dev", "workers", "--namespace", ns,
            "--kubeconfig", str(env.kubeconfig), "--state-dir", str(work / "workers"),
        ], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip


@dataclass
class RealWorkerNamespace:
    """A namespace with the operator and the stand-in kubelet running real `ffrtmp worker` processes, and a
    generated clip under `media` (the pools' media root; `output` their output root)."""

    ns: str
    work: Path
    media: Path
    output: Path
    clip: Path
    client: KubeClient
    watch: JobWatch  # not started
    kubelet: subprocess.Popen[bytes]


@contextlib.asynccontextmanager
async def real_workers(
    env: BenchEnv, name: str, seconds: int, size: str, gop: int | None = None
) -> AsyncIterator[RealWorkerNamespace]:
    """Figures 3 and 7's set-up, the operator ready; on exit everything stopped and the namespace deleted."""
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=env.root))
    media, output = work / "media", work / "output"
    output.mkdir(parents=True)
    clip = media / "clip.mp4"
    await asyncio.to_thread(make_clip, clip, seconds, size, gop)
    ns = env.create_namespace(name)
    op = env.start_operator(ns)
    kubelet = start_kubelet(env, ns, work)
    client = env.client()
    watch = JobWatch(client, ns)
    try:
        await op.wait_ready()
        yield RealWorkerNamespace(ns, work, media, output, clip, client, watch, kubelet)
    finally:
        await watch.stop()
        kubelet.terminate()
        try:
            kubelet.wait(30)
        except subprocess.TimeoutExpired:
            kubelet.kill()
        op.stop()
        await client.close()
        env.delete_namespace(ns)


async def run(env: BenchEnv, scale: str) -> Report:
    p = PARAMS[scale]
    report = Report(NAME, scale)
    bare_runs: list[float] = []
    system_runs: list[float] = []
    timings: list[dict[str, Any]] = []
    passes: list[list[str]] = []
    async with real_workers(env, NAME, p["seconds"], p["size"]) as farm:
        ns, bare, watch, clip, media, work = farm.ns, farm.client, farm.watch, farm.clip, farm.media, farm.work
        await bare.create(pool_path(ns), pool_manifest(
            "cpu", minWorkers=1, maxWorkers=1, autoscaling={"enabled": False},
            mediaRoots=[str(media)], outputRoot=str(farm.output),
        ))  # fmt: skip
        await wait_pool_ready(bare, ns, "cpu", 1, limit=180, strict=True)
        await asyncio.sleep(3)
        watch.start()
        await watch.synced.wait()
        # Interleaved, so that a change of the machine's load hits both paths alike.
        for i in range(RUNS):
            seconds, passes = await asyncio.to_thread(bare_run, clip, media, work, f"run{i}")
            bare_runs.append(seconds)
            await asyncio.sleep(1)
            seconds, timing = await system_run(env, bare, watch, ns, clip, f"clip-{i}")
            system_runs.append(seconds)
            timings.append(timing)
            await asyncio.sleep(1)
        seconds, passes = await asyncio.to_thread(bare_run, clip, media, work, "last")
        bare_runs.append(seconds)

    bare_mean = statistics.fmean(bare_runs)
    system_mean = statistics.fmean(system_runs)
    common = {"clip_seconds": p["seconds"], "size": p["size"], "encoder": "libx264 crf 23 veryfast + aac"}
    report.add(
        "system_wall_time", system_mean, "s", runs=[round(x, 2) for x in system_runs], **common,
        note="kubectl apply -> phase Succeeded seen by a watch (mean)",
    )  # fmt: skip
    report.add("bare_ffmpeg_wall_time", bare_mean, "s", runs=[round(x, 2) for x in bare_runs], **common)
    report.add("overhead_ratio", system_mean / bare_mean, "ratio", target="<= 1.10", **common)
    report.add(
        "overhead_seconds", system_mean - bare_mean, "s", **common, note="system minus bare (mean of the runs)"
    )  # fmt: skip
    report.details.update({"argv": passes, "timings": timings})
    return report


async def system_run(
    env: BenchEnv, client: KubeClient, watch: JobWatch, ns: str, clip: Path, name: str
) -> tuple[float, dict[str, Any]]:
    doc = {
        "apiVersion": "ffmpeg-rtmp.io/v1alpha1", "kind": "TranscodeJob", "metadata": {"name": name},
        "spec": {"input": {"uri": str(clip)}, "outputs": OUTPUTS},
    }  # fmt: skip
    t0 = time.monotonic()
    await asyncio.to_thread(env.kubectl, "apply", "-n", ns, "-f", "-", input=yaml.safe_dump(doc))
    t_applied = time.monotonic()
    await watch.wait(lambda: watch.jobs[name].phase in ("Succeeded", "Failed"), 600, f"{name} to finish")
    t = watch.jobs[name]
    status = (await client.get(job_path(ns, name)))["status"]
    if t.phase != "Succeeded":
        raise RuntimeError(f"{name} ended {t.phase}: {status.get('message')}")
    return (t.succeeded or 0) - t0, {
        "kubectl_apply_seconds": t_applied - t0,
        "apply_to_assigned": (t.assigned or 0) - t0,
        "apply_to_running": (t.running or 0) - t0,
        "running_to_succeeded": (t.succeeded or 0) - (t.running or 0),
        "status_start_time": status.get("startTime"),
        "status_completion_time": status.get("completionTime"),
        "outputs": status.get("outputs"),
    }


if __name__ == "__main__":
    raise SystemExit(main(NAME, run, workers_needed))
