"""Stand-in workers: run `ffrtmp worker` as a local process for each worker Pod that the real
scheduler bound to a simulated node, with the Pod's own environment (the same contract as in
the image). Plays the kubelet's part: stops the process when the Pod goes, restarts it if it dies, and
(with `pod_bound_tokens`) gives each worker a token of its Pod's ServiceAccount bound to that Pod, as the
kubelet's projected token volume does: the API server then names the Pod in the token's user extra
(`authentication.kubernetes.io/pod-name`), which the chart's worker-identity admission policy keys on. Env
read from Secrets (secretKeyRef: a pool's object storage key) is read from the API as the kubelet reads it,
and never written to the state file. Secret volumes (a pool's spec.jobSecrets) are written, as the kubelet
writes them, into a private folder of the worker's state (once, when the worker starts: unlike the kubelet,
later changes of the Secret do not reach a running stand-in), and the worker's FFRTMP_JOB_SECRETS_DIR points
there."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ffrtmp.api.constants import LABEL_COMPONENT, WORKER_COMPONENT
from ffrtmp.dev.cluster import default_connect_guard, free_port
from ffrtmp.egress.guard import LIBRARY_ENV
from ffrtmp.kube.client import ApiError, KubeClient, informer, resource_path
from ffrtmp.kube.config import KubeConfig, load_kubeconfig

log = logging.getLogger(__name__)
Obj = dict[str, Any]
# Pod-bound tokens: their lifetime, and how long before its end a fresh one replaces it (the kubelet
# refreshes at 80 % of the lifetime).
TOKEN_SECONDS = 3600
TOKEN_REFRESH_SECONDS = 0.8 * TOKEN_SECONDS


class MissingSecret(Exception):
    """A secretKeyRef names a Secret or key that does not exist (the kubelet's CreateContainerConfigError)."""


def _env_items(pod: Obj) -> list[Obj]:
    items: list[Obj] = (pod.get("spec") or {})["containers"][0].get("env") or []
    return items


def secret_references(pod: Obj) -> dict[str, list[str]]:
    """The worker container's env variables read from Secrets, by Secret name."""
    found: dict[str, list[str]] = {}
    for item in _env_items(pod):
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            found.setdefault(ref["name"], []).append(item["name"])
    return found


def secret_volumes(pod: Obj) -> dict[str, str]:
    """The Secret volumes mounted in the worker container: mount path -> Secret name."""
    spec = pod.get("spec") or {}
    by_volume = {v["name"]: v["secret"]["secretName"] for v in spec.get("volumes") or [] if "secret" in v}
    mounts = spec["containers"][0].get("volumeMounts") or []
    return {m["mountPath"]: by_volume[m["name"]] for m in mounts if m["name"] in by_volume}


def write_secret_volumes(pod: Obj, secrets: Mapping[str, Mapping[str, str]], root: Path) -> None:
    """Each Secret volume of `pod` as files under `root` + its mount path (a missing Secret: an empty folder,
    as an optional volume), owner-only."""
    for mount_path, secret in secret_volumes(pod).items():
        folder = root / mount_path.lstrip("/")
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for key, value in (secrets.get(secret) or {}).items():
            path = folder / key
            path.touch(mode=0o600)
            path.write_text(value)


def pod_environment(pod: Obj, secrets: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, str]:
    """The env the kubelet would give the worker container: values, downward-API fields, and Secret keys
    (`secrets`: the data of each Secret `secret_references` names, decoded)."""
    meta, spec = pod["metadata"], pod.get("spec") or {}
    fields = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
    }
    env: dict[str, str] = {}
    for item in spec["containers"][0].get("env") or []:
        source = item.get("valueFrom") or {}
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "fieldRef" in source:
            env[item["name"]] = fields.get(source["fieldRef"]["fieldPath"], "")
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            value = (secrets or {}).get(ref["name"], {}).get(ref["key"])
            if value is None and not ref.get("optional"):
                raise MissingSecret(f"Secret {ref['name']} has no key {ref['key']} (env {item['name']})")
            if value is not None:
                env[item["name"]] = value
    return env


def token_request(pod: Obj, seconds: int = TOKEN_SECONDS) -> Obj:
    """The TokenRequest the kubelet sends for a Pod's projected token: bound to the Pod (name and uid)."""
    meta = pod["metadata"]
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
        },
    }


def token_kubeconfig(base: KubeConfig, token_file: Path) -> Obj:
    """A kubeconfig for `base`'s API server that authenticates with the token in `token_file` (re-read on
    every request, so a refreshed token takes effect without a restart)."""
    cluster: Obj = {"server": base.server}
    if base.ca_data:
        cluster["certificate-authority-data"] = base64.b64encode(base.ca_data).decode()
    if base.insecure:
        cluster["insecure-skip-tls-verify"] = True
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": "pod", "user": {"tokenFile": str(token_file)}}],
        "contexts": [{"name": "pod", "context": {"cluster": "cluster", "user": "pod"}}],
        "current-context": "pod",
    }


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
        pod_bound_tokens: bool = False,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.state_dir = state_dir
        self.worker_kubeconfig = worker_kubeconfig
        self.extra_env = extra_env or {}
        self.restart_delay = restart_delay
        self.max_grace = max_grace
        self.pod_bound_tokens = pod_bound_tokens
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

    async def _pod_token(self, pod: Obj, token_file: Path) -> None:
        """Write a fresh token of the Pod's ServiceAccount, bound to the Pod, to `token_file`."""
        meta = pod["metadata"]
        account = (pod.get("spec") or {}).get("serviceAccountName") or "default"
        path = resource_path("", "v1", "serviceaccounts", meta["namespace"], account) + "/token"
        answer = await self.client.create(path, token_request(pod))
        tmp = token_file.with_suffix(".tmp")
        tmp.write_text(answer["status"]["token"])
        tmp.chmod(0o600)
        tmp.replace(token_file)

    async def _refresh_token(self, pod: Obj, token_file: Path) -> None:
        while True:
            await asyncio.sleep(TOKEN_REFRESH_SECONDS)
            try:
                await self._pod_token(pod, token_file)
            except Exception as e:  # keep the old token until it expires; try again next round
                log.warning("refreshing the token of pod %s failed: %r", pod["metadata"]["name"], e)

    async def _worker_kubeconfig(self, pod: Obj) -> str:
        """The worker's credentials: the shared worker kubeconfig, or a Pod-bound token of its own."""
        if not self.pod_bound_tokens:
            return self.worker_kubeconfig
        name = pod["metadata"]["name"]
        token_file = self.state_dir / f"{name}.token"
        await self._pod_token(pod, token_file)
        path = self.state_dir / f"{name}.kubeconfig"
        path.write_text(json.dumps(token_kubeconfig(load_kubeconfig(self.worker_kubeconfig), token_file)))
        return str(path)

    async def _secrets(self, pod: Obj) -> dict[str, dict[str, str]]:
        """The data of the Secrets the Pod's env and volumes read, decoded (a missing Secret reads as empty)."""
        found: dict[str, dict[str, str]] = {}
        for secret in {*secret_references(pod), *secret_volumes(pod).values()}:
            try:
                obj = await self.client.get(resource_path("", "v1", "secrets", pod["metadata"]["namespace"], secret))
            except ApiError as e:
                if not e.not_found:
                    raise
                obj = {}
            found[secret] = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return found

    async def _start(self, pod: Obj, restarts: int = 0) -> None:
        name = pod["metadata"]["name"]
        try:
            kubeconfig = await self._worker_kubeconfig(pod)
        except (ApiError, OSError) as e:
            self._starting.discard(name)
            log.error("no token for pod %s: %r", name, e)
            return
        try:
            secrets = await self._secrets(pod)
            container_env = pod_environment(pod, secrets)
        except (ApiError, MissingSecret) as e:
            self._starting.discard(name)
            log.error("cannot start the worker of pod %s: %s", name, e)
            return
        if secret_volumes(pod):
            volumes = self.state_dir / "volumes" / name
            # A dev tool: a few small files per worker start are fine on the event loop.
            write_secret_volumes(pod, secrets, volumes)
            if "FFRTMP_JOB_SECRETS_DIR" in container_env:
                container_env["FFRTMP_JOB_SECRETS_DIR"] = str(volumes) + container_env["FFRTMP_JOB_SECRETS_DIR"]
        from_secrets = {v for names in secret_references(pod).values() for v in names}
        env = {
            **os.environ,
            **container_env,
            # The image's path of the connect guard is not on this machine: the tools cache's copy is.
            LIBRARY_ENV: str(default_connect_guard()),
            "KUBECONFIG": kubeconfig,
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
        saved = {k: v for k, v in env.items() if k.startswith(("FFRTMP_", "POD_", "NODE_")) and k not in from_secrets}
        process = Process(name, proc, saved, restarts)
        self.processes[name] = process
        self._save()
        log.info("started worker for pod %s: pid %d", name, proc.pid)
        refresh = None
        if self.pod_bound_tokens:
            refresh = asyncio.create_task(self._refresh_token(pod, self.state_dir / f"{name}.token"))
        code = await proc.wait()
        if refresh is not None:
            refresh.cancel()
        log.info("worker for pod %s exited with %s", name, code)
        if process.stopping:
            shutil.rmtree(self.state_dir / "volumes" / name, ignore_errors=True)
            # The container stopped: finish the Pod's deletion, as the kubelet does — before the
            # process is forgotten, so that stop_all, which waits for that, does not exit first.
            path = resource_path("", "v1", "pods", self.namespace, name)
            with contextlib.suppress(ApiError):
                await self.client.delete(path, {"gracePeriodSeconds": 0})
        if self.processes.get(name) is process:
            del self.processes[name]
            self._save()
        if process.stopping:
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
