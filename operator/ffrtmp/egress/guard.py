"""The connect guard: `connect_guard.c`, a small library preloaded into every ffmpeg and ffprobe of an
attempt, refuses each IPv4/IPv6 connection (and each datagram sent to an address) that is not to an
address:port the worker allowed: the attempt's egress proxy, and for a pool that allows rtmp the
addresses the worker resolved and checked for the rtmp URL's host.

The proxy judges destinations; the guard makes sure ffmpeg cannot go around the proxy, whatever a
playlist that changed after the worker's check names (`httpproxy://HOST:PORT/...` makes ffmpeg open TCP
to HOST itself) and whatever ffmpeg resolves for an rtmp host later (its answer must be an address the
worker checked: DNS rebinding gains nothing). Refusals fail with EACCES and are written, one
`ADDRESS PORT` line each, to the attempt's report file, which the worker reads to fail the job with
DestinationNotAllowed.

The library sits at `DEFAULT_LIBRARY` in the image (`FFRTMP_CONNECT_GUARD` elsewhere). A worker whose
guard does not load refuses to start (`check`); `FFRTMP_CONNECT_GUARD=off` runs ffmpeg unguarded, for
development only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from ffrtmp.egress.policy import IPAddress
from ffrtmp.subprocesses import run_captured

LIBRARY_ENV = "FFRTMP_CONNECT_GUARD"
ALLOW_ENV = "FFRTMP_CONNECT_ALLOW"
REPORT_ENV = "FFRTMP_CONNECT_REPORT"
DEFAULT_LIBRARY = "/usr/lib/ffrtmp/connect-guard.so"
OFF = "off"
MAX_ENTRIES = 64  # connect_guard.c's MAX_ENTRIES: entries past it are ignored (refused)
CHECK_TIMEOUT_SECONDS = 20.0

Endpoint = tuple[IPAddress, int]


def format_allowlist(endpoints: Iterable[Endpoint]) -> str:
    """`FFRTMP_CONNECT_ALLOW`: `ADDRESS:PORT` entries (IPv6 in brackets), comma-separated, each once."""
    entries: list[str] = []
    for address, port in endpoints:
        if not 0 < port < 65536:
            raise ValueError(f"port {port} of {address} is out of range")
        entry = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
        if entry not in entries:
            entries.append(entry)
    return ",".join(entries)


def guard_env(env: Mapping[str, str], library: str, allowed: Iterable[Endpoint], report: str) -> dict[str, str]:
    """`env` with the guard preloaded, allowing `allowed` only and reporting refusals to `report`.
    Any LD_PRELOAD of the worker's own environment is replaced: ffmpeg gets the guard and nothing else."""
    return {**env, "LD_PRELOAD": library, ALLOW_ENV: format_allowlist(allowed), REPORT_ENV: report}


def parse_report(text: str) -> list[Endpoint]:
    """The refusals of a report file, in order (lines that do not parse are skipped)."""
    found: list[Endpoint] = []
    for line in text.splitlines():
        host, _, port = line.strip().partition(" ")
        try:
            found.append((ipaddress.ip_address(host), int(port)))
        except ValueError:
            continue
    return found


def read_report(path: Path) -> list[Endpoint]:
    """The refusals recorded in the report file at `path` (none when it does not exist)."""
    try:
        return parse_report(path.read_text(errors="replace"))
    except FileNotFoundError:
        return []


async def check(library: str, ffmpeg: str = "ffmpeg") -> str | None:
    """Why the guard at `library` does not protect ffmpeg (None when it does): ffmpeg run with it must
    refuse a connection to a loopback port of ours, and report that refusal. A library that exists but
    does not load is only a warning to the dynamic loader, so this runs ffmpeg instead of checking a path."""
    if not await asyncio.to_thread(os.path.isfile, library):
        return f"the connect guard library {library} does not exist"
    with socket.socket() as target, tempfile.TemporaryDirectory(prefix="ffrtmp-guard-") as folder:
        target.bind(("127.0.0.1", 0))  # bound, not listening: an unguarded connect is refused at once
        port = target.getsockname()[1]
        report = Path(folder) / "report"
        env = guard_env(os.environ, library, (), str(report))
        argv = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-i", f"tcp://127.0.0.1:{port}"]
        try:
            finished = await run_captured(argv, limit_seconds=CHECK_TIMEOUT_SECONDS, env=env)
        except OSError as e:
            return f"ffmpeg could not be started to check the connect guard: {e}"
        if finished is None:
            return f"ffmpeg with the connect guard {library} did not finish within {CHECK_TIMEOUT_SECONDS:.0f}s"
        if (ipaddress.ip_address("127.0.0.1"), port) not in read_report(report):
            tail = finished.stderr.decode(errors="replace").strip()[-300:]
            return f"ffmpeg with the connect guard {library} was not stopped from connecting: {tail}"
    return None
