"""Scheduling: properties over random snapshots, checked against a literal oracle, plus examples."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ffrtmp.controller.scheduling import (
    NO_CAPABLE_WORKER,
    Assignment,
    Blocked,
    PoolView,
    QueuedJob,
    WorkerSlots,
    eligible_pools,
    plan,
)

pytestmark = pytest.mark.unit

NOW = 100.0
NAMESPACES = ["a", "b"]
POOL_NAMES = ["gpu", "gpu2", "intel", "va", "cpu", "cpu2"]
POOL_ACCELERATORS = ["nvenc", "qsv", "vaapi", "cpu"]
HARDWARE = {"nvenc", "qsv", "vaapi"}
JOB_ACCELERATORS = ["auto", "nvenc", "qsv", "vaapi", "cpu"]
POLICIES = ["required", "preferred", "disabled"]
CODECS = ["h264", "hevc", "av1"]
# What each accelerator's encoder of each codec is called (encoders.video_encoder, written out).
ENCODER_NAMES = {
    "cpu": {"h264": "libx264", "hevc": "libx265", "av1": "libsvtav1"},
    "nvenc": {"h264": "h264_nvenc", "hevc": "hevc_nvenc", "av1": "av1_nvenc"},
    "qsv": {"h264": "h264_qsv", "hevc": "hevc_qsv", "av1": "av1_qsv"},
    "vaapi": {"h264": "h264_vaapi", "hevc": "hevc_vaapi", "av1": "av1_vaapi"},
}


def can_run(w: WorkerSlots, job: QueuedJob) -> bool:
    """The worker's self-tested encoders cover every codec of the job (no list: any codec)."""
    return w.encoders is None or all(ENCODER_NAMES[w.accelerator][c] in w.encoders for c in job.codecs)


# --- the rules, stated as plainly as possible ---------------------------------------------------


def oracle_eligible(job: QueuedJob, pools: list[PoolView], workers: list[WorkerSlots]) -> set[str]:
    """Names of the pools (paused ones included) in the job's namespace that may run it. A job that needs
    object storage sees only the pools that have it, one with credentials from Secrets only the pools that
    list them all."""
    mine = [
        p for p in pools if p.namespace == job.namespace and (p.object_storage or not job.object_storage)
        and set(job.secrets) <= p.job_secrets
    ]  # fmt: skip
    cpu_only = job.hardware_policy == "disabled" or job.accelerator == "cpu"

    def suits(p: PoolView) -> bool:
        if cpu_only:
            return p.accelerator == "cpu"
        if job.accelerator == "auto":
            return True
        return p.accelerator == job.accelerator or (job.hardware_policy == "preferred" and p.accelerator == "cpu")

    if job.pool_ref is not None:
        return {p.name for p in mine if p.name == job.pool_ref and suits(p)}
    if cpu_only:
        return {p.name for p in mine if p.accelerator == "cpu"}
    if job.accelerator == "auto":
        return {p.name for p in mine}
    matching = {p.name for p in mine if p.accelerator == job.accelerator}
    hardware_ready = any(
        w.accepting and can_run(w, job) and w.namespace == job.namespace and w.pool in matching for w in workers
    )
    if job.hardware_policy == "preferred" and not hardware_ready:
        return matching | {p.name for p in mine if p.accelerator == "cpu"}
    return matching


def order(job: QueuedJob) -> tuple[int, float, str]:
    return (-job.priority, job.queued_at, job.key)


# --- random snapshots ---------------------------------------------------------------------------


@st.composite
def snapshots(draw: st.DrawFn) -> tuple[list[QueuedJob], list[WorkerSlots], list[PoolView]]:
    pools = draw(
        st.lists(
            st.builds(
                PoolView,
                name=st.sampled_from(POOL_NAMES),
                namespace=st.sampled_from(NAMESPACES),
                accelerator=st.sampled_from(POOL_ACCELERATORS),
                paused=st.sampled_from([False, False, True]),
                object_storage=st.booleans(),
                job_secrets=st.sampled_from([frozenset(), frozenset({"a"}), frozenset({"a", "b"})]),
            ),
            max_size=7,
            unique_by=lambda p: (p.namespace, p.name),
        )
    )
    by_key = {(p.namespace, p.name): p for p in pools}
    workers: list[WorkerSlots] = []
    for i in range(draw(st.integers(0, 14))):
        if pools and draw(st.integers(0, 9)) > 0:
            pool = draw(st.sampled_from(pools))
            ns, pool_name, acc = pool.namespace, pool.name, pool.accelerator
        else:  # a worker of a pool that does not exist (deleted, or not yet seen)
            ns, pool_name = draw(st.sampled_from(NAMESPACES)), draw(st.sampled_from([*POOL_NAMES, "ghost"]))
            known = by_key.get((ns, pool_name))
            acc = known.accelerator if known else draw(st.sampled_from(POOL_ACCELERATORS))
        capacity = draw(st.integers(1, 4))
        tested = draw(st.lists(st.sampled_from(CODECS), unique=True))
        encoders = draw(st.none() | st.just(frozenset(ENCODER_NAMES[acc][c] for c in tested)))
        workers.append(
            WorkerSlots(
                name=f"w{i}",
                namespace=ns,
                pool=pool_name,
                accelerator=acc,
                capacity=capacity,
                running=draw(st.integers(0, capacity + 1)),
                accepting=draw(st.integers(0, 4)) > 0,
                encoders=encoders,
            )
        )
    jobs: list[QueuedJob] = []
    for i in range(draw(st.integers(0, 25))):
        ns = draw(st.sampled_from(NAMESPACES))
        jobs.append(
            QueuedJob(
                key=f"{ns}/j{i}",
                namespace=ns,
                priority=draw(st.integers(-1, 2)),
                queued_at=float(draw(st.integers(0, 6))),
                accelerator=draw(st.sampled_from(JOB_ACCELERATORS)),
                hardware_policy=draw(st.sampled_from(POLICIES)),
                pool_ref=draw(st.none() | st.none() | st.sampled_from([*POOL_NAMES, "ghost"])),
                not_before=draw(st.none() | st.none() | st.floats(NOW - 10, NOW + 10)),
                codecs=tuple(sorted(draw(st.lists(st.sampled_from(CODECS), unique=True, max_size=2)))),
                object_storage=draw(st.sampled_from([False, False, True])),
                secrets=draw(st.sampled_from([(), (), ("a",), ("a", "b")])),
            )
        )
    return jobs, workers, pools


Snapshot = tuple[list[QueuedJob], list[WorkerSlots], list[PoolView]]


def free_after(
    workers: list[WorkerSlots], assignments: list[Assignment], jobs: dict[str, QueuedJob]
) -> dict[tuple[str, str], int]:
    """Free slots per (namespace, worker) once the plan is applied."""
    taken = Counter((jobs[a.job].namespace, a.worker) for a in assignments)
    return {(w.namespace, w.name): max(w.capacity - w.running, 0) - taken[(w.namespace, w.name)] for w in workers}


def usable(w: WorkerSlots, pools: dict[tuple[str, str], PoolView], job: QueuedJob) -> bool:
    pool = pools.get((w.namespace, w.pool))
    return w.accepting and pool is not None and not pool.paused and can_run(w, job)


def known_incapable(pool: PoolView, workers: list[WorkerSlots], job: QueuedJob) -> bool:
    """The pool has ready workers and none of them can run the job."""
    ready = [w for w in workers if w.namespace == pool.namespace and w.pool == pool.name and w.accepting]
    return bool(ready) and not any(can_run(w, job) for w in ready)


PROPERTY = settings(max_examples=100, deadline=None)


@PROPERTY
@given(snapshots())
def test_every_job_is_assigned_once_or_blocked_once(snap: Snapshot) -> None:
    jobs, workers, pools = snap
    assignments, blocked = plan(jobs, workers, pools, NOW)
    assigned = [a.job for a in assignments]
    held = [b.job for b in blocked]
    assert len(assigned) == len(set(assigned))
    assert len(held) == len(set(held))
    assert set(assigned).isdisjoint(held)
    assert set(assigned) | set(held) == {j.key for j in jobs}


@PROPERTY
@given(snapshots())
def test_no_worker_is_over_committed_and_only_accepting_workers_of_live_pools_get_jobs(
    snap: Snapshot,
) -> None:
    jobs, workers, pools = snap
    by_job = {j.key: j for j in jobs}
    pool_by_key = {(p.namespace, p.name): p for p in pools}
    worker_by_key = {(w.namespace, w.name): w for w in workers}
    assignments, _ = plan(jobs, workers, pools, NOW)
    assert all(free >= 0 for free in free_after(workers, assignments, by_job).values())
    for a in assignments:
        job = by_job[a.job]
        worker = worker_by_key[(job.namespace, a.worker)]  # namespaces never mix
        pool = pool_by_key[(job.namespace, a.pool)]
        assert worker.pool == a.pool
        assert worker.accepting
        assert can_run(worker, job), (worker, job)
        assert not pool.paused
        assert a.accelerator == pool.accelerator


@PROPERTY
@given(snapshots())
def test_assignments_respect_eligibility_and_required_never_falls_back(snap: Snapshot) -> None:
    jobs, workers, pools = snap
    by_job = {j.key: j for j in jobs}
    assignments, _ = plan(jobs, workers, pools, NOW)
    for a in assignments:
        job = by_job[a.job]
        assert a.pool in oracle_eligible(job, pools, workers)
        assert job.not_before is None or job.not_before <= NOW
        if job.hardware_policy == "required" and job.accelerator in HARDWARE:
            assert a.accelerator == job.accelerator
        if job.hardware_policy == "disabled" or job.accelerator == "cpu":
            assert a.accelerator == "cpu"


@PROPERTY
@given(snapshots())
def test_eligible_pools_matches_the_oracle_hardware_first(snap: Snapshot) -> None:
    jobs, workers, pools = snap
    for job in jobs:
        got = eligible_pools(job, pools, workers)
        mine = {p.name: p for p in pools if p.namespace == job.namespace}
        expected = {n for n in oracle_eligible(job, pools, workers) if not known_incapable(mine[n], workers, job)}
        assert {p.name for p in got} == expected
        assert all(p.namespace == job.namespace for p in got)
        kinds = [p.accelerator == "cpu" for p in got]
        assert kinds == sorted(kinds)  # hardware pools before cpu pools


@PROPERTY
@given(snapshots())
def test_nothing_assignable_is_left_unassigned(snap: Snapshot) -> None:
    jobs, workers, pools = snap
    by_job = {j.key: j for j in jobs}
    pool_by_key = {(p.namespace, p.name): p for p in pools}
    assignments, blocked = plan(jobs, workers, pools, NOW)
    free = free_after(workers, assignments, by_job)
    for b in blocked:
        if b.reason == "Backoff":
            continue
        job = by_job[b.job]
        eligible = oracle_eligible(job, pools, workers)
        for w in workers:
            if w.namespace == job.namespace and w.pool in eligible and usable(w, pool_by_key, job):
                assert free[(w.namespace, w.name)] == 0, (b, w)


@PROPERTY
@given(snapshots())
def test_priority_then_fifo_order_is_respected(snap: Snapshot) -> None:
    """No job may take a worker that an earlier (higher priority, or older) waiting job could use."""
    jobs, workers, pools = snap
    by_job = {j.key: j for j in jobs}
    pool_by_key = {(p.namespace, p.name): p for p in pools}
    worker_by_key = {(w.namespace, w.name): w for w in workers}
    assignments, blocked = plan(jobs, workers, pools, NOW)
    waiting = [by_job[b.job] for b in blocked if b.reason != "Backoff"]
    for a in assignments:
        taken = by_job[a.job]
        worker = worker_by_key[(taken.namespace, a.worker)]
        for job in waiting:
            if job.namespace != worker.namespace or order(job) >= order(taken):
                continue
            assert not (usable(worker, pool_by_key, job) and worker.pool in oracle_eligible(job, pools, workers)), (
                f"{a.job} took {a.worker} although earlier {job.key} could have used it"
            )


@PROPERTY
@given(snapshots())
def test_auto_jobs_use_cpu_only_when_no_hardware_slot_is_left(snap: Snapshot) -> None:
    jobs, workers, pools = snap
    by_job = {j.key: j for j in jobs}
    pool_by_key = {(p.namespace, p.name): p for p in pools}
    assignments, _ = plan(jobs, workers, pools, NOW)
    free = free_after(workers, assignments, by_job)
    for a in assignments:
        job = by_job[a.job]
        if job.accelerator != "auto" or job.hardware_policy == "disabled" or job.pool_ref or a.accelerator != "cpu":
            continue
        for w in workers:
            pool = pool_by_key.get((w.namespace, w.pool))
            if w.namespace == job.namespace and usable(w, pool_by_key, job) and pool and pool.accelerator != "cpu":
                assert free[(w.namespace, w.name)] == 0


@PROPERTY
@given(snapshots())
def test_blocked_reason_is_the_most_specific_one(snap: Snapshot) -> None:
    jobs, workers, pools = snap
    by_job = {j.key: j for j in jobs}
    pool_by_key = {(p.namespace, p.name): p for p in pools}
    _, blocked = plan(jobs, workers, pools, NOW)
    for b in blocked:
        job = by_job[b.job]
        assert b.message
        if job.not_before is not None and job.not_before > NOW:
            assert b.reason == "Backoff"
            continue
        eligible = oracle_eligible(job, pools, workers)
        live = {n for n in eligible if not pool_by_key[(job.namespace, n)].paused}
        ready = [w for w in workers if w.namespace == job.namespace and w.pool in live and w.accepting]
        if not eligible:
            expected = "NoMatchingPool"
        elif not live:
            expected = "PoolPaused"
        elif not ready:
            expected = "NoReadyWorker"
        elif not any(can_run(w, job) for w in ready):
            expected = NO_CAPABLE_WORKER
            assert "has encoder" in b.message, b
        else:
            expected = "NoFreeSlot"
        assert b.reason == expected, (b, job)


@PROPERTY
@given(snapshots(), st.randoms(use_true_random=False))
def test_plan_does_not_depend_on_input_order(snap: Snapshot, rnd: random.Random) -> None:
    jobs, workers, pools = snap
    first = plan(jobs, workers, pools, NOW)
    jobs2, workers2, pools2 = list(jobs), list(workers), list(pools)
    rnd.shuffle(jobs2)
    rnd.shuffle(workers2)
    rnd.shuffle(pools2)
    again = plan(jobs2, workers2, pools2, NOW)
    assert first == again


# --- examples -----------------------------------------------------------------------------------


def job(
    name: str,
    accelerator: str = "auto",
    policy: str = "preferred",
    *,
    priority: int = 0,
    queued_at: float = 0.0,
    pool_ref: str | None = None,
    not_before: float | None = None,
    ns: str = "media",
    codecs: tuple[str, ...] = (),
    object_storage: bool = False,
    secrets: tuple[str, ...] = (),
) -> QueuedJob:
    return QueuedJob(
        f"{ns}/{name}", ns, priority, queued_at, accelerator, policy, pool_ref, not_before, codecs, object_storage,
        secrets,
    )  # fmt: skip


def worker(
    name: str,
    pool: str,
    accelerator: str,
    *,
    capacity: int = 1,
    running: int = 0,
    accepting: bool = True,
    ns: str = "media",
    encoders: frozenset[str] | None = None,
) -> WorkerSlots:
    return WorkerSlots(name, ns, pool, accelerator, capacity, running, accepting, encoders=encoders)


GPU = PoolView("gpu", "media", "nvenc", False)
CPU = PoolView("cpu", "media", "cpu", False)


def reasons(blocked: list[Blocked]) -> dict[str, str]:
    return {b.job.split("/")[1]: b.reason for b in blocked}


def test_empty_inputs_plan_nothing() -> None:
    assert plan([], [], [], NOW) == ([], [])


def test_no_matching_pool_when_required_hardware_has_no_pool() -> None:
    assignments, blocked = plan([job("j", "qsv", "required")], [worker("c1", "cpu", "cpu")], [GPU, CPU], NOW)
    assert assignments == []
    assert blocked[0].reason == "NoMatchingPool"
    assert "no qsv WorkerPool in namespace media" in blocked[0].message
    assert "no cpu fallback" in blocked[0].message


def test_no_matching_pool_for_a_missing_or_unsuitable_pool_ref() -> None:
    jobs = [job("ghost", pool_ref="nope"), job("wrong", "nvenc", "required", pool_ref="cpu")]
    _, blocked = plan(jobs, [worker("c1", "cpu", "cpu")], [GPU, CPU], NOW)
    by_job = {b.job: b for b in blocked}
    assert by_job["media/ghost"].reason == "NoMatchingPool"
    assert "nope" in by_job["media/ghost"].message
    assert by_job["media/wrong"].reason == "NoMatchingPool"
    assert "runs cpu" in by_job["media/wrong"].message


def test_jobs_that_need_object_storage_go_only_to_pools_that_have_it() -> None:
    s3 = PoolView("s3", "media", "cpu", False, object_storage=True)
    workers = [worker("c1", "cpu", "cpu", capacity=4), worker("s1", "s3", "cpu", capacity=2, running=1)]
    jobs = [job("a", "cpu", object_storage=True), job("b", "cpu", object_storage=True, queued_at=1), job("c", "cpu")]
    assignments, blocked = plan(jobs, workers, [CPU, s3], NOW)
    assert [(a.job, a.worker) for a in assignments] == [("media/a", "s1"), ("media/c", "c1")]
    assert [(b.job, b.reason) for b in blocked] == [("media/b", "NoFreeSlot")], "the idle cpu pool is not for it"
    assert "pool s3" in blocked[0].message
    # preferred hardware falls back to a cpu pool with object storage when no nvenc pool has it
    assignments, _ = plan([job("g", "nvenc", object_storage=True)], [*workers, worker("g1", "gpu", "nvenc")],
                          [GPU, CPU, s3], NOW)  # fmt: skip
    assert [a.worker for a in assignments] == ["s1"]


def test_no_matching_pool_for_a_job_that_needs_object_storage() -> None:
    jobs = [job("any", "cpu", object_storage=True), job("ref", pool_ref="cpu", object_storage=True)]
    _, blocked = plan(jobs, [worker("c1", "cpu", "cpu")], [CPU], NOW)
    by_job = {b.job: (b.reason, b.message) for b in blocked}
    assert by_job["media/any"] == ("NoMatchingPool", "no WorkerPool in namespace media has spec.objectStorage, "
                                   "and the job reads an s3:// input or uploads to spec.destination")  # fmt: skip
    assert by_job["media/ref"][0] == "NoMatchingPool"
    assert by_job["media/ref"][1].startswith("WorkerPool cpu (poolRef) has no spec.objectStorage")
    s3_gpu = PoolView("s3-gpu", "media", "nvenc", False, object_storage=True)
    _, blocked = plan([job("cpu-only", "cpu", object_storage=True)], [], [CPU, s3_gpu], NOW)
    assert blocked[0].message == (
        "no cpu WorkerPool in namespace media among the pools with spec.objectStorage, "
        "and the job reads an s3:// input or uploads to spec.destination"
    )


def test_jobs_with_credentials_from_secrets_go_only_to_pools_that_list_them_all() -> None:
    both = PoolView("both", "media", "cpu", False, job_secrets=frozenset({"media-credentials", "stream-keys"}))
    one = PoolView("one", "media", "cpu", False, job_secrets=frozenset({"media-credentials"}))
    workers = [worker("c1", "cpu", "cpu"), worker("o1", "one", "cpu"), worker("b1", "both", "cpu")]
    jobs = [
        job("two", "cpu", secrets=("media-credentials", "stream-keys")),
        job("first", "cpu", secrets=("media-credentials",), queued_at=1),
        job("plain", "cpu", queued_at=2),
    ]
    assignments, blocked = plan(jobs, workers, [CPU, one, both], NOW)
    assert {a.job: a.worker for a in assignments} == {"media/two": "b1", "media/first": "o1", "media/plain": "c1"}
    assert blocked == []
    # Blocked, saying why: no pool lists them, or the poolRef's pool does not.
    jobs = [
        job("none", "cpu", secrets=("other",)),
        job("ref", pool_ref="one", secrets=("media-credentials", "stream-keys")),
    ]
    _, blocked = plan(jobs, workers, [CPU, one, both], NOW)
    by_job = {b.job: (b.reason, b.message) for b in blocked}
    assert by_job["media/none"] == ("NoMatchingPool", "no WorkerPool in namespace media lists Secret other in "
                                    "spec.jobSecrets, and the job's credentials come from them")  # fmt: skip
    assert by_job["media/ref"] == ("NoMatchingPool", "WorkerPool one (poolRef) does not list Secrets "
                                   "media-credentials, stream-keys in spec.jobSecrets, and the job's credentials "
                                   "come from them")  # fmt: skip
    # With object storage too: both needs hold at once.
    s3 = PoolView("s3", "media", "cpu", False, object_storage=True)
    _, blocked = plan([job("s3-secret", "nvenc", "required", object_storage=True, secrets=("media-credentials",))],
                      workers, [s3, one], NOW)  # fmt: skip
    assert blocked[0].message == (
        "no nvenc WorkerPool in namespace media (hardwarePolicy required: no cpu fallback) among the pools with "
        "spec.objectStorage and the pools that list Secret media-credentials in spec.jobSecrets, and the job reads "
        "an s3:// input or uploads to spec.destination and the job's credentials come from them"
    )


def test_pools_of_other_namespaces_never_match() -> None:
    other = PoolView("cpu", "elsewhere", "cpu", False)
    assignments, blocked = plan([job("j", "cpu")], [worker("c1", "cpu", "cpu", ns="elsewhere")], [other], NOW)
    assert assignments == []
    assert blocked[0].reason == "NoMatchingPool"


def test_pool_paused() -> None:
    paused = PoolView("cpu", "media", "cpu", True)
    assignments, blocked = plan([job("j", "cpu")], [worker("c1", "cpu", "cpu")], [paused], NOW)
    assert assignments == []
    assert blocked == [Blocked("media/j", "PoolPaused", blocked[0].message)]
    assert "paused" in blocked[0].message


def test_paused_pool_is_skipped_for_another_eligible_pool() -> None:
    paused = PoolView("cpu", "media", "cpu", True)
    other = PoolView("cpu2", "media", "cpu", False)
    assignments, _ = plan(
        [job("j", "cpu")],
        [worker("c1", "cpu", "cpu", capacity=4), worker("c2", "cpu2", "cpu", running=0)],
        [paused, other],
        NOW,
    )
    assert [a.worker for a in assignments] == ["c2"]


def test_no_ready_worker_when_the_encoder_self_test_failed() -> None:
    assignments, blocked = plan(
        [job("j", "nvenc", "required")], [worker("g1", "gpu", "nvenc", accepting=False)], [GPU, CPU], NOW
    )
    assert assignments == []
    assert blocked[0].reason == "NoReadyWorker"
    assert "no worker in pool gpu is ready" in blocked[0].message


def test_storage_unavailable_when_the_workers_failed_their_storage_check() -> None:
    problem = "output root /output is not writable: cannot create a file (Permission denied)"
    workers = [
        WorkerSlots("c1", "media", "cpu", "cpu", 1, 0, False, storage_problem=problem),
        worker("c2", "cpu", "cpu", accepting=False),
    ]
    assignments, blocked = plan([job("j", "cpu"), job("k", "cpu")], workers, [CPU], NOW)
    assert assignments == []
    assert [(b.reason, b.message) for b in blocked] == [
        ("StorageUnavailable", f"workers of pool cpu failed their storage check: {problem}")
    ] * 2


def test_one_accepting_worker_beats_a_storage_failure_elsewhere_in_the_pool() -> None:
    workers = [
        WorkerSlots("c1", "media", "cpu", "cpu", 1, 0, False, storage_problem="media root /media is not readable"),
        worker("c2", "cpu", "cpu"),
    ]
    assignments, blocked = plan([job("j", "cpu")], workers, [CPU], NOW)
    assert [a.worker for a in assignments] == ["c2"]
    assert blocked == []


def test_no_ready_worker_when_the_pool_has_no_worker_yet() -> None:
    _, blocked = plan([job("j", "cpu")], [], [CPU], NOW)
    assert blocked[0].reason == "NoReadyWorker"
    assert "no worker yet" in blocked[0].message


def test_no_free_slot_when_every_slot_is_busy() -> None:
    assignments, blocked = plan(
        [job("j", "nvenc", "required")],
        [worker("g1", "gpu", "nvenc", capacity=2, running=2), worker("g2", "gpu", "nvenc", running=3)],
        [GPU],
        NOW,
    )
    assert assignments == []
    assert blocked[0].reason == "NoFreeSlot"
    assert "every slot of the ready workers in pool gpu is busy" in blocked[0].message


def test_backoff_until_not_before() -> None:
    jobs = [job("later", not_before=NOW + 30), job("now", not_before=NOW, queued_at=1)]
    assignments, blocked = plan(jobs, [worker("c1", "cpu", "cpu", capacity=2)], [CPU], NOW)
    assert [a.job for a in assignments] == ["media/now"]
    assert reasons(blocked) == {"later": "Backoff"}
    assert blocked[0].message == "retry backoff: not scheduled before 1970-01-01T00:02:10Z"


def test_preferred_falls_back_to_cpu_when_hardware_is_unavailable() -> None:
    jobs = [job("j", "nvenc", "preferred")]
    assignments, _ = plan(
        jobs, [worker("g1", "gpu", "nvenc", accepting=False), worker("c1", "cpu", "cpu")], [GPU, CPU], NOW
    )
    assert assignments == [Assignment("media/j", "c1", "cpu", "cpu")]
    # no nvenc pool at all: the same
    assignments, _ = plan(jobs, [worker("c1", "cpu", "cpu")], [CPU], NOW)
    assert assignments == [Assignment("media/j", "c1", "cpu", "cpu")]


def test_preferred_does_not_fall_back_because_hardware_is_busy() -> None:
    assignments, blocked = plan(
        [job("j", "nvenc", "preferred")],
        [worker("g1", "gpu", "nvenc", running=1), worker("c1", "cpu", "cpu")],
        [GPU, CPU],
        NOW,
    )
    assert assignments == []
    assert blocked[0].reason == "NoFreeSlot"
    assert [p.name for p in eligible_pools(job("j", "nvenc"), [GPU, CPU], [worker("g1", "gpu", "nvenc")])] == ["gpu"]


def test_preferred_fallback_that_finds_cpu_busy_says_so() -> None:
    _, blocked = plan(
        [job("j", "nvenc", "preferred")],
        [worker("g1", "gpu", "nvenc", accepting=False), worker("c1", "cpu", "cpu", running=1)],
        [GPU, CPU],
        NOW,
    )
    assert blocked[0].reason == "NoFreeSlot"
    assert blocked[0].message.startswith("nvenc is unavailable (no ready worker in pool gpu), falling back to cpu")


def test_a_paused_hardware_pool_holds_preferred_jobs_instead_of_falling_back() -> None:
    paused_gpu = PoolView("gpu", "media", "nvenc", True)
    assignments, blocked = plan(
        [job("j", "nvenc", "preferred")],
        [worker("g1", "gpu", "nvenc"), worker("c1", "cpu", "cpu")],
        [paused_gpu, CPU],
        NOW,
    )
    assert assignments == []
    assert blocked[0].reason == "PoolPaused"


def test_required_never_falls_back() -> None:
    assignments, blocked = plan(
        [job("j", "nvenc", "required")],
        [worker("g1", "gpu", "nvenc", accepting=False), worker("c1", "cpu", "cpu")],
        [GPU, CPU],
        NOW,
    )
    assert assignments == []
    assert blocked[0].reason == "NoReadyWorker"


def test_disabled_runs_on_cpu_only() -> None:
    assignments, _ = plan(
        [job("j", "auto", "disabled")],
        [worker("g1", "gpu", "nvenc", capacity=8), worker("c1", "cpu", "cpu", capacity=1, running=0)],
        [GPU, CPU],
        NOW,
    )
    assert [a.pool for a in assignments] == ["cpu"]


def test_auto_fills_hardware_before_cpu() -> None:
    jobs = [job(f"j{i}", queued_at=i) for i in range(4)]
    assignments, blocked = plan(
        jobs,
        [worker("g1", "gpu", "nvenc", capacity=2), worker("c1", "cpu", "cpu", capacity=1)],
        [GPU, CPU],
        NOW,
    )
    assert [(a.job, a.pool) for a in assignments] == [
        ("media/j0", "gpu"),
        ("media/j1", "gpu"),
        ("media/j2", "cpu"),
    ]
    assert reasons(blocked) == {"j3": "NoFreeSlot"}


def test_least_loaded_worker_wins() -> None:
    workers = [
        worker("a", "cpu", "cpu", capacity=4, running=2),  # 50 %
        worker("b", "cpu", "cpu", capacity=2, running=1),  # 50 %, fewer running
        worker("c", "cpu", "cpu", capacity=4, running=3),  # 75 %
    ]
    assignments, _ = plan([job(f"j{i}", "cpu", queued_at=i) for i in range(4)], workers, [CPU], NOW)
    # b (50 %, 1 running), a (50 %, 2 running), a (75 % vs 75 %: c has 3 running, a 3: name a), c
    assert [a.worker for a in assignments] == ["b", "a", "a", "c"]


def test_priority_then_fifo_then_key() -> None:
    jobs = [
        job("low", "cpu", priority=-1, queued_at=0),
        job("b-old", "cpu", priority=5, queued_at=1),
        job("a-old", "cpu", priority=5, queued_at=1),
        job("new", "cpu", priority=5, queued_at=2),
    ]
    assignments, blocked = plan(jobs, [worker("c1", "cpu", "cpu", capacity=2)], [CPU], NOW)
    assert [a.job for a in assignments] == ["media/a-old", "media/b-old"]
    assert reasons(blocked) == {"new": "NoFreeSlot", "low": "NoFreeSlot"}


def test_a_stuck_high_priority_job_does_not_block_others() -> None:
    jobs = [job("urgent", "nvenc", "required", priority=10), job("bulk", "cpu", priority=0)]
    assignments, blocked = plan(jobs, [worker("c1", "cpu", "cpu")], [GPU, CPU], NOW)
    assert [a.job for a in assignments] == ["media/bulk"]
    assert reasons(blocked) == {"urgent": "NoReadyWorker"}


def test_duplicate_job_keys_are_planned_once() -> None:
    jobs = [job("j", "cpu"), job("j", "cpu", queued_at=1)]
    assignments, blocked = plan(jobs, [worker("c1", "cpu", "cpu", capacity=4)], [CPU], NOW)
    assert len(assignments) == 1
    assert blocked == []


def test_large_snapshot_is_planned_completely() -> None:
    """2,000 jobs on 500 workers (the size the scheduler must handle quickly): all checks hold."""
    rnd = random.Random(7)
    pools = [PoolView(f"p{i}", "media", acc, False) for i, acc in enumerate(["nvenc", "qsv", "cpu", "cpu"])]
    workers = [
        worker(f"w{i}", p.name, p.accelerator, capacity=rnd.randint(1, 4), running=rnd.randint(0, 2))
        for i in range(500)
        for p in [rnd.choice(pools)]
    ]
    jobs = [
        job(
            f"j{i}",
            rnd.choice(JOB_ACCELERATORS),
            rnd.choice(POLICIES),
            priority=rnd.randint(0, 3),
            queued_at=i,
        )
        for i in range(2000)
    ]
    assignments, blocked = plan(jobs, workers, pools, NOW)
    assert len(assignments) + len(blocked) == 2000
    total_free = sum(max(w.capacity - w.running, 0) for w in workers)
    assert 0 < len(assignments) <= total_free
    taken = Counter(a.worker for a in assignments)
    assert all(taken[w.name] <= max(w.capacity - w.running, 0) for w in workers)


# --- capabilities -------------------------------------------------------------------------------

DEBIAN_NVENC = frozenset({"h264_nvenc", "hevc_nvenc"})  # Debian 12's ffmpeg has no av1_nvenc
CPU_ALL = frozenset({"libx264", "libx265", "libsvtav1"})


def test_a_job_no_worker_can_encode_waits_naming_the_missing_encoder() -> None:
    jobs = [job("av1", "nvenc", "required", codecs=("av1",)), job("hevc", "nvenc", "required", codecs=("hevc",))]
    workers = [worker("g1", "gpu", "nvenc", capacity=2, encoders=DEBIAN_NVENC)]
    assignments, blocked = plan(jobs, workers, [GPU], NOW)
    assert [(a.job, a.worker) for a in assignments] == [("media/hevc", "g1")]
    assert blocked == [Blocked("media/av1", NO_CAPABLE_WORKER, "no ready worker of pool gpu has encoder av1_nvenc")]


def test_preferred_falls_back_to_cpu_when_the_hardware_lacks_the_encoder() -> None:
    workers = [worker("g1", "gpu", "nvenc", encoders=DEBIAN_NVENC), worker("c1", "cpu", "cpu", encoders=CPU_ALL)]
    assignments, _ = plan([job("av1", "nvenc", "preferred", codecs=("av1",))], workers, [GPU, CPU], NOW)
    assert [(a.pool, a.accelerator) for a in assignments] == [("cpu", "cpu")]
    # The autoscaler is not told to grow the pool that cannot run it.
    assert [p.name for p in eligible_pools(job("x", "nvenc", "preferred", codecs=("av1",)), [GPU, CPU], workers)] == [
        "cpu"
    ]


def test_the_fallback_note_names_the_missing_encoder_when_cpu_is_busy() -> None:
    workers = [
        worker("g1", "gpu", "nvenc", encoders=DEBIAN_NVENC),
        worker("c1", "cpu", "cpu", running=1, encoders=CPU_ALL),
    ]
    _, blocked = plan([job("av1", "nvenc", "preferred", codecs=("av1",))], workers, [GPU, CPU], NOW)
    assert blocked[0].reason == "NoFreeSlot"
    assert blocked[0].message.startswith("nvenc is unavailable (no ready worker of pool gpu has encoder av1_nvenc)")


def test_auto_jobs_skip_hardware_that_cannot_encode_their_codec() -> None:
    workers = [worker("g1", "gpu", "nvenc", encoders=DEBIAN_NVENC), worker("c1", "cpu", "cpu", encoders=CPU_ALL)]
    assignments, _ = plan([job("av1", codecs=("av1",)), job("h264", codecs=("h264",))], workers, [GPU, CPU], NOW)
    assert {a.job: a.pool for a in assignments} == {"media/av1": "cpu", "media/h264": "gpu"}


def test_only_the_capable_worker_of_a_mixed_pool_gets_the_job() -> None:
    workers = [
        worker("old", "gpu", "nvenc", encoders=DEBIAN_NVENC),
        worker("new", "gpu", "nvenc", running=1, capacity=2, encoders=DEBIAN_NVENC | {"av1_nvenc"}),
    ]
    assignments, blocked = plan(
        [job("a", "nvenc", "required", codecs=("av1",)), job("b", "nvenc", "required", codecs=("av1",))],
        workers, [GPU], NOW,
    )  # fmt: skip
    assert [(a.job, a.worker) for a in assignments] == [("media/a", "new")]
    assert [(b.job, b.reason) for b in blocked] == [("media/b", "NoFreeSlot")]


def test_a_worker_without_a_capability_list_runs_any_codec() -> None:
    assignments, _ = plan([job("av1", "nvenc", "required", codecs=("av1",))], [worker("g", "gpu", "nvenc")], [GPU], NOW)
    assert len(assignments) == 1


def test_a_job_needing_two_encoders_no_single_worker_has_says_together() -> None:
    workers = [
        worker("h", "cpu", "cpu", encoders=frozenset({"libx264", "libx265"})),
        worker("a", "cpu", "cpu", encoders=frozenset({"libx264", "libsvtav1"})),
    ]
    _, blocked = plan([job("j", "cpu", codecs=("av1", "hevc"))], workers, [CPU], NOW)
    assert blocked == [
        Blocked("media/j", NO_CAPABLE_WORKER, "no ready worker of pool cpu has encoders libsvtav1, libx265 together")
    ]
