"""The pure parts of `ffrtmp dev image build`: apt sources, the base recipe, the cache key."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ffrtmp.dev.image import (
    AptSource,
    ImageError,
    base_key,
    base_mirror,
    base_sources_list,
    find_repo_root,
    host_ca_bundle,
    image_key,
    mounts_below,
    parse_apt_sources,
    source_files,
    stale_images,
    unavailable_reason,
)
from helpers import REPO

pytestmark = pytest.mark.unit

DEB822 = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
THIRD_PARTY = "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
NODESOURCE = """Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main
"""


def test_deb822_and_one_line_sources() -> None:
    sources = parse_apt_sources([DEB822, THIRD_PARTY, NODESOURCE])
    assert sources == [
        AptSource("http://deb.debian.org/debian", "bookworm", ("main",)),
        AptSource("http://deb.debian.org/debian", "bookworm-updates", ("main",)),
        AptSource("http://deb.debian.org/debian-security", "bookworm-security", ("main",)),
        AptSource("https://packages.cloud.google.com/apt", "cloud-sdk-bookworm", ("main",)),
        AptSource("https://deb.nodesource.com/node_20.x", "nodistro", ("main",)),
    ]


def test_one_line_options_and_disabled_stanzas() -> None:
    text = "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main contrib\n"
    text += "deb-src http://mirror.example/debian bookworm main\n"
    disabled = "Types: deb\nURIs: http://other.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n"
    assert parse_apt_sources([text, disabled]) == [
        AptSource("http://mirror.example/debian", "bookworm", ("main", "contrib"))
    ]


def test_the_base_uses_the_hosts_debian_mirror_and_suites_only() -> None:
    sources = parse_apt_sources([THIRD_PARTY, DEB822])
    assert base_mirror(sources) == "http://deb.debian.org/debian"
    assert base_sources_list(sources) == (
        "deb http://deb.debian.org/debian bookworm main\n"
        "deb http://deb.debian.org/debian bookworm-updates main\n"
        "deb http://deb.debian.org/debian-security bookworm-security main\n"
    )


def test_no_debian_mirror_is_a_clear_error() -> None:
    with pytest.raises(ImageError, match="no apt source for Debian bookworm main"):
        base_mirror(parse_apt_sources([THIRD_PARTY, NODESOURCE]))
    with pytest.raises(ImageError, match="no apt source"):  # a file:// or cdrom source is not a mirror
        base_mirror(parse_apt_sources(["deb file:///srv/debian bookworm main\n"]))


def test_base_key_follows_the_recipe() -> None:
    a = base_key("http://deb.debian.org/debian", "deb x bookworm main\n")
    assert a == base_key("http://deb.debian.org/debian", "deb x bookworm main\n")
    assert a != base_key("http://mirror.example/debian", "deb x bookworm main\n")
    assert a != base_key("http://deb.debian.org/debian", "deb y bookworm main\n")
    assert a != base_key("http://deb.debian.org/debian", "deb x bookworm main\n", recipe="other")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "images/worker").mkdir(parents=True)
    shutil.copy(REPO / "images/worker/Dockerfile", root / "images/worker/Dockerfile")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "README.md").write_text("# x\n")
    (root / "operator/ffrtmp/dev").mkdir(parents=True)
    (root / "operator/ffrtmp/__init__.py").write_text("")
    (root / "operator/ffrtmp/dev/kwok.yaml").write_text("a: 1\n")
    return root


def test_the_key_covers_what_the_dockerfile_copies(checkout: Path) -> None:
    assert [p.as_posix() for p in source_files(checkout)] == [
        "README.md",
        "images/worker/Dockerfile",
        "operator/ffrtmp/__init__.py",
        "operator/ffrtmp/dev/kwok.yaml",
        "pyproject.toml",
    ]
    key = image_key(checkout, "base1")
    assert key == image_key(checkout, "base1")
    assert key != image_key(checkout, "base2")
    for rel in ("operator/ffrtmp/dev/kwok.yaml", "README.md", "pyproject.toml", "images/worker/Dockerfile"):
        before = image_key(checkout, "base1")
        (checkout / rel).write_text((checkout / rel).read_text() + "#\n")
        assert image_key(checkout, "base1") != before, rel
    before = image_key(checkout, "base1")
    (checkout / "operator/ffrtmp/new.py").write_text("")  # a new, empty file changes it too
    assert image_key(checkout, "base1") != before


def test_caches_and_bytecode_do_not_change_the_key(checkout: Path) -> None:
    before = image_key(checkout, "base1")
    for rel in ("operator/ffrtmp/__pycache__/x.cpython-311.pyc", "operator/ffrtmp/.mypy_cache/x.json",
                "operator/ffrtmp/dev/y.pyc", "operator/ffrtmp.egg-info/PKG-INFO"):  # fmt: skip
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / rel).write_text("noise")
    (checkout / "tests").mkdir()
    (checkout / "tests/test_x.py").write_text("")  # not in the image
    assert image_key(checkout, "base1") == before


def test_dockerignore_agrees_with_the_key() -> None:
    ignore = (REPO / ".dockerignore").read_text().split()
    for pattern in ("*", "!pyproject.toml", "!README.md", "!operator", "**/__pycache__", "**/*.pyc", "**/*.egg-info"):
        assert pattern in ignore


def test_repo_root_is_found_from_below(checkout: Path, tmp_path: Path) -> None:
    assert find_repo_root(checkout / "operator/ffrtmp/dev") == checkout
    with pytest.raises(ImageError, match="no images/worker/Dockerfile"):
        find_repo_root(tmp_path)


def test_mounts_below_a_tree_deepest_first() -> None:
    mountinfo = (
        "22 1 0:21 / /proc rw - proc proc rw\n"
        "90 30 0:5 / /cache/rootfs-x/rootfs/proc rw - proc proc rw\n"
        "91 90 0:6 / /cache/rootfs-x/rootfs/proc/sys/fs/binfmt_misc rw - binfmt_misc b rw\n"
        "92 30 0:7 / /cache/rootfs-x/rootfs/sys rw - sysfs sysfs rw\n"
        "93 30 0:8 / /cache/rootfs-xy/other rw - tmpfs t rw\n"
    )
    assert mounts_below(mountinfo, Path("/cache/rootfs-x")) == [
        Path("/cache/rootfs-x/rootfs/proc/sys/fs/binfmt_misc"),
        Path("/cache/rootfs-x/rootfs/proc"),
        Path("/cache/rootfs-x/rootfs/sys"),
    ]


def test_only_the_newest_images_are_kept() -> None:
    metas = {Path("a.oci.json"): 3.0, Path("b.oci.json"): 1.0, Path("c.oci.json"): 2.0, Path("d.oci.json"): 4.0}
    assert stale_images(metas, keep=2) == [Path("c.oci.json"), Path("b.oci.json")]
    assert stale_images(metas, keep=5) == []


def test_why_the_image_cannot_be_built() -> None:
    def have(*tools: str) -> Callable[[str], str | None]:
        return lambda name: f"/usr/bin/{name}" if name in tools else None

    assert unavailable_reason(0, have("podman", "debootstrap", "runc")) is None
    reason = unavailable_reason(1000, have("podman", "debootstrap", "runc"))
    assert reason is not None and "needs root" in reason
    assert unavailable_reason(0, have("podman")) == "not installed: debootstrap runc (make system-packages)"


def test_pip_trusts_what_the_host_trusts(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.crt"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert host_ca_bundle({"PIP_CERT": str(bundle)}) == bundle
    assert host_ca_bundle({"PIP_CERT": str(tmp_path / "missing"), "SSL_CERT_FILE": str(bundle)}) == bundle
