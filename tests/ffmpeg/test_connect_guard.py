"""The connect guard library in real ffmpeg: connections and datagrams past the allowlist are refused
(nothing reaches the listener) and reported; listed destinations work; the worker checks that the
guard really loads and refuses to start without it."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ffrtmp.egress import guard
from helpers import connect_guard

pytestmark = [pytest.mark.ffmpeg, pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="no ffmpeg")]

FORBIDDEN = "127.0.0.3"
FFMPEG = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error"]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener on the forbidden address; `accepted` says whether anything connected."""
    with socket.socket() as server:
        server.bind((FORBIDDEN, 0))
        server.listen()
        server.setblocking(False)
        yield server


def accepted(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
    except BlockingIOError:
        return False
    return True


PROXY = (ipaddress.ip_address("127.0.0.1"), 9)  # stands for the attempt's egress proxy (nothing listens)


def run(argv: list[str], allowed: list[guard.Endpoint], report: Path, timeout: float = 20) -> str:
    """ffmpeg's stderr, run as an attempt runs it: http_proxy set, the guard preloaded."""
    base = {"PATH": os.environ["PATH"], "http_proxy": f"http://{PROXY[0]}:{PROXY[1]}"}
    env = guard.guard_env(base, connect_guard(), allowed, str(report))
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return proc.stderr


def endpoint(server: socket.socket) -> guard.Endpoint:
    host, port = server.getsockname()[:2]
    return ipaddress.ip_address(host), port


@pytest.mark.parametrize("how", ["http-without-proxy", "tcp", "ipv4-mapped-ipv6"])
def test_a_direct_connection_is_refused_and_reported(listener: socket.socket, tmp_path: Path, how: str) -> None:
    port = listener.getsockname()[1]
    url = {
        # `-http_proxy ''` makes ffmpeg's http ignore the http_proxy variable and connect directly.
        "http-without-proxy": ["-http_proxy", "", "-i", f"http://{FORBIDDEN}:{port}/clip.mp4"],
        "tcp": ["-i", f"tcp://{FORBIDDEN}:{port}"],
        "ipv4-mapped-ipv6": ["-i", f"tcp://[::ffff:{FORBIDDEN}]:{port}"],
    }[how]
    stderr = run([*FFMPEG, *url], [PROXY], tmp_path / "report")
    assert not accepted(listener), f"ffmpeg connected past the guard: {stderr}"
    assert "Permission denied" in stderr, stderr
    assert guard.read_report(tmp_path / "report") == [endpoint(listener)]


def test_a_listed_destination_is_reachable(listener: socket.socket, tmp_path: Path) -> None:
    port = listener.getsockname()[1]
    argv = [*FFMPEG, "-rw_timeout", "1000000", "-i", f"tcp://{FORBIDDEN}:{port}"]
    run(argv, [PROXY, endpoint(listener)], tmp_path / "report")
    assert accepted(listener)
    assert guard.read_report(tmp_path / "report") == []


def test_datagrams_to_an_unlisted_address_are_refused(tmp_path: Path) -> None:
    """ffmpeg's udp output sends with sendto() to the destination (the socket is not connected)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind((FORBIDDEN, 0))
        receiver.setblocking(False)
        port = receiver.getsockname()[1]
        argv = [*FFMPEG, "-f", "lavfi", "-i", "testsrc=size=64x64:rate=5", "-t", "0.4", "-c:v", "mpeg2video",
                "-f", "mpegts", f"udp://{FORBIDDEN}:{port}"]  # fmt: skip
        run(argv, [], tmp_path / "refused")
        with pytest.raises(BlockingIOError):
            receiver.recv(2048)
        assert (ipaddress.ip_address(FORBIDDEN), port) in guard.read_report(tmp_path / "refused")
        run(argv, [endpoint(receiver)], tmp_path / "allowed")
        assert receiver.recv(2048), "the listed destination got nothing"
        assert guard.read_report(tmp_path / "allowed") == []


async def test_the_check_passes_only_a_guard_that_loads_and_refuses(tmp_path: Path) -> None:
    assert await guard.check(connect_guard()) is None
    missing = str(tmp_path / "missing.so")
    assert await guard.check(missing) == f"the connect guard library {missing} does not exist"
    # A file the dynamic loader cannot load is only a warning to it: ffmpeg would run unguarded.
    broken = tmp_path / "broken.so"
    broken.write_bytes(b"not a library")
    problem = await guard.check(str(broken))
    assert problem is not None and "was not stopped from connecting" in problem, problem


def test_a_worker_without_a_working_guard_refuses_to_start(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{name: c, cluster: {server: 'https://127.0.0.9:1'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {token: t}}]\n"
    )
    env = {**os.environ, "POD_NAME": "w-0", "POD_NAMESPACE": "ns", "FFRTMP_POOL": "cpu",
           guard.LIBRARY_ENV: str(tmp_path / "missing.so")}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "ffrtmp.cli", "worker", "--kubeconfig", str(kubeconfig)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert f"refusing to start: the connect guard library {tmp_path / 'missing.so'} does not exist" in proc.stderr
