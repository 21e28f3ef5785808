"""The egress policy end to end through the worker's attempt: real ffprobe and ffmpeg, the real
egress proxy, real HTTP(S) servers that record every request. No API server is needed: status
writes go to a recorder (as in test_attempt_media).

Every server listens on loopback, so "allowed" and "forbidden" are distinct loopback addresses:
the pool allowlists 127.0.0.2/32 only; 127.0.0.3 is a forbidden host with servers listening,
127.0.0.4 a forbidden host where nothing listens, 127.0.0.5 stands for the API server."""

from __future__ import annotations

import ipaddress
import re
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import aiohttp.connector
import pytest

from ffrtmp.api.job import TranscodeJobSpec
from ffrtmp.egress.policy import EgressPolicy, IPAddress
from ffrtmp.egress.proxy import EgressProxy, system_resolver
from ffrtmp.egress.rules import UnproxiedCheck, check_unproxied
from ffrtmp.worker import attempt as attempt_module
from ffrtmp.worker.attempt import Attempt
from ffrtmp.worker.config import WorkerConfig
from ffrtmp.worker.fence import FencedStatus
from ffrtmp.worker.metrics import WorkerMetrics
from helpers import connect_guard, nginx_rtmp

pytestmark = [
    pytest.mark.ffmpeg,
    pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("openssl") is None, reason="no ffmpeg/openssl"),
]

ALLOWED, FORBIDDEN, SILENT, API = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
FAST = [{"name": "out", "video": {"codec": "h264", "crf": 35, "preset": "ultrafast", "height": 120}}]
Route = Callable[[str], tuple[int, dict[str, str], bytes]]  # user agent -> status, headers, body


class Server(ThreadingHTTPServer):
    """Answers from `routes` (bytes, or a function of the User-Agent) and records every request."""

    daemon_threads = True

    def __init__(self, host: str, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, bytes | Route] = {}
        self.requests: list[tuple[str, str]] = []  # (path, user agent)
        self.connections = 0  # TCP connections accepted
        self.lock = threading.Lock()
        super().__init__((host, 0), _Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.connections += 1
        super().finish_request(request, client_address)

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.server_address[0]!s}:{self.server_address[1]}"

    def agents(self, path: str) -> list[str]:
        return [agent for p, agent in self.requests if p == path]


class _Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_CONNECT(self) -> None:
        with self.server.lock:
            self.server.requests.append((f"CONNECT {self.path}", self.headers.get("User-Agent", "")))
        self.send_error(405)

    def do_GET(self) -> None:
        agent = self.headers.get("User-Agent", "")
        with self.server.lock:
            self.server.requests.append((self.path, agent))
        route = self.server.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_error(404)
            return
        code, headers, body = route(agent) if callable(route) else (200, {}, route)
        self.send_response(code)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


def playlist(*entries: str, end: bool = True) -> bytes:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:1", "#EXT-X-MEDIA-SEQUENCE:0"]
    for entry in entries:
        lines += ["#EXTINF:1.0,", entry]
    return ("\n".join([*lines, *(["#EXT-X-ENDLIST"] if end else [])]) + "\n").encode()


def redirect(to: str) -> Route:
    return lambda agent: (302, {"Location": to}, b"")


@dataclass
class Net:
    ok: Server
    ok_tls: Server
    bad: Server
    bad_tls: Server
    api: Server
    media: Path
    cert: Path
    clip: bytes
    segments: list[bytes]

    @property
    def servers(self) -> list[Server]:
        return [self.ok, self.ok_tls, self.bad, self.bad_tls, self.api]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("egress")
    media = root / "media"
    media.mkdir()
    run = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
           "testsrc=size=160x120:rate=10", "-t", "3", "-c:v", "libx264", "-preset", "ultrafast",
           "-g", "10"]  # fmt: skip
    subprocess.run([*run, "-movflags", "+faststart", str(media / "clip.mp4")], check=True, timeout=60)
    subprocess.run([*run, "-f", "hls", "-hls_time", "1", "-hls_segment_filename", str(root / "seg%d.ts"),
                    str(root / "index.m3u8")], check=True, timeout=60)  # fmt: skip
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(root / "key.pem"),
                    "-out", str(root / "cert.pem"), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", f"subjectAltName=IP:{ALLOWED},IP:{FORBIDDEN},DNS:localhost"],
                   check=True, timeout=60, capture_output=True)  # fmt: skip
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(root / "cert.pem", root / "key.pem")
    segments = [(root / f"seg{i}.ts").read_bytes() for i in range(3)]
    n = Net(Server(ALLOWED), Server(ALLOWED, tls), Server(FORBIDDEN), Server(FORBIDDEN, tls), Server(API),
            media, root / "cert.pem", (media / "clip.mp4").read_bytes(), segments)  # fmt: skip
    for server in n.servers:  # every server could serve everything: only the policy keeps ffmpeg away
        server.routes["/clip.mp4"] = n.clip
        for i, data in enumerate(segments):
            server.routes[f"/seg{i}.ts"] = data
        server.routes["/index.m3u8"] = playlist("seg0.ts", "seg1.ts", "seg2.ts")
    yield n
    for server in n.servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def clear_requests(net: Net) -> None:
    for server in net.servers:
        server.requests.clear()
        server.connections = 0


class StatusRecorder:
    """Takes the attempt's status writes (progress patches and updates) in place of the fenced API client."""

    def __init__(self) -> None:
        self.conditions: list[dict[str, Any]] = []
        self.writes: list[dict[str, Any]] = []

    async def patch(self, status: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(status)
        return status

    async def update_until(self, status: dict[str, Any], *, seconds: float = 120.0) -> dict[str, Any]:
        self.writes.append(status)
        return status


def config(net: Net, tmp_path: Path, **overrides: Any) -> WorkerConfig:
    base = WorkerConfig(
        pod_name="w-0", namespace="ns", pool="cpu", media_roots=(str(net.media),),
        output_root=str(tmp_path / "output"), scratch_dir=str(tmp_path / "scratch"), progress_interval=60.0,
        egress_allow=(f"{ALLOWED}/32",), api_server_addresses=(API,), stall_seconds=60,
        connect_guard=connect_guard(),
    )  # fmt: skip
    return replace(base, **overrides)


async def run_job(
    net: Net,
    tmp_path: Path,
    uri: str,
    outputs: list[dict[str, Any]] | None = None,
    *,
    live: bool = False,
    **overrides: Any,
) -> tuple[str, dict[str, Any], Attempt]:
    recorder = StatusRecorder()
    source: dict[str, Any] = {"uri": uri, **({"live": True} if live else {})}
    spec = TranscodeJobSpec.model_validate({"input": source, "outputs": outputs or FAST})
    job = Attempt(cast(FencedStatus, recorder), spec, config(net, tmp_path, **overrides), WorkerMetrics(), "ns",
                  "job", 1)  # fmt: skip
    outcome = await job.run()
    results = [p["result"] for p in recorder.writes if "result" in p]
    return outcome, results[-1] if results else {}, job


def assert_refused(outcome: str, result: dict[str, Any], job: Attempt) -> None:
    assert outcome == "Failed", result
    assert result["reason"] == "DestinationNotAllowed", result
    assert result["retryable"] is False
    assert "egress policy does not allow" in result["message"], result["message"]
    assert not job.job_dir.exists(), "a refused job left an output folder"


# -- refused ----------------------------------------------------------------------------------------

REFUSED_INPUTS: dict[str, Callable[[Net], str]] = {
    "http-loopback": lambda n: f"{n.bad.base}/clip.mp4",
    "https-loopback": lambda n: f"{n.bad_tls.base}/clip.mp4",
    "http-nothing-listening": lambda n: f"http://{SILENT}:9/clip.mp4",
    "private-address": lambda n: "http://10.255.255.1:8080/clip.mp4",
    "cloud-metadata": lambda n: "http://169.254.169.254/latest/meta-data/clip.mp4",
    "name-resolving-to-loopback": lambda n: f"http://localhost:{n.bad.server_address[1]}/clip.mp4",
    "https-name-resolving-to-loopback": lambda n: f"https://localhost:{n.bad_tls.server_address[1]}/clip.mp4",
    "hls-from-forbidden-host": lambda n: f"{n.bad.base}/index.m3u8",
}


@pytest.mark.parametrize("name", list(REFUSED_INPUTS))
async def test_inputs_at_forbidden_destinations_are_refused(net: Net, tmp_path: Path, name: str) -> None:
    outcome, result, job = await run_job(net, tmp_path, REFUSED_INPUTS[name](net))
    assert_refused(outcome, result, job)
    assert net.bad.requests == [] and net.bad_tls.requests == []
    assert net.bad.connections == 0 and net.bad_tls.connections == 0  # not even a TCP connection


async def test_a_refused_live_input_is_not_restarted(net: Net, tmp_path: Path) -> None:
    outcome, result, job = await run_job(net, tmp_path, f"{net.bad.base}/live.ts", live=True)
    assert_refused(outcome, result, job)
    assert net.bad.connections == 0


async def test_the_refusal_reads_the_same_whether_or_not_something_listens(net: Net, tmp_path: Path) -> None:
    _, listening, _ = await run_job(net, tmp_path, f"{net.bad.base}/clip.mp4")
    _, silent, _ = await run_job(net, tmp_path / "2", f"http://{SILENT}:{net.bad.server_address[1]}/clip.mp4")
    assert listening["message"].replace(FORBIDDEN, "H") == silent["message"].replace(SILENT, "H")
    assert net.bad.requests == []


async def test_the_api_server_is_refused_even_when_the_allowlist_covers_it(net: Net, tmp_path: Path) -> None:
    # 127.0.0.0/8 allowlisted: the forbidden host works, the API server's address still does not.
    opened = ("127.0.0.0/8",)
    outcome, result, job = await run_job(net, tmp_path, f"{net.api.base}/clip.mp4", egress_allow=opened)
    assert_refused(outcome, result, job)
    assert net.api.requests == []
    outcome, result, _ = await run_job(net, tmp_path / "2", f"{net.bad.base}/clip.mp4", egress_allow=opened)
    assert outcome == "Succeeded", result


@pytest.mark.parametrize("tls", [False, True])
async def test_a_redirect_from_an_allowed_host_to_loopback_is_refused(net: Net, tmp_path: Path, tls: bool) -> None:
    origin = net.ok_tls if tls else net.ok
    origin.routes["/redirect.mp4"] = redirect(f"{net.bad.base}/clip.mp4")
    outcome, result, job = await run_job(net, tmp_path, f"{origin.base}/redirect.mp4")
    assert_refused(outcome, result, job)
    assert [p for p, _ in origin.requests] and all(p == "/redirect.mp4" for p, _ in origin.requests)
    assert net.bad.requests == []


@pytest.mark.parametrize("target", ["loopback", "other-host"])
async def test_a_playlist_whose_entries_point_elsewhere_is_refused(net: Net, tmp_path: Path, target: str) -> None:
    where = net.bad.base if target == "loopback" else f"http://{SILENT}:{net.bad.server_address[1]}"
    net.ok.routes[f"/{target}.m3u8"] = playlist("seg0.ts", f"{where}/seg1.ts")
    outcome, result, job = await run_job(net, tmp_path, f"{net.ok.base}/{target}.m3u8")
    assert_refused(outcome, result, job)
    assert net.bad.requests == []


async def test_a_playlist_that_changes_between_fetches_cannot_reach_another_host(net: Net, tmp_path: Path) -> None:
    """The worker's check reads a clean playlist; ffprobe and ffmpeg (User-Agent Lavf) get one that
    names a forbidden host. The check-then-fetch race is closed at connect time by the proxy."""
    lie = playlist(f"{net.bad.base}/seg0.ts", f"{net.bad.base}/seg1.ts")
    net.ok.routes["/liar.m3u8"] = lambda agent: (200, {}, lie if agent.startswith("Lavf") else playlist("seg0.ts"))
    outcome, result, job = await run_job(net, tmp_path, f"{net.ok.base}/liar.m3u8")
    assert_refused(outcome, result, job)
    assert any(a.startswith("Lavf") for a in net.ok.agents("/liar.m3u8")), net.ok.requests
    assert net.bad.requests == []


async def test_a_live_playlist_reload_that_adds_a_forbidden_entry_is_refused(net: Net, tmp_path: Path) -> None:
    """A live playlist (no ENDLIST) whose first version is clean; every reload ffmpeg makes adds an
    entry on a forbidden host. The segment from the allowed host is fetched, the other never."""
    fetches = {"lavf": 0}

    def live(agent: str) -> tuple[int, dict[str, str], bytes]:
        if not agent.startswith("Lavf"):
            return 200, {}, playlist("seg0.ts", end=False)
        fetches["lavf"] += 1
        if fetches["lavf"] == 1:
            return 200, {}, playlist("seg0.ts", end=False)
        return 200, {}, playlist("seg0.ts", f"{net.bad.base}/seg1.ts", "seg2.ts")

    net.ok.routes["/live.m3u8"] = live
    outcome, result, job = await run_job(net, tmp_path, f"{net.ok.base}/live.m3u8")
    assert_refused(outcome, result, job)
    assert len([a for a in net.ok.agents("/live.m3u8") if a.startswith("Lavf")]) >= 2, "no playlist reload"
    assert any(a.startswith("Lavf") for a in net.ok.agents("/seg0.ts"))
    assert net.bad.requests == []


@pytest.mark.parametrize("liar_to", ["ffprobe", "ffmpeg"])
async def test_a_changed_playlist_cannot_name_httpproxy_to_reach_a_host_directly(
    net: Net, tmp_path: Path, liar_to: str
) -> None:
    """https needs ffmpeg's `httpproxy` protocol on the whitelist, and ffmpeg's HLS demuxer opens any
    protocol named http*: `httpproxy://HOST:PORT/x` makes ffmpeg open TCP to HOST itself, past the
    proxy. The connect guard refuses that connection, in ffprobe (the first Lavf fetch) and in ffmpeg
    (the playlist changes only for the encode)."""
    lie = playlist(f"httpproxy://{FORBIDDEN}:{net.bad.server_address[1]}/seg0.ts")
    fetches = {"lavf": 0}

    def liar(agent: str) -> tuple[int, dict[str, str], bytes]:
        if agent.startswith("Lavf"):
            fetches["lavf"] += 1
            if liar_to == "ffprobe" or fetches["lavf"] > 1:
                return 200, {}, lie
        return 200, {}, playlist("seg0.ts")

    net.ok.routes["/hp.m3u8"] = liar
    outcome, result, job = await run_job(net, tmp_path, f"{net.ok.base}/hp.m3u8")
    assert fetches["lavf"] == (1 if liar_to == "ffprobe" else 2), net.ok.requests
    assert net.bad.requests == [], f"ffmpeg reached the forbidden host past the proxy: {net.bad.requests}"
    assert net.bad.connections == 0
    assert_refused(outcome, result, job)
    assert "directly instead of through the worker's egress proxy" in result["message"]
    if liar_to == "ffmpeg":
        assert "connect guard: refused a connection" in result["stderrTail"], result["stderrTail"]
    # No address from the guard reaches the job's author (ffmpeg resolved it: it could be an internal
    # name's). ffmpeg's own error line names the URL as written.
    guard_lines = [line for line in result["stderrTail"].splitlines() if "connect guard" in line]
    assert FORBIDDEN not in result["message"] + "".join(guard_lines)


async def test_a_worker_without_its_connect_guard_runs_no_ffmpeg(net: Net, tmp_path: Path) -> None:
    """Fail closed: no guard library, no attempt (the worker process itself refuses to start)."""
    missing = str(tmp_path / "no-such-guard.so")
    outcome, result, job = await run_job(net, tmp_path, f"{net.ok.base}/clip.mp4", connect_guard=missing)
    assert (outcome, result["reason"], result["retryable"]) == ("Failed", "FfmpegError", True), result
    assert f"connect guard library {missing} is missing" in result["message"]
    assert net.ok.requests == [] and not job.job_dir.exists()


async def test_rtmp_is_refused_unless_the_pool_allows_unproxied_protocols(net: Net, tmp_path: Path) -> None:
    outcome, result, job = await run_job(net, tmp_path, f"rtmp://{ALLOWED}:1935/live/source")
    assert_refused_unproxied(outcome, result)
    restream = [{**FAST[0], "name": "re", "container": "flv", "url": f"rtmp://{ALLOWED}:1935/live/out"}]
    outcome, result, job = await run_job(net, tmp_path / "2", str(net.media / "clip.mp4"), restream)
    assert_refused_unproxied(outcome, result)
    # Allowed as a protocol, the host is still checked before ffmpeg starts.
    outcome, result, job = await run_job(
        net, tmp_path / "3", f"rtmp://{FORBIDDEN}:{net.bad.server_address[1]}/live/x", egress_unproxied=("rtmp",)
    )
    assert_refused(outcome, result, job)
    assert net.bad.requests == []


@pytest.fixture(scope="module")
def rtmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A real nginx-rtmp server on the allowed address: its port and its log."""
    prefix = tmp_path_factory.mktemp("nginx")
    with nginx_rtmp(prefix, ALLOWED) as port:
        yield port, prefix / "logs" / "error.log"


async def test_an_allowed_rtmp_restream_reaches_the_checked_host(
    net: Net, tmp_path: Path, rtmp: tuple[int, Path]
) -> None:
    port, log = rtmp
    restream = [{**FAST[0], "name": "re", "container": "flv", "url": f"rtmp://{ALLOWED}:{port}/restream/guarded"}]
    outcome, result, _ = await run_job(net, tmp_path, str(net.media / "clip.mp4"), restream, egress_unproxied=("rtmp",))
    assert outcome == "Succeeded", result
    assert "guarded" in log.read_text(errors="replace"), "nginx-rtmp saw no publish of the restream"


async def test_ffmpeg_reaches_only_the_rtmp_addresses_the_worker_checked(
    net: Net, tmp_path: Path, rtmp: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding for rtmp: the worker's lookup of `localhost` answers the allowed address, which it
    checks and pins; ffmpeg's own lookup answers 127.0.0.1, which the connect guard refuses."""
    port, _ = rtmp

    async def rebinding(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(ALLOWED)] if host == "localhost" else await system_resolver(host, port)

    async def check(url: str, policy: EgressPolicy, allowed: Iterable[str]) -> UnproxiedCheck:
        return await check_unproxied(url, policy, allowed, rebinding)

    monkeypatch.setattr(attempt_module, "check_unproxied", check)
    restream = [{**FAST[0], "name": "re", "container": "flv", "url": f"rtmp://localhost:{port}/restream/rebound"}]
    with socket.socket() as rebound:  # what ffmpeg's answer points at: nothing may connect here
        rebound.bind(("127.0.0.1", port))
        rebound.listen()
        rebound.setblocking(False)
        outcome, result, job = await run_job(
            net, tmp_path, str(net.media / "clip.mp4"), restream, egress_unproxied=("rtmp",)
        )
        with pytest.raises(BlockingIOError):
            rebound.accept()
    assert_refused(outcome, result, job)
    assert "an rtmp host that resolved to another address" in result["message"]
    assert "127.0.0.1" not in result["message"] + result["stderrTail"]


def assert_refused_unproxied(outcome: str, result: dict[str, Any]) -> None:
    assert (outcome, result["reason"]) == ("Failed", "DestinationNotAllowed"), result
    assert "spec.egress.allowUnproxiedProtocols" in result["message"], result["message"]


async def test_an_rtmps_restream_to_a_forbidden_host_goes_through_the_proxy_and_is_refused(
    net: Net, tmp_path: Path
) -> None:
    url = f"rtmps://{FORBIDDEN}:{net.bad_tls.server_address[1]}/live/out"
    restream = [{**FAST[0], "name": "re", "container": "flv", "url": url}]
    outcome, result, job = await run_job(net, tmp_path, str(net.media / "clip.mp4"), restream)
    assert_refused(outcome, result, job)
    assert net.bad_tls.requests == []


# -- allowed ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["http", "https", "hls", "https-hls"])
async def test_an_allowlisted_host_works_and_every_connection_to_it_went_through_the_proxy(
    net: Net, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxies: list[EgressProxy] = []

    class Recording(EgressProxy):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            proxies.append(self)

    monkeypatch.setattr(attempt_module, "EgressProxy", Recording)
    # The worker's playlist check verifies certificates (aiohttp's shared default context): trust the test CA.
    trusting = ssl.create_default_context(cafile=str(net.cert))
    monkeypatch.setattr(aiohttp.connector, "_SSL_CONTEXT_VERIFIED", trusting)
    origin = net.ok_tls if kind.startswith("https") else net.ok
    path = "/index.m3u8" if kind.endswith("hls") else "/clip.mp4"
    outcome, result, job = await run_job(net, tmp_path, f"{origin.base}{path}")
    assert outcome == "Succeeded", (result.get("reason"), result.get("message"))
    assert (job.job_dir / "out.mp4").stat().st_size > 0
    fetched = {p for p, agent in origin.requests if agent.startswith("Lavf")}
    if kind.endswith("hls"):
        assert {"/index.m3u8", "/seg0.ts", "/seg1.ts", "/seg2.ts"} <= fetched, origin.requests
    else:
        assert fetched == {"/clip.mp4"}
    assert all(s.requests == [] for s in net.servers if s is not origin)
    # Every TCP connection the origin accepted (from the worker's check, ffprobe and ffmpeg) was one the
    # proxy opened after its check: none came from ffmpeg directly.
    (proxy,) = proxies
    assert proxy.refusals == []
    assert origin.connections == len(proxy.opened) > 0, (origin.connections, proxy.opened)
    assert set(proxy.opened) == {(ALLOWED, origin.server_address[1])}


async def test_ffmpeg_runs_with_the_proxy_and_without_no_proxy(
    net: Net, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `no_proxy` in the worker's environment must not let ffmpeg skip the proxy."""
    monkeypatch.setenv("no_proxy", f"{FORBIDDEN},localhost,*")
    monkeypatch.setenv("http_proxy", "http://198.51.100.1:3128")
    outcome, result, job = await run_job(net, tmp_path, f"{net.bad.base}/clip.mp4")
    assert_refused(outcome, result, job)
    assert net.bad.requests == []
    assert re.search(r"\d+", result["message"])
