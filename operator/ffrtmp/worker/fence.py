"""Fenced status writes: a worker writes only its own attempt, and never over a newer one."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Literal

import aiohttp

from ffrtmp.api.constants import GROUP, JOB_PLURAL, VERSION
from ffrtmp.kube.client import ApiError, KubeClient, merge_patched, resource_path

log = logging.getLogger(__name__)
Obj = dict[str, Any]
OWNED_PHASES = ("Scheduled", "Running")
# How long a status write keeps retrying through an API outage (refused connections, timeouts, 5xx):
# longer than a managed control plane's upgrade. A late write is safe: it carries the resourceVersion it
# was based on and re-checks ownership on a conflict, so whatever the operator decided meanwhile wins.
OUTAGE_PATIENCE_SECONDS = 900.0


class Superseded(Exception):
    """The job was deleted, reassigned, finished or suspended: this attempt must stop at once."""


def owns(obj: Obj, worker: str, attempt: int) -> str | None:
    """Why `worker` no longer owns `attempt` of this job, or None if it does."""
    status = obj.get("status") or {}
    if status.get("worker") != worker:
        return f"reassigned to {status.get('worker') or 'no worker'}"
    if int(status.get("attempt") or 0) != attempt:
        return f"attempt {attempt} superseded by attempt {status.get('attempt')}"
    if status.get("phase") not in OWNED_PHASES:
        return f"job is {status.get('phase')}"
    return None


def transient(error: BaseException) -> bool:
    """A failure that says nothing about the job: the API server is briefly unreachable or busy."""
    if isinstance(error, ApiError):
        return error.status >= 500 or error.status == 429
    return isinstance(error, (aiohttp.ClientError, OSError, TimeoutError))


class FencedStatus:
    """Status writes of one attempt, conditional on the last seen resourceVersion. On a conflict it
    re-reads the job: if the attempt is still ours it retries, otherwise it raises Superseded.

    Progress reports are merge patches (`patch`); every other write (Running, results, hand-backs) is an
    `update`, a PUT of /status. The API server's priority and fairness can tell requests apart only by
    verb, not by body: the chart's FlowSchemas (templates/flowcontrol.yaml) put the workers' patches in a
    bulk priority level, so that a flood of progress never queues a result. An update sends the last seen
    object with `status` merged exactly as the server would merge the same patch into it (merge_patched),
    so both verbs write the same status, fenced the same way."""

    def __init__(self, client: KubeClient, obj: Obj, worker: str, attempt: int) -> None:
        meta = obj["metadata"]
        self.client = client
        self.path = resource_path(GROUP, VERSION, JOB_PLURAL, meta["namespace"], meta["name"])
        self.worker = worker
        self.attempt = attempt
        self.obj = obj
        self.writes = 0

    def observe(self, obj: Obj) -> None:
        """A newer version from the watch: keeps later writes from conflicting needlessly."""
        if int(obj["metadata"]["resourceVersion"]) > int(self.obj["metadata"]["resourceVersion"]):
            self.obj = obj

    @property
    def conditions(self) -> list[Obj]:
        return list((self.obj.get("status") or {}).get("conditions") or [])

    def check(self) -> None:
        why = owns(self.obj, self.worker, self.attempt)
        if why:
            raise Superseded(why)

    async def update_until(self, status: Obj, *, seconds: float = OUTAGE_PATIENCE_SECONDS) -> Obj:
        """`update`, retried with backoff (at most 10 s apart) through an API outage of up to `seconds`."""
        deadline = time.monotonic() + seconds
        delay = 0.5
        while True:
            try:
                return await self.update(status)
            except Exception as e:
                if not transient(e) or time.monotonic() + delay > deadline:
                    raise
                log.warning("status write failed (%r); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def patch(self, status: Obj, *, attempts: int = 5) -> Obj:
        """A progress report: a merge patch of /status."""
        return await self._write(status, "patch", attempts)

    async def update(self, status: Obj, *, attempts: int = 5) -> Obj:
        """Any other status write: a PUT of /status."""
        return await self._write(status, "update", attempts)

    async def _write(self, status: Obj, verb: Literal["patch", "update"], attempts: int) -> Obj:
        self.check()
        for _ in range(attempts):
            try:
                self.obj = await self._send(status, verb)
                self.writes += 1
                return self.obj
            except ApiError as e:
                if e.not_found:
                    raise Superseded("job was deleted") from e
                if not e.conflict:
                    raise
            try:
                self.obj = await self.client.get(self.path)
            except ApiError as e:
                if e.not_found:
                    raise Superseded("job was deleted") from e
                raise
            self.check()
        raise ApiError(409, "Conflict", f"status of {self.path} kept changing")

    async def _send(self, status: Obj, verb: Literal["patch", "update"]) -> Obj:
        meta = self.obj["metadata"]
        if verb == "patch":
            body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status}
            return await self.client.merge_patch(self.path + "/status", body)
        # A status update keeps the server's managedFields whatever the body says: leave them out.
        metadata = {k: v for k, v in meta.items() if k != "managedFields"}
        body = {**self.obj, "metadata": metadata, "status": merge_patched(self.obj.get("status") or {}, status)}
        return await self.client.replace(self.path + "/status", body)
