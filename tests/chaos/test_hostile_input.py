"""Bad and hostile input, end to end: broken media, a stream that stalls, inputs that try to read
local files or other hosts, specs that try to write outside the job folder, a fuzzer feeding the
API thousands of generated specs, and the least privilege of the workers.

Every refusal is asserted by its reason and message; "nothing read" is checked with inotify on a
canary clip outside the media root, "nothing fetched" with recording HTTP servers on other
addresses, "nothing written" by looking outside the output root (the workers' working folder).

Egress: the pool allowlists only 127.0.0.4/32 (the "local" server); 127.0.0.2 and 127.0.0.3 are
forbidden hosts (loopback), and the API server (on 127.0.0.1) is refused whatever the allowlist."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import invariants
import pytest
import yaml
from chaoslib import ChaosFarm, ScenarioResult, report, status, stop_farm
from hostile import Canary, Recorder, playlist
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ffrtmp.api.job import TranscodeJobSpec
from helpers import REPO, TestCluster, wait_for

pytestmark = pytest.mark.chaos

OUT = [{"name": "out", "video": {"codec": "h264", "crf": 32, "preset": "ultrafast"}}]


# -- the hostile farm: one operator, two workers, every hostile job at once -----------------------


@dataclass
class Case:
    uri: str
    reason: str | None  # expected failure reason; None: see the test
    message: str  # a fragment of status.message
    spec: dict[str, Any] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=lambda: OUT)


@dataclass
class Hostile:
    farm: ChaosFarm
    canary: Canary
    local: Recorder  # 127.0.0.4 (allowlisted): playlists, redirects and the stalling stream
    other: Recorder  # 127.0.0.2: "another host", forbidden, must never be called
    liar_target: Recorder  # 127.0.0.3: another host that only a lying playlist names
    cases: dict[str, Case]
    results: dict[str, dict[str, Any]]
    elapsed: float


def _namespace(cluster: TestCluster, base: str) -> str:
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    wait_for(lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0, 30, "SA")
    return name


def _media(farm: ChaosFarm, clips: dict[str, Path], canary: Path, local: Recorder, other: Recorder,
           liar: Recorder, api_server: str) -> dict[str, Case]:  # fmt: skip
    m = farm.media
    shutil.copyfile(clips["short"], m / "clip.mp4")
    shutil.copyfile(clips["audio"], m / "audio.m4a")
    shutil.copyfile(clips["tiny5"], m / "tiny5.mp4")
    (m / "zero.mp4").write_bytes(b"")
    data = clips["short"].read_bytes()
    (m / "half.mp4").write_bytes(data[: len(data) // 2])
    noise = random.Random(1).randbytes(100_000)
    (m / "noise.ts").write_bytes(noise)
    (m / "noise.dat").write_bytes(noise)
    (m / "link.mp4").symlink_to(canary)
    (m / "pl-file-url.m3u8").write_bytes(playlist(f"file://{canary}"))
    (m / "pl-abs.m3u8").write_bytes(playlist(str(canary)))
    (m / "pl-etc.m3u8").write_bytes(playlist("/etc/passwd"))
    (m / "pl-concat.m3u8").write_bytes(playlist(f"concat:{canary}|{canary}"))
    local.routes["/other.m3u8"] = playlist(f"{other.base}/seg.ts")
    local.routes["/liar.m3u8"] = playlist("seg.ts")  # what the worker's check reads ...
    local.lavf_routes["/liar.m3u8"] = playlist(f"{liar.base}/seg.ts")  # ... and what ffmpeg gets
    local.stall["/stall.mp4"] = clips["faststart"].read_bytes()
    for server in (local, other, liar):  # every server could serve the clip: only the policy keeps jobs away
        server.routes["/clip.mp4"] = clips["faststart"].read_bytes()
    local.redirects["/redirect.mp4"] = f"{other.base}/clip.mp4"
    not_allowed = "InputNotAllowed"
    egress, refused = "DestinationNotAllowed", "egress policy does not allow"
    other_port = other.server_address[1]
    return {
        "missing-file": Case(f"{m}/nope.mp4", "InputNotFound", f"The input file does not exist: {m}/nope.mp4"),
        "zero-byte-file": Case(f"{m}/zero.mp4", "InvalidInput", "empty or an incomplete MP4 (no moov atom)"),
        "truncated-mp4": Case(f"{m}/half.mp4", "InvalidInput", "empty or an incomplete MP4 (no moov atom)"),
        "random-bytes": Case(f"{m}/noise.ts", "InvalidInput", "The input is not a media file ffmpeg can read"),
        "audio-only-input": Case(f"{m}/audio.m4a", "InvalidInput", "The input has no video stream"),
        "stalled-stream": Case(
            f"{local.base}/stall.mp4", "Stalled", "ffmpeg made no progress for too long", {"backoffLimit": 0}
        ),
        "playlist-file-url": Case(f"{m}/pl-file-url.m3u8", not_allowed, f"refers to 'file://{canary}'"),
        "playlist-path-outside": Case(f"{m}/pl-abs.m3u8", not_allowed, f"'{canary}', which is outside the media roots"),
        "playlist-etc-passwd": Case(f"{m}/pl-etc.m3u8", not_allowed, "'/etc/passwd', which is outside the media roots"),
        "playlist-concat": Case(f"{m}/pl-concat.m3u8", not_allowed, "may only refer to files next to it"),
        "playlist-other-host": Case(f"{local.base}/other.m3u8", egress, f"connect to 127.0.0.2:{other_port},"),
        "symlink-out-of-root": Case(f"{m}/link.mp4", not_allowed, f"(it resolves to {canary}) is not under"),
        "path-outside-root": Case(str(canary), not_allowed, "is not under the pool's media roots"),
        "etc-passwd": Case("/etc/passwd", not_allowed, "/etc/passwd is not under the pool's media roots"),
        # Egress: each refused at connect time by the worker's egress proxy (or, for rtmp, before ffmpeg).
        "http-forbidden-host": Case(f"{other.base}/clip.mp4", egress, refused),
        "redirect-to-forbidden-host": Case(f"{local.base}/redirect.mp4", egress, f"connect to 127.0.0.2:{other_port},"),
        "name-resolving-to-loopback": Case(f"http://localhost:{other_port}/clip.mp4", egress, refused),
        "private-address": Case("http://10.255.255.1/clip.mp4", egress, refused),
        "cloud-metadata": Case("http://169.254.169.254/latest/clip.mp4", egress, refused),
        "api-server": Case(f"{api_server}/version", egress, refused),
        "rtmp-not-allowed": Case(f"rtmp://127.0.0.4:{other_port}/live/x", egress, "allowUnproxiedProtocols"),
        # Gaps this suite found (now fixed): the playlist that lies to the worker's check is refused
        # when ffprobe/ffmpeg fetch its other version, at connect time.
        "random-bytes-dat": Case(f"{m}/noise.dat", "InvalidInput", "not a media file"),
        "playlist-lies-to-checker": Case(f"{local.base}/liar.m3u8", egress, f"127.0.0.3:{liar.server_address[1]}"),
        "extra-args-bare-output": Case(f"{m}/clip.mp4", "InvalidSpec", "extraArgs", {"extraArgs": ["escape.mp4"]}),
        # Absurd but allowed by the CRD: 8K from a 5-frame 320x240 clip.
        "absurd-resolution": Case(
            f"{m}/tiny5.mp4", None, "", {"timeoutSeconds": 120},
            [{"name": "out", "video": {"codec": "h264", "preset": "ultrafast", "width": 7680, "height": 4320}}],
        ),
    }  # fmt: skip


@pytest.fixture(scope="module")
def hostile(
    cluster: TestCluster, clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hostile]:
    root = tmp_path_factory.mktemp("hostile")
    namespace = _namespace(cluster, "chaos-hostile")
    farm = ChaosFarm(cluster, namespace, root, root / "media", root / "output")
    farm.media.mkdir()
    farm.output.mkdir()
    outside = root / "outside"
    outside.mkdir()
    canary_path = outside / "canary.mp4"
    shutil.copyfile(clips["short"], canary_path)
    canary = Canary(canary_path)
    local, other, liar = (Recorder(h, {}, {}, {}) for h in ("127.0.0.4", "127.0.0.2", "127.0.0.3"))
    api_server = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    try:
        cases = _media(farm, clips, canary_path, local, other, liar, api_server)
        farm.pool("cpu", "cpu", minWorkers=2, maxWorkers=2, maxConcurrentJobs=4, autoscaling={"enabled": False},
                  egress={"allow": ["127.0.0.4/32"]})  # fmt: skip
        farm.start_operator("--pool-allowed-egress-destinations=127.0.0.4/32")  # the admin lets pools open it
        farm.start_workers(env={"FFRTMP_STALL_SECONDS": "3"})
        farm.wait_ready("cpu", 2)
        started = time.monotonic()
        farm.apply_all([farm.job_doc(name, c.uri, c.outputs, **c.spec) for name, c in cases.items()])
        jobs = farm.wait_all(timeout=150)
        results = {j["metadata"]["name"]: status(j) for j in jobs}
        yield Hostile(farm, canary, local, other, liar, cases, results, time.monotonic() - started)
    except BaseException:
        farm.dump()
        raise
    finally:
        stop_farm(farm)
        for server in (local, other, liar):
            server.stop()
        canary.close()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


REFUSED = [
    "missing-file", "zero-byte-file", "truncated-mp4", "random-bytes", "audio-only-input", "stalled-stream",
    "playlist-file-url", "playlist-path-outside", "playlist-etc-passwd", "playlist-concat", "playlist-other-host",
    "symlink-out-of-root", "path-outside-root", "etc-passwd", "http-forbidden-host", "redirect-to-forbidden-host",
    "name-resolving-to-loopback", "private-address", "cloud-metadata", "api-server", "rtmp-not-allowed",
]  # fmt: skip


def _assert_refused(h: Hostile, name: str) -> None:
    case, s = h.cases[name], h.results[name]
    assert s["phase"] == "Failed", (name, s)
    assert s["reason"] == case.reason, (name, s["reason"], s["message"])
    assert case.message in s["message"], (name, s["message"])
    conditions = {c["type"]: c for c in s["conditions"]}
    assert conditions["Failed"]["reason"] == case.reason
    assert s["attempt"] == 1, f"{name}: a refused input is not retried ({s['attempt']} attempts)"
    assert not (h.farm.output / h.farm.namespace / name).exists(), f"{name} left an output folder"


@pytest.mark.parametrize("name", REFUSED)
def test_hostile_media_is_refused_with_its_reason(hostile: Hostile, name: str) -> None:
    _assert_refused(hostile, name)


def test_absurd_resolution_ends_cleanly(hostile: Hostile) -> None:
    """7680x4320 from a 5-frame 320x240 clip is allowed by the CRD: it must end (never hang), either
    with a real 8K output or with a clear reason."""
    s = hostile.results["absurd-resolution"]
    if s["phase"] == "Succeeded":
        out = s["outputs"][0]
        assert (out["width"], out["height"]) == (7680, 4320), out
    else:
        assert s["reason"] in ("OOMKilled", "DeadlineExceeded", "EncoderUnavailable", "FfmpegError"), s
        assert s["message"]


def test_nothing_read_fetched_or_written_outside(hostile: Hostile) -> None:
    """No job opened the canary outside the media root, called a forbidden host, or wrote outside the
    output root."""
    assert not hostile.canary.opened(), "a job opened the canary file outside the media root"
    assert hostile.other.requests == [], hostile.other.requests
    assert hostile.liar_target.requests == [], hostile.liar_target.requests
    stray = [p.name for p in hostile.farm.cwd.rglob("*")]
    assert stray == [], stray
    assert sorted(p.name for p in hostile.farm.media.iterdir()) == sorted(
        ["clip.mp4", "audio.m4a", "tiny5.mp4", "zero.mp4", "half.mp4", "noise.ts", "noise.dat", "link.mp4",
         "pl-file-url.m3u8", "pl-abs.m3u8", "pl-etc.m3u8", "pl-concat.m3u8"]
    )  # fmt: skip
    found = invariants.check(
        hostile.farm,
        expect=("Succeeded", "Failed"),
        allowed_failures=tuple({c.reason or "" for c in hostile.cases.values()}),
    )  # fmt: skip
    eightk = hostile.results["absurd-resolution"]["phase"]
    report(
        ScenarioResult(
            "hostile media inputs", found.jobs, f"{found.jobs} broken or hostile inputs at once", len(found.lost),
            len(found.twice), None,
            f"all ended in {hostile.elapsed:.0f} s; {len(REFUSED)} refused with the expected reason and message; "
            f"canary never opened, forbidden hosts never called; 7680x4320: {eightk}",
        )
    )  # fmt: skip


def test_extra_args_cannot_add_an_output_file(hostile: Hostile) -> None:
    s = hostile.results["extra-args-bare-output"]
    escaped = list(hostile.farm.cwd.rglob("escape.mp4"))
    assert escaped == [], f"ffmpeg wrote {escaped} (job {s['phase']})"
    _assert_refused(hostile, "extra-args-bare-output")


def test_random_bytes_misdetected_as_a_format_are_invalid_input(hostile: Hostile) -> None:
    _assert_refused(hostile, "random-bytes-dat")


def test_playlist_that_changes_after_the_check_cannot_reach_another_host(hostile: Hostile) -> None:
    """inputs.check_playlist reads an http playlist once and checks it, then ffprobe and ffmpeg fetch it
    again: the server shows the checker a clean playlist and ffmpeg (User-Agent Lavf) one naming another
    host. The worker's egress proxy checks the destination of every connection ffmpeg makes, so the
    changed playlist reaches nothing (it was a strict xfail before the proxy)."""
    liar = [agent for path, agent in hostile.local.requests if path == "/liar.m3u8"]
    assert any(a.startswith("Lavf") for a in liar), f"ffmpeg never fetched the lying playlist: {liar}"
    assert hostile.liar_target.requests == [], f"ffmpeg called another host: {hostile.liar_target.requests}"
    _assert_refused(hostile, "playlist-lies-to-checker")


def test_a_redirect_to_a_forbidden_host_is_followed_by_nobody(hostile: Hostile) -> None:
    assert "/redirect.mp4" in [path for path, _ in hostile.local.requests], hostile.local.requests
    assert hostile.other.requests == []


# -- refused at admission: nothing is created --------------------------------------------------------

ADMISSION = {
    "file-scheme": ({"input": {"uri": "file:///etc/passwd"}}, "input.uri must be an absolute file path or an http"),
    "concat-scheme": ({"input": {"uri": "concat:/m/a.mp4|/etc/passwd"}}, "input.uri must be an absolute file path"),
    "dot-dot": ({"input": {"uri": "/media/../etc/passwd"}}, "input.uri must not contain '..'"),
    "eleven-outputs": (
        {"outputs": [{"name": f"o{i}", "video": {"codec": "h264"}} for i in range(11)]},
        "must have at most 10 items",
    ),
    "extra-absolute-path": ({"extraArgs": ["-c:v", "libx264", "/tmp/x.mp4"]}, "extraArgs must not name files"),
    "extra-parent-path": ({"extraArgs": ["../x.mp4"]}, "extraArgs must not name files"),
    "extra-format": ({"extraArgs": ["-f", "mp4"]}, "extraArgs must not set inputs, outputs, formats"),
    "extra-overwrite": ({"extraArgs": ["-y"]}, "extraArgs must not set inputs, outputs, formats"),
    "extra-input": ({"extraArgs": ["-i", "x.mp4"]}, "extraArgs must not set inputs, outputs, formats"),
    "extra-movie-filter": ({"extraArgs": ["-vf", "movie=canary.mp4"]}, "must not use filters that open files"),
    "extra-shell": ({"extraArgs": ["-metadata", "title=$(id)"]}, "extraArgs is an argv list, not a shell string"),
    "output-path-escape": ({"outputs": [{"name": "out", "path": "../../x.mp4"}]}, "spec.outputs[0].path"),
}


@pytest.mark.parametrize("name", list(ADMISSION))
def test_hostile_spec_is_refused_at_admission(cluster: TestCluster, admission_ns: str, name: str) -> None:
    patch, message = ADMISSION[name]
    doc = {
        "apiVersion": "ffmpeg-rtmp.io/v1alpha1", "kind": "TranscodeJob", "metadata": {"name": name},
        "spec": {"input": {"uri": "/media/a.mp4"}, "outputs": OUT, **patch},
    }  # fmt: skip
    out = cluster.apply(doc, admission_ns, check=False)
    assert out.returncode != 0, f"{name} was admitted"
    assert message in out.stderr, out.stderr
    assert "is invalid" in out.stderr
    assert cluster.kubectl("get", "tj", name, "-n", admission_ns, check=False).returncode != 0
    assert not Path("/tmp/x.mp4").exists()


@pytest.fixture(scope="module")
def admission_ns(cluster: TestCluster) -> Iterator[str]:
    name = _namespace(cluster, "chaos-admission")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# -- the spec fuzzer ---------------------------------------------------------------------------------

# Valid specs first (each field drawn from what the CRD allows), then 0-3 mutations that put a hostile
# or garbage value somewhere: random strings in enums, huge numbers, nested garbage, wrong types.
_X264 = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
_VALID_VIDEO = st.fixed_dictionaries(
    {"codec": st.sampled_from(["h264", "hevc"])},
    optional={
        "crf": st.integers(0, 51),
        "preset": st.sampled_from(_X264),
        "width": st.integers(16, 7680),
        "height": st.integers(16, 4320),
        "fps": st.integers(1, 240),
        "gop": st.integers(1, 1200),
    },
)
_VALID_OUTPUT = st.fixed_dictionaries(
    {"container": st.sampled_from(["mp4", "mkv", "mpegts"]), "video": _VALID_VIDEO},
    optional={"audio": st.fixed_dictionaries({"codec": st.sampled_from(["aac", "mp3", "none"])})},
)
_VALID_SPEC = st.fixed_dictionaries(
    {
        "input": st.fixed_dictionaries(
            {
                "uri": st.sampled_from(
                    ["/media/a.mp4", "/media/d/b.mkv", "https://cdn.example/a.m3u8", "rtmp://in.example/live/k"]
                )
            }
        ),
        "outputs": st.lists(_VALID_OUTPUT, min_size=1, max_size=3),
    },
    optional={
        "priority": st.integers(-1000, 1000),
        "timeoutSeconds": st.integers(1, 604800),
        "backoffLimit": st.integers(0, 20),
        "ttlSecondsAfterFinished": st.integers(0, 31536000),
        "slaSeconds": st.integers(1, 604800),
        "suspend": st.booleans(),
        "accelerator": st.sampled_from(["auto", "cpu"]),
        "hardwarePolicy": st.sampled_from(["preferred", "disabled"]),
        "poolRef": st.fixed_dictionaries({"name": st.sampled_from(["paused", "live", "nope"])}),
        "extraArgs": st.lists(st.sampled_from(["-tune", "film", "-profile:v", "high", "-an", "-g", "50"]), max_size=4),
        "thumbnails": st.fixed_dictionaries({}, optional={"intervalSeconds": st.integers(1, 3600)}),
        "resources": st.fixed_dictionaries({"limits": st.fixed_dictionaries({"cpu": st.sampled_from(["1", "500m"])})}),
    },
)
_PATHS: list[tuple[str | int, ...]] = [
    (), ("input",), ("input", "uri"), ("input", "startSeconds"), ("input", "live"), ("outputs",),
    ("outputs", 0), ("outputs", 0, "name"), ("outputs", 0, "container"), ("outputs", 0, "path"), ("outputs", 0, "url"),
    ("outputs", 0, "video"), ("outputs", 0, "video", "codec"), ("outputs", 0, "video", "width"),
    ("outputs", 0, "video", "bitrate"), ("outputs", 0, "video", "crf"), ("outputs", 0, "video", "preset"),
    ("outputs", 0, "audio", "codec"), ("outputs", 0, "audio", "sampleRate"), ("outputs", 1), ("priority",),
    ("timeoutSeconds",), ("backoffLimit",), ("accelerator",), ("hardwarePolicy",), ("poolRef",), ("poolRef", "name"),
    ("suspend",), ("extraArgs",), ("extraArgs", 0), ("hls",), ("hls", "segmentType"), ("thumbnails", "width"),
    ("resources", "limits", "memory"), ("noSuchField",),
]  # fmt: skip
_HOSTILE_VALUES = [
    "file:///etc/passwd", "concat:/a|/b", "/media/../etc/passwd", "", " ", "\x00", "a" * 5000, "-f", "$(id)",
    "../x.mp4", "/tmp/x.mp4", "escape.mp4", "p7", "tpu", "H264", "10M\n", 2**63, -(2**63) - 1, 10**30, -1, 0, 1.5,
    1e308, True, None, [], {}, ["-i", "x"], {"name": None}, [{"name": "out"}] * 11,
]  # fmt: skip
_GARBAGE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=5,
)
_MUTATIONS = st.lists(st.tuples(st.sampled_from(_PATHS), st.sampled_from(_HOSTILE_VALUES) | _GARBAGE), max_size=3)
FUZZ_SPECS = 3000
FUZZ_CREATE = 200


def _mutate(spec: dict[str, Any], path: tuple[str | int, ...], value: Any) -> Any:
    if not path:
        return value
    node: Any = spec
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {}) if isinstance(key, str) else None
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return spec
    last = path[-1]
    if (isinstance(node, dict) and isinstance(last, str)) or (
        isinstance(node, list) and isinstance(last, int) and last < len(node)
    ):
        node[last] = value
    return spec


def _generate_specs(count: int) -> list[Any]:
    specs: list[Any] = []

    @settings(
        max_examples=count // 5, database=None, derandomize=True, deadline=None, phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(st.lists(st.tuples(_VALID_SPEC, _MUTATIONS), min_size=5, max_size=5))
    def collect(drawn: list[tuple[dict[str, Any], list[tuple[tuple[str | int, ...], Any]]]]) -> None:
        for spec, mutations in drawn:  # five specs per example: less overhead per spec
            for i, output in enumerate(spec["outputs"]):
                output["name"] = f"o{i}"
            result: Any = spec
            for path, value in mutations:
                result = _mutate(result, path, json.loads(json.dumps(value))) if isinstance(result, dict) else result
            specs.append(result)

    collect()
    return specs


def _job(name: str, spec: Any) -> dict[str, Any]:
    return {"apiVersion": "ffmpeg-rtmp.io/v1alpha1", "kind": "TranscodeJob", "metadata": {"name": name}, "spec": spec}


def _apply_batch(farm: ChaosFarm, docs: list[dict[str, Any]], *, dry_run: bool) -> tuple[set[str], str]:
    # --validate=false: the server validates each object (kubectl's own check would refuse the whole batch).
    args = ["apply", "-n", farm.namespace, "--validate=false", "-o", "name", "-f", "-"]
    if dry_run:
        args.insert(1, "--dry-run=server")
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    out = farm.cluster.kubectl(*args, input=body, check=False, timeout=300)
    accepted = {line.rsplit("/", 1)[-1] for line in out.stdout.splitlines() if line.strip()}
    return accepted, out.stderr


@dataclass
class FuzzRun:
    farm: ChaosFarm
    docs: list[dict[str, Any]]
    accepted: set[str]
    errors: list[str]
    chosen: list[str]
    created: set[str]
    create_stderr: str
    intake_seconds: float  # from the create to the operator having acted on every job
    jobs: list[dict[str, Any]]
    fresh: dict[str, Any]
    alive: bool
    healthz: tuple[int, str]
    log: str
    timings: dict[str, float]


@pytest.fixture(scope="module")
def fuzz(cluster: TestCluster, clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzRun]:
    """A few thousand generated specs through server-side dry-run; a few hundred of the admitted ones
    created for real while the operator runs (pools paused: nothing runs); then a fresh job."""
    root = tmp_path_factory.mktemp("fuzz")
    namespace = _namespace(cluster, "chaos-fuzz")
    farm = ChaosFarm(cluster, namespace, root, root / "media", root / "output")
    farm.media.mkdir()
    farm.output.mkdir()
    try:
        clip = farm.media / "clip.mp4"
        shutil.copyfile(clips["one"], clip)
        farm.pool("paused", "cpu", minWorkers=0, maxWorkers=0, paused=True, autoscaling={"enabled": False})
        farm.pool("live", "cpu", minWorkers=1, maxWorkers=1, paused=True, autoscaling={"enabled": False})
        op = farm.start_operator()
        farm.start_workers()
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        docs = [_job(f"fz-{i:05d}", spec) for i, spec in enumerate(_generate_specs(FUZZ_SPECS))]
        timings["generate"] = time.monotonic() - t0
        t0 = time.monotonic()
        accepted: set[str] = set()
        errors: list[str] = []
        for i in range(0, len(docs), 250):
            ok, stderr = _apply_batch(farm, docs[i : i + 250], dry_run=True)
            accepted |= ok
            errors += [ln for ln in stderr.splitlines() if ln.strip()]
        timings["dry-run"] = time.monotonic() - t0
        by_name = {d["metadata"]["name"]: d for d in docs}
        chosen = sorted(accepted)[:FUZZ_CREATE]
        t0 = time.monotonic()
        created, create_stderr = _apply_batch(farm, [by_name[n] for n in chosen], dry_run=False)
        timings["create"] = time.monotonic() - t0
        t0 = time.monotonic()
        wait_for(lambda: all(status(j).get("phase") for j in farm.jobs()), 120, "the operator to act on every job", 1)
        intake = time.monotonic() - t0
        jobs = farm.jobs()
        # Not wedged: a fresh job (highest priority) runs as soon as its pool takes jobs again.
        farm.job("fresh", str(clip), priority=1000, poolRef={"name": "live"})
        farm.cluster.kubectl("patch", "wp", "live", "-n", namespace, "--type=merge", "-p", '{"spec":{"paused":false}}')
        fresh = status(farm.wait_phase("fresh", "Succeeded", "Failed", timeout=90))
        alive, health = op.proc.poll() is None, farm.healthz()
        yield FuzzRun(farm, docs, accepted, errors, chosen, created, create_stderr, intake, jobs, fresh, alive, health,
                      op.log.read_text(errors="replace"), timings)  # fmt: skip
    finally:
        stop_farm(farm)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_fuzzed_specs_are_answered_never_with_an_internal_error(fuzz: FuzzRun) -> None:
    """Every generated spec gets an answer from the API server: admitted, or refused as Invalid (422) with
    its name in the message; never an internal error, a timeout or a malformed-request error."""
    refused = set(re.findall(r'"(fz-\d{5})" is invalid', "\n".join(fuzz.errors)))
    kinds = {m.group(1) for e in fuzz.errors if (m := re.search(r"Error from server \((\w+)\)", e))}
    assert kinds <= {"Invalid"}, [e for e in fuzz.errors if "(Invalid)" not in e][:5]
    assert fuzz.accepted | refused == {d["metadata"]["name"] for d in fuzz.docs}
    assert len(fuzz.accepted) >= FUZZ_CREATE, f"only {len(fuzz.accepted)} of {len(fuzz.docs)} specs were admitted"
    assert fuzz.created == set(fuzz.chosen), fuzz.create_stderr[-2000:]


def test_operator_survives_fuzzed_jobs_and_is_not_wedged(fuzz: FuzzRun) -> None:
    """The operator stays alive and healthy, acts on every admitted job (Queued, Pending when suspended,
    or Failed with InvalidSpec exactly when its own model refuses what the API admitted), never logs a
    traceback, and still schedules and runs a fresh job afterwards."""
    assert fuzz.alive, fuzz.log[-3000:]
    assert fuzz.healthz[0] == 200, fuzz.healthz
    model_refused = 0
    for job in fuzz.jobs:
        name, s = job["metadata"]["name"], status(job)
        try:
            TranscodeJobSpec.from_api(job["spec"])
        except ValidationError:
            model_refused += 1
            assert (s["phase"], s.get("reason")) == ("Failed", "InvalidSpec"), (name, s)
            assert s["message"].startswith("invalid spec: spec."), s["message"]
            continue
        assert s["phase"] in ("Queued", "Pending"), (name, s)
    assert fuzz.fresh["phase"] == "Succeeded", fuzz.fresh
    assert "Traceback" not in fuzz.log and "reconcile pass failed" not in fuzz.log, fuzz.log[-3000:]
    print(fuzz.timings, f"intake {fuzz.intake_seconds:.1f}s")
    report(
        ScenarioResult(
            "spec fuzzer", len(fuzz.jobs) + 1,
            f"{len(fuzz.docs)} generated specs (server dry-run), {len(fuzz.jobs)} admitted ones created", 0, 0, None,
            f"{len(fuzz.accepted)} admitted; {model_refused} created ones refused only by the operator's model "
            f"(InvalidSpec); operator alive, healthy, fresh job ran",
        )
    )  # fmt: skip


def test_operator_takes_in_a_burst_of_new_jobs_quickly(fuzz: FuzzRun) -> None:
    assert fuzz.intake_seconds < 8, f"{len(fuzz.jobs)} new jobs took {fuzz.intake_seconds:.1f}s to be acted on"


# -- least privilege ---------------------------------------------------------------------------------


def _worker_rbac(cluster: TestCluster, namespace: str) -> tuple[list[dict[str, Any]], str]:
    helm = subprocess.run(["bash", str(REPO / "hack" / "tools.sh"), "--print"], capture_output=True, text=True,
                          check=True).stdout.strip() + "/helm"  # fmt: skip
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    rendered = subprocess.run(
        [helm, "template", "ffrtmp", str(REPO / "charts" / "ffmpeg-rtmp"), "--namespace", namespace,
         "--kube-version", version.lstrip("v").split("-")[0], "--set", "operator.enabled=false"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    docs = [
        d for d in yaml.safe_load_all(rendered)
        if d and d["kind"] in ("Role", "RoleBinding", "ServiceAccount")
        and (d["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "worker"
    ]  # fmt: skip
    sa = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
    return docs, sa


def _token_kubeconfig(cluster: TestCluster, namespace: str, sa: str, path: Path) -> Path:
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration", "1h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    admin["users"] = [{"name": sa, "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = sa
    path.write_text(yaml.safe_dump(admin))
    return path


def test_workers_have_least_privilege_and_pods_are_restricted(farm: ChaosFarm, clips: dict[str, Path]) -> None:
    """The chart's worker Role (applied alone into the namespace) lets a worker read its namespace's jobs,
    write their status and keep Leases, and nothing else; a worker that has only those credentials runs a
    job end to end; every worker Pod the operator creates is admitted under the restricted Pod Security
    Standard."""
    ns = farm.namespace
    docs, sa = _worker_rbac(farm.cluster, ns)
    assert {d["kind"] for d in docs} == {"Role", "RoleBinding", "ServiceAccount"}, docs
    farm.cluster.apply(docs, ns)
    who = f"system:serviceaccount:{ns}:{sa}"

    def can(*args: str, namespace: str = ns) -> bool:
        out = farm.cluster.kubectl("auth", "can-i", *args, "-n", namespace, f"--as={who}", check=False)
        return out.stdout.strip() == "yes"

    allowed = [("get", "transcodejobs"), ("list", "transcodejobs"), ("watch", "transcodejobs"),
               ("patch", "transcodejobs", "--subresource=status"),
               ("update", "transcodejobs", "--subresource=status"), ("create", "leases"),
               ("get", "leases"), ("patch", "leases")]  # fmt: skip
    denied = [("create", "transcodejobs"), ("delete", "transcodejobs"), ("patch", "transcodejobs"),
              ("update", "transcodejobs"), ("get", "workerpools"), ("patch", "workerpools"),
              ("get", "pods"), ("create", "pods"), ("delete", "pods"), ("get", "secrets"), ("list", "secrets"),
              ("get", "configmaps"), ("list", "leases"), ("delete", "leases"), ("create", "events"),
              ("create", "serviceaccounts", "--subresource=token"), ("get", "nodes")]  # fmt: skip
    assert [a for a in allowed if not can(*a)] == []
    assert [d for d in denied if can(*d)] == []
    other = "kube-system"
    assert not can("get", "transcodejobs", namespace=other) and not can("patch", "leases", namespace=other)
    assert not can("patch", "transcodejobs", "--subresource=status", namespace="default")

    # A worker with exactly these credentials runs a job; its Pod passes "restricted".
    clip = farm.media / "clip.mp4"
    shutil.copyfile(clips["one"], clip)
    worker_kubeconfig = _token_kubeconfig(farm.cluster, ns, sa, farm.root / "worker.kubeconfig")
    farm.pool("cpu", "cpu", minWorkers=1, maxWorkers=1, autoscaling={"enabled": False})
    farm.start_operator("--worker-service-account", sa)
    farm.start_workers("--worker-kubeconfig", str(worker_kubeconfig))
    farm.job("least", str(clip))
    done = farm.wait_phase("least", "Succeeded", "Failed", timeout=90)
    assert status(done)["phase"] == "Succeeded", status(done)
    pods = farm.cluster.list("pods", ns)
    assert pods and all(p["spec"].get("serviceAccountName") == sa for p in pods)
    labels = json.loads(farm.cluster.kubectl("get", "namespace", ns, "-o", "json").stdout)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    check = farm.cluster.kubectl(
        "label", "--dry-run=server", "--overwrite", "ns", ns, "pod-security.kubernetes.io/enforce=restricted"
    )
    assert "Warning" not in check.stderr and "violate" not in check.stderr, check.stderr
    log = (farm.root / "workers" / f"{pods[0]['metadata']['name']}.log").read_text()
    assert "Forbidden" not in log, log[-2000:]
