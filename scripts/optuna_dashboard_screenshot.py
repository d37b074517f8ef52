"""Screenshot optuna-dashboard's page of one study.

    python scripts/optuna_dashboard_screenshot.py --study xray_cnn_search \\
        --out docs/optuna_dashboard.png

Reads the study's name in the storage from reports/tune/<study>/best_params.yaml (the
study `medimg tune` last reported), starts `optuna-dashboard` on the storage (the
project's journal file unless --storage or $MEDIMG_OPTUNA_STORAGE says otherwise),
opens the study's page in headless Chromium (Debian's `chromium` package) and saves
it as a PNG. Used for the README.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from medimg.tuning.storage import storage_url
from medimg.tuning.tune_stage import reports_dir


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_studies(base: str, timeout_s: float = 60) -> list[dict]:
    """The dashboard's study list (its /api/studies), once it answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/api/studies", timeout=5) as response:
                return json.loads(response.read())["study_summaries"]
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"optuna-dashboard at {base} did not answer within {timeout_s} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="xray_cnn_search", help="a key of `tune:`")
    parser.add_argument("--storage", help="default: $MEDIMG_OPTUNA_STORAGE, else the journal")
    parser.add_argument("--out", type=Path, default=Path("docs/optuna_dashboard.png"))
    parser.add_argument("--size", default="1500,1250", help="window width,height")
    args = parser.parse_args()

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    dashboard = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    if browser is None:
        raise SystemExit("no chromium on PATH (Debian: apt-get install chromium)")
    if dashboard is None:
        raise SystemExit("no optuna-dashboard beside this Python (pip install -e .)")
    record_file = reports_dir(args.study) / "best_params.yaml"
    if not record_file.is_file():
        raise SystemExit(f"{record_file} not found: run `medimg tune --study {args.study}` first")
    storage_study = yaml.safe_load(record_file.read_text())["storage_study"]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [dashboard, storage_url(args.storage), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ids = [s["study_id"] for s in wait_for_studies(base) if s["study_name"] == storage_study]
        if not ids:
            raise SystemExit(f"{storage_url(args.storage)} has no study {storage_study!r}")
        page = f"{base}/dashboard/studies/{ids[0]}"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as profile:
            # The flags keep Chromium off the network (this machine has none) and quiet.
            browser_cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu"]
            browser_cmd += ["--hide-scrollbars", "--disable-background-networking"]
            browser_cmd += ["--disable-component-update", "--disable-sync", "--no-first-run"]
            browser_cmd += [f"--user-data-dir={profile}", f"--window-size={args.size}"]
            browser_cmd += ["--virtual-time-budget=20000", f"--screenshot={args.out.resolve()}"]
            subprocess.run([*browser_cmd, page], check=True, timeout=120, capture_output=True)
        print(f"{page}\n-> {args.out}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
