"""What must hold after every chaos scenario, checked from the jobs' final status, their Events,
the workers' logs and the files under the output root.

- every job reached a terminal phase (none stuck Queued while a matching slot is free);
- a Succeeded job has exactly one successful attempt, the current one: status.result.attempt ==
  status.attempt, outcome Succeeded, written by status.worker; its outputs exist and ffprobe reads them;
- only the operator assigns: every attempt a worker started was assigned to that worker (Events
  "Scheduled" say "attempt N: assigned to worker W"), and no attempt number was started by two workers;
- no job got a result from a superseded attempt: at most one attempt per job ended Succeeded in
  the workers' logs, and it is the one in the status. A partitioned worker's superseded attempt may
  still have been running next to its successor (counted as an overlap, not a failure), but it must
  not have ended Succeeded;
- no output of a failed or superseded attempt is left: no `.attempt-*` folder under the output root,
  no files for Failed jobs.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Obj = dict[str, Any]
TERMINAL = ("Succeeded", "Failed", "Cancelled")
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")
_STARTED = re.compile(r"ffrtmp\.worker\.agent: started (?P<job>\S+) attempt (?P<n>\d+)$")
_ENDED = re.compile(r"ffrtmp\.worker\.agent: attempt (?P<job>[^/\s]+)/(?P<n>\d+) (?:ended: (?P<outcome>\w+)|crashed)")
_SCHEDULED = re.compile(r"^attempt (?P<n>\d+): assigned to worker (?P<worker>\S+)")
_LOST = re.compile(r"^attempt (?P<n>\d+) lost")


@dataclass
class Run:
    """One attempt as a worker's log tells it."""

    job: str
    attempt: int
    worker: str
    start: float
    end: float | None = None
    outcome: str | None = None  # Succeeded, Failed, Superseded, Cancelled, HandedBack, crashed; None: no end logged


@dataclass
class Findings:
    jobs: int = 0
    succeeded: int = 0
    failed: int = 0
    lost: list[str] = field(default_factory=list)  # not terminal, or failed for a reason the scenario did not cause
    twice: list[str] = field(default_factory=list)  # more than one attempt ended Succeeded
    redone: dict[str, str] = field(default_factory=dict)  # job -> why it took more than one attempt
    overlaps: list[str] = field(default_factory=list)  # a superseded attempt still ran beside its successor
    missing_events: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.jobs} jobs: {self.succeeded} succeeded, {self.failed} failed, lost {len(self.lost)}, "
            f"run twice {len(self.twice)}, redone {len(self.redone)}, overlaps {len(self.overlaps)}, "
            f"events missing {self.missing_events}"
        )


def _log_time(line: str) -> float | None:
    m = _LOG_TIME.match(line)
    if not m:
        return None
    return time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1000


def worker_runs(workers_dir: Path) -> dict[str, list[Run]]:
    """Attempts per job from every worker log (`<pod>.log`, appended across restarts)."""
    runs: dict[str, list[Run]] = defaultdict(list)
    for log in sorted(workers_dir.glob("*.log")):
        worker = log.stem
        open_runs: dict[tuple[str, int], Run] = {}
        for line in log.read_text(errors="replace").splitlines():
            at = _log_time(line)
            if at is None:
                continue
            if "encoder self-test" in line:
                # A new process of this worker: attempts of the old one that logged no end died with it.
                open_runs.clear()
            m = _STARTED.search(line)
            if m:
                run = Run(m["job"], int(m["n"]), worker, at)
                runs[run.job].append(run)
                open_runs[(run.job, run.attempt)] = run
                continue
            m = _ENDED.search(line)
            if m:
                run_or_none = open_runs.pop((m["job"], int(m["n"])), None)
                if run_or_none is not None:
                    run_or_none.end = at
                    run_or_none.outcome = m["outcome"] or "crashed"
    return runs


def namespace_events(kubectl: Any, namespace: str) -> dict[str, list[Obj]]:
    out = kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    by_name: dict[str, list[Obj]] = defaultdict(list)
    for e in json.loads(out)["items"]:
        by_name[e["involvedObject"]["name"]].append(e)
    return by_name


def _probe_ok(path: str) -> bool:
    proc = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", path],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        return False
    doc = json.loads(proc.stdout)
    return bool(doc.get("streams")) and float(doc.get("format", {}).get("duration") or 0) > 0


def check(
    farm: Any,
    *,
    expect: tuple[str, ...] = ("Succeeded",),
    probe: bool = True,
    allowed_failures: tuple[str, ...] = (),
) -> Findings:
    """Check every invariant for the farm's namespace; raise AssertionError listing every breach.

    `expect`: the phases a job may end in. `allowed_failures`: failure reasons the scenario may
    cause (a Failed job with another reason counts as lost). `probe`: ffprobe every output.
    """
    f = Findings()
    jobs = farm.jobs()
    events = namespace_events(farm.cluster.kubectl, farm.namespace)
    runs = worker_runs(farm.root / "workers")
    f.jobs = len(jobs)
    output_root: Path = farm.output
    pools = {p["metadata"]["name"]: p for p in farm.cluster.list("wp", farm.namespace)}
    free_slots = sum(int((p.get("status") or {}).get("freeSlots") or 0) for p in pools.values())

    for job in jobs:
        name = job["metadata"]["name"]
        s = job.get("status") or {}
        phase = s.get("phase")
        attempt = int(s.get("attempt") or 0)
        job_dir = output_root / farm.namespace / name
        if attempt > 1:
            why = [
                f"{e['reason']}: {e.get('message', '')[:120]}"
                for e in events.get(name, [])
                if e.get("type") == "Warning" or e.get("reason") in ("HandedBack", "Requeued")
            ]
            f.redone[name] = f"{attempt} attempts; " + ("; ".join(why) or "no Warning event")
        if phase not in TERMINAL:
            why = f"{name} is {phase}" + (f" with {free_slots} free slot(s)" if free_slots else "")
            f.lost.append(why)
            continue
        if phase not in expect:
            f.errors.append(f"{name} ended {phase} ({s.get('reason')}: {s.get('message')})")
        if phase == "Failed":
            f.failed += 1
            if s.get("reason") not in allowed_failures and "Failed" not in expect:
                f.lost.append(f"{name} failed: {s.get('reason')}: {s.get('message')}")
            leftovers = [p for p in job_dir.rglob("*") if p.is_file()] if job_dir.exists() else []
            if leftovers:
                f.errors.append(f"{name} failed but left files: {[str(p) for p in leftovers][:5]}")
        if phase == "Succeeded":
            f.succeeded += 1
            result = s.get("result") or {}
            if result.get("attempt") != attempt or result.get("outcome") != "Succeeded":
                f.errors.append(f"{name}: result {result} does not belong to attempt {attempt}")
            if result.get("worker") != s.get("worker"):
                f.errors.append(f"{name}: result written by {result.get('worker')}, job says {s.get('worker')}")
            outputs = s.get("outputs") or []
            if not outputs:
                f.errors.append(f"{name}: Succeeded without outputs")
            for out in outputs:
                path = out.get("path", "")
                if not Path(path).exists():
                    f.errors.append(f"{name}: output {path} missing")
                elif probe and Path(path).is_file() and not _probe_ok(path):
                    f.errors.append(f"{name}: ffprobe cannot read {path}")

        # Only the operator assigns; every attempt number goes to one worker.
        assigned: dict[int, str] = {}
        for e in events.get(name, []):
            m = _SCHEDULED.match(e.get("message") or "") if e.get("reason") == "Scheduled" else None
            if m:
                assigned[int(m["n"])] = m["worker"]
        job_runs = runs.get(name, [])
        by_attempt: dict[int, set[str]] = defaultdict(set)
        for r in job_runs:
            by_attempt[r.attempt].add(r.worker)
            if r.attempt in assigned and assigned[r.attempt] != r.worker:
                f.errors.append(f"{name}: {r.worker} ran attempt {r.attempt}, assigned to {assigned[r.attempt]}")
        f.missing_events += sum(1 for n in by_attempt if n not in assigned)
        for n, workers in by_attempt.items():
            if len(workers) > 1:
                f.errors.append(f"{name}: attempt {n} was started by {sorted(workers)}")
        wins = [r for r in job_runs if r.outcome == "Succeeded"]
        if len(wins) > 1:
            f.twice.append(f"{name}: {[(r.worker, r.attempt) for r in wins]}")
        if phase == "Succeeded" and wins and (wins[-1].attempt, wins[-1].worker) != (attempt, s.get("worker")):
            f.errors.append(f"{name}: attempt {wins[-1].attempt} on {wins[-1].worker} succeeded, status says {attempt}")
        # Overlapping attempts on different workers: allowed only for a superseded one that did not win.
        for a in job_runs:
            for b in job_runs:
                if a.attempt < b.attempt and a.worker != b.worker and (a.end is None or a.end > b.start):
                    f.overlaps.append(f"{name}: attempt {a.attempt} on {a.worker} ({a.outcome}) overlapped {b.attempt}")
                    if a.outcome == "Succeeded":
                        f.errors.append(f"{name}: superseded attempt {a.attempt} on {a.worker} ended Succeeded")

    stray = [str(p) for p in output_root.rglob(".attempt-*")]
    if stray:
        f.errors.append(f"partial outputs left behind: {stray[:5]}")
    if f.lost or f.twice or f.errors:
        raise AssertionError(
            f"{f.summary()}\nlost: {f.lost}\ntwice: {f.twice}\nerrors:\n  " + "\n  ".join(f.errors[:40])
        )
    return f
