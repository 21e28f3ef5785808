"""A flood of worker progress reports for test_api_priority.py, in a process of its own so that its client work
does not slow down the measuring process's requests: one coroutine per job, each sending progress patches
(FencedStatus.patch, the worker's own code path) back to back until the deadline.

    python apf_flood.py KUBECONFIG NAMESPACE WORKER SECONDS JOB...

Prints "started" once every coroutine has written once, then one JSON line: writes, refusals (429) and
other errors, and the writes' p50/p99 latency in ms."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

from ffrtmp.api.constants import GROUP, JOB_PLURAL, VERSION
from ffrtmp.kube import ApiError, KubeClient, load_config
from ffrtmp.kube.client import resource_path
from ffrtmp.worker.fence import FencedStatus


async def flood(kubeconfig: str, namespace: str, worker: str, seconds: float, jobs: list[str]) -> dict[str, Any]:
    latencies: list[float] = []
    counts = {"refused": 0, "errors": 0}
    first = asyncio.Barrier(len(jobs) + 1)
    async with KubeClient(load_config(kubeconfig), max_connections=len(jobs) + 8, component="apf-flood") as client:

        async def one(name: str) -> None:
            obj = await client.get(resource_path(GROUP, VERSION, JOB_PLURAL, namespace, name))
            fence = FencedStatus(client, obj, worker, 1)
            deadline = time.monotonic() + seconds
            percent, waited = 0.0, False
            while True:
                percent = (percent + 0.1) % 100
                started = time.monotonic()
                try:
                    await fence.patch({"progress": {"percent": round(percent, 1)}})
                    latencies.append(time.monotonic() - started)
                except ApiError as e:
                    counts["refused" if e.status == 429 else "errors"] += 1
                if not waited:
                    waited = True
                    await first.wait()
                    deadline = time.monotonic() + seconds
                if time.monotonic() >= deadline:
                    return

        tasks = [asyncio.create_task(one(name)) for name in jobs]
        await first.wait()
        print("started", flush=True)
        await asyncio.gather(*tasks)
    ms = sorted(x * 1000 for x in latencies)
    return {
        "writes": len(ms), **counts,
        "p50_ms": statistics.median(ms) if ms else None,
        "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else None,
    }  # fmt: skip


if __name__ == "__main__":
    config, ns, pod, duration, *names = sys.argv[1:]
    print(json.dumps(asyncio.run(flood(config, ns, pod, float(duration), names))), flush=True)
