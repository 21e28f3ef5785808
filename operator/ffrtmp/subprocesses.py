"""Short child processes (ffprobe, a self-test encode, the connect guard's check, a kubeconfig exec
plugin) run to completion within a time limit, without blocking the event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: bytes
    stderr: bytes  # empty when it was not captured


async def run_captured(
    argv: Sequence[str], *, limit_seconds: float, env: Mapping[str, str] | None = None, capture_stderr: bool = True
) -> Finished | None:
    """Run `argv` with stdin closed and stdout (and stderr, unless it is to be shared with ours)
    captured. None when it did not finish within `limit_seconds`: it is killed and reaped first.
    OSError when it cannot be started (FileNotFoundError for a program that does not exist)."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE if capture_stderr else None,
        env=dict(env) if env is not None else None,
    )
    try:
        async with asyncio.timeout(limit_seconds):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return None
    assert process.returncode is not None
    return Finished(process.returncode, stdout, stderr or b"")
