"""Chunked jobs (pure): what a parent with `spec.chunking.mode: On` (or Auto) needs next.

A chunked parent is never assigned to a worker itself. Its work is done by child TranscodeJobs,
which go through the same queue, priorities, slots, Leases and retries as any job:

1. `<parent>-plan` (chunkTask Plan) probes the input's duration (and its keyframes:
   `chunks.plan_probe_args`) on a worker (the operator cannot read media) and reports the chunk
   plan in its status; the plan is copied into the parent's `status.chunks.plan`, so a restarted
   operator continues the same plan.
2. `<parent>-c<i>` (Video) per chunk, at most `maxChunksInFlight` unfinished at once, and one
   `<parent>-audio` (Audio) for the whole input's audio.
3. `<parent>-stitch` (Stitch), once every chunk and the audio succeeded: it joins them into the
   parent's outputs and removes the work area; the parent then succeeds with its outputs.

`mode: Auto` goes the same way, except that the parent runs single-pass (a job like any other,
condition Chunked False with the reason) when its spec cannot be chunked, found before any child
is made, or when the plan task finds the input shorter than `autoMinSeconds`; a chunked parent
carries condition Chunked True with its reason (On too).

Children carry the parent's spec (without `chunking`, and without `notifications`: the parent tells
its own transitions), its priority and pool, the labels
ffmpeg-rtmp.io/parent and ffmpeg-rtmp.io/chunk, and an ownerReference to the parent. A child
that fails past its backoffLimit fails the parent with that child's reason. When the parent is
finished or gone its children are deleted (stopping any still running): a cluster without a
garbage collector cleans up the same way.

`spec.suspend: true` on a parent holds the work not yet started, as a suspended plain job is not
scheduled: no child is created, and children still waiting for a slot are suspended too (phase
Pending, condition Suspended, reason ParentSuspended) instead of being assigned. Children already
assigned or running finish (unlike a plain job's attempt, which is stopped: a chunk is short, and
its work is kept). The parent shows phase Pending with condition Suspended; its timeoutSeconds
clock is reset, as a plain job's is. With `suspend: false` again everything continues where it was.

The parent's `status.chunks` stays small whatever the chunk count: the plan as one string of
boundaries, counts, and the tasks that needed more than one attempt as a count (`retried`) plus at
most RETRIES_SHOWN records (`retries`), never one entry per chunk.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ffrtmp.api.constants import API_VERSION, CHUNKED_CONDITION, LABEL_CHUNK, LABEL_PARENT
from ffrtmp.api.job import AUTO_MIN_SECONDS, TranscodeJobSpec
from ffrtmp.conditions import condition, now_iso, set_conditions
from ffrtmp.controller.chunking import Chunk, ModeChoice, choose_mode, decode_boundaries
from ffrtmp.controller.state import JobView
from ffrtmp.ffmpeg.chunks import chunking_refusal

Obj = dict[str, Any]
PLAN, AUDIO, STITCH = "plan", "audio", "stitch"
RETRIES_SHOWN = 20


@dataclass(frozen=True, slots=True)
class CreateJob:
    """Create a child job; one that already exists (a decision repeated after a restart) is fine."""

    key: str
    body: Obj


@dataclass(frozen=True, slots=True)
class ChunkedDecision:
    creates: list[CreateJob]
    status: Obj | None  # a merge patch of the parent's status, None when nothing changed
    event: tuple[str, str, str] | None = None  # (type, reason, message) of an Event on the parent
    wake_at: float | None = None  # when the parent's timeoutSeconds runs out


def orphaned(child: JobView, jobs: dict[str, JobView]) -> bool:
    """A child whose parent is finished or gone (or was replaced by a job of the same name)."""
    parent = jobs.get(f"{child.namespace}/{child.parent}")
    return parent is None or parent.terminal or (child.uid_of_owner is not None and parent.uid != child.uid_of_owner)


def child_name(parent: str, part: str) -> str:
    return f"{parent}-{part}"


def video_part(index: int) -> str:
    return f"c{index:05d}"


def children_by_parent(jobs: Iterable[JobView]) -> dict[str, list[JobView]]:
    """Children keyed by their parent's key ("namespace/name")."""
    out: dict[str, list[JobView]] = {}
    for job in jobs:
        if job.parent is not None and job.part is not None:
            out.setdefault(f"{job.namespace}/{job.parent}", []).append(job)
    return out


def task_of(part: str) -> str:
    """The kind of work a child does, by its part label: plan, audio, stitch or video (a chunk)."""
    return part if part in (PLAN, AUDIO, STITCH) else "video"


def held_by_parent(child: JobView, jobs: dict[str, JobView]) -> bool:
    """A child not yet assigned whose chunked parent is suspended: it waits, suspended too."""
    if child.parent is None or child.part is None or child.active or child.terminal:
        return False
    parent = jobs.get(f"{child.namespace}/{child.parent}")
    return parent is not None and parent.suspend


def child_body(parent: JobView, spec: Obj, part: str, task: Obj) -> Obj:
    # suspend is the parent's: a child is held through it (held_by_parent), never stopped.
    dropped = ("chunking", "ttlSecondsAfterFinished", "slaSeconds", "suspend", "notifications")
    child_spec = {k: v for k, v in spec.items() if k not in dropped}
    child_spec["chunkTask"] = {"parent": parent.name, **task}
    return {
        "apiVersion": API_VERSION,
        "kind": "TranscodeJob",
        "metadata": {
            "name": child_name(parent.name, part),
            "namespace": parent.namespace,
            "labels": {LABEL_PARENT: parent.name, LABEL_CHUNK: part},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "TranscodeJob",
                    "name": parent.name,
                    "uid": parent.uid,
                    "controller": True,
                },
            ],
        },
        "spec": child_spec,
    }


def decide_chunked(parent: JobView, children: list[JobView], now: float) -> ChunkedDecision:
    """The next step of a chunked parent that is not finished."""
    assert parent.chunked_spec is not None
    spec: Obj = json.loads(parent.chunked_spec)
    chunking = spec.get("chunking") or {}
    mine = [c for c in children if c.uid_of_owner in (None, parent.uid)]
    by_part = {c.part: c for c in mine}
    creates: list[CreateJob] = []

    def create(part: str, task: Obj) -> None:
        if part not in by_part and not parent.suspend:
            creates.append(
                CreateJob(f"{parent.namespace}/{child_name(parent.name, part)}", child_body(parent, spec, part, task))
            )

    def step(
        stage: str, chunks: Obj, percent: float | None, event: tuple[str, str, str] | None,
        choice: ModeChoice | None = None,
    ) -> ChunkedDecision:  # fmt: skip
        """Running at `stage`, or suspended there (nothing new starts, no deadline runs)."""
        if parent.suspend:
            status, event = _suspended(parent, chunks, mine, now)
            return ChunkedDecision([], status, event)
        if parent.suspended:
            event = ("Normal", "Resumed", RESUMED)
        return ChunkedDecision(creates, _running(parent, stage, chunks, percent, now, choice), event, deadline)

    failed = sorted((c for c in mine if c.phase == "Failed"), key=lambda c: c.name)
    if failed:
        child = failed[0]
        reason = child.reason or "FfmpegError"
        message = f"{child.part} ({child.name}) failed: {child.message or reason}"
        return ChunkedDecision([], _finished(parent, "Failed", reason, message, now), ("Warning", reason, message))
    # timeoutSeconds bounds the whole chunked job, from its first step; each child also keeps it.
    deadline = None
    if parent.timeout_seconds is not None and parent.start_time is not None and not parent.suspend:
        deadline = parent.start_time + parent.timeout_seconds
        if deadline <= now:
            message = f"ran longer than timeoutSeconds ({parent.timeout_seconds}s); its chunks were stopped"
            expired = _finished(parent, "Failed", "DeadlineExceeded", message, now)
            return ChunkedDecision([], expired, ("Warning", "DeadlineExceeded", message))

    plan_text = (parent.chunks or {}).get("plan")
    if not plan_text:
        chunk_seconds = int(chunking.get("chunkSeconds", 10))
        mode = str(chunking.get("mode", "On"))
        refusal = chunking_refusal(TranscodeJobSpec.from_api(spec), chunk_seconds) if mode == "Auto" else None
        planner = by_part.get(PLAN)
        found = planner.chunk_plan if planner is not None and planner.phase == "Succeeded" else None
        chunks = decode_boundaries(found) if found else None
        duration = chunks[-1].end_us if chunks else None
        choice = choose_mode(mode, refusal, duration, int(chunking.get("autoMinSeconds", AUTO_MIN_SECONDS)))
        if choice is not None and not choice.chunked:
            return ChunkedDecision([], _single_pass(parent, choice, now), ("Normal", "SinglePass", choice.message))
        if found and chunks:
            planned = f"planned {len(chunks)} chunks of about {chunk_seconds} s"
            return step(
                "planned", {"plan": found, **_counts(chunks, mine)}, None, ("Normal", "Planned", planned), choice
            )
        create(PLAN, {"kind": "Plan", "chunkSeconds": chunk_seconds})
        return step("planning", {"summary": "planning"}, None, None, choice)

    chunks = decode_boundaries(plan_text)
    create(AUDIO, {"kind": "Audio"})
    limit = chunking.get("maxChunksInFlight")
    unfinished = sum(1 for c in mine if c.part not in (PLAN, AUDIO, STITCH) and c.phase != "Succeeded")
    for chunk in chunks:
        part = video_part(chunk.index)
        if part in by_part:
            continue
        if limit is not None and unfinished >= int(limit):
            break
        create(part, {"kind": "Video", "index": chunk.index, "startMicros": chunk.start_us, "endMicros": chunk.end_us})
        unfinished += 1
    counts = _counts(chunks, mine)
    encoded = counts["succeeded"] == len(chunks) and getattr(by_part.get(AUDIO), "phase", None) == "Succeeded"
    stitch = by_part.get(STITCH)
    if encoded and stitch is not None and stitch.phase == "Succeeded":
        outputs = json.loads(stitch.outputs_json or "[]")
        message = f"{len(chunks)} chunks encoded and stitched: {len(outputs)} output(s)"
        status = _finished(parent, "Succeeded", None, message, now)
        status["outputs"] = outputs
        status["chunks"] = {"plan": plan_text, **counts}
        if parent.suspended:
            status["conditions"] = set_conditions(
                status["conditions"],
                [("Suspended", "False", "Completed", message)],
                now=now,
                generation=parent.generation,
            )
        return ChunkedDecision([], status, ("Normal", "Completed", message))
    if encoded:
        create(STITCH, {"kind": "Stitch", "plan": plan_text})
    stage = "stitching" if encoded else "encoding"
    event = ("Normal", "Stitching", f"all {len(chunks)} chunks encoded") if encoded and stitch is None else None
    return step(stage, {"plan": plan_text, **counts}, _percent(chunks, mine, stitch), event)


def _counts(chunks: tuple[Chunk, ...], children: list[JobView]) -> Obj:
    video = [c for c in children if c.part not in (PLAN, AUDIO, STITCH)]
    succeeded = sum(1 for c in video if c.phase == "Succeeded")
    # A reason on a child not finished: requeued after a lost worker, before its next attempt.
    retried = sorted(
        (c for c in children if c.attempt > 1 or c.failed > 0 or c.reason is not None),
        key=lambda c: (-c.attempt, -c.failed, c.name),
    )
    return {
        "total": len(chunks),
        "succeeded": succeeded,
        "running": sum(1 for c in video if c.phase == "Running"),
        "failed": sum(1 for c in video if c.phase == "Failed"),
        "summary": f"{succeeded}/{len(chunks)}",
        "retried": len(retried),
        "retries": [_retry(c) for c in retried[:RETRIES_SHOWN]],
    }


def _retry(child: JobView) -> Obj:
    """A task that needed (or needs) more than one attempt: its part, attempts so far, failed attempts
    (those counted against backoffLimit; a lost worker's is not), and the last reason known."""
    record: Obj = {"part": child.part, "attempts": child.attempt, "failures": child.failed}
    reason = child.reason or (child.result.reason if child.result and child.result.outcome == "Failed" else None)
    if reason:
        record["reason"] = reason
    return record


def _percent(chunks: tuple[Chunk, ...], children: list[JobView], stitch: JobView | None) -> float:
    """Chunk percents weighted by chunk length; the stitch (a stream copy) counts as the last 2 %."""
    done = {c.part: (100.0 if c.phase == "Succeeded" else c.percent or 0.0) for c in children}
    total = chunks[-1].end_us
    encoded = sum(done.get(video_part(c.index), 0.0) * c.duration_us for c in chunks) / total
    stitched = (
        100.0 if stitch is not None and stitch.phase == "Succeeded" else (stitch.percent or 0.0) if stitch else 0.0
    )
    return round(encoded * 0.98 + stitched * 0.02, 1)


def _running(
    parent: JobView, stage: str, chunks: Obj, percent: float | None, now: float, choice: ModeChoice | None = None
) -> Obj | None:
    message = f"chunked: {stage}" + (f", {chunks['summary']} chunks encoded" if "total" in chunks else "")
    same = (
        parent.phase == "Running"
        and parent.message == message
        and all((parent.chunks or {}).get(k) == v for k, v in chunks.items())
    )
    said = condition(parent.conditions, CHUNKED_CONDITION)
    tell = choice is not None and (said is None or said.get("status") != "True" or said.get("reason") != choice.reason)
    if same and (percent is None or percent == parent.percent) and not tell:
        return None
    updates = [("Running", "True", "ChunksRunning", message)]
    if choice is not None and tell:
        updates.append((CHUNKED_CONDITION, "True", choice.reason, choice.message))
    if parent.suspended:
        updates.append(("Suspended", "False", "JobResumed", RESUMED))
    status: Obj = {
        "phase": "Running",
        "message": message,
        "chunks": chunks,
        "observedGeneration": parent.generation,
        "conditions": set_conditions(parent.conditions, updates, now=now, generation=parent.generation),
    }
    if parent.start_time is None:
        status["startTime"] = now_iso(now)
    if parent.queued_time is None:
        status["queuedTime"] = now_iso(now)
    if percent is not None:
        status["progress"] = {"percent": percent}
    return status


def _single_pass(parent: JobView, choice: ModeChoice, now: float) -> Obj:
    """Back to the queue as a job of its own: from now on it is scheduled and run like any job
    (`state.parse_job` reads the condition Chunked False); its plan task is deleted with it."""
    return {
        "phase": "Pending",
        "message": choice.message,
        "chunks": None,
        "progress": None,
        "startTime": None,
        "observedGeneration": parent.generation,
        "conditions": set_conditions(
            parent.conditions,
            [
                (CHUNKED_CONDITION, "False", choice.reason, choice.message),
                ("Running", "False", choice.reason, "not running"),
            ],
            now=now,
            generation=parent.generation,
        ),
    }


RESUMED = "resumed: spec.suspend is false"


def _suspended(
    parent: JobView, chunks: Obj, children: list[JobView], now: float
) -> tuple[Obj | None, tuple[str, str, str] | None]:
    """Phase Pending with condition Suspended, as a suspended plain job; the message counts the
    children already assigned or running (they finish)."""
    active = sum(1 for c in children if c.active)
    message = "suspended: spec.suspend is true" + (
        f"; {active} task(s) already started finish, nothing new starts" if active else ""
    )
    same = (
        parent.phase == "Pending"
        and parent.suspended
        and parent.message == message
        and all((parent.chunks or {}).get(k) == v for k, v in chunks.items())
    )
    if same:
        return None, None
    updates = [("Suspended", "True", "JobSuspended", message)]
    updates += [(t, "False", "JobSuspended", "suspended") for t in ("Running", "Scheduled", "Queued")]
    status: Obj = {
        "phase": "Pending",
        "message": message,
        "chunks": chunks,
        "startTime": None,  # timeoutSeconds counts again from the resume, as for a plain job
        "observedGeneration": parent.generation,
        "conditions": set_conditions(parent.conditions, updates, now=now, generation=parent.generation),
    }
    return status, None if parent.suspended else ("Normal", "Suspended", message)


def _finished(parent: JobView, phase: str, reason: str | None, message: str, now: float) -> Obj:
    done = "Complete" if phase == "Succeeded" else "Failed"
    status: Obj = {
        "phase": phase,
        "reason": reason,
        "message": message,
        "completionTime": now_iso(now),
        "observedGeneration": parent.generation,
        "conditions": set_conditions(
            parent.conditions,
            [(done, "True", reason or "Completed", message), ("Running", "False", reason or "Completed", message)],
            now=now,
            generation=parent.generation,
        ),
    }
    if phase == "Succeeded":
        status["progress"] = {"percent": 100.0}
    return status
