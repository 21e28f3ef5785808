"""Per-job memory limit: the resident memory of ffmpeg's process tree, measured from /proc.

An address-space limit (RLIMIT_AS) cannot stand in for it: CUDA and the NVENC/QSV drivers
reserve far more address space than they ever touch, so a GPU encode under any realistic
limit fails at start. Resident memory is what the container's cgroup charges.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# How often the tree is measured while ffmpeg runs.
SAMPLE_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class ProcEntry:
    pid: int
    ppid: int
    rss_bytes: int


def parse_stat(text: str, page_size: int = PAGE_SIZE) -> ProcEntry:
    """One /proc/<pid>/stat line. The command name may hold spaces and parentheses, so the
    fields are counted from its last `)`: state is field 3, ppid 4, rss (pages) 24."""
    pid = int(text[: text.index("(")])
    rest = text[text.rindex(")") + 2 :].split()
    return ProcEntry(pid=pid, ppid=int(rest[1]), rss_bytes=int(rest[21]) * page_size)


def tree_rss(entries: Iterable[ProcEntry], root: int) -> int:
    """Resident bytes of `root` and all its descendants in a process table (0 if it is gone)."""
    children: dict[int, list[ProcEntry]] = {}
    by_pid: dict[int, ProcEntry] = {}
    for entry in entries:
        by_pid[entry.pid] = entry
        children.setdefault(entry.ppid, []).append(entry)
    if root not in by_pid:
        return 0
    total, stack, seen = 0, [by_pid[root]], {root}
    while stack:
        entry = stack.pop()
        total += entry.rss_bytes
        for child in children.get(entry.pid, ()):
            if child.pid not in seen:
                seen.add(child.pid)
                stack.append(child)
    return total


def read_process_table(proc: str = "/proc") -> list[ProcEntry]:
    """Every process this worker can see (processes that end while being read are skipped)."""
    entries = []
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat") as f:
                entries.append(parse_stat(f.read()))
        except (OSError, ValueError, IndexError):
            continue
    return entries


CGROUP_ROOT = "/sys/fs/cgroup"


def parse_oom_kills(text: str) -> int | None:
    """The `oom_kill` counter of cgroup v2 `memory.events` or cgroup v1 `memory.oom_control`."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def cgroup_oom_kills(root: str = CGROUP_ROOT) -> int | None:
    """How many processes the kernel's OOM killer has killed in this container's memory cgroup
    (its own cgroup namespace root), or None where that cannot be read (not Linux, no cgroup)."""
    for path in (os.path.join(root, "memory.events"), os.path.join(root, "memory", "memory.oom_control")):
        try:
            with open(path) as f:
                count = parse_oom_kills(f.read())
        except OSError:
            continue
        if count is not None:
            return count
    return None
