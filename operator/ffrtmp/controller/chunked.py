"""Chunked jobs (pure): what a parent with `spec.chunking.mode: On` needs next.

A chunked parent is never assigned to a worker itself. Its work is done by child TranscodeJobs,
which go through the same queue, priorities, slots, Leases and retries as any job:

1. `<parent>-plan` (chunkTask Plan) probes the input's duration and keyframes on a worker (the
   operator cannot read media) and reports the chunk plan in its status; the plan is copied into
   the parent's `status.chunks.plan`, so a restarted operator continues the same plan.
2. `<parent>-c<i>` (Video) per chunk, at most `maxChunksInFlight` unfinished at once, and one
   `<parent>-audio` (Audio) for the whole input's audio.
3. `<parent>-stitch` (Stitch), once every chunk and the audio succeeded: it joins them into the
   parent's outputs and removes the work area; the parent then succeeds with its outputs.

Children carry the parent's spec (without `chunking`, and without `notifications`: the parent tells
its own transitions), its priority and pool, the labels
ffmpeg-rtmp.io/parent and ffmpeg-rtmp.io/chunk, and an ownerReference to the parent. A child
that fails past its backoffLimit fails the parent with that child's reason. When the parent is
finished or gone its children are deleted (stopping any still running): a cluster without a
garbage collector cleans up the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ffrtmp.api.constants import API_VERSION, LABEL_CHUNK, LABEL_PARENT
from ffrtmp.conditions import now_iso, set_conditions
from ffrtmp.controller.chunking import Chunk, decode_boundaries
from ffrtmp.controller.state import JobView

Obj = dict[str, Any]
PLAN, AUDIO, STITCH = "plan", "audio", "stitch"


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


def child_body(parent: JobView, spec: Obj, part: str, task: Obj) -> Obj:
    parent_only = ("chunking", "ttlSecondsAfterFinished", "slaSeconds", "notifications")
    child_spec = {k: v for k, v in spec.items() if k not in parent_only}
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
        if part not in by_part:
            creates.append(
                CreateJob(f"{parent.namespace}/{child_name(parent.name, part)}", child_body(parent, spec, part, task))
            )

    failed = sorted((c for c in mine if c.phase == "Failed"), key=lambda c: c.name)
    if failed:
        child = failed[0]
        reason = child.reason or "FfmpegError"
        message = f"{child.part} ({child.name}) failed: {child.message or reason}"
        return ChunkedDecision([], _finished(parent, "Failed", reason, message, now), ("Warning", reason, message))
    # timeoutSeconds bounds the whole chunked job, from its first step; each child also keeps it.
    deadline = None
    if parent.timeout_seconds is not None and parent.start_time is not None:
        deadline = parent.start_time + parent.timeout_seconds
        if deadline <= now:
            message = f"ran longer than timeoutSeconds ({parent.timeout_seconds}s); its chunks were stopped"
            expired = _finished(parent, "Failed", "DeadlineExceeded", message, now)
            return ChunkedDecision([], expired, ("Warning", "DeadlineExceeded", message))

    plan_text = (parent.chunks or {}).get("plan")
    if not plan_text:
        planner = by_part.get(PLAN)
        if planner is not None and planner.phase == "Succeeded" and planner.chunk_plan:
            chunks = decode_boundaries(planner.chunk_plan)
            status = _running(parent, "planned", {"plan": planner.chunk_plan, **_counts(chunks, mine)}, None, now)
            planned = f"planned {len(chunks)} chunks of about {chunking.get('chunkSeconds', 10)} s"
            return ChunkedDecision([], status, ("Normal", "Planned", planned), deadline)
        create(PLAN, {"kind": "Plan", "chunkSeconds": int(chunking.get("chunkSeconds", 10))})
        status = _running(parent, "planning", {"summary": "planning"}, None, now)
        return ChunkedDecision(creates, status, None, deadline)

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
        return ChunkedDecision([], status, ("Normal", "Completed", message))
    if encoded:
        create(STITCH, {"kind": "Stitch", "plan": plan_text})
    stage = "stitching" if encoded else "encoding"
    percent = _percent(chunks, mine, stitch)
    event = ("Normal", "Stitching", f"all {len(chunks)} chunks encoded") if encoded and stitch is None else None
    return ChunkedDecision(
        creates, _running(parent, stage, {"plan": plan_text, **counts}, percent, now), event, deadline
    )


def _counts(chunks: tuple[Chunk, ...], children: list[JobView]) -> Obj:
    video = [c for c in children if c.part not in (PLAN, AUDIO, STITCH)]
    succeeded = sum(1 for c in video if c.phase == "Succeeded")
    return {
        "total": len(chunks),
        "succeeded": succeeded,
        "running": sum(1 for c in video if c.phase == "Running"),
        "failed": sum(1 for c in video if c.phase == "Failed"),
        "summary": f"{succeeded}/{len(chunks)}",
    }


def _percent(chunks: tuple[Chunk, ...], children: list[JobView], stitch: JobView | None) -> float:
    """Chunk percents weighted by chunk length; the stitch (a stream copy) counts as the last 2 %."""
    done = {c.part: (100.0 if c.phase == "Succeeded" else c.percent or 0.0) for c in children}
    total = chunks[-1].end_us
    encoded = sum(done.get(video_part(c.index), 0.0) * c.duration_us for c in chunks) / total
    stitched = (
        100.0 if stitch is not None and stitch.phase == "Succeeded" else (stitch.percent or 0.0) if stitch else 0.0
    )
    return round(encoded * 0.98 + stitched * 0.02, 1)


def _running(parent: JobView, stage: str, chunks: Obj, percent: float | None, now: float) -> Obj | None:
    message = f"chunked: {stage}" + (f", {chunks['summary']} chunks encoded" if "total" in chunks else "")
    same = (
        parent.phase == "Running"
        and parent.message == message
        and all((parent.chunks or {}).get(k) == v for k, v in chunks.items())
    )
    if same and (percent is None or percent == parent.percent):
        return None
    status: Obj = {
        "phase": "Running",
        "message": message,
        "chunks": chunks,
        "observedGeneration": parent.generation,
        "conditions": set_conditions(
            parent.conditions, [("Running", "True", "ChunksRunning", message)], now=now, generation=parent.generation
        ),
    }
    if parent.start_time is None:
        status["startTime"] = now_iso(now)
    if parent.queued_time is None:
        status["queuedTime"] = now_iso(now)
    if percent is not None:
        status["progress"] = {"percent": percent}
    return status


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
