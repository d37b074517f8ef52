"""Screenshot MLflow's compare view of the parent runs of one experiment.

    python scripts/mlflow_screenshot.py --experiment medimg-chest_xray --out docs/mlflow_compare.png

Starts `mlflow server` on the project store, opens the compare-runs page of
every parent run (one per configuration) in headless Chromium (Debian's
`chromium` package) and saves the page as a PNG. Used for the README.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from mlflow import MlflowClient

from medimg.tracking.store import tracking_uri


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"mlflow server at {url} did not answer within {timeout_s} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="medimg-chest_xray")
    parser.add_argument("--out", type=Path, default=Path("docs/mlflow_compare.png"))
    parser.add_argument("--size", default="1600,1300", help="window width,height")
    args = parser.parse_args()

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("no chromium on PATH (Debian: apt-get install chromium)")
    uri = tracking_uri()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"{uri}: no experiment {args.experiment!r}; run `dvc repro` first")
    parents = [
        r.info.run_id
        for r in client.search_runs([experiment.experiment_id], "tags.`medimg.role` = 'parent'")
    ]
    if not parents:
        raise SystemExit(f"{args.experiment}: no parent runs to compare")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server_cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    server_cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server = subprocess.Popen(
        server_cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_up(base)
        query = urllib.parse.urlencode(
            {"runs": json.dumps(parents), "experiments": json.dumps([experiment.experiment_id])}
        )
        page = f"{base}/#/compare-runs?{query}"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as profile:
            # The flags keep Chromium off the network (this machine has none) and quiet.
            browser_cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu"]
            browser_cmd += ["--hide-scrollbars", "--disable-background-networking"]
            browser_cmd += ["--disable-component-update", "--disable-sync", "--no-first-run"]
            browser_cmd += [f"--user-data-dir={profile}", f"--window-size={args.size}"]
            browser_cmd += ["--virtual-time-budget=20000", f"--screenshot={args.out.resolve()}"]
            subprocess.run(
                [*browser_cmd, page],
                check=True,
                timeout=120,
                capture_output=True,
            )
        print(f"{page}\n-> {args.out}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
