"""The per-job memory measure: /proc/<pid>/stat parsing and the resident memory of a process tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ffrtmp.worker.memory import (
    ProcEntry,
    cgroup_oom_kills,
    parse_oom_kills,
    parse_stat,
    read_process_table,
    tree_rss,
)

pytestmark = pytest.mark.unit

# A real line's shape; the name holds a space and a parenthesis, as a process may choose.
STAT = "4242 (ff mpeg) x) S 4200 4242 4242 0 -1 4194560 1536 0 0 0 12 3 0 0 20 0 3 0 881 402653184 25600 " + " ".join(
    ["0"] * 27
)


def test_parse_stat_counts_fields_after_the_last_parenthesis() -> None:
    assert parse_stat(STAT, page_size=4096) == ProcEntry(pid=4242, ppid=4200, rss_bytes=25600 * 4096)


def test_tree_rss_sums_the_process_and_its_descendants_only() -> None:
    table = [
        ProcEntry(1, 0, 1000),
        ProcEntry(10, 1, 100),  # the root
        ProcEntry(11, 10, 20),  # child
        ProcEntry(12, 11, 3),  # grandchild
        ProcEntry(13, 1, 5000),  # a sibling of the root: not counted
    ]
    assert tree_rss(table, 10) == 123
    assert tree_rss(table, 12) == 3
    assert tree_rss(table, 99) == 0


def test_tree_rss_survives_a_pid_cycle_in_a_racy_table() -> None:
    # Read while processes come and go, a table can be inconsistent; the walk must still end.
    assert tree_rss([ProcEntry(1, 2, 1), ProcEntry(2, 1, 2)], 1) == 3


def test_the_live_table_sees_a_child_and_its_memory() -> None:
    code = "import sys; b = bytearray(64 << 20); sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        table = read_process_table()
        assert next(e for e in table if e.pid == child.pid).ppid == os.getpid()
        assert tree_rss(table, child.pid) >= 64 << 20
        assert tree_rss(table, os.getpid()) >= tree_rss(table, child.pid)
    finally:
        child.kill()
        child.wait()


def test_oom_kill_counter_of_cgroup_v1_and_v2(tmp_path: Path) -> None:
    assert parse_oom_kills("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\noom_group_kill 0\n") == 2
    assert parse_oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n") == 5
    assert parse_oom_kills("oom_kill_disable 0\nunder_oom 0\n") is None
    assert cgroup_oom_kills(str(tmp_path)) is None
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert cgroup_oom_kills(str(tmp_path)) == 1
    (tmp_path / "memory.events").write_text("oom 4\noom_kill 4\n")
    assert cgroup_oom_kills(str(tmp_path)) == 4
