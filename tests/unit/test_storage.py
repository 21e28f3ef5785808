"""The worker's storage check on real folders: media roots readable, the output root writable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ffrtmp.controller.state import parse_lease
from ffrtmp.worker.storage import PROBE_PREFIX, StorageCheck, check_storage, summarize

pytestmark = pytest.mark.unit


@pytest.fixture
def unwritable(tmp_path: Path) -> str:
    """A directory nobody here may create files in: sysfs refuses even root; else a 0555 folder."""
    if os.geteuid() == 0:
        return "/sys"
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    return str(folder)


def test_readable_media_and_writable_output_pass_and_leave_no_probe(tmp_path: Path) -> None:
    media, output = tmp_path / "media", tmp_path / "output"
    media.mkdir()
    output.mkdir()
    (media / "in.mp4").write_bytes(b"x")
    result = check_storage([str(media)], str(output))
    assert result == StorageCheck(True, f"media roots {media} readable, output root {output} writable")
    assert result.annotation().startswith("ok: ")
    assert not [p for p in output.iterdir() if p.name.startswith(PROBE_PREFIX)]


def test_every_problem_is_named_with_its_path(tmp_path: Path, unwritable: str) -> None:
    missing = tmp_path / "missing"
    a_file = tmp_path / "file"
    a_file.write_bytes(b"x")
    result = check_storage([str(missing), str(a_file)], unwritable)
    assert not result.ok
    assert result.message.split("; ") == [
        f"media root {missing} is not readable: does not exist (no volume mounted there?)",
        f"media root {a_file} is not readable: not a directory",
        f"output root {unwritable} is not writable: cannot create a file (Permission denied)",
    ]
    assert result.annotation() == f"failed: {result.message}"


def test_an_output_root_that_is_missing_or_a_file_is_not_writable(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_bytes(b"x")
    assert check_storage([], str(tmp_path / "none")).message == (
        f"output root {tmp_path / 'none'} is not writable: does not exist (no volume mounted there?)"
    )
    assert check_storage([], str(a_file)).message == f"output root {a_file} is not writable: not a directory"


def test_summarize_is_ok_only_without_problems() -> None:
    assert summarize([], "/out", []) == StorageCheck(True, "media roots none readable, output root /out writable")
    assert summarize(["/m"], "/out", ["a", "b"]) == StorageCheck(False, "a; b")


@pytest.mark.parametrize(
    ("annotation", "ok", "message"),
    [
        (None, True, ""),  # a worker from before the check
        ("pending", None, ""),
        ("ok: media roots /media readable, output root /output writable", True, "media roots /media readable, "
         "output root /output writable"),
        ("failed: output root /output is not writable: does not exist", False,
         "output root /output is not writable: does not exist"),
    ],
)  # fmt: skip
def test_the_operator_reads_the_check_from_the_lease(annotation: str | None, ok: bool | None, message: str) -> None:
    annotations = {"ffmpeg-rtmp.io/encoder-self-test": "ok: libx264"}
    if annotation is not None:
        annotations["ffmpeg-rtmp.io/storage-check"] = annotation
    lease = parse_lease({"metadata": {"name": "l", "namespace": "ns", "annotations": annotations}, "spec": {}})
    assert (lease.storage_ok, lease.storage_message) == (ok, message)
