"""`make demo`, run from a fresh clone as a new user would: both jobs end Succeeded, outputs valid."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import REPO, ffprobe

pytestmark = [pytest.mark.e2e, pytest.mark.background]  # two minutes, most of it the demo's encodes


def test_make_demo_from_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "ffmpeg-rtmp"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "KUBECONFIG", "PYTEST"))}
    proc = subprocess.run(
        ["make", "demo", "DEMO_ARGS=--stop"], cwd=clone, env=env, capture_output=True, text=True, timeout=1200,
        check=False,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "Demo finished" in output
    assert "The control plane was stopped." in output
    out = clone / ".demo" / "output" / "demo"
    mp4 = ffprobe(out / "sample-mp4" / "720p.mp4")
    video = next(s for s in mp4["streams"] if s["codec_type"] == "video")
    assert (video["codec_name"], video["height"]) == ("h264", 720)
    master = (out / "sample-hls" / "hls" / "master.m3u8").read_text()
    assert master.count("#EXT-X-STREAM-INF") == 3
    for height in (720, 480, 360):
        variant = ffprobe(out / "sample-hls" / "hls" / f"{height}p" / "index.m3u8")
        assert next(s for s in variant["streams"] if s["codec_type"] == "video")["height"] == height
    assert list((out / "sample-hls" / "thumbs").glob("thumb_*.jpg"))
    # Nothing of the demo keeps running after --stop: no process refers to the clone.
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(clone) in cmdline:
            leftovers.append(cmdline)
    assert leftovers == []
