"""Chunking mode Auto through the operator, two stand-in workers and real ffmpeg: a long enough input
to an hls ladder with thumbnails runs chunked and is published whole; a short one runs single-pass."""

from __future__ import annotations

from typing import Any

import pytest
from test_chunked_jobs import PARENT_LABEL, WatchedJobs, follow, status, two_workers

from conftest import Farm
from helpers import make_clip

pytestmark = pytest.mark.integration

LADDER = [
    {"name": "240p", "container": "hls", "video": {"preset": "ultrafast", "height": 240, "bitrate": "400k"}},
    {"name": "120p", "container": "hls", "video": {"preset": "ultrafast", "height": 120, "bitrate": "150k"},
     "audio": {"bitrate": "64k"}},
]  # fmt: skip
AUTO = {"mode": "Auto", "chunkSeconds": 2, "autoMinSeconds": 5}


def chunked_condition(job: dict[str, Any]) -> dict[str, Any]:
    (found,) = [c for c in status(job).get("conditions", []) if c["type"] == "Chunked"]
    return found


def test_auto_chunks_a_long_ladder_and_runs_a_short_input_single_pass(farm: Farm) -> None:
    long_clip = make_clip(farm.media / "long.mp4", seconds=8)
    short_clip = make_clip(farm.media / "short.mp4", seconds=3)
    farm.start_operator()
    two_workers(farm)
    spec: dict[str, Any] = {
        "hls": {"segmentSeconds": 2}, "thumbnails": {"intervalSeconds": 2, "width": 160},
        "chunking": AUTO, "resources": {"limits": {"cpu": "1"}},
    }  # fmt: skip
    with WatchedJobs(farm) as watch:
        farm.job("ladder", str(long_clip), LADDER, **spec)
        farm.job("short", str(short_clip), LADDER, **spec)
        follow(farm, "ladder", lambda: False)
        seen = watch.children("ladder")
    parent = farm.get_job("ladder")
    assert status(parent).get("phase") == "Succeeded", status(parent)
    condition = chunked_condition(parent)
    assert (condition["status"], condition["reason"]) == ("True", "LongInput"), condition
    assert "the input is 8.0" in condition["message"] and "autoMinSeconds 5" in condition["message"]
    assert status(parent)["chunks"]["summary"] == "4/4"
    assert sorted(child["labels"]["ffmpeg-rtmp.io/chunk"] for child in seen.values()) == [
        "audio", "c00000", "c00001", "c00002", "c00003", "plan", "stitch",
    ]  # fmt: skip

    folder = farm.output / farm.namespace / "ladder"
    by_name = {o["name"]: o for o in status(parent)["outputs"]}
    assert sorted(by_name) == ["120p", "240p", "master", "thumbnails"]
    assert by_name["master"]["path"] == str(folder / "hls" / "master.m3u8")
    assert by_name["thumbnails"]["count"] == 4
    assert (by_name["240p"]["height"], by_name["120p"]["height"]) == (240, 120)
    for name in ("240p", "120p"):
        playlist = (folder / "hls" / name / "index.m3u8").read_text()
        assert playlist.count("#EXTINF:2.000000,") == 4 and playlist.rstrip().endswith("#EXT-X-ENDLIST")
    master = (folder / "hls" / "master.m3u8").read_text()
    assert "RESOLUTION=320x240" in master and "RESOLUTION=160x120" in master
    # published whole, the work area gone
    assert sorted(p.name for p in folder.iterdir()) == ["hls", "thumbs"]

    short = farm.wait_phase("short", "Succeeded", "Failed", timeout=120)
    assert status(short)["phase"] == "Succeeded", status(short)
    condition = chunked_condition(short)
    assert (condition["status"], condition["reason"]) == ("False", "ShortInput"), condition
    assert "the input is 3.0" in condition["message"]
    assert status(short)["worker"]  # it ran as a job of its own on a worker
    assert "chunks" not in status(short)
    # The same ladder's master, text for text: the chunked 240p (CBR-like chunks, which x264 gives
    # level 1.3) declares the single pass's level 2.0 in CODECS, as the stitch rewrote it.
    single_master = (farm.output / farm.namespace / "short" / "hls" / "master.m3u8").read_text()
    assert 'CODECS="avc1.42c014,mp4a.40.2"' in single_master, single_master
    assert master == single_master
    assert [
        j["metadata"]["name"] for j in farm.jobs() if (j["metadata"].get("labels") or {}).get(PARENT_LABEL) == "short"
    ] in ([], ["short-plan"])  # its plan task only (deleted with the parent's end)
