"""The product's image, built here without a registry (`ffrtmp dev image build`) and run with podman.

The build is cached under the tools cache (a cold build takes minutes: debootstrap, apt, pip; a warm
one is a hash of the sources). Containers run as a restricted Pod would: uid 10001, read-only root,
every capability dropped, no new privileges, no network.
Needs root, podman and debootstrap (`make system-packages`); without them the module skips with the
reason, unless FFRTMP_REQUIRE_REAL_NODE=1 (the project's CI), which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ffrtmp.dev.image import BuiltImage, ImageError, build_image, podman_ulimits, unavailable_reason
from helpers import REPO

pytestmark = pytest.mark.image

LIBDIR = "/usr/lib/x86_64-linux-gnu"
# The user-space GPU drivers the image ships (see images/worker/Dockerfile).
DRIVER_FILES = [
    f"{LIBDIR}/dri/iHD_drv_video.so",  # intel-media-va-driver
    f"{LIBDIR}/dri/i965_drv_video.so",  # i965-va-driver
    f"{LIBDIR}/dri/radeonsi_drv_video.so",  # mesa-va-drivers
    f"{LIBDIR}/libmfx.so.1",  # QSV: Media SDK dispatcher (libmfx1)
    f"{LIBDIR}/libmfxhw64.so.1",  # QSV: Media SDK runtime, Broadwell..Ice Lake (libmfx1)
    f"{LIBDIR}/libmfx-gen.so.1.2",  # QSV: oneVPL GPU runtime, Tiger Lake and newer (libmfx-gen1.2)
]
RESTRICTED = ["--network", "none", "--read-only", "--user", "10001:10001", "--cap-drop", "ALL",
              "--security-opt", "no-new-privileges", "--tmpfs", "/tmp:rw,size=64m"]  # fmt: skip


@pytest.fixture(scope="module")
def image(image_report: list[str]) -> BuiltImage:
    reason = unavailable_reason()
    if reason:
        if os.environ.get("FFRTMP_REQUIRE_REAL_NODE") == "1":
            pytest.fail(f"FFRTMP_REQUIRE_REAL_NODE=1 but the image cannot be built here: {reason}")
        pytest.skip(f"the image cannot be built here: {reason}")
    try:
        first = build_image(REPO)
        second = build_image(REPO)
    except ImageError as e:
        pytest.fail(f"image build failed: {e}")
    assert second.cached, "a second build of unchanged sources must come from the cache"
    assert (second.reference, second.archive, second.size_bytes) == (first.reference, first.archive, first.size_bytes)
    how = "cache hit" if first.cached else "built"
    lines = [
        f"image {first.reference}: {first.size_bytes / 1e6:.0f} MB uncompressed, archive {first.archive}",
        f"first build {first.build_seconds:.2f}s ({how}), second {second.build_seconds:.3f}s (cache hit)",
    ]
    image_report.extend(lines)
    print("\n" + "\n".join(lines))
    return first


def podman_run(image: BuiltImage, *args: str, entrypoint: str | None = None, extra: tuple[str, ...] = (),
               restricted: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:  # fmt: skip
    argv = ["podman", "run", "--rm", *podman_ulimits(), *(RESTRICTED if restricted else []), *extra]
    if entrypoint:
        argv += ["--entrypoint", entrypoint]
    return subprocess.run([*argv, image.reference, *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_the_cli_reports_the_cached_image(image: BuiltImage) -> None:
    proc = subprocess.run([sys.executable, "-m", "ffrtmp.cli", "dev", "image", "build", "--root", str(REPO)],
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"image:   {image.reference} (cached" in proc.stdout
    assert f"archive: {image.archive}" in proc.stdout
    assert f"size:    {image.size_bytes} bytes" in proc.stdout


def test_the_archive_is_an_oci_image(image: BuiltImage) -> None:
    listing = subprocess.run(["tar", "-tf", str(image.archive)], capture_output=True, text=True, check=True).stdout
    assert {"oci-layout", "index.json"} <= set(listing.split())
    assert image.size_bytes > 50_000_000  # Debian + ffmpeg + drivers; a broken build is far smaller


def test_ffrtmp_commands_run_as_a_restricted_pod(image: BuiltImage) -> None:
    for args in (["--help"], ["worker", "--help"], ["operator", "--help"]):
        proc = podman_run(image, *args)
        assert proc.returncode == 0, proc.stderr
        assert "usage: ffrtmp" in proc.stdout


IMPORT_ALL = """
import importlib, pkgutil, ffrtmp
names = [m.name for m in pkgutil.walk_packages(ffrtmp.__path__, "ffrtmp.")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_every_module_imports_with_the_images_dependencies(image: BuiltImage) -> None:
    proc = podman_run(image, "-c", IMPORT_ALL, entrypoint="python3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout) > 20


def test_default_user_and_command(image: BuiltImage) -> None:
    config = json.loads(subprocess.run(["podman", "image", "inspect", image.reference], capture_output=True,
                                       text=True, check=True).stdout)[0]["Config"]  # fmt: skip
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["ffrtmp"] and config["Cmd"] == ["worker"]
    proc = podman_run(image, "-u", entrypoint="id", restricted=False, extra=("--network", "none"))
    assert (proc.returncode, proc.stdout.strip()) == (0, "10001")


def test_no_apt_lists_or_caches(image: BuiltImage) -> None:
    proc = podman_run(image, "/var/lib/apt/lists", "/var/cache/apt", "/var/log/apt", "-type", "f", entrypoint="find")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""


def test_gpu_user_space_drivers_are_in_the_image(image: BuiltImage) -> None:
    proc = podman_run(image, "-L", *DRIVER_FILES, entrypoint="ls")
    assert proc.returncode == 0, f"missing driver files: {proc.stderr}"


def test_ffmpeg_has_the_encoders_pools_use(image: BuiltImage) -> None:
    proc = podman_run(image, "-hide_banner", "-encoders", entrypoint="ffmpeg")
    assert proc.returncode == 0, proc.stderr
    names = {line.split()[1] for line in proc.stdout.splitlines() if len(line.split()) > 1}
    assert {"libx264", "libx265", "aac", "h264_vaapi", "hevc_vaapi", "h264_qsv", "hevc_qsv", "h264_nvenc"} <= names


def test_a_real_encode_in_the_container(image: BuiltImage, tmp_path: Path) -> None:
    ffprobe = shutil.which("ffprobe")
    assert ffprobe, "ffprobe (Debian's ffmpeg package) is needed on the host: make system-packages"
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, 10001, 10001)
    proc = podman_run(
        image, "-hide_banner", "-nostdin", "-f", "lavfi", "-i", "testsrc=duration=1:size=320x240:rate=25",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "/out/clip.mp4",
        entrypoint="ffmpeg", extra=("-v", f"{out}:/out"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    probe = subprocess.run([ffprobe, "-v", "error", "-count_frames", "-show_streams", "-show_format", "-of", "json",
                            str(out / "clip.mp4")], capture_output=True, text=True, check=True)  # fmt: skip
    info = json.loads(probe.stdout)
    (video,) = info["streams"]
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 240)
    assert int(video["nb_read_frames"]) == 25
    assert abs(float(info["format"]["duration"]) - 1.0) < 0.1
    assert (out / "clip.mp4").stat().st_uid == 10001


GUARD_CHECK = """
import asyncio
from ffrtmp.egress import guard
print(asyncio.run(guard.check(guard.DEFAULT_LIBRARY)))
"""


def test_the_connect_guard_is_in_the_image_and_stops_ffmpeg_connecting(image: BuiltImage) -> None:
    """The worker's start check, in the image: ffmpeg with the guard at its default path must be refused
    a loopback connection (and report it). The compiler that built the guard is not in the image."""
    proc = podman_run(image, "-c", GUARD_CHECK, entrypoint="python3")
    assert (proc.returncode, proc.stdout.strip()) == (0, "None"), proc.stdout + proc.stderr[-2000:]
    proc = podman_run(image, "-c", "command -v cc gcc || echo none", entrypoint="sh")
    assert proc.stdout.strip() == "none", proc.stdout
