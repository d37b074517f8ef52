"""Downloads over a real loopback HTTP server: streaming, retries, cache, checksums."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medimg.data.download import cached_download, download, url_basename
from medimg.data.errors import FetchError

PAYLOAD = bytes(range(256)) * 400  # 100 KiB, several chunks


class FlakyServer:
    """Serves PAYLOAD at any path; the first `failures` requests fail in the way `mode` says."""

    def __init__(self, failures: int = 0, mode: str = "503") -> None:
        self.failures = failures
        self.mode = mode
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                failing = server.requests <= server.failures
                if failing and server.mode in ("503", "404"):
                    self.send_error(int(server.mode))
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                if failing and server.mode == "truncate":
                    # Promise the whole payload, send half, hang up.
                    self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(PAYLOAD)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, name: str = "data.zip") -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/files/{name}"

    def __enter__(self) -> FlakyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FlakyServer]:
    with FlakyServer() as s:
        yield s


def test_download_streams_the_whole_file(server, tmp_path):
    target = download(server.url(), tmp_path / "out" / "data.zip", timeout_s=5, retries=0)
    assert target.read_bytes() == PAYLOAD
    assert [p.name for p in target.parent.iterdir()] == ["data.zip"]  # no temp file left


@pytest.mark.parametrize("mode", ["503", "truncate"])
def test_download_retries_until_the_server_recovers(tmp_path, mode):
    with FlakyServer(failures=2, mode=mode) as server:
        target = download(server.url(), tmp_path / "data.zip", timeout_s=5, retries=2, backoff_s=0)
        assert server.requests == 3
    assert target.read_bytes() == PAYLOAD


def test_download_gives_up_after_the_configured_retries(tmp_path):
    with FlakyServer(failures=100, mode="truncate") as server:
        with pytest.raises(FetchError, match=r"failed after 3 attempt\(s\)") as err:
            download(server.url(), tmp_path / "data.zip", timeout_s=5, retries=2, backoff_s=0)
        assert server.requests == 3
    assert server.url() in str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a partial file


def test_client_errors_are_not_retried(tmp_path):
    with FlakyServer(failures=100, mode="404") as server:
        with pytest.raises(FetchError, match="HTTP 404"):
            download(server.url(), tmp_path / "data.zip", timeout_s=5, retries=3, backoff_s=0)
        assert server.requests == 1


def test_cache_is_reused_only_when_its_sha256_matches(server, tmp_path):
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    cache = tmp_path / "downloads"
    first = cached_download(server.url(), sha256=sha, timeout_s=5, retries=0, cache_dir=cache)
    assert first == cache / "data.zip"
    assert server.requests == 1
    cached_download(server.url(), sha256=sha, timeout_s=5, retries=0, cache_dir=cache)
    assert server.requests == 1  # served from the cache

    first.write_bytes(b"stale copy")
    again = cached_download(server.url(), sha256=sha, timeout_s=5, retries=0, cache_dir=cache)
    assert server.requests == 2
    assert again.read_bytes() == PAYLOAD


def test_without_a_configured_sha256_the_cache_is_not_trusted(server, tmp_path):
    cache = tmp_path / "downloads"
    for _ in range(2):
        cached_download(server.url(), sha256=None, timeout_s=5, retries=0, cache_dir=cache)
    assert server.requests == 2


def test_checksum_mismatch_names_both_values_and_keeps_nothing(server, tmp_path):
    cache = tmp_path / "downloads"
    wrong = "0" * 64
    with pytest.raises(FetchError) as err:
        cached_download(server.url(), sha256=wrong, timeout_s=5, retries=0, cache_dir=cache)
    message = str(err.value)
    assert wrong in message
    assert hashlib.sha256(PAYLOAD).hexdigest() in message
    assert "data.zip" in message
    assert list(cache.iterdir()) == []


def test_url_basename():
    assert url_basename("https://h/a/archive/refs/heads/master.zip?x=1") == "master.zip"
    assert url_basename("https://h/a/my%20data.zip") == "my data.zip"
    with pytest.raises(FetchError, match="does not end with a file name"):
        url_basename("https://h/")
