"""Figure 7: chunked encoding of an hls ladder on k workers against one worker without chunking, with the
REAL worker and REAL ffmpeg.

One generated clip (testsrc2 + sine, keyframes every 2 s; full: 120 s 1920x1080, small: 20 s
640x360) to a 3-rendition hls ladder (libx264 veryfast with bitrates, aac, 2 s segments). Every
worker runs one job at a time and every job (each chunk too) is limited to one encoding thread
(`resources.limits.cpu: 1`), so that k workers stand for k cores. Runs, one after another on the
same control plane: single-pass on a pool of one worker; chunked (4 s chunks) on that pool (k=1);
chunked on a pool of two workers (k=2). Each run is `kubectl apply` -> the job's phase Succeeded
seen by a watch.

- wall time ratio chunked(k) / single-pass, target <= 1.1 / k;
- CPU seconds chunked / single-pass (ffmpeg and ffprobe of every task: the workers' reaped children,
  psutil), target <= 1.05;
- stitch time / encode time: the stitch task's Running -> Succeeded over the sum of the chunk and
  audio tasks' (the worker-seconds that encoded), target <= 3 %;
- projected wall time at k = 8 and 32 workers: the k=2 run's planning and stitch, its chunk and
  audio task times list-scheduled in the operator's order (audio, then chunks by index) on k
  workers, plus what the k=2 run spent outside that model (scheduling, status writes). Reported
  with its ratio to the single pass, without a target (the issue sets 1.1 / k for the measured
  k = 1 and 2): with more workers than tasks the wall time cannot drop below the serial part,
  planning + the longest task + stitch + scheduling, reported as `serial_part_k2`.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import yaml

from ffrtmp.kube.client import KubeClient

from .common import BenchEnv, JobWatch, Report, job_path, main, pool_manifest, pool_path, wait_pool_ready
from .overhead import real_workers

NAME = "chunking"
PARAMS: dict[str, dict[str, Any]] = {
    "small": {"seconds": 20, "size": "640x360", "heights": (360, 240, 144), "rates": ("800k", "400k", "150k")},
    "full": {"seconds": 120, "size": "1920x1080", "heights": (1080, 720, 360), "rates": ("5M", "2800k", "800k")},
}
CHUNK_SECONDS = 4
SEGMENT_SECONDS = 2
PROJECTED = (8, 32)


def workers_needed(scale: str) -> int:
    del scale
    return 3


def ladder(p: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"name": f"{height}p", "container": "hls", "audio": {"codec": "aac", "bitrate": "128k"},
         "video": {"codec": "h264", "preset": "veryfast", "height": height, "bitrate": rate}}
        for height, rate in zip(p["heights"], p["rates"], strict=True)
    ]  # fmt: skip


def makespan(durations: Sequence[float], workers: int) -> float:
    """When the last of `durations` ends, each started in order on the first free of `workers`."""
    free = [0.0] * workers
    end = 0.0
    for duration in durations:
        start = heapq.heappop(free)
        heapq.heappush(free, start + duration)
        end = max(end, start + duration)
    return end


def children_cpu(kubelet: psutil.Process) -> float:
    """CPU seconds of the processes the workers started and reaped (ffmpeg, ffprobe)."""
    total = 0.0
    for worker in kubelet.children():
        try:
            times = worker.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.children_user + times.children_system
    return total


async def run(env: BenchEnv, scale: str) -> Report:
    p = PARAMS[scale]
    report = Report(NAME, scale)
    runs: dict[str, dict[str, Any]] = {}
    async with real_workers(env, NAME, p["seconds"], p["size"], gop=50) as farm:
        ns, client, watch = farm.ns, farm.client, farm.watch
        for pool, workers in (("one", 1), ("two", 2)):
            await client.create(pool_path(ns), pool_manifest(
                pool, minWorkers=workers, maxWorkers=workers, maxConcurrentJobs=1, autoscaling={"enabled": False},
                mediaRoots=[str(farm.media)], outputRoot=str(farm.output),
            ))  # fmt: skip
        for pool, workers in (("one", 1), ("two", 2)):
            await wait_pool_ready(client, ns, pool, workers, limit=300, strict=True)
        watch.start()
        await watch.synced.wait()
        parent = psutil.Process(farm.kubelet.pid)
        plan = [("single", "one", None), ("k1", "one", "On"), ("k2", "two", "On")]
        for name, pool, mode in plan:
            await asyncio.sleep(2)  # let the last run's writes settle
            runs[name] = await one_run(env, client, watch, parent, ns, name, farm.clip, ladder(p), pool, mode)
            print(f"chunking {name}: {runs[name]['summary']}", flush=True)

    single, k1, k2 = runs["single"], runs["k1"], runs["k2"]
    common = {
        "clip_seconds": p["seconds"], "size": p["size"], "ladder": "/".join(f"{h}p" for h in p["heights"]),
        "chunk_seconds": CHUNK_SECONDS, "segment_seconds": SEGMENT_SECONDS, "chunks": len(k2["chunks"]),
    }  # fmt: skip
    report.add("wall_single", single["wall"], "s", **common, note="one worker, one thread, single-pass")
    for k, r in ((1, k1), (2, k2)):
        report.add(f"wall_chunked_k{k}", r["wall"], "s", **common, note=f"{k} worker(s), one thread each")
        report.add(f"wall_ratio_k{k}", r["wall"] / single["wall"], "ratio", target=f"<= {1.1 / k:.3g}", **common)
        report.add(f"cpu_ratio_k{k}", r["cpu"] / single["cpu"], "ratio", target="<= 1.05", **common,
                   note=f"ffmpeg+ffprobe CPU s: chunked {r['cpu']:.1f}, single-pass {single['cpu']:.1f}")  # fmt: skip
    encode = sum(k2["chunks"]) + k2["audio"]
    report.add("stitch_over_encode", k2["stitch"] / encode, "ratio", target="<= 0.03", **common,
               note=f"k=2: stitch {k2['stitch']:.2f} s over {encode:.1f} s of chunk and audio tasks")  # fmt: skip
    modelled = k2["plan"] + makespan([k2["audio"], *k2["chunks"]], 2) + k2["stitch"]
    outside = k2["wall"] - modelled
    for k in PROJECTED:
        projected = k2["plan"] + makespan([k2["audio"], *k2["chunks"]], k) + k2["stitch"] + outside
        report.add(f"projected_wall_k{k}", projected, "s", **common,
                   note=f"from the k=2 task times; {outside:.1f} s outside the model as measured at k=2")  # fmt: skip
        report.add(f"projected_wall_ratio_k{k}", projected / single["wall"], "ratio", **common)
    longest = max([k2["audio"], *k2["chunks"]])
    report.add("serial_part_k2", k2["plan"] + longest + k2["stitch"] + outside, "s", **common,
               note=f"plan {k2['plan']:.2f} + longest task {longest:.2f} + stitch {k2['stitch']:.2f} + outside "
                    f"the model {outside:.2f} s: the wall time with a worker per task")  # fmt: skip
    same = {k: r["master_playlist"] == single["master_playlist"] for k, r in (("k1", k1), ("k2", k2))}
    report.details.update({"runs": runs, "outside_model_k2_s": round(outside, 2), "master_as_single_pass": same})
    return report


async def one_run(
    env: BenchEnv, client: KubeClient, watch: JobWatch, kubelet: psutil.Process, ns: str, name: str, clip: Path,
    outputs: list[dict[str, Any]], pool: str, mode: str | None,
) -> dict[str, Any]:  # fmt: skip
    spec: dict[str, Any] = {
        "input": {"uri": str(clip)}, "outputs": outputs, "hls": {"segmentSeconds": SEGMENT_SECONDS},
        "poolRef": {"name": pool}, "resources": {"limits": {"cpu": "1"}},
    }  # fmt: skip
    if mode is not None:
        spec["chunking"] = {"mode": mode, "chunkSeconds": CHUNK_SECONDS}
    doc = {"apiVersion": "ffmpeg-rtmp.io/v1alpha1", "kind": "TranscodeJob", "metadata": {"name": name}, "spec": spec}
    cpu0 = children_cpu(kubelet)
    t0 = time.monotonic()
    await asyncio.to_thread(env.kubectl, "apply", "-n", ns, "-f", "-", input=yaml.safe_dump(doc))
    await watch.wait(lambda: watch.jobs[name].phase in ("Succeeded", "Failed"), 3600, f"{name} to finish")
    wall = (watch.jobs[name].succeeded or time.monotonic()) - t0
    status = (await client.get(job_path(ns, name)))["status"]
    if status.get("phase") != "Succeeded":
        raise RuntimeError(f"{name} ended {status.get('phase')}: {status.get('message')}")
    # a chunked job's children end before it; a single-pass job's ffmpeg before its Succeeded
    cpu = children_cpu(kubelet) - cpu0

    def took(part: str) -> float:
        t = watch.jobs.get(f"{name}-{part}")
        if t is None or t.running is None or t.succeeded is None:
            return 0.0
        return t.succeeded - t.running

    chunks = sorted(n for n in watch.jobs if n.startswith(f"{name}-c0"))
    master = next(o["path"] for o in status["outputs"] if o["name"] == "master")
    result: dict[str, Any] = {
        "wall": wall, "cpu": cpu, "plan": took("plan"), "audio": took("audio"), "stitch": took("stitch"),
        "chunks": [took(n.removeprefix(f"{name}-")) for n in chunks],
        "master_playlist": await asyncio.to_thread(Path(master).read_text),
    }  # fmt: skip
    result["summary"] = (
        f"wall {wall:.1f} s, cpu {cpu:.1f} s"
        + (f", {len(chunks)} chunks of {sum(result['chunks']):.1f} s in all, stitch {result['stitch']:.2f} s"
           if mode else "")
    )  # fmt: skip
    return result


if __name__ == "__main__":
    raise SystemExit(main(NAME, run, workers_needed))
