"""The product's image built without a registry: a bookworm base made with debootstrap from the
machine's apt mirror, images/worker/Dockerfile built on it with podman, saved as an OCI archive.

Both are cached under the tools cache (`<cache>/images/`): the base by its recipe (suite, variant,
mirror, apt sources), the image by a hash of the Dockerfile, the package sources (pyproject.toml,
README.md, operator/**) and the base's tarball digest. A cache hit costs one hash of the sources and
one `podman image exists`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ffrtmp.dev.cluster import default_bin_dir

IMAGE_NAME = "localhost/ffmpeg-rtmp"
BASE_NAME = "localhost/ffrtmp-base"
SUITE = "bookworm"
DEBIAN_SUITES = (SUITE, f"{SUITE}-updates", f"{SUITE}-security")
DOCKERFILE = Path("images/worker/Dockerfile")
# Bump to rebuild every cached base (a change to how the base is made).
BASE_RECIPE = "minbase-slim-2"
# What debian:bookworm-slim leaves out (debuerreotype's --slimify), so a locally built image is the
# size of one built on the official base: dpkg skips these paths from then on.
DPKG_EXCLUDES = """path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
"""
# Cached image versions kept (archive and podman tag): the newest few, so switching branches is cheap.
KEEP_IMAGES = 3
# The PATH debian:bookworm-slim sets; an imported tarball has no config, and the Dockerfile extends PATH.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SOURCE_SKIP_DIRS = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})


class ImageError(RuntimeError):
    """The image cannot be built here; the message says why (and names the log)."""


@dataclass(frozen=True)
class AptSource:
    uri: str
    suite: str
    components: tuple[str, ...]


@dataclass(frozen=True)
class BaseImage:
    reference: str
    digest: str  # sha256 of the root file system tarball: the base's identity
    tarball: Path
    build_seconds: float


@dataclass(frozen=True)
class BuiltImage:
    reference: str
    archive: Path
    size_bytes: int  # uncompressed, as `podman image inspect` reports
    build_seconds: float  # of this call: the build, or the cache check on a hit
    cached: bool
    base: str


def default_cache_dir() -> Path:
    """`<tools cache>/images`, beside the Go tools' bin folder."""
    return default_bin_dir().parent / "images"


# ---- pure decisions ---------------------------------------------------------------------------


def parse_apt_sources(texts: Iterable[str]) -> list[AptSource]:
    """Debian `deb` entries of sources.list files, one-line or deb822 format, in order."""
    out: list[AptSource] = []
    for text in texts:
        for stanza in re.split(r"\n\s*\n", text):
            lines = [ln.strip() for ln in stanza.splitlines() if ln.strip() and not ln.strip().startswith("#")]
            fields: dict[str, str] = {}
            for ln in lines:
                if ln.startswith("deb "):
                    words = re.sub(r"\[[^]]*\]", " ", ln).split()
                    if len(words) >= 3:
                        out.append(AptSource(words[1].rstrip("/"), words[2], tuple(words[3:])))
                elif ":" in ln and not ln.startswith("deb-src"):
                    key, _, value = ln.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if fields and "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                for uri in fields.get("uris", "").split():
                    for suite in fields.get("suites", "").split():
                        out.append(AptSource(uri.rstrip("/"), suite, tuple(fields.get("components", "").split())))
    return out


def debian_sources(sources: Iterable[AptSource], suites: tuple[str, ...] = DEBIAN_SUITES) -> list[AptSource]:
    """The entries for Debian's own suites (third-party repositories left out), main only."""
    return [
        AptSource(s.uri, s.suite, ("main",))
        for s in sources
        if s.suite in suites and "main" in s.components and s.uri.startswith(("http://", "https://"))
    ]


def base_mirror(sources: Iterable[AptSource], suite: str = SUITE) -> str:
    """The mirror debootstrap fetches `suite` from: the first http(s) entry for it with `main`."""
    for s in debian_sources(sources, (suite,)):
        return s.uri
    raise ImageError(f"no apt source for Debian {suite} main in /etc/apt/sources.list*")


def base_sources_list(sources: Iterable[AptSource]) -> str:
    """The base's /etc/apt/sources.list: the host's Debian suites (updates and security too)."""
    seen: list[str] = []
    for s in debian_sources(sources):
        line = f"deb {s.uri} {s.suite} main"
        if line not in seen:
            seen.append(line)
    return "\n".join(seen) + "\n"


def base_key(mirror: str, sources_list: str, suite: str = SUITE, recipe: str = BASE_RECIPE) -> str:
    return hashlib.sha256(f"{recipe}\n{suite}\n{mirror}\n{sources_list}".encode()).hexdigest()


def source_files(root: Path) -> list[Path]:
    """What the Dockerfile copies from the context, relative to `root`, sorted (caches left out)."""
    files = [Path("pyproject.toml"), Path("README.md"), DOCKERFILE]
    for dirpath, dirnames, filenames in os.walk(root / "operator"):
        dirnames[:] = sorted(d for d in dirnames if d not in SOURCE_SKIP_DIRS and not d.endswith(".egg-info"))
        for name in filenames:
            if not name.endswith((".pyc", ".pyo")):
                files.append((Path(dirpath) / name).relative_to(root))
    return sorted(files)


def image_key(root: Path, base_digest: str) -> str:
    """Hash of the Dockerfile, the package sources (names and contents) and the base's digest."""
    h = hashlib.sha256(f"base {base_digest}\n".encode())
    for rel in source_files(root):
        data = (root / rel).read_bytes()
        h.update(f"{rel.as_posix()} {len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()


def find_repo_root(start: Path) -> Path:
    """The nearest folder at or above `start` holding images/worker/Dockerfile."""
    for d in (start.resolve(), *start.resolve().parents):
        if (d / DOCKERFILE).is_file() and (d / "pyproject.toml").is_file():
            return d
    raise ImageError(f"no {DOCKERFILE} at or above {start}: run from the ffmpeg-rtmp repository")


# ---- wiring -----------------------------------------------------------------------------------


def unavailable_reason(euid: int | None = None, which: Callable[[str], str | None] = shutil.which) -> str | None:
    """Why the image cannot be built on this host, or None."""
    if (os.geteuid() if euid is None else euid) != 0:
        return "building the base needs root (debootstrap, podman import)"
    missing = [tool for tool in ("podman", "debootstrap", "runc") if which(tool) is None]
    if missing:
        return f"not installed: {' '.join(missing)} (make system-packages)"
    return None


def host_ca_bundle(env: dict[str, str] | None = None) -> Path | None:
    """The CA bundle this host's pip trusts (PIP_CERT, SSL_CERT_FILE, else Debian's), if one exists."""
    env = dict(os.environ) if env is None else env
    for candidate in (env.get("PIP_CERT"), env.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _run(argv: list[str], log: Path, timeout: float, output: bool = False) -> str:
    """Run `argv` with its output appended to `log`; with `output`, its stdout is returned instead."""
    start = time.monotonic()
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(argv)}\n")
        f.flush()
        try:
            out, err = (subprocess.PIPE, f) if output else (f, subprocess.STDOUT)
            proc = subprocess.run(argv, stdout=out, stderr=err, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as e:
            raise ImageError(f"{argv[0]} {argv[1]} timed out after {timeout:.0f}s (log: {log})") from e
        f.write(f"# exit code {proc.returncode} after {time.monotonic() - start:.1f}s\n")
    if proc.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise ImageError(f"{' '.join(argv[:2])} failed with exit code {proc.returncode} (log: {log}):\n{tail}")
    return proc.stdout if output else ""


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One build at a time per cache (parallel test sessions share it)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _image_exists(reference: str) -> bool:
    return subprocess.run(["podman", "image", "exists", reference], check=False).returncode == 0


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def mounts_below(mountinfo: str, root: Path) -> list[Path]:
    """Mount points at or below `root` in a /proc/self/mountinfo text, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].replace("\\040", " ")
            if point == str(root) or point.startswith(prefix):
                points.append(Path(point))
    return sorted(points, key=lambda p: len(p.parts), reverse=True)


def _unmount_below(root: Path) -> bool:
    """Unmount whatever is mounted below `root` (lazily); True when nothing is left mounted."""
    for point in mounts_below(Path("/proc/self/mountinfo").read_text(), root):
        subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)
    return not mounts_below(Path("/proc/self/mountinfo").read_text(), root)


def _clean_rootfs(rootfs: Path) -> None:
    """No apt lists, caches, logs, docs, man pages or locales in the base (as in debian:bookworm-slim)."""
    (rootfs / "etc/dpkg/dpkg.cfg.d/ffrtmp-slim").write_text(DPKG_EXCLUDES)
    for sub in ("usr/share/groff", "usr/share/info", "usr/share/linda", "usr/share/lintian/overrides",
                "usr/share/locale", "usr/share/man"):  # fmt: skip
        for p in (rootfs / sub).glob("*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    for p in sorted((rootfs / "usr/share/doc").rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if p.is_dir() and not p.is_symlink():
            if not any(p.iterdir()):
                p.rmdir()
        elif p.name != "copyright":
            p.unlink()
    for sub in ("var/lib/apt/lists", "var/cache/apt"):
        for p in (rootfs / sub).glob("*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
    for p in (rootfs / "var/log").rglob("*"):  # the files; the folders stay for apt and dpkg
        if p.is_file() or p.is_symlink():
            p.unlink()
    for p in (rootfs / "var/cache/debconf").glob("*-old"):
        p.unlink()


def ensure_base(cache: Path, apt_source_files: Iterable[Path] | None = None) -> BaseImage:
    """The bookworm base: cached tarball (debootstrap once), imported into podman if missing."""
    if apt_source_files is None:
        apt_source_files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    texts = [p.read_text() for p in apt_source_files if p.is_file() and p.suffix in ("", ".list", ".sources")]
    sources = parse_apt_sources(texts)
    cache.mkdir(parents=True, exist_ok=True)
    mirror = base_mirror(sources)
    sources_list = base_sources_list(sources)
    key = base_key(mirror, sources_list)
    reference = f"{BASE_NAME}:{SUITE}-{key[:12]}"
    tarball = cache / f"base-{SUITE}-{key[:12]}.tar"
    meta = tarball.with_suffix(".json")
    log = cache / f"base-{SUITE}-{key[:12]}.log"
    if meta.is_file() and tarball.is_file():
        data = json.loads(meta.read_text())
        base = BaseImage(reference, str(data["digest"]), tarball, float(data["build_seconds"]))
    else:
        reason = unavailable_reason()
        if reason:
            raise ImageError(reason)
        start = time.monotonic()
        log.write_text("")
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix="rootfs-"))
        try:
            rootfs = tmp / "rootfs"
            _run(["debootstrap", "--variant=minbase", SUITE, str(rootfs), mirror], log, timeout=1800)
            _unmount_below(rootfs)
            (rootfs / "etc/apt/sources.list").write_text(sources_list)
            _clean_rootfs(rootfs)
            part = tarball.with_suffix(".tar.part")
            _run(["tar", "--numeric-owner", "--xattrs", "--one-file-system", "-C", str(rootfs), "-cf", str(part), "."],
                 log, timeout=600)  # fmt: skip
            part.replace(tarball)
        finally:
            # debootstrap mounts proc and sys in the tree: never delete through a mount.
            if _unmount_below(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
        base = BaseImage(reference, _sha256_file(tarball), tarball, time.monotonic() - start)
        _write_json(meta, {"reference": reference, "digest": base.digest, "build_seconds": base.build_seconds,
                           "mirror": mirror, "sources_list": sources_list})  # fmt: skip
        for old in cache.glob(f"base-{SUITE}-*"):  # one base at a time: its recipe or mirror changed
            if not old.name.startswith(tarball.stem):
                old.unlink()
    if not _image_exists(reference):
        _run(["podman", "import", "--change", f"ENV=PATH={BASE_PATH}", "--change", "CMD=/bin/bash",
              str(tarball), reference], log, timeout=600)  # fmt: skip
    return base


def build_image(root: Path | None = None, cache: Path | None = None) -> BuiltImage:
    """The image of the checkout at `root` (default: found from the cwd), built or from the cache."""
    start = time.monotonic()
    root = find_repo_root(root or Path.cwd())
    cache = cache or default_cache_dir()
    with _locked(cache):
        base = ensure_base(cache)
        key = image_key(root, base.digest)
        reference = f"{IMAGE_NAME}:{key[:12]}"
        archive = cache / f"ffmpeg-rtmp-{key[:12]}.oci.tar"
        meta = archive.with_suffix(".json")
        if meta.is_file() and archive.is_file():
            data = json.loads(meta.read_text())
            if not _image_exists(reference):
                log = cache / f"ffmpeg-rtmp-{key[:12]}.log"
                loaded = _run(["podman", "load", "-q", "-i", str(archive)], log, timeout=600, output=True)
                names = re.findall(r"Loaded image(?:\(s\))?:\s*(\S+)", loaded)
                if reference not in names:
                    _run(["podman", "tag", (names or [reference])[-1].split(",")[0], reference], log, timeout=60)
            seconds = time.monotonic() - start
            return BuiltImage(reference, archive, int(data["size_bytes"]), seconds, True, base.reference)
        reason = unavailable_reason()
        if reason:
            raise ImageError(reason)
        log = cache / f"ffmpeg-rtmp-{key[:12]}.log"
        log.write_text("")
        argv = ["podman", "build", "--network", "host", "--pull=never", "--layers", "-f", str(root / DOCKERFILE),
                "--build-arg", f"BASE={base.reference}", "-t", reference]  # fmt: skip
        ca = host_ca_bundle()
        if ca:
            argv += ["--secret", f"id=pip-ca,src={ca}"]  # see the Dockerfile: build-time trust only
        argv += ["--runtime", "runc"]  # Debian's crun 1.8 fails in hybrid cgroup mode; its runc works
        _run([*argv, str(root)], log, timeout=3600)
        if image_key(root, base.digest) != key:
            # A source changed while podman copied it: what was built may match neither hash.
            raise ImageError(f"the sources changed during the build of {reference}: build again")
        size = int(_run(["podman", "image", "inspect", "--format", "{{.Size}}", reference], log, 60, output=True))
        part = archive.with_suffix(".tar.part")
        part.unlink(missing_ok=True)
        # Uncompressed layers: half the time of gzip on two cores; containerd imports either.
        _run(["podman", "save", "--uncompressed", "--format", "oci-archive", "-o", str(part), reference],
             log, timeout=600)  # fmt: skip
        part.replace(archive)
        seconds = time.monotonic() - start
        built = BuiltImage(reference, archive, size, seconds, False, base.reference)
        _write_json(meta, asdict(built))
        _prune(cache, keep=KEEP_IMAGES)
        return built


def stale_images(metadata: dict[Path, float], keep: int) -> list[Path]:
    """The image metadata files beyond the `keep` newest (by mtime), oldest last."""
    return sorted(metadata, key=lambda p: metadata[p], reverse=True)[keep:]


def _prune(cache: Path, keep: int) -> None:
    """Delete the archives, logs and podman tags of all but the newest `keep` cached images."""
    metas = {p: p.stat().st_mtime for p in cache.glob("ffmpeg-rtmp-*.oci.json")}
    stale = stale_images(metas, keep)
    kept = [m for m in metas if m not in stale]
    oldest_kept = min((metas[m] for m in kept), default=0.0)
    kept_stems = {m.name.removesuffix(".oci.json") for m in kept}
    for log in cache.glob("ffmpeg-rtmp-*.log"):  # failed builds' logs, once older than every kept image
        if log.stat().st_mtime < oldest_kept and log.name.removesuffix(".log") not in kept_stems:
            log.unlink(missing_ok=True)
    for meta in stale:
        data = json.loads(meta.read_text())
        subprocess.run(["podman", "rmi", str(data["reference"])], check=False, capture_output=True)
        stem = meta.name.removesuffix(".oci.json")
        for p in (cache / f"{stem}.oci.tar", cache / f"{stem}.log", meta):
            p.unlink(missing_ok=True)


def podman_ulimits() -> list[str]:
    """`--ulimit` options for `podman run` that this process may grant.

    As root, podman asks for very high nofile/nproc limits by default; without CAP_SYS_RESOURCE (a
    sandboxed host) runc then fails with "error setting rlimit ... operation not permitted".
    """
    args = []
    for name, which in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        _soft, hard = resource.getrlimit(which)
        value = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
        args += ["--ulimit", f"{name}={value}:{value}"]
    return args
