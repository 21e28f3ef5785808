"""Storage check at worker start: every media root readable, the output root writable.

A folder that is missing, not a folder, unlisted or read-only in the container (no volume mounted,
a claim bound read-only, the wrong owner) fails every job that touches it, so a worker whose
storage fails this check is not ready and takes no job; the operator reports why on its pool.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

PROBE_PREFIX = ".ffrtmp-storage-probe-"


@dataclass(frozen=True)
class StorageCheck:
    ok: bool
    message: str  # the problems, or what was checked

    def annotation(self) -> str:
        return f"ok: {self.message}" if self.ok else f"failed: {self.message}"


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def media_root_problem(path: str) -> str | None:
    """Why `path` cannot serve as a media root, or None: it must be a listable directory."""
    try:
        if not os.path.isdir(path):
            return f"media root {path} is not readable: " + (
                "not a directory" if os.path.exists(path) else "does not exist (no volume mounted there?)"
            )
        with os.scandir(path) as entries:
            next(entries, None)
    except OSError as e:
        return f"media root {path} is not readable: cannot list it ({_reason(e)})"
    return None


def output_root_problem(path: str) -> str | None:
    """Why jobs could not write under `path`, or None: a probe file is created and removed."""
    if not os.path.isdir(path):
        what = "not a directory" if os.path.exists(path) else "does not exist (no volume mounted there?)"
        return f"output root {path} is not writable: {what}"
    probe = os.path.join(path, PROBE_PREFIX + secrets.token_hex(6))
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        return f"output root {path} is not writable: cannot create a file ({_reason(e)})"
    problem = None
    try:
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
    except OSError as e:
        problem = f"output root {path} is not writable: cannot write a file ({_reason(e)})"
    try:
        os.unlink(probe)
    except OSError as e:
        return problem or f"output root {path} is not writable: cannot remove a file ({_reason(e)})"
    return problem


def summarize(media_roots: Iterable[str], output_root: str, problems: list[str]) -> StorageCheck:
    """The check's result from the problems found (pure): all of them, or what passed."""
    if problems:
        return StorageCheck(False, "; ".join(problems)[:1000])
    media = ", ".join(media_roots) or "none"
    return StorageCheck(True, f"media roots {media} readable, output root {output_root} writable")


def check_storage(media_roots: Iterable[str], output_root: str) -> StorageCheck:
    roots = list(media_roots)
    problems = [p for p in (media_root_problem(r) for r in roots) if p]
    output = output_root_problem(output_root)
    if output:
        problems.append(output)
    return summarize(roots, output_root, problems)
