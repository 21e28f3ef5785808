"""RTMP live: a real nginx-rtmp server, a pushed test stream, a live TranscodeJob that restreams
it and keeps a rolling HLS playlist, the restart policy on stream loss, and stop by delete."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Farm
from helpers import RTMP_HOST, nginx_rtmp, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def rtmp_server(tmp_path: Path) -> Iterator[int]:
    with nginx_rtmp(tmp_path / "nginx", RTMP_HOST) as port:
        yield port


def push_source(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
            "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440",
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-b:a", "64k", "-f", "flv", f"rtmp://{RTMP_HOST}:{port}/live/source",
        ],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def probe_stream(url: str) -> dict[str, Any] | None:
    proc = subprocess.run(
        ["ffprobe", "-v", "error", "-rw_timeout", "5000000", "-print_format", "json", "-show_streams", url],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        return None
    data: dict[str, Any] = json.loads(proc.stdout)
    return data if data.get("streams") else None


def status(job: dict[str, Any]) -> dict[str, Any]:
    return job.get("status") or {}


def test_live_restream_rolling_hls_restart_and_stop(farm: Farm, rtmp_server: int) -> None:
    port = rtmp_server
    source = push_source(port)
    try:
        wait_for(lambda: probe_stream(f"rtmp://{RTMP_HOST}:{port}/live/source"), 30, "the source stream")
        # rtmp cannot go through the egress proxy: allowed explicitly, to the test server's address only.
        egress = {"allow": [f"{RTMP_HOST}/32"], "allowUnproxiedProtocols": ["rtmp"]}
        farm.pool("cpu", minWorkers=1, autoscaling={"enabled": False}, egress=egress)
        # The cluster admin lets pools open exactly that (the operator's pool policy refuses it otherwise).
        farm.start_operator(
            f"--pool-allowed-egress-destinations={RTMP_HOST}/32", "--pool-allowed-unproxied-protocols=rtmp"
        )
        farm.start_workers(env={"FFRTMP_STALL_SECONDS": "20"})
        restream = f"rtmp://{RTMP_HOST}:{port}/restream/out"
        farm.job(
            "live",
            f"rtmp://{RTMP_HOST}:{port}/live/source",
            [
                {"name": "restream", "container": "flv", "url": restream,
                 "video": {"codec": "h264", "bitrate": "400k", "height": 180, "gop": 50, "preset": "veryfast"},
                 "audio": {"codec": "aac", "bitrate": "64k"}},
                {"name": "web", "container": "hls",
                 "video": {"codec": "h264", "bitrate": "300k", "height": 120, "gop": 50, "preset": "veryfast"},
                 "audio": {"codec": "aac", "bitrate": "64k"}},
            ],
            hls={"segmentSeconds": 2, "playlistType": "live", "listSize": 3},
            input={"uri": f"rtmp://{RTMP_HOST}:{port}/live/source", "live": True,
                   "restartPolicy": {"maxRestarts": 5, "backoffSeconds": 1, "maxBackoffSeconds": 2}},
        )  # fmt: skip
        farm.wait_phase("live", "Running", timeout=60)
        probed = wait_for(lambda: probe_stream(restream), 60, "the restreamed stream")
        video = next(s for s in probed["streams"] if s["codec_type"] == "video")
        assert video["codec_name"] == "h264" and video["height"] == 180
        assert any(s["codec_type"] == "audio" and s["codec_name"] == "aac" for s in probed["streams"])

        playlist = farm.output / farm.namespace / "live" / "hls" / "web" / "index.m3u8"
        wait_for(lambda: playlist.exists() and "#EXTINF" in playlist.read_text(), 30, "the rolling HLS playlist")
        assert "#EXT-X-ENDLIST" not in playlist.read_text()

        def stream_time() -> float:
            return float((status(farm.get_job("live")).get("progress") or {}).get("outTimeSeconds") or 0)

        t0 = stream_time()
        wait_for(lambda: stream_time() > t0 + 2, 30, "stream time advancing")
        assert (status(farm.get_job("live")).get("progress") or {}).get("percent") is None

        # Stream loss: the job restarts ffmpeg with backoff instead of failing.
        source.send_signal(signal.SIGTERM)
        source.wait(10)
        wait_for(lambda: (status(farm.get_job("live")).get("restarts") or 0) >= 1, 60, "a restart after stream loss")
        assert status(farm.get_job("live"))["phase"] == "Running"
        source = push_source(port)
        wait_for(lambda: probe_stream(restream), 60, "the restream back after the source returned")
        restarts = status(farm.get_job("live"))["restarts"]
        assert 1 <= restarts <= 5

        # Deleting the job stops it: the restream goes away.
        farm.cluster.kubectl("delete", "tj", "live", "-n", farm.namespace)
        time.sleep(3)
        wait_for(lambda: probe_stream(restream) is None, 30, "the restream to stop after delete")
    finally:
        source.kill()
        source.wait(10)
