"""The operator's watches: TranscodeJobs, WorkerPools, worker Pods and worker Leases, listed and
watched by `kube.client.informer` and fed straight into the reconciler's store.

Not kopf's `on.event`: its per-object machinery (a queue and a worker task per object, a deep copy
of every event body for its diff base, handler dispatch) cost 35-53 % of the operator's CPU in the
scheduling benchmark, against 3 % for the store updates it fed, and held event bodies in its
queues (BENCHMARKS.md, figures 1 and 4). Our handlers only copy objects into the store, so none
of that machinery is needed. kopf still runs the operator: start-up, clean-up, login and the
liveness probe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ffrtmp.api.constants import GROUP, JOB_PLURAL, LABEL_COMPONENT, POOL_PLURAL, VERSION, WORKER_COMPONENT
from ffrtmp.kube.client import ApiError, KubeClient, Obj, informer, resource_path

log = logging.getLogger(__name__)
WORKER_SELECTOR = f"{LABEL_COMPONENT}={WORKER_COMPONENT}"


@dataclass(frozen=True)
class Watched:
    kind: str  # the store's name for it: jobs, pools, pods, leases
    group: str
    version: str
    plural: str
    params: dict[str, str | int] = field(default_factory=dict)

    def path(self, namespace: str) -> str:
        return resource_path(self.group, self.version, self.plural, namespace)


WATCHED = (
    Watched("jobs", GROUP, VERSION, JOB_PLURAL),
    Watched("pools", GROUP, VERSION, POOL_PLURAL),
    Watched("pods", "", "v1", "pods", {"labelSelector": WORKER_SELECTOR}),
    Watched("leases", "coordination.k8s.io", "v1", "leases", {"labelSelector": WORKER_SELECTOR}),
)


class Sink(Protocol):
    def on_sync(self, kind: str, namespace: str, items: list[Obj], resource_version: str) -> None: ...

    def on_event(self, kind: str, event_type: str, obj: Obj) -> None: ...

    def on_list_error(self, kind: str, namespace: str, path: str, error: ApiError) -> None: ...


async def feed(
    client: KubeClient, watched: Watched, namespace: str, sink: Sink, on_relist: Callable[[], None] | None = None
) -> None:
    """Forever: list and watch one kind in one namespace ("" = all) into the sink. A failing sink
    call is logged and the stream starts over with a fresh list, so the store cannot drift."""
    path = watched.path(namespace)
    while True:
        try:
            stream = informer(
                client,
                path,
                watched.params,
                on_relist=on_relist,
                on_list_error=lambda e: sink.on_list_error(watched.kind, namespace, path, e),
            )
            async for event_type, obj in stream:
                if event_type == "SYNC":
                    sink.on_sync(watched.kind, namespace, obj["items"], obj["metadata"]["resourceVersion"])
                else:
                    sink.on_event(watched.kind, event_type, obj)
        except Exception:
            log.exception("the watch of %s in %r failed; listing again", watched.kind, namespace or "all namespaces")
            await asyncio.sleep(1.0)


def not_ready(
    namespaces: Iterable[str], synced: set[tuple[str, str]], errors: Mapping[tuple[str, str], str]
) -> list[str]:
    """Why the operator is not ready: one line per watched (kind, namespace) not listed yet, with
    the error of its last list if that failed. Empty once every watch has synced."""
    return [
        f"{kind} in {namespace or 'all namespaces'}: " + errors.get((kind, namespace), "not listed yet")
        for namespace in namespaces
        for kind in (w.kind for w in WATCHED)
        if (kind, namespace) not in synced
    ]
