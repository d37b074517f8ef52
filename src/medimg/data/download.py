"""Download a dataset archive over HTTP(S) into the download cache.

Archives are kept in `data/downloads/<basename of the URL path>` so that a
re-run of the fetch stage does not download again: a cached file is reused
when its sha256 equals the configured one (`FetchConfig.sha256`). Without a
configured sha256 there is no way to tell a cached file from a stale one, so
the archive is downloaded again every time.

A download streams to a temporary file beside its target and is renamed into
place only when complete, so the cache never holds half a file.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import requests
from tqdm import tqdm

from medimg import paths
from medimg.data.errors import FetchError

CHUNK_BYTES = 1 << 20
# Statuses worth another try: the server or a proxy may recover; other 4xx will not.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def downloads_dir() -> Path:
    """The download cache: <root>/data/downloads."""
    return paths.root() / "data" / "downloads"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def url_basename(url: str) -> str:
    """The file name an URL's path ends with, e.g. `.../archive/master.zip` -> `master.zip`."""
    name = unquote(PurePosixPath(urlsplit(url).path).name)
    if not name or name in {".", ".."}:
        raise FetchError(
            f"{url}: the URL path does not end with a file name; "
            "expected a URL such as https://host/path/dataset.zip"
        )
    return name


class _RetryableError(Exception):
    """A failure that another attempt may not repeat (5xx, timeout, cut connection)."""


def _download_once(url: str, target: Path, timeout_s: float) -> None:
    """Stream `url` into a temporary file beside `target`, then rename it to `target`."""
    try:
        response = requests.get(url, stream=True, timeout=(timeout_s, timeout_s))
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _RetryableError(f"{type(err).__name__}: {err}") from err
    with response:
        if response.status_code in RETRY_STATUSES:
            raise _RetryableError(f"HTTP {response.status_code} {response.reason}")
        if response.status_code != 200:
            raise FetchError(
                f"{url}: HTTP {response.status_code} {response.reason}; expected 200 (not retried)"
            )
        total = response.headers.get("Content-Length")
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".part", dir=target.parent
        )
        tmp = Path(tmp_name)
        try:
            with (
                os.fdopen(fd, "wb") as out,
                tqdm(
                    total=int(total) if total and total.isdigit() else None,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=f"download {target.name}",
                    file=sys.stderr,
                ) as progress,
            ):
                # urllib3 checks the body length against Content-Length and raises
                # when the connection is cut early, so a short file is never renamed in.
                for chunk in response.iter_content(CHUNK_BYTES):
                    out.write(chunk)
                    progress.update(len(chunk))
            os.replace(tmp, target)
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as err:
            tmp.unlink(missing_ok=True)
            raise _RetryableError(f"transfer interrupted: {type(err).__name__}: {err}") from err
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def download(
    url: str, target: Path, *, timeout_s: float, retries: int, backoff_s: float = 1.0
) -> Path:
    """Download `url` to `target` (created or replaced only when the transfer is complete).

    Connect and read timeouts are `timeout_s` each. Connection errors, timeouts,
    cut transfers and HTTP 408/429/5xx are retried up to `retries` times, waiting
    `backoff_s`, then twice that, and so on; other HTTP errors fail at once.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            _download_once(url, target, timeout_s)
            return target
        except _RetryableError as err:
            failures.append(f"attempt {attempt + 1}: {err}")
    raise FetchError(
        f"{url}: download failed after {retries + 1} attempt(s):\n  " + "\n  ".join(failures)
    )


def cached_download(
    url: str,
    *,
    sha256: str | None,
    timeout_s: float,
    retries: int,
    cache_dir: Path | None = None,
    backoff_s: float = 1.0,
) -> Path:
    """Return the path of `url`'s file in the download cache, downloading it when needed.

    The cached `cache_dir/<basename>` (default `data/downloads/`) is reused only
    when `sha256` is given and matches it. A fresh download whose sha256 differs
    from the given one is deleted and raises FetchError naming both values.
    """
    cache_dir = cache_dir if cache_dir is not None else downloads_dir()
    target = cache_dir / url_basename(url)
    if sha256 is not None and target.is_file() and sha256_file(target) == sha256:
        return target
    download(url, target, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
    if sha256 is not None:
        actual = sha256_file(target)
        if actual != sha256:
            target.unlink()
            raise FetchError(
                f"{url}: downloaded file {target.name} has sha256 {actual}, "
                f"expected {sha256} (fetch.sha256); the file was deleted"
            )
    return target
