"""Stand-in workers: run `ffrtmp worker` as a local process for each worker Pod that the real
scheduler bound to a simulated node, with the Pod's own environment (the same contract as in
the image). Plays the kubelet's part: stops the process when the Pod goes, restarts it if it dies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ffrtmp.api.constants import LABEL_COMPONENT, WORKER_COMPONENT
from ffrtmp.dev.cluster import free_port
from ffrtmp.kube.client import ApiError, KubeClient, informer, resource_path

log = logging.getLogger(__name__)
Obj = dict[str, Any]


def pod_environment(pod: Obj) -> dict[str, str]:
    """The env the kubelet would give the worker container: values and downward-API fields."""
    meta, spec = pod["metadata"], pod.get("spec") or {}
    fields = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
    }
    env: dict[str, str] = {}
    for item in spec["containers"][0].get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "fieldRef" in (item.get("valueFrom") or {}):
            env[item["name"]] = fields.get(item["valueFrom"]["fieldRef"]["fieldPath"], "")
    return env


@dataclass
class Process:
    pod: str
    proc: asyncio.subprocess.Process
    env: dict[str, str]
    restarts: int = 0
    stopping: bool = False
    started: float = field(default_factory=time.time)


class StandInKubelet:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        state_dir: Path,
        *,
        worker_kubeconfig: str,
        extra_env: dict[str, str] | None = None,
        restart_delay: float = 5.0,
        max_grace: float = 30.0,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.state_dir = state_dir
        self.worker_kubeconfig = worker_kubeconfig
        self.extra_env = extra_env or {}
        self.restart_delay = restart_delay
        self.max_grace = max_grace
        self.processes: dict[str, Process] = {}
        self.pods: dict[str, Obj] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self._starting: set[str] = set()

    def _save(self) -> None:
        state = {name: {"pid": p.proc.pid, "restarts": p.restarts, "env": p.env} for name, p in self.processes.items()}
        tmp = self.state_dir / "workers.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state_dir / "workers.json")

    async def run(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._save()
        path = resource_path("", "v1", "pods", self.namespace)
        selector = f"{LABEL_COMPONENT}={WORKER_COMPONENT}"
        async for event_type, obj in informer(self.client, path, {"labelSelector": selector}):
            if event_type == "SYNC":
                listed = {o["metadata"]["name"]: o for o in obj["items"]}
                for name in [n for n in self.pods if n not in listed]:
                    self._pod_gone(name)
                for pod in listed.values():
                    self._pod_seen(pod)
            elif event_type == "DELETED":
                self._pod_gone(obj["metadata"]["name"])
            else:
                self._pod_seen(obj)

    def _pod_seen(self, pod: Obj) -> None:
        name = pod["metadata"]["name"]
        if pod["metadata"].get("deletionTimestamp"):
            self._pod_gone(name, pod)
            return
        self.pods[name] = pod
        if name not in self.processes and name not in self._starting and (pod.get("spec") or {}).get("nodeName"):
            self._starting.add(name)  # one container per Pod, however many events arrive meanwhile
            task = asyncio.ensure_future(self._start(pod))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _pod_gone(self, name: str, pod: Obj | None = None) -> None:
        pod = self.pods.pop(name, pod)
        process = self.processes.get(name)
        if process is None or process.stopping:
            return
        process.stopping = True
        grace = float(((pod or {}).get("spec") or {}).get("terminationGracePeriodSeconds") or 30)
        grace = min(grace, self.max_grace)
        log.info("pod %s deleted: SIGTERM to worker %d (grace %.0fs)", name, process.proc.pid, grace)
        with contextlib.suppress(ProcessLookupError):
            process.proc.send_signal(signal.SIGTERM)
        asyncio.get_running_loop().call_later(grace, self._kill, process)

    @staticmethod
    def _kill(process: Process) -> None:
        if process.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.proc.kill()

    async def _start(self, pod: Obj, restarts: int = 0) -> None:
        name = pod["metadata"]["name"]
        env = {
            **os.environ,
            **pod_environment(pod),
            "KUBECONFIG": self.worker_kubeconfig,
            "FFRTMP_METRICS_PORT": str(free_port()),
            "FFRTMP_SCRATCH_DIR": str(self.state_dir / "scratch" / name),
            **self.extra_env,
        }
        # A dev tool: a mkdir and an open per worker start are fine on the event loop.
        Path(env["FFRTMP_SCRATCH_DIR"]).mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
        log_file = open(self.state_dir / f"{name}.log", "ab")  # noqa: SIM115, ASYNC230 - handed to the child
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ffrtmp.cli", "worker", stdout=log_file, stderr=log_file,
            stdin=asyncio.subprocess.DEVNULL, env=env, start_new_session=True,
        )  # fmt: skip
        log_file.close()
        self._starting.discard(name)
        process = Process(
            name, proc, {k: v for k, v in env.items() if k.startswith(("FFRTMP_", "POD_", "NODE_"))}, restarts
        )
        self.processes[name] = process
        self._save()
        log.info("started worker for pod %s: pid %d", name, proc.pid)
        code = await proc.wait()
        log.info("worker for pod %s exited with %s", name, code)
        if self.processes.get(name) is process:
            del self.processes[name]
            self._save()
        if process.stopping:
            # The container stopped: finish the Pod's deletion, as the kubelet does.
            path = resource_path("", "v1", "pods", self.namespace, name)
            with contextlib.suppress(ApiError):
                await self.client.delete(path, {"gracePeriodSeconds": 0})
            return
        if name in self.pods:
            await asyncio.sleep(self.restart_delay)  # like the kubelet's crash-loop back-off
            if name in self.pods and name not in self.processes:
                await self._start(self.pods[name], restarts + 1)

    async def stop_all(self) -> None:
        for name in list(self.processes):
            self._pod_gone(name)
        deadline = time.monotonic() + self.max_grace
        while self.processes and time.monotonic() < deadline:  # noqa: ASYNC110 - processes end on their own
            await asyncio.sleep(0.1)
        for process in list(self.processes.values()):
            self._kill(process)
