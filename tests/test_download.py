"""
Tests for nanogpt2/download.py against a real loopback HTTP server (tests/http_fixture.py); no mocks.

Run: python -m pytest -q tests/test_download.py
"""

import hashlib
import os
import socket
import threading

import pytest

import nanogpt2.download as dl
from http_fixture import FileServer, file_server, serve, unused_url  # noqa: F401  (file_server: a fixture)
from nanogpt2.download import DownloadError, cache_dir, download, hf_url
from nanogpt2.errors import NanoGPT2Error

T = 2.0  # a short timeout: every test here is loopback and fast


def blob(n: int, seed: int = 0) -> bytes:
    out, h = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        h = hashlib.sha256(h).digest()
        out += h
    return bytes(out[:n])


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(dl, "_BACKOFF", 0.01)


DATA = blob(300_000)


# --- the happy path -------------------------------------------------------------------------------------------

def test_fresh_download(tmp_path):
    with serve({"/m/model.bin": DATA}) as srv:
        dest = tmp_path / "models" / "m" / "model.bin"   # parent folders are created
        got = download(srv.url("/m/model.bin"), dest, timeout=T, quiet=True)
        assert got == dest and dest.read_bytes() == DATA
        assert srv.hits["/m/model.bin"] == 1
        assert listing(dest.parent) == ["model.bin"]        # no .part, no .lock left behind
        ua = srv.requests[0]["headers"]["User-Agent"]
        assert not ua.startswith("python-requests") and "Mozilla" in ua


def test_cached_file_is_reused_without_a_request(tmp_path):
    with serve({"/f": DATA}) as srv:
        dest = tmp_path / "f.bin"
        download(srv.url("/f"), dest, timeout=T, quiet=True)
        assert srv.hits["/f"] == 1
        download(srv.url("/f"), dest, timeout=T, quiet=True)
        download(srv.url("/f"), dest, size=len(DATA), sha256=sha(DATA), timeout=T, quiet=True)
        assert srv.hits["/f"] == 1
        assert len(srv.requests) == 1  # no HEAD either


def test_cached_file_that_does_not_match_is_downloaded_again(tmp_path):
    with serve({"/f": DATA}) as srv:
        dest = tmp_path / "f.bin"
        dest.write_bytes(b"old version")
        download(srv.url("/f"), dest, size=len(DATA), timeout=T, quiet=True)
        assert dest.read_bytes() == DATA and srv.hits["/f"] == 1
        dest.write_bytes(DATA[:-1] + b"X")  # same size, wrong content
        download(srv.url("/f"), dest, sha256=sha(DATA), timeout=T, quiet=True)
        assert dest.read_bytes() == DATA and srv.hits["/f"] == 2


def test_server_that_rejects_python_requests_user_agent(tmp_path):
    with serve({"/f": DATA}, reject_python_ua=True) as srv:
        dest = download(srv.url("/f"), tmp_path / "f.bin", timeout=T, quiet=True)
        assert dest.read_bytes() == DATA
        # the server check is real: with requests' own agent it refuses, and we say so clearly
        with pytest.raises(DownloadError, match=r"access denied .*HTTP 403"):
            download(srv.url("/f"), tmp_path / "g.bin", headers={"User-Agent": "python-requests/2.32"},
                     timeout=T, quiet=True)
        assert not (tmp_path / "g.bin").exists()


# --- resuming -------------------------------------------------------------------------------------------------

def test_resume_after_the_connection_is_cut(tmp_path):
    with serve({"/big": DATA}, cut_after=100_000) as srv:
        dest = download(srv.url("/big"), tmp_path / "big.bin", timeout=T, quiet=True)
        assert dest.read_bytes() == DATA
        assert srv.hits["/big"] == 2
        [rng] = srv.range_requests("/big")  # resumed from what had arrived (whole 64 KiB reads) before the cut
        assert rng.startswith("bytes=") and rng.endswith("-") and 0 < int(rng[6:-1]) <= 100_000
        assert listing(tmp_path) == ["big.bin"]


def test_resume_after_several_cuts(tmp_path):
    with serve({"/big": DATA}, cut_after=65536, cut_times=3) as srv:  # cuts on a read boundary: exact resumes
        dest = download(srv.url("/big"), tmp_path / "big.bin", sha256=sha(DATA), timeout=T, quiet=True)
        assert dest.read_bytes() == DATA
        assert srv.range_requests("/big") == ["bytes=65536-", "bytes=131072-", "bytes=196608-"]


def test_stale_part_is_resumed(tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(DATA[:123_456])
    with serve({"/f": DATA}, sha_header="x-linked-etag") as srv:
        download(srv.url("/f"), dest, timeout=T, quiet=True)
        assert dest.read_bytes() == DATA
        assert srv.range_requests("/f") == ["bytes=123456-"] and srv.hits["/f"] == 1
    assert listing(tmp_path) == ["f.bin"]


def test_part_with_the_whole_file_needs_only_verifying(tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(DATA)
    with serve({"/f": DATA}) as srv:
        download(srv.url("/f"), dest, timeout=T, quiet=True)  # size unknown: asks; the server answers 416
        assert dest.read_bytes() == DATA and srv.range_requests("/f") == [f"bytes={len(DATA)}-"]
        (tmp_path / "g.bin.part").write_bytes(DATA)
        download(srv.url("/f"), tmp_path / "g.bin", size=len(DATA), sha256=sha(DATA), timeout=T, quiet=True)
        assert srv.hits["/f"] == 1  # size known and reached: no request at all


def test_server_without_range_support_restarts_from_zero(tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"garbage that is not a prefix")
    with serve({"/f": DATA}, ignore_range=True) as srv:
        download(srv.url("/f"), dest, timeout=T, quiet=True)
        assert dest.read_bytes() == DATA
        assert srv.range_requests("/f") == ["bytes=28-"] and srv.hits["/f"] == 1  # answered 200: rewritten


def test_stale_part_of_another_version_is_detected_and_redone(tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(blob(50_000, seed=99))  # a prefix of some other file
    with serve({"/f": DATA}, sha_header="etag") as srv:
        download(srv.url("/f"), dest, timeout=T, quiet=True)
        assert dest.read_bytes() == DATA
        assert srv.hits["/f"] == 2 and srv.range_requests("/f") == ["bytes=50000-"]  # then once from zero


def test_retries_server_errors_then_gives_up(tmp_path, fast_backoff):
    with serve({"/f": DATA}, fail_statuses={"/f": [503, 502]}) as srv:
        download(srv.url("/f"), tmp_path / "f.bin", timeout=T, quiet=True)
        assert (tmp_path / "f.bin").read_bytes() == DATA and srv.hits["/f"] == 3
    with serve({"/f": DATA}, fail_statuses={"/f": [503] * 50}) as srv:
        with pytest.raises(DownloadError, match=r"failed 6 times in a row \(HTTP 503\)"):
            download(srv.url("/f"), tmp_path / "g.bin", timeout=T, quiet=True)
        assert srv.hits["/f"] == 1 + dl._MAX_RETRIES


# --- verification ---------------------------------------------------------------------------------------------

def test_sha256_mismatch_leaves_nothing(tmp_path):
    cache = tmp_path / "cache"
    with serve({"/f": DATA}) as srv:
        with pytest.raises(DownloadError) as e:
            download(srv.url("/f"), cache / "models" / "f.bin", sha256="ab" * 32, timeout=T, quiet=True)
    msg = str(e.value)
    assert "sha256 mismatch" in msg and "ab" * 32 in msg and sha(DATA) in msg and srv.url("/f") in msg
    assert listing(cache / "models") == []  # no file, no .part, no .lock


def test_server_sha256_is_checked(tmp_path):
    # X-Linked-Etag (HF LFS) and a sha256 ETag are both trusted and verified
    for mode in ["x-linked-etag", "etag"]:
        with serve({"/f": DATA}, sha_header=mode, sha_override={"/f": "cd" * 32}) as srv:
            with pytest.raises(DownloadError, match=f"the server says {'cd' * 32}, got {sha(DATA)}"):
                download(srv.url("/f"), tmp_path / "f.bin", timeout=T, quiet=True)
            assert listing(tmp_path) == []
        with serve({"/f": DATA}, sha_header=mode) as srv:
            download(srv.url("/f"), tmp_path / "f.bin", timeout=T, quiet=True)
            assert (tmp_path / "f.bin").read_bytes() == DATA
            (tmp_path / "f.bin").unlink()
    # an explicit sha256 wins over the server's
    with serve({"/f": DATA}, sha_header="etag", sha_override={"/f": "cd" * 32}) as srv:
        download(srv.url("/f"), tmp_path / "f.bin", sha256=sha(DATA), timeout=T, quiet=True)


def test_hf_style_redirect_with_linked_etag(tmp_path):
    """Like the HF Hub: /resolve/ answers 302 + X-Linked-Etag, the CDN serves the bytes."""
    with serve({"/cdn/blob": DATA}, redirects={"/gpt2/resolve/main/model.bin": "/cdn/blob"},
               sha_header="x-linked-etag", sha_override={"/cdn/blob": "ef" * 32}) as srv:
        with pytest.raises(DownloadError, match="sha256 mismatch"):
            download(srv.url("/gpt2/resolve/main/model.bin"), tmp_path / "m.bin", timeout=T, quiet=True)
        srv.sha_override.clear()
        download(srv.url("/gpt2/resolve/main/model.bin"), tmp_path / "m.bin", timeout=T, quiet=True)
        assert (tmp_path / "m.bin").read_bytes() == DATA


def test_a_non_sha_etag_is_ignored(tmp_path):
    with serve({"/f": DATA}, extra_headers={"/f": {"ETag": '"' + "0" * 40 + '"'}}) as srv:  # a git sha1
        download(srv.url("/f"), tmp_path / "f.bin", timeout=T, quiet=True)
        assert (tmp_path / "f.bin").read_bytes() == DATA


def test_size_mismatch(tmp_path):
    with serve({"/f": DATA}) as srv:
        with pytest.raises(DownloadError, match=f"has {len(DATA)} bytes, but 1000 were expected"):
            download(srv.url("/f"), tmp_path / "f.bin", size=1000, timeout=T, quiet=True)
    assert listing(tmp_path) == []


# --- errors the user must understand --------------------------------------------------------------------------

def test_404_names_what_and_where(tmp_path):
    with serve({}) as srv:
        url = srv.url("/gpt3/resolve/main/model.safetensors")
        with pytest.raises(DownloadError) as e:
            download(url, tmp_path / "model.safetensors", desc="model 'gpt3'",
                     local_hint="Or pass a local folder: GPT.from_pretrained('/path/to/gpt3').", timeout=T, quiet=True)
    msg = str(e.value)
    assert "model 'gpt3' not found" in msg and url in msg and "HTTP 404" in msg
    assert "GPT.from_pretrained('/path/to/gpt3')" in msg
    assert listing(tmp_path) == []


def test_no_server_names_url_and_local_alternative(tmp_path):
    url = unused_url("/gpt2/resolve/main/model.safetensors")
    with pytest.raises(DownloadError) as e:
        download(url, tmp_path / "model.safetensors", desc="model 'gpt2'",
                 local_hint="Or pass a local folder: GPT.from_pretrained('/path/to/gpt2').", timeout=T, quiet=True)
    msg = str(e.value)
    assert url in msg and "unreachable" in msg and "connection refused" in msg
    assert "GPT.from_pretrained('/path/to/gpt2')" in msg and "model 'gpt2'" in msg
    assert isinstance(e.value, NanoGPT2Error)
    assert e.value.__cause__ is None and e.value.__suppress_context__  # one clean error, no chained traceback
    assert listing(tmp_path) == []


def test_server_that_never_answers_times_out(tmp_path):
    with socket.socket() as s:  # listens (the kernel accepts connections) but never responds
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/f"
        with pytest.raises(DownloadError, match=r"unreachable \(no answer within 0.3s\).*set data_path"):
            download(url, tmp_path / "f.bin", local_hint="Or set data_path=... to a local copy.", timeout=0.3,
                     quiet=True)


def test_bad_arguments_are_download_errors(tmp_path):
    with pytest.raises(DownloadError, match="could not download"):
        download("notascheme://x/y", tmp_path / "f.bin", timeout=T, quiet=True)
    with pytest.raises(DownloadError, match="must be 64 hex digits"):
        download("http://127.0.0.1:1/x", tmp_path / "f.bin", sha256="abc", timeout=T, quiet=True)
    with pytest.raises(DownloadError, match="it is a folder"):
        download("http://127.0.0.1:1/x", tmp_path, timeout=T, quiet=True)


def test_unwritable_cache_is_a_download_error(tmp_path):
    (tmp_path / "afile").write_bytes(b"x")  # a file where the cache folder should be
    with serve({"/f": DATA}) as srv:
        with pytest.raises(DownloadError, match="cannot create the download folder .*NANOGPT2_CACHE"):
            download(srv.url("/f"), tmp_path / "afile" / "sub" / "f.bin", timeout=T, quiet=True)
        assert srv.hits["/f"] == 0


# --- progress, locking, locations -----------------------------------------------------------------------------

def test_progress_line_on_stderr_unless_quiet(tmp_path, capsys):
    with serve({"/f": DATA}) as srv:
        download(srv.url("/f"), tmp_path / "a.bin", desc="dataset 'x'", timeout=T)
        err = capsys.readouterr().err
        assert "dataset 'x':" in err and "0.3 MB / 0.3 MB (100%)" in err and "MB/s" in err
        download(srv.url("/f"), tmp_path / "b.bin", timeout=T, quiet=True)
        assert capsys.readouterr().err == ""


def test_concurrent_downloads_of_one_file_fetch_it_once(tmp_path):
    with serve({"/f": DATA}, chunk_delay=0.05) as srv:  # ~0.25 s per download: the threads overlap
        dest, results, errors = tmp_path / "f.bin", [], []

        def worker():
            try:
                results.append(download(srv.url("/f"), dest, timeout=T, quiet=True).read_bytes())
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and results == [DATA] * 3
        assert srv.hits["/f"] == 1
        assert listing(tmp_path) == ["f.bin"]


def test_file_server_fixture(file_server, tmp_path):
    file_server.files["/x"] = b"hello"
    assert download(file_server.url("/x"), tmp_path / "x", timeout=T, quiet=True).read_bytes() == b"hello"
    assert isinstance(file_server, FileServer) and file_server.base_url.startswith("http://127.0.0.1:")


def test_cache_dir_and_hf_url(monkeypatch, tmp_path):
    monkeypatch.delenv("NANOGPT2_CACHE", raising=False)
    assert cache_dir() == __import__("pathlib").Path.home() / ".cache" / "nanogpt2"
    monkeypatch.setenv("NANOGPT2_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("NANOGPT2_HF_ENDPOINT", raising=False)
    assert hf_url("openai-community/gpt2", "model.safetensors") == \
        "https://huggingface.co/openai-community/gpt2/resolve/main/model.safetensors"
    assert hf_url("gpt2", "onnx/model.onnx", revision="refs/pr/1") == \
        "https://huggingface.co/gpt2/resolve/refs%2Fpr%2F1/onnx/model.onnx"
    with serve({"/openai-community/gpt2/resolve/main/config.json": b"{}"}) as srv:
        monkeypatch.setenv("NANOGPT2_HF_ENDPOINT", srv.base_url + "/")
        url = hf_url("openai-community/gpt2", "config.json")
        assert url == srv.base_url + "/openai-community/gpt2/resolve/main/config.json"
        assert download(url, cache_dir() / "gpt2" / "config.json", timeout=T, quiet=True).read_bytes() == b"{}"
    assert os.listdir(tmp_path / "c" / "gpt2") == ["config.json"]
