"""The connect guard's environment and report (ffrtmp.egress.guard): what ffmpeg is told, what the
worker reads back. The library itself runs in tests/ffmpeg/test_connect_guard.py."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ffrtmp.egress import guard
from ffrtmp.worker.config import WorkerConfig

pytestmark = pytest.mark.unit

V4 = ipaddress.ip_address("127.0.0.1")
V6 = ipaddress.ip_address("2001:db8::1")
POD = {"POD_NAME": "w", "POD_NAMESPACE": "ns", "FFRTMP_POOL": "p"}


def test_the_allowlist_is_address_port_pairs_with_ipv6_in_brackets() -> None:
    assert guard.format_allowlist([(V4, 41234), (V6, 1935), (V4, 41234)]) == "127.0.0.1:41234,[2001:db8::1]:1935"
    assert guard.format_allowlist([]) == ""
    for port in (0, 65536):
        with pytest.raises(ValueError, match="out of range"):
            guard.format_allowlist([(V4, port)])


def test_ffmpeg_gets_the_guard_and_no_other_preload() -> None:
    env = guard.guard_env({"PATH": "/bin", "LD_PRELOAD": "/tmp/evil.so"}, "/lib/g.so", [(V4, 5000)], "/s/report")
    assert env == {"PATH": "/bin", "LD_PRELOAD": "/lib/g.so", "FFRTMP_CONNECT_ALLOW": "127.0.0.1:5000",
                   "FFRTMP_CONNECT_REPORT": "/s/report"}  # fmt: skip


def test_the_report_is_read_line_by_line_and_junk_is_skipped(tmp_path: Path) -> None:
    text = "127.0.0.3 8080\n2001:db8::1 1935\nnonsense\n10.0.0.1 notaport\n\n"
    assert guard.parse_report(text) == [(ipaddress.ip_address("127.0.0.3"), 8080), (V6, 1935)]
    assert guard.read_report(tmp_path / "absent") == []


def test_the_worker_finds_the_guard_at_the_image_path_unless_told_otherwise() -> None:
    assert WorkerConfig.from_env(POD).connect_guard == "/usr/lib/ffrtmp/connect-guard.so" == guard.DEFAULT_LIBRARY
    assert WorkerConfig.from_env({**POD, "FFRTMP_CONNECT_GUARD": "/opt/g.so"}).connect_guard == "/opt/g.so"
    assert WorkerConfig.from_env({**POD, "FFRTMP_CONNECT_GUARD": "off"}).connect_guard == guard.OFF
