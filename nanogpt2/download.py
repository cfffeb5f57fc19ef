"""
One downloader for model weights and datasets: streamed, resumable, verified, cached.

    from nanogpt2.download import cache_dir, download, hf_url

    url = hf_url("openai-community/gpt2", "model.safetensors")      # {endpoint}/{repo}/resolve/main/{file}
    path = download(url, cache_dir() / "models" / "gpt2" / "model.safetensors",
                    desc="model 'gpt2'", local_hint="pass a local folder: GPT.from_pretrained('/path/to/gpt2')")

What `download` does:
- a `dest` that already exists (and matches `size` / `sha256` when given) is returned without any request;
- otherwise it streams into `dest + ".part"`, resuming an existing `.part` with `Range: bytes=<len>-`
  (a server that answers 200 instead of 206 is restarted from byte 0), and on a dropped connection retries
  with Range a few times (small backoff) before giving up;
- it checks the size against Content-Length / Content-Range / `size`, and the sha256 against `sha256`, else
  against the server's (`X-Linked-Etag` / `ETag` holding a 64-hex sha256, as the HF Hub sends for LFS files);
  on a mismatch it deletes the `.part` and raises, leaving nothing in the cache;
- it moves the finished file into place with `os.replace` (atomic), holding a lock file so that concurrent
  processes (e.g. torchrun ranks) download once;
- it draws a progress line on stderr (unless `quiet`), and raises `DownloadError` (a `NanoGPT2Error`) with a
  message that says what to do on every network failure: offline, HTTP 404, HTTP errors, bad checksums.

Environment: NANOGPT2_CACHE (cache root, default ~/.cache/nanogpt2), NANOGPT2_HF_ENDPOINT (default
https://huggingface.co), NANOGPT2_OPENAI_ENDPOINT (OpenAI's original release, default
https://openaipublic.blob.core.windows.net/gpt-2). See docs/downloads.md. Tests: python -m pytest -q tests/test_download.py
"""

import hashlib
import os
import re
import sys
import time
from pathlib import Path
from urllib.parse import quote

import requests

from .errors import NanoGPT2Error
from .progress import ProgressLine, fmt_mb

__all__ = ["DownloadError", "cache_dir", "download", "hf_url", "openai_url", "USER_AGENT"]


class DownloadError(NanoGPT2Error):
    """A download that failed: offline, HTTP error, or a file that does not match its size / checksum."""


# --- locations ------------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """The cache root: `$NANOGPT2_CACHE`, else `~/.cache/nanogpt2` (not created here)."""
    env = os.environ.get("NANOGPT2_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nanogpt2"


def hf_url(repo_id: str, filename: str, revision: str = "main") -> str:
    """`{base}/{repo_id}/resolve/{revision}/{filename}` with base `$NANOGPT2_HF_ENDPOINT` or https://huggingface.co."""
    base = (os.environ.get("NANOGPT2_HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    return f"{base}/{quote(repo_id, safe='/')}/resolve/{quote(revision, safe='')}/{quote(filename, safe='/')}"


def openai_url(size: str, filename: str) -> str:
    """`{base}/models/{size}/{filename}`, OpenAI's GPT-2 release (what its download_model.py fetches), with base
    `$NANOGPT2_OPENAI_ENDPOINT` or https://openaipublic.blob.core.windows.net/gpt-2."""
    base = (os.environ.get("NANOGPT2_OPENAI_ENDPOINT") or "https://openaipublic.blob.core.windows.net/gpt-2").rstrip("/")
    return f"{base}/models/{quote(size, safe='')}/{quote(filename, safe='')}"


# --- settings -------------------------------------------------------------------------------------------------

# Some mirrors answer 403 to "python-requests/x.y"; send an ordinary browser-like agent (and say who we are).
USER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/124.0 Safari/537.36 nanogpt2/0.1")
_CHUNK = 1 << 20            # 1 MiB blocks for hashing files on disk
_READ = 1 << 16             # 64 KiB network reads (a dropped connection loses at most the block being read)
_MAX_RETRIES = 5            # retries after a failed attempt (no new bytes): 6 failed attempts in a row give up
_BACKOFF = 0.25             # seconds, doubled per consecutive failure, capped at _BACKOFF_MAX
_BACKOFF_MAX = 4.0
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_SHA_RE = re.compile(r'^"?([0-9a-fA-F]{64})"?$')


class _Retry(Exception):
    """Internal: this attempt failed in a way worth retrying (connection dropped, short body, 5xx).
    `written`: bytes it added to the .part; `free`: a restart that does not count as a failure."""

    def __init__(self, msg: str, written: int = 0, free: bool = False):
        super().__init__(msg)
        self.written, self.free = written, free


# --- helpers --------------------------------------------------------------------------------------------------

def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _server_sha256(chain) -> str | None:
    """A sha256 the server vouches for, from the response chain (redirects first).

    `X-Linked-Etag` on any hop (the HF Hub sends it for LFS files, on the redirect to its CDN) wins; else a
    64-hex strong `ETag` of the first response only (a CDN's ETag after a redirect can be some other hash)."""
    for r in chain:
        m = _SHA_RE.match((r.headers.get("X-Linked-Etag") or "").strip())
        if m:
            return m.group(1).lower()
    etag = (chain[0].headers.get("ETag") or "").strip() if chain else ""
    m = None if etag.startswith("W/") else _SHA_RE.match(etag)
    return m.group(1).lower() if m else None


def _reason(e: BaseException, timeout: float) -> str:
    """A short human reason for a requests exception (its str() is a paragraph)."""
    if isinstance(e, requests.exceptions.Timeout) or "Read timed out" in str(e):
        return f"no answer within {timeout:g}s"
    if isinstance(e, requests.exceptions.ChunkedEncodingError) or "IncompleteRead" in str(e):
        return "the server closed the connection mid-file"
    s = str(e)
    for needle, reason in [("Connection refused", "connection refused"),
                           ("Name or service not known", "host name not found (DNS)"),
                           ("nodename nor servname", "host name not found (DNS)"),
                           ("Temporary failure in name resolution", "host name not found (DNS)"),
                           ("getaddrinfo failed", "host name not found (DNS)"),
                           ("Network is unreachable", "network unreachable"),
                           ("No route to host", "no route to host"),
                           ("CERTIFICATE_VERIFY_FAILED", "TLS certificate verification failed"),
                           ("Connection reset", "connection reset"),
                           ("Connection aborted", "connection aborted")]:
        if needle in s:
            return reason
    return type(e).__name__


class FileLock:
    """An exclusive lock on a lock file (fcntl.flock; a no-op where unavailable), removed on release.

    Used so that concurrent processes (e.g. every rank of a torchrun job) download a file or build a data
    cache once. Waiters re-check after acquiring that the lock file is still the one on disk (the holder
    unlinks it), the standard race-free pattern for removable lock files."""

    def __init__(self, path: Path):
        self.path, self.fd = Path(path), None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no inter-process lock
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:  # a filesystem without locks: go on unlocked
                os.close(fd)
                return self
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)  # the holder removed the file while we waited: lock the new one

    def __exit__(self, *exc):
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


def _unlink(p: Path):
    try:
        p.unlink()
    except FileNotFoundError:
        pass


# --- the downloader -------------------------------------------------------------------------------------------

def _cached_ok(dest: Path, size: int | None, sha256: str | None) -> tuple[bool, str]:
    """Does the existing `dest` match the expected size / sha256? Returns (ok, why-not)."""
    if not dest.is_file():
        return False, "missing"
    if size is not None and dest.stat().st_size != size:
        return False, f"size {dest.stat().st_size} != expected {size}"
    if sha256 is not None:
        got = file_sha256(dest)
        if got != sha256:
            return False, f"sha256 {got} != expected {sha256}"
    return True, ""


def download(url: str, dest, *, sha256: str | None = None, size: int | None = None, headers: dict | None = None,
             desc: str | None = None, local_hint: str | None = None, timeout: float = 30.0,
             quiet: bool = False) -> Path:
    """Download `url` to `dest` (resumable, verified, atomic) and return `dest` as a Path.

    sha256 / size: expected checksum (hex) and byte count; an existing `dest` that matches is returned with no
        request, one that does not is downloaded again. Without `sha256`, a sha256 sent by the server is checked.
    headers: extra request headers (they override the defaults, e.g. a token: {"Authorization": "Bearer ..."}).
    desc: what is being downloaded, for messages ("model 'gpt2'"); defaults to the file name.
    local_hint: how to avoid the download, appended to offline / not-found errors
        ("pass a local folder: GPT.from_pretrained('/path/to/gpt2')").
    timeout: seconds to wait to connect and between bytes (not for the whole file).
    quiet: no progress line on stderr.
    Raises DownloadError with an actionable message on any failure.
    """
    dest = Path(dest).expanduser()
    if dest.is_dir():
        raise DownloadError(f"cannot download {url} to {dest}: it is a folder; pass the file path to create")
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise DownloadError(f"sha256 for {url} must be 64 hex digits, got {sha256!r}")
    sha256 = sha256.lower() if sha256 else None
    ok, _ = _cached_ok(dest, size, sha256)
    if ok:
        return dest
    what = desc or f"'{dest.name}'"
    hint = f" {local_hint}" if local_hint else ""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create the download folder {dest.parent} for {what}: {e}. "
                            f"Set NANOGPT2_CACHE to a writable folder.") from None

    try:
        with FileLock(dest.with_name(dest.name + ".lock")):
            ok, why = _cached_ok(dest, size, sha256)  # another process may have finished it while we waited
            if ok:
                return dest
            if dest.exists():
                if not quiet:
                    print(f"{what}: cached file {dest} does not match ({why}); downloading it again", file=sys.stderr)
                _unlink(dest)
            return _fetch(url, dest, sha256=sha256, size=size, headers=headers, what=what, hint=hint,
                          timeout=timeout, quiet=quiet)
    except OSError as e:  # lock file, .part or final rename in an unwritable / full folder
        raise DownloadError(f"could not write to {dest.parent} while downloading {what}: {e}. Free some disk "
                            f"space or set NANOGPT2_CACHE to a writable folder.") from None


class _Part:
    """The `.part` file and the running sha256 of its first `hashed` bytes (kept in step with every write)."""

    def __init__(self, path: Path):
        self.path = path
        self.hasher, self.hashed = hashlib.sha256(), 0

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def reset(self):
        _unlink(self.path)
        self.hasher, self.hashed = hashlib.sha256(), 0

    def sync_hash(self):
        """Make the running hash cover the whole file on disk (after a resume from an earlier run)."""
        if self.hashed != self.size():
            self.hasher, self.hashed = hashlib.sha256(), 0
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(_CHUNK), b""):
                    self.hasher.update(block)
                    self.hashed += len(block)

    def sha256(self) -> str:
        self.sync_hash()
        return self.hasher.hexdigest()


def _content_range_total(value: str | None) -> tuple[int | None, int | None]:
    """'bytes a-b/N' -> (a, N); 'bytes */N' -> (None, N); N may be '*' (unknown) -> None."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    return start, (int(m.group(2)) if m.group(2) != "*" else None)


def _http_error(status: int, url: str, what: str, hint: str, resp) -> DownloadError:
    if status == 404:
        return DownloadError(f"{what} not found: {url} answered HTTP 404. Check the name (and revision), "
                             f"or use a local copy instead.{hint}")
    if status in (401, 403):
        return DownloadError(f"{what}: access denied by {url} (HTTP {status}). The file may be gated or private: "
                             f"accept its terms / pass an access token in headers=..., or use a local copy.{hint}")
    return DownloadError(f"{what}: {url} answered HTTP {status} {resp.reason or ''}".rstrip() + f".{hint}")


def _attempt(session, url, part: _Part, req_headers, timeout, progress, state, what, hint) -> bool:
    """One request: append to / restart the .part. Returns True when the file is complete; raises _Retry
    (with `.written`) when the connection broke, DownloadError for errors that retrying cannot fix."""
    have = part.size()
    h = dict(req_headers)
    if have:
        h["Range"] = f"bytes={have}-"
    with session.get(url, headers=h, stream=True, timeout=(timeout, timeout)) as r:
        state["responded"] = True
        chain = list(r.history) + [r]
        state["server_sha"] = state["server_sha"] or _server_sha256(chain)
        status = r.status_code
        if status == 416 and have:  # our .part already reaches the end (or is longer than the file)
            _, total = _content_range_total(r.headers.get("Content-Range"))
            if total is not None and total == have:
                state["total"] = state["total"] or total
                return True
            part.reset()
            raise _Retry("the server refused to resume; restarting from byte 0", written=0, free=True)
        if status in _RETRY_STATUS:
            raise _Retry(f"HTTP {status}", written=0)
        if status >= 400:
            raise _http_error(status, url, what, hint, r)
        encoded = r.headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
        length = r.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() and not encoded else None
        if status == 206:
            start, total = _content_range_total(r.headers.get("Content-Range"))
            if start != have:  # not the range we asked for: start over
                part.reset()
                raise _Retry(f"the server sent bytes from {start}, not {have}; restarting", written=0, free=True)
            mode = "ab"
            part.sync_hash()
        elif status == 200:
            start, total, mode = 0, length, "wb"  # no range support (or a fresh download): from byte 0
            part.hasher, part.hashed = hashlib.sha256(), 0
        else:
            raise DownloadError(f"{what}: unexpected answer HTTP {status} from {url}.{hint}")
        if total is not None:
            if state["size"] is not None and total != state["size"]:
                part.reset()
                raise DownloadError(f"{what}: the server says {url} has {total} bytes, but {state['size']} were "
                                    f"expected; the file on the server changed or the URL is wrong.{hint}")
            state["total"] = total

        written = 0
        progress.begin(start)
        try:
            with open(part.path, mode) as f:
                for chunk in r.iter_content(_READ):
                    f.write(chunk)
                    part.hasher.update(chunk)
                    part.hashed += len(chunk)
                    written += len(chunk)
                    progress.update(start + written, state["total"])
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
                requests.exceptions.Timeout) as e:
            raise _Retry(f"connection lost after {fmt_mb(start + written)} ({_reason(e, timeout)})",
                         written=written) from None
        if length is not None and written < length:
            raise _Retry(f"the server closed the connection after {written} of {length} bytes", written=written)
        if state["total"] is not None and start + written < state["total"]:
            raise _Retry(f"got {start + written} of {state['total']} bytes", written=written)
        progress.update(start + written, state["total"], final=True)
        return True


def _fetch(url, dest: Path, *, sha256, size, headers, what, hint, timeout, quiet, allow_restart=True) -> Path:
    part = _Part(dest.with_name(dest.name + ".part"))
    req_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(headers or {})}
    progress = ProgressLine(what if len(what) <= 40 else dest.name, quiet)
    state = {"responded": False, "server_sha": None, "total": size, "size": size}
    resumed = part.size() > 0
    if size is not None and part.size() > size:  # a stale .part of some other file
        part.reset()
        resumed = False
    failures, restarts, last_error = 0, 0, ""

    def give_up(reason):
        return DownloadError(f"downloading {what} from {url} failed {max(failures, restarts)} times in a row "
                             f"({reason}); "
                             f"run again to resume from {part.path}.{hint}")

    try:
        with requests.Session() as session:
            while not (size is not None and part.size() == size):  # a .part of the expected size: just verify
                try:
                    if _attempt(session, url, part, req_headers, timeout, progress, state, what, hint):
                        break
                except _Retry as e:
                    if e.free:  # restart from byte 0 at once (bounded, against a server that keeps doing it)
                        restarts += 1
                        if restarts > _MAX_RETRIES:
                            raise give_up(e) from None
                        continue
                    last_error = str(e)
                    failures = 1 if e.written > 0 else failures + 1
                    if e.written == 0 and failures > _MAX_RETRIES:
                        raise give_up(e) from None
                except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
                    if not state["responded"]:  # never reached the server: offline, fail fast
                        raise DownloadError(
                            f"could not download {what}: {url} is unreachable ({_reason(e, timeout)}). Check your "
                            f"connection, or skip the download:{hint or ' use a local copy of the file.'}") from None
                    failures += 1
                    last_error = f"connection failed ({_reason(e, timeout)})"
                    if failures > _MAX_RETRIES:
                        raise give_up(_reason(e, timeout)) from None
                progress.close()
                wait = min(_BACKOFF * 2 ** (max(failures, 1) - 1), _BACKOFF_MAX)
                if not quiet:
                    print(f"{what}: {last_error}; retrying in {wait:g}s", file=sys.stderr)
                time.sleep(wait)
    except requests.exceptions.RequestException as e:  # invalid URL, too many redirects, ...
        raise DownloadError(f"could not download {what} from {url}: {e}.{hint}") from None
    except OSError as e:
        raise DownloadError(f"could not write {part.path} while downloading {what}: {e}. Free some disk space or "
                            f"set NANOGPT2_CACHE to another folder, then run again to resume.") from None
    finally:
        progress.close()

    # --- verify, then move into place ---
    got_size, total = part.size(), state["total"]
    if total is not None and got_size != total:
        part.reset()
        raise DownloadError(f"{what}: downloaded {got_size} bytes from {url} but expected {total}; the partial "
                            f"file was deleted, run again.{hint}")
    got_sha = part.sha256()
    want_sha, source = (sha256, "expected") if sha256 else (state["server_sha"], "the server says")
    if want_sha is not None and got_sha != want_sha:
        part.reset()
        if resumed and allow_restart:  # the old .part was probably from another version: once more from zero
            if not quiet:
                print(f"{what}: the resumed partial download does not match its sha256; starting over",
                      file=sys.stderr)
            return _fetch(url, dest, sha256=sha256, size=size, headers=headers, what=what, hint=hint,
                          timeout=timeout, quiet=quiet, allow_restart=False)
        raise DownloadError(f"{what}: sha256 mismatch for {url}: {source} {want_sha}, got {got_sha}. The file was "
                            f"corrupted in transit or changed on the server; the partial download was deleted, "
                            f"run again.{hint}")
    os.replace(part.path, dest)
    return dest
