"""Which queued TranscodeJob runs on which worker slot: a pure function of a snapshot.

No I/O and no clock reads: the reconciler gathers the queued jobs, the worker Pods (with their
slot counts) and the WorkerPools, passes `now`, and applies the returned assignments.

Eligibility (`eligible_pools`)
    * Only pools in the job's namespace.
    * `poolRef` set: only that pool, and only if its accelerator suits the job (below); a
      `required` nvenc job never runs in a cpu pool, not even one named by `poolRef`.
    * accelerator `cpu` or hardwarePolicy `disabled`: cpu pools.
    * accelerator `nvenc|qsv|vaapi`: pools of that accelerator. With hardwarePolicy `preferred`
      cpu pools are added as a second tier, but only while no pool of that accelerator has an
      accepting worker (no such pool, encoder self-test failed, all draining...). Busy hardware
      never causes a fallback, and neither does a paused hardware pool whose workers are fine:
      pausing holds the pool's jobs, it does not send them elsewhere.
    * accelerator `auto`: every pool; hardware pools form the first tier, cpu pools the second.
    * A job that reads an s3:// input or uploads to spec.destination: only pools with
      spec.objectStorage, as if the others did not exist (a `preferred` job falls back to a cpu pool
      that has it when no hardware pool that has it is ready).
    * A job whose credentials come from Secrets (input.uriFrom, input.headersFrom, outputs[].urlFrom): only
      pools that list every one of them in spec.jobSecrets (their workers mount them), the same way.

Capabilities
    A worker's Lease lists the encoders that passed its self-test (`WorkerSlots.encoders`). A job
    runs only on a worker that has the encoder of each codec it encodes for the worker's
    accelerator (`video_encoder`: av1 on nvenc is av1_nvenc, on cpu libsvtav1). A worker that
    lists nothing (from before the capability test) is taken as able to run any codec. Workers
    that cannot run a job do not count as ready for it: a `preferred` job falls back to cpu when
    no worker of its accelerator can encode its codecs. A job that no ready worker can run waits
    with reason `NoCapableWorker`, and the message names the missing encoder ("no ready worker
    of pool gpu has encoder av1_nvenc").

Placement (`plan`)
    Jobs go in order of (-priority, queued_at, key). Each job takes the least-loaded accepting
    worker with a free slot (lowest running/capacity, then running, then name) in the first of
    its tiers that has one; paused pools get nothing. A job that fits nowhere is reported as
    `Blocked` and does not hold back the jobs after it. Per-pool heaps keep this at
    O((jobs + workers) * log(workers)) plus the pools of each job's tiers.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from ffrtmp.ffmpeg.encoders import video_encoder

CPU: Final = "cpu"
AUTO: Final = "auto"
REQUIRED: Final = "required"
PREFERRED: Final = "preferred"
DISABLED: Final = "disabled"

NO_MATCHING_POOL: Final = "NoMatchingPool"
POOL_PAUSED: Final = "PoolPaused"
NO_READY_WORKER: Final = "NoReadyWorker"
NO_FREE_SLOT: Final = "NoFreeSlot"
NO_CAPABLE_WORKER: Final = "NoCapableWorker"
STORAGE_UNAVAILABLE: Final = "StorageUnavailable"
BACKOFF: Final = "Backoff"


@dataclass(frozen=True, slots=True)
class QueuedJob:
    """A TranscodeJob waiting for a worker."""

    key: str  # "namespace/name"
    namespace: str
    priority: int
    queued_at: float  # FIFO order within a priority; ties broken on key
    accelerator: str  # auto|nvenc|qsv|vaapi|cpu
    hardware_policy: str  # required|preferred|disabled
    pool_ref: str | None
    not_before: float | None = None  # retry backoff: not schedulable before this
    codecs: tuple[str, ...] = ()  # video codecs it encodes (h264, hevc, av1), sorted
    object_storage: bool = False  # it reads an s3:// input or uploads to spec.destination
    secrets: tuple[str, ...] = ()  # Secrets its credentials come from (uriFrom, headersFrom, urlFrom), sorted


@dataclass(frozen=True, slots=True)
class WorkerSlots:
    """A worker Pod and its job slots."""

    name: str
    namespace: str
    pool: str
    accelerator: str  # accelerator of its pool: nvenc|qsv|vaapi|cpu
    capacity: int  # maxConcurrentJobs
    running: int  # jobs assigned and not finished (may exceed capacity transiently: free is then 0)
    accepting: bool  # ready (storage check and encoder self-test passed), not draining, not retiring, Lease fresh
    storage_problem: str | None = None  # what its storage check found wrong, when it failed
    encoders: frozenset[str] | None = None  # passed its self-test; None: not said, any codec


@dataclass(frozen=True, slots=True)
class PoolView:
    """What scheduling needs of a WorkerPool."""

    name: str
    namespace: str
    accelerator: str
    paused: bool
    object_storage: bool = False  # spec.objectStorage is set
    job_secrets: frozenset[str] = frozenset()  # spec.jobSecrets: the Secrets its workers mount for jobs


@dataclass(frozen=True, slots=True)
class Assignment:
    """Run `job` on `worker` of `pool`, encoding with `accelerator` (the pool's)."""

    job: str
    worker: str
    pool: str
    accelerator: str


@dataclass(frozen=True, slots=True)
class Blocked:
    """Why a queued job was not assigned, for its Queued condition."""

    job: str
    reason: str  # NoMatchingPool, PoolPaused, NoReadyWorker, StorageUnavailable, NoCapableWorker, NoFreeSlot, Backoff
    message: str


# --- capabilities --------------------------------------------------------------------------------

Encoders = frozenset[str] | None


def needed_encoders(accelerator: str, codecs: Iterable[str]) -> list[str]:
    """The encoders a worker of `accelerator` needs for `codecs` (pure)."""
    return [video_encoder(accelerator, c) for c in codecs]


def capable(encoders: Encoders, accelerator: str, codecs: tuple[str, ...]) -> bool:
    """Whether a worker with these self-tested encoders can encode every one of `codecs`."""
    return encoders is None or all(e in encoders for e in needed_encoders(accelerator, codecs))


# --- indexes -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _PoolStats:
    pool: PoolView
    workers: int = 0  # worker Pods of the pool
    accepting: int = 0  # of those, accepting new jobs
    storage_problem: str | None = None  # the first failed storage check among its workers
    accepting_encoders: set[Encoders] = field(default_factory=set)  # the distinct sets of its accepting workers

    def capable(self, codecs: tuple[str, ...]) -> bool:
        """Some accepting worker of the pool can run these codecs."""
        return any(capable(e, self.pool.accelerator, codecs) for e in self.accepting_encoders)

    def known_incapable(self, codecs: tuple[str, ...]) -> bool:
        """It has accepting workers and none of them can run these codecs."""
        return bool(self.accepting_encoders) and not self.capable(codecs)


@dataclass(slots=True)
class _Namespace:
    pools: dict[str, _PoolStats] = field(default_factory=dict)
    by_accelerator: dict[str, list[PoolView]] = field(default_factory=dict)  # sorted by name

    def ready(self, accelerator: str, codecs: tuple[str, ...]) -> bool:
        """Some pool of `accelerator` has an accepting worker that can run `codecs`."""
        return any(self.pools[p.name].capable(codecs) for p in self.by_accelerator.get(accelerator, ()))


def _index(pools: Iterable[PoolView], workers: Iterable[WorkerSlots]) -> dict[str, _Namespace]:
    index: dict[str, _Namespace] = {}
    for pool in pools:
        ns = index.setdefault(pool.namespace, _Namespace())
        if pool.name not in ns.pools:  # duplicates: the first one counts
            ns.pools[pool.name] = _PoolStats(pool)
    for ns in index.values():
        for stats in sorted(ns.pools.values(), key=lambda s: s.pool.name):
            ns.by_accelerator.setdefault(stats.pool.accelerator, []).append(stats.pool)
    for worker in workers:
        ns_or_none = index.get(worker.namespace)
        stats_or_none = ns_or_none.pools.get(worker.pool) if ns_or_none is not None else None
        if ns_or_none is None or stats_or_none is None:
            continue  # a worker of a pool that is gone (or not yet seen): not schedulable
        stats_or_none.workers += 1
        if worker.storage_problem and stats_or_none.storage_problem is None:
            stats_or_none.storage_problem = worker.storage_problem
        if worker.accepting:
            stats_or_none.accepting += 1
            stats_or_none.accepting_encoders.add(worker.encoders)
    return index


def _unique(workers: Iterable[WorkerSlots]) -> list[WorkerSlots]:
    """Workers by (namespace, name), the first of duplicates only: a Pod listed twice is one Pod."""
    seen: set[tuple[str, str]] = set()
    out: list[WorkerSlots] = []
    for w in workers:
        if (w.namespace, w.name) not in seen:
            seen.add((w.namespace, w.name))
            out.append(w)
    return out


# --- eligibility ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Eligibility:
    tiers: tuple[tuple[PoolView, ...], ...]  # matching pools, paused ones included, tier by tier
    no_pool: str  # why there is none, when tiers is empty
    fallback_note: str  # set when a preferred job falls back to cpu pools


def _names(pools: Iterable[PoolView], limit: int = 3) -> str:
    names = sorted({p.name for p in pools})
    if len(names) > limit:
        return ", ".join(names[:limit]) + f" and {len(names) - limit} more"
    return ", ".join(names)


def _pools_phrase(pools: Iterable[PoolView]) -> str:
    pools = list(pools)
    return ("pool " if len({p.name for p in pools}) == 1 else "pools ") + _names(pools)


def _mode(accelerator: str, policy: str) -> str:
    if policy == DISABLED or accelerator == CPU:
        return CPU
    if accelerator == AUTO:
        return AUTO
    return "hardware"


def _suits(pool: PoolView, accelerator: str, policy: str) -> bool:
    """Whether a pool named by poolRef may run the job."""
    mode = _mode(accelerator, policy)
    if mode == CPU:
        return pool.accelerator == CPU
    if mode == AUTO:
        return True
    return pool.accelerator == accelerator or (policy == PREFERRED and pool.accelerator == CPU)


def _missing(stats: _PoolStats, codecs: tuple[str, ...]) -> str:
    """The message "no ready worker of pool X has encoder E", for a pool whose workers cannot run codecs."""
    needed = needed_encoders(stats.pool.accelerator, codecs)
    have = set().union(*(e for e in stats.accepting_encoders if e is not None))
    missing = [e for e in needed if e not in have] or needed  # each is there, but not all on one worker
    together = "" if len(missing) < len(needed) or len(needed) == 1 else " together"
    noun = "encoder" if len(missing) == 1 else "encoders"
    return f"no ready worker of pool {stats.pool.name} has {noun} {', '.join(missing)}{together}"


def _only(ns: _Namespace, keep: Callable[[PoolView], bool]) -> _Namespace:
    """The namespace as a job that needs something of its pools sees it: the pools that `keep` only."""
    return _Namespace(
        {name: stats for name, stats in ns.pools.items() if keep(stats.pool)},
        {acc: [p for p in pools if keep(p)] for acc, pools in ns.by_accelerator.items()},
    )


@dataclass(frozen=True, slots=True)
class _Need:
    """What a job needs of a pool beyond accelerator and encoders, and how a block says so."""

    keep: Callable[[PoolView], bool]
    lacks: str  # after "WorkerPool P (poolRef)"
    none: str  # after "no WorkerPool in namespace N"
    among: str  # after "... among"
    why: str


_NEEDS_STORAGE = "and the job reads an s3:// input or uploads to spec.destination"


def _needs(object_storage: bool, secrets: tuple[str, ...]) -> list[_Need]:
    needs: list[_Need] = []
    if object_storage:
        needs.append(_Need(lambda p: p.object_storage, "has no spec.objectStorage", "has spec.objectStorage",
                           "the pools with spec.objectStorage", _NEEDS_STORAGE))  # fmt: skip
    if secrets:
        names = ", ".join(secrets)
        listed = f"Secret{'s' if len(secrets) > 1 else ''} {names} in spec.jobSecrets"
        wanted = frozenset(secrets)
        needs.append(_Need(lambda p: wanted <= p.job_secrets, f"does not list {listed}", f"lists {listed}",
                           f"the pools that list {listed}", "and the job's credentials come from them"))  # fmt: skip
    return needs


def _eligibility(
    ns: _Namespace | None,
    namespace: str,
    accelerator: str,
    policy: str,
    pool_ref: str | None,
    codecs: tuple[str, ...] = (),
    object_storage: bool = False,
    secrets: tuple[str, ...] = (),
) -> _Eligibility:
    ns = ns if ns is not None else _Namespace()
    needs = _needs(object_storage, secrets)
    if not needs:
        return _eligibility_of(ns, namespace, accelerator, policy, pool_ref, codecs)
    ref = ns.pools.get(pool_ref) if pool_ref is not None else None
    for need in needs:
        if ref is not None and not need.keep(ref.pool):
            return _Eligibility((), f"WorkerPool {pool_ref} (poolRef) {need.lacks}, {need.why}", "")
    fit = _only(ns, lambda p: all(need.keep(p) for need in needs))
    el = _eligibility_of(fit, namespace, accelerator, policy, pool_ref, codecs)
    if el.tiers or pool_ref is not None:
        return el
    for need in needs:
        if not any(need.keep(stats.pool) for stats in ns.pools.values()):
            return _Eligibility((), f"no WorkerPool in namespace {namespace} {need.none}, {need.why}", "")
    among = " and ".join(need.among for need in needs)
    return _Eligibility((), f"{el.no_pool} among {among}, {' '.join(need.why for need in needs)}", "")


def _eligibility_of(
    ns: _Namespace,
    namespace: str,
    accelerator: str,
    policy: str,
    pool_ref: str | None,
    codecs: tuple[str, ...],
) -> _Eligibility:
    mode = _mode(accelerator, policy)
    if pool_ref is not None:
        stats = ns.pools.get(pool_ref)
        if stats is None:
            return _Eligibility((), f"WorkerPool {pool_ref} (poolRef) does not exist in namespace {namespace}", "")
        if not _suits(stats.pool, accelerator, policy):
            return _Eligibility(
                (),
                f"WorkerPool {pool_ref} (poolRef) runs {stats.pool.accelerator}, but the job needs "
                f"accelerator {accelerator} with hardwarePolicy {policy}",
                "",
            )
        return _Eligibility(((stats.pool,),), "", "")

    cpu_pools = tuple(ns.by_accelerator.get(CPU, ()))
    if mode == CPU:
        why = "" if cpu_pools else f"no cpu WorkerPool in namespace {namespace}"
        if why and accelerator != CPU:
            why += f" (hardwarePolicy {policy} allows cpu pools only)"
        return _Eligibility((cpu_pools,) if cpu_pools else (), why, "")
    if mode == AUTO:
        hardware = tuple(p for acc in sorted(ns.by_accelerator) if acc != CPU for p in ns.by_accelerator[acc])
        tiers = tuple(t for t in (hardware, cpu_pools) if t)
        return _Eligibility(tiers, "" if tiers else f"no WorkerPool in namespace {namespace}", "")

    matching = tuple(ns.by_accelerator.get(accelerator, ()))
    if policy == PREFERRED and not ns.ready(accelerator, codecs):
        tiers = tuple(t for t in (matching, cpu_pools) if t)
        if not tiers:
            return _Eligibility((), f"no {accelerator} or cpu WorkerPool in namespace {namespace}", "")
        if not cpu_pools:
            return _Eligibility(tiers, "", "")
        incapable = [ns.pools[p.name] for p in matching if ns.pools[p.name].known_incapable(codecs)]
        if incapable:
            note = f"{accelerator} is unavailable ({'; '.join(_missing(s, codecs) for s in incapable)})"
        elif matching:
            note = f"{accelerator} is unavailable (no ready worker in {_pools_phrase(matching)})"
        else:
            note = f"no {accelerator} WorkerPool in namespace {namespace}"
        return _Eligibility(tiers, "", note + ", falling back to cpu: ")
    if not matching:
        why = f"no {accelerator} WorkerPool in namespace {namespace}"
        if policy == REQUIRED:
            why += " (hardwarePolicy required: no cpu fallback)"
        return _Eligibility((), why, "")
    return _Eligibility((matching,), "", "")


def eligible_pools(job: QueuedJob, pools: Iterable[PoolView], workers: Iterable[WorkerSlots]) -> list[PoolView]:
    """The pools that may run `job`, best tier first (hardware before cpu), by name within a tier.

    Paused pools are included (they explain a PoolPaused block); `plan` assigns nothing to them.
    Pools whose ready workers all lack an encoder the job needs are left out: more of the same
    workers would not run it either.
    """
    index = _index(pools, _unique(workers))
    ns = index.get(job.namespace)
    el = _eligibility(
        ns, job.namespace, job.accelerator, job.hardware_policy, job.pool_ref, job.codecs, job.object_storage,
        job.secrets,
    )  # fmt: skip
    return [
        pool for tier in el.tiers for pool in tier if ns is None or not ns.pools[pool.name].known_incapable(job.codecs)
    ]


# --- planning ------------------------------------------------------------------------------------

# Heap entry of a worker with a free slot: (load, running, name, pool, capacity).
_Entry = tuple[float, int, str, str, int]
# Jobs of one kind share their eligibility: (namespace, accelerator, policy, poolRef, codecs, object storage,
# Secrets).
_Kind = tuple[str, str, str, str | None, tuple[str, ...], bool, tuple[str, ...]]


def _explain(el: _Eligibility, ns: _Namespace | None, job: QueuedJob) -> tuple[str, str]:
    """Reason and message for a job that found no slot (given that none is free now).

    Messages name pools but no counts, so they stay the same while a pool scales and the
    caller does not rewrite every queued job's status at each step.
    """
    if not el.tiers or ns is None:
        return NO_MATCHING_POOL, el.no_pool or f"no WorkerPool in namespace {job.namespace} matches the job"
    matching = [p for tier in el.tiers for p in tier]
    live = [ns.pools[p.name] for p in matching if not p.paused]
    paused = [p for p in matching if p.paused]
    note = el.fallback_note
    paused_note = f"; {_pools_phrase(paused)} paused" if paused and live else ""
    if not live:
        return POOL_PAUSED, f"{note}{_pools_phrase(paused)} paused (spec.paused): no new jobs are handed out"
    accepting = sum(s.accepting for s in live)
    codecs = job.codecs
    if accepting and not any(s.capable(codecs) for s in live):
        incapable = [s for s in live if s.known_incapable(codecs)]
        return NO_CAPABLE_WORKER, note + "; ".join(_missing(s, codecs) for s in incapable) + paused_note
    if accepting == 0:
        reason = NO_READY_WORKER
        existing = sum(s.workers for s in live)
        pools = _pools_phrase(s.pool for s in live)
        storage = next((s for s in live if s.storage_problem), None)
        if existing == 0:
            has = "has" if len(live) == 1 else "have"
            detail = f"{pools} {has} no worker yet (waiting for scale-up)"
        elif storage is not None:
            reason = STORAGE_UNAVAILABLE
            detail = f"workers of pool {storage.pool.name} failed their storage check: {storage.storage_problem}"
        else:
            detail = f"no worker in {pools} is ready (starting, encoder self-test failed, draining or retiring)"
        if _mode(job.accelerator, job.hardware_policy) == "hardware" and job.pool_ref is None:
            if job.hardware_policy == REQUIRED:
                detail += "; hardwarePolicy required: no cpu fallback"
            elif all(s.pool.accelerator != CPU for s in live):
                detail += "; no cpu WorkerPool to fall back to"
        return reason, note + detail + paused_note
    busy = [s.pool for s in live if s.capable(codecs)]
    return (
        NO_FREE_SLOT,
        f"{note}waiting for a free slot: every slot of the ready workers in {_pools_phrase(busy)} is busy{paused_note}",
    )


def _backoff_message(not_before: float) -> str:
    at = datetime.fromtimestamp(not_before, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"retry backoff: not scheduled before {at}"


def plan(
    jobs: Iterable[QueuedJob], workers: Iterable[WorkerSlots], pools: Iterable[PoolView], now: float
) -> tuple[list[Assignment], list[Blocked]]:
    """Assign queued jobs to free worker slots.

    Returns the assignments in the order they were made (highest priority first) and a `Blocked`
    for every other job. Jobs with the same key are planned once (the first in queue order).
    """
    worker_list = _unique(workers)
    index = _index(pools, worker_list)

    # Per live pool, one heap per distinct encoder set of its workers (usually one).
    heaps: dict[tuple[str, str], dict[Encoders, list[_Entry]]] = {}
    for ns_name, ns in index.items():
        for name, stats in ns.pools.items():
            if not stats.pool.paused:
                heaps[(ns_name, name)] = {}
    for w in worker_list:
        groups = heaps.get((w.namespace, w.pool))
        if groups is None or not w.accepting or w.capacity - w.running <= 0:
            continue
        running = max(w.running, 0)
        groups.setdefault(w.encoders, []).append((running / w.capacity, running, w.name, w.pool, w.capacity))
    for groups in heaps.values():
        for heap in groups.values():
            heapq.heapify(heap)

    ordered = sorted(jobs, key=lambda j: (-j.priority, j.queued_at, j.key))
    # Per (namespace, accelerator, policy, poolRef, codecs, object storage): the eligibility and the live heaps of
    # the workers that can run those codecs, tier by tier.
    cache: dict[_Kind, tuple[_Eligibility, tuple[list[list[_Entry]], ...]]] = {}
    explained: dict[_Kind, tuple[str, str]] = {}
    seen: set[str] = set()
    assignments: list[Assignment] = []
    blocked: list[Blocked] = []

    for job in ordered:
        if job.key in seen:
            continue
        seen.add(job.key)
        if job.not_before is not None and job.not_before > now:
            blocked.append(Blocked(job.key, BACKOFF, _backoff_message(job.not_before)))
            continue
        ckey = (job.namespace, job.accelerator, job.hardware_policy, job.pool_ref, job.codecs, job.object_storage,
                job.secrets)  # fmt: skip
        cached = cache.get(ckey)
        if cached is None:
            el = _eligibility(
                index.get(job.namespace), job.namespace, job.accelerator, job.hardware_policy, job.pool_ref,
                job.codecs, job.object_storage, job.secrets,
            )  # fmt: skip
            live = tuple(
                [
                    heap
                    for p in tier
                    if not p.paused
                    for encoders, heap in heaps[(job.namespace, p.name)].items()
                    if capable(encoders, p.accelerator, job.codecs)
                ]
                for tier in el.tiers
            )
            cached = cache[ckey] = (el, live)
        el, live = cached

        placed: Assignment | None = None
        for tier_heaps in live:
            best: list[_Entry] | None = None
            exhausted = False
            for heap in tier_heaps:
                if not heap:
                    exhausted = True
                elif best is None or heap[0] < best[0]:
                    best = heap
            if exhausted:  # a pool out of free slots stays so: stop looking at it (shared by all jobs)
                tier_heaps[:] = [h for h in tier_heaps if h]
            if best is None:
                continue
            _, running, name, pool, capacity = best[0]
            running += 1
            if running < capacity:
                heapq.heapreplace(best, (running / capacity, running, name, pool, capacity))
            else:
                heapq.heappop(best)
            placed = Assignment(job.key, name, pool, index[job.namespace].pools[pool].pool.accelerator)
            break
        if placed is not None:
            assignments.append(placed)
            continue
        # No slot in any tier now, and slots only fill up: the explanation holds for the rest of
        # the plan and for every job with the same eligibility.
        why = explained.get(ckey)
        if why is None:
            why = explained[ckey] = _explain(el, index.get(job.namespace), job)
        blocked.append(Blocked(job.key, why[0], why[1]))
    return assignments, blocked
