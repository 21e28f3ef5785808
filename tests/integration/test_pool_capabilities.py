"""Capability-aware scheduling against a real API server, real workers and real ffmpeg.

Pool `narrow` runs an ffmpeg built without libsvtav1: a wrapper first on the workers' PATH that
leaves it out of `ffmpeg -encoders` and refuses it as an ffmpeg without it does ("Unknown
encoder"). Pool `full` runs this machine's ffmpeg as it is. The workers find out for themselves
(their self-test), publish it on their Leases, and the operator schedules by it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from conftest import Farm
from helpers import make_clip, wait_for

MISSING = "libsvtav1"
AV1 = [{"name": "out", "container": "mkv", "video": {"codec": "av1", "crf": 50, "preset": "ultrafast"}}]
HEVC = [{"name": "out", "video": {"codec": "hevc", "crf": 35, "preset": "ultrafast"}}]


def _ffmpeg_without(encoder: str, pool: str, bin_dir: Path) -> Path:
    """An `ffmpeg` that, in workers of `pool`, behaves like a build without `encoder`."""
    real = shutil.which("ffmpeg")
    assert real, "ffmpeg is needed"
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "ffmpeg"
    script.write_text(
        f"""#!/bin/sh
if [ "$FFRTMP_POOL" != "{pool}" ]; then exec {real} "$@"; fi
for arg in "$@"; do
  if [ "$arg" = "{encoder}" ]; then echo "Unknown encoder '{encoder}'" >&2; exit 1; fi
  if [ "$arg" = "-encoders" ]; then {real} "$@" | grep -v ' {encoder} '; exit 0; fi
done
exec {real} "$@"
"""
    )
    script.chmod(0o755)
    return bin_dir


def status(job: dict[str, Any]) -> dict[str, Any]:
    return job.get("status") or {}


def queued(job: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status(job).get("conditions") or [] if c["type"] == "Queued"), {})


def lease_encoders(farm: Farm, pool: str) -> str | None:
    leases = farm.cluster.list("lease", farm.namespace, "-l", f"ffmpeg-rtmp.io/pool={pool}")
    if not leases:
        return None
    value: str | None = (leases[0]["metadata"].get("annotations") or {}).get("ffmpeg-rtmp.io/encoders")
    return value


def test_a_pool_whose_ffmpeg_lacks_an_encoder_keeps_those_jobs_queued_and_runs_the_rest(farm: Farm) -> None:
    clip = make_clip(farm.media / "clip.mp4", seconds=1)
    bin_dir = _ffmpeg_without(MISSING, "narrow", farm.root / "bin")
    farm.pool("narrow", minWorkers=1, autoscaling={"enabled": False})
    farm.pool("full", minWorkers=1, autoscaling={"enabled": False})
    farm.start_operator()
    farm.start_workers(env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})

    # The workers found out for themselves and said so on their Leases.
    assert wait_for(lambda: lease_encoders(farm, "narrow"), 90, "narrow's encoders") == "libx264,libx265"
    assert wait_for(lambda: lease_encoders(farm, "full"), 90, "full's encoders") == "libx264,libx265,libsvtav1"

    # ... and each pool's status says what all its ready workers can encode.
    def pool_encoders(pool: str) -> str | None:
        value: str | None = status(farm.cluster.get("wp", pool, farm.namespace)).get("encoders")
        return value

    assert wait_for(lambda: pool_encoders("narrow"), 60, "narrow's status.encoders") == "libx264,libx265"
    assert wait_for(lambda: pool_encoders("full"), 60, "full's status.encoders") == "libsvtav1,libx264,libx265"

    farm.job("av1-narrow", str(clip), AV1, poolRef={"name": "narrow"})
    farm.job("hevc-narrow", str(clip), HEVC, poolRef={"name": "narrow"})
    farm.job("h264-narrow", str(clip), poolRef={"name": "narrow"})
    farm.job("av1-any-1", str(clip), AV1)
    farm.job("av1-any-2", str(clip), AV1)

    def waiting() -> dict[str, Any] | None:
        cond = queued(farm.get_job("av1-narrow"))
        return cond if cond.get("status") == "True" and cond.get("reason") == "NoCapableWorker" else None

    cond = wait_for(waiting, 60, "av1-narrow Queued with NoCapableWorker")
    assert cond["message"] == f"no ready worker of pool narrow has encoder {MISSING}", cond

    for name in ("hevc-narrow", "h264-narrow"):
        done = status(farm.wait_phase(name, "Succeeded", "Failed", timeout=120))
        assert done["phase"] == "Succeeded" and done["pool"] == "narrow", done
    for name in ("av1-any-1", "av1-any-2"):
        done = status(farm.wait_phase(name, "Succeeded", "Failed", timeout=180))
        assert done["phase"] == "Succeeded", done
        assert done["pool"] == "full", f"{name} ran on {done['pool']}, whose ffmpeg has no {MISSING}"
        assert done["outputs"][0]["codec"] == "av1"

    # Everything else ran; the av1 job of the narrow pool still waits, never tried.
    job = farm.get_job("av1-narrow")
    assert status(job)["phase"] == "Queued", status(job)
    assert not status(job).get("attempt") and not status(job).get("worker"), status(job)
    assert queued(job)["reason"] == "NoCapableWorker"
    events = [e["reason"] for e in farm.events("av1-narrow")]
    assert "Scheduled" not in events, events


def test_the_api_server_checks_the_new_pool_fields(farm: Farm) -> None:
    """nvencSessionsPerGpu on nvenc pools only; podLabels/podAnnotations keys and values as Kubernetes
    takes them (a bad one would otherwise fail every worker Pod create); runtimeClassName a DNS name."""
    good = farm.pool(
        "gpu", "nvenc", nvencSessionsPerGpu=3, runtimeClassName="nvidia", imagePullSecrets=[{"name": "ghcr"}],
        podLabels={"team": "media", "example.com/tier": "gpu"}, podAnnotations={"example.com/owner": "a b c"},
    )  # fmt: skip
    assert farm.cluster.get("wp", "gpu", farm.namespace)["spec"]["nvencSessionsPerGpu"] == 3
    bad = [
        ({"accelerator": "cpu", "nvencSessionsPerGpu": 3}, "nvencSessionsPerGpu applies to nvenc pools only"),
        ({"podLabels": {"bad key": "x"}}, "podLabels keys must be label keys"),
        ({"podLabels": {"team": "not ok!"}}, "podLabels values must be label values"),
        ({"podAnnotations": {"/no-prefix": "x"}}, "podAnnotations keys must be prefix/name keys"),
        ({"runtimeClassName": "Not_A_Name"}, "runtimeClassName"),
    ]
    for i, (fields, needle) in enumerate(bad):
        doc = {**good, "metadata": {"name": f"bad-{i}"}, "spec": {**good["spec"], **fields}}
        proc = farm.cluster.apply(doc, farm.namespace, check=False)
        assert proc.returncode != 0 and needle in proc.stderr, (fields, proc.stderr)
