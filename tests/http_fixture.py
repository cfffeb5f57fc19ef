"""
A real loopback HTTP file server for tests (never mock `requests`): `http.server` in a thread on 127.0.0.1.

It serves a dict {url_path: bytes} and can misbehave on purpose, like real mirrors do:

    from http_fixture import serve, unused_url

    with serve({"/gpt2/model.safetensors": blob}, cut_after=1000, sha_header="x-linked-etag") as srv:
        url = srv.url("/gpt2/model.safetensors")      # or srv.base_url + "/gpt2/model.safetensors"
        ...
        assert srv.hits["/gpt2/model.safetensors"] == 2
        assert srv.requests[-1]["headers"]["Range"] == "bytes=1000-"

or as a pytest fixture (import it into your test module, then set files/options on the live server):

    from http_fixture import file_server  # noqa: F401  (pytest finds the fixture by name)

    def test_x(file_server):
        file_server.files["/data.bin"] = b"..."
        file_server.reject_python_ua = True
        requests.get(file_server.url("/data.bin"))

Behaviour (all options can also be changed on the live server; they are read on every request):
- GET and HEAD; unknown paths answer 404. `Content-Length` is always sent (HTTP/1.1, keep-alive).
- Range requests (`bytes=a-b`, `bytes=a-`, `bytes=-n`) answer 206 with `Content-Range: bytes a-b/total`;
  a start past the end answers 416 with `Content-Range: bytes */total`. `ignore_range=True` answers 200
  with the whole file instead (a server without range support).
- `cut_after=N`: the first `cut_times` (default 1) GETs of each path send the full headers but only N body
  bytes, then drop the connection (the client sees a short body / ChunkedEncodingError).
- `sha_header="x-linked-etag"` sends `X-Linked-Etag: "<sha256>"` (like the HF Hub for LFS files),
  `"etag"` sends `ETag: "<sha256>"`; `sha_override={path: hex}` sends that value instead (a lying server).
- `extra_headers={path: {name: value}}` adds response headers.
- `redirects={path: target_path}` answers 302 to the target (the redirect response carries the sha header,
  like the HF Hub's resolve endpoint does before redirecting to its CDN).
- `fail_statuses={path: [503, 500]}`: answer these statuses, one per request, before serving normally.
- `reject_python_ua=True`: 403 for any request whose User-Agent starts with "python-requests".
- `chunk_delay=s`: sleep s seconds between 64 KiB body chunks (a slow server).
- Observed: `hits` (Counter of GET/HEAD requests per path), `requests` (list of {method, path, headers}).
"""

import contextlib
import hashlib
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

__all__ = ["FileServer", "serve", "file_server", "unused_url"]

_CHUNK = 64 * 1024


# --- the server -----------------------------------------------------------------------------------------------

class FileServer:
    """A loopback HTTP server over `files` ({"/path": bytes}); see the module docstring for the options."""

    def __init__(self, files: dict[str, bytes] | None = None, *, cut_after: int | None = None, cut_times: int = 1,
                 ignore_range: bool = False, sha_header: str | None = None, sha_override: dict | None = None,
                 extra_headers: dict | None = None, redirects: dict | None = None,
                 fail_statuses: dict | None = None, reject_python_ua: bool = False, chunk_delay: float = 0.0):
        if sha_header not in (None, "x-linked-etag", "etag"):
            raise ValueError(f"sha_header must be None, 'x-linked-etag' or 'etag', got {sha_header!r}")
        self.files = dict(files or {})
        self.cut_after, self.cut_times = cut_after, cut_times
        self.ignore_range = ignore_range
        self.sha_header = sha_header
        self.sha_override = dict(sha_override or {})
        self.extra_headers = dict(extra_headers or {})
        self.redirects = dict(redirects or {})
        self.fail_statuses = {k: list(v) for k, v in (fail_statuses or {}).items()}
        self.reject_python_ua = reject_python_ua
        self.chunk_delay = chunk_delay
        self.hits: Counter = Counter()
        self.requests: list[dict] = []
        self._gets: Counter = Counter()  # GETs per path that reached the body (for cut_times)
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # --- lifecycle ---
    def start(self) -> "FileServer":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._port = self._httpd.server_address[1]
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> "FileServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- addresses ---
    @property
    def port(self) -> int:
        return self._port  # still known after stop(), for messages

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def __str__(self) -> str:
        return self.base_url

    # --- helpers for tests ---
    def range_requests(self, path: str) -> list[str]:
        """The Range headers of the requests made for `path` (in order)."""
        return [r["headers"]["Range"] for r in self.requests if r["path"] == path and "Range" in r["headers"]]

    def sha256(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest()


def _make_handler(srv: FileServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _send_simple(self, status: int, extra: dict | None = None, body: bytes = b""):
            self.send_response(status)
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        def _sha_headers(self, path: str) -> dict:
            if srv.sha_header is None:
                return {}
            sha = srv.sha_override.get(path) or hashlib.sha256(srv.files[path]).hexdigest()
            return {"X-Linked-Etag" if srv.sha_header == "x-linked-etag" else "ETag": f'"{sha}"'}

        def _serve(self, body: bool):
            path = self.path.split("?", 1)[0]
            with srv._lock:
                srv.hits[path] += 1
                srv.requests.append({"method": self.command, "path": path, "headers": dict(self.headers.items())})
                fail = srv.fail_statuses.get(path)
                status = fail.pop(0) if fail else None
            if srv.reject_python_ua and self.headers.get("User-Agent", "").startswith("python-requests"):
                return self._send_simple(403, body=b"Forbidden: automated clients are not allowed\n")
            if status is not None:
                return self._send_simple(status, body=f"error {status}\n".encode())
            if path in srv.redirects:
                target = srv.redirects[path]
                extra = {"Location": target}
                if target in srv.files:
                    extra.update(self._sha_headers(target))
                    extra["X-Linked-Size"] = str(len(srv.files[target]))
                return self._send_simple(302, extra)
            if path not in srv.files:
                return self._send_simple(404, body=b"Entry not found\n")

            data = srv.files[path]
            total = len(data)
            headers = {"Accept-Ranges": "bytes", **self._sha_headers(path), **srv.extra_headers.get(path, {})}
            start, end, status = 0, total - 1, 200
            rng = self.headers.get("Range")
            if rng and not srv.ignore_range:
                m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
                if m and (m.group(1) or m.group(2)):
                    a, b = m.group(1), m.group(2)
                    if a:
                        start, end = int(a), min(int(b), total - 1) if b else total - 1
                    else:  # suffix range: the last n bytes
                        start, end = max(total - int(b), 0), total - 1
                    if start >= total or start > end:
                        return self._send_simple(416, {"Content-Range": f"bytes */{total}"})
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{end}/{total}"
            payload = data[start:end + 1]

            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if not body:
                return
            with srv._lock:
                srv._gets[path] += 1
                cut = srv.cut_after is not None and srv._gets[path] <= srv.cut_times
            if cut:
                payload = payload[:srv.cut_after]
            try:
                for i in range(0, len(payload), _CHUNK):
                    self.wfile.write(payload[i:i + _CHUNK])
                    if srv.chunk_delay:
                        self.wfile.flush()
                        time.sleep(srv.chunk_delay)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                return
            if cut:  # drop the connection with the body unfinished
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

    return Handler


# --- ways to use it -------------------------------------------------------------------------------------------

@contextlib.contextmanager
def serve(files: dict[str, bytes] | None = None, **options):
    """Context manager: a started FileServer (options as in FileServer), stopped on exit."""
    srv = FileServer(files, **options)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def file_server():
    """A started FileServer with no files; set `file_server.files[...]` and options in the test."""
    with serve() as srv:
        yield srv


def unused_url(path: str = "/file.bin") -> str:
    """A loopback URL on which nothing listens (a port that was free a moment ago): connection refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
