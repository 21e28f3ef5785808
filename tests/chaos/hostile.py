"""Props for the hostile-input tests: HTTP servers that stall, lie or record who called, and a
watch (inotify) on a canary file that no job may read."""

from __future__ import annotations

import ctypes
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

IN_ACCESS, IN_OPEN = 0x00000001, 0x00000020


class Canary:
    """A real clip outside every media root: it must never be opened. inotify tells if it was."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if self._libc.inotify_add_watch(self.fd, str(path).encode(), IN_OPEN | IN_ACCESS) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")

    def opened(self) -> bool:
        try:
            return bool(os.read(self.fd, 65536))
        except BlockingIOError:
            return False

    def close(self) -> None:
        os.close(self.fd)


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, routes: dict[str, bytes], stall: dict[str, bytes], lavf_routes: dict[str, bytes]):
        self.routes, self.stall, self.lavf_routes = routes, stall, lavf_routes
        self.redirects: dict[str, str] = {}  # path -> Location of a 302
        self.requests: list[tuple[str, str]] = []  # (path, user agent)
        self.release = threading.Event()
        super().__init__((host, 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def base(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        agent = self.headers.get("User-Agent", "")
        self.server.requests.append((self.path, agent))
        path = self.path.split("?")[0]
        if path in self.server.redirects:
            self.send_response(302)
            self.send_header("Location", self.server.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path in self.server.stall:
            # Headers for the whole file, half of it, then silence until the test ends.
            data = self.server.stall[path]
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.server.release.wait(120)
            return
        body = None
        if agent.startswith("Lavf") and path in self.server.lavf_routes:
            body = self.server.lavf_routes[path]  # what ffmpeg gets, not what the checker saw
        elif path in self.server.routes:
            body = self.server.routes[path]
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def playlist(*entries: str) -> bytes:
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2"]
    for e in entries:
        lines += ["#EXTINF:2.0,", e]
    return ("\n".join([*lines, "#EXT-X-ENDLIST"]) + "\n").encode()
