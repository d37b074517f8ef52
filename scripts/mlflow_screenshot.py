"""Screenshot an experiment's runs table, or MLflow's Compare view of its parent runs.

    python scripts/mlflow_screenshot.py --view runs --out docs/mlflow_runs.png
    python scripts/mlflow_screenshot.py --view compare --runs xray_cnn xray_cnn_aug \
        --out docs/mlflow_compare.png

Starts `mlflow server` (one worker) on the project store and opens, in headless
Chromium (Debian's `chromium` package), either the experiment's runs table as its
shared view `medimg-headline` shows it (the headline means as columns:
medimg.evaluation.parent_metrics), or the compare-runs page of the parent runs named
by --runs (all parent runs by default); saves the page as a PNG. Used for the README.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
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

from medimg.evaluation.parent_metrics import HEADLINE_VIEW
from medimg.tracking.store import shared_view_link, tracking_uri


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


def parent_runs(client: MlflowClient, experiment_id: str, names: list[str] | None) -> list[str]:
    """The ids of the experiment's parent runs, the latest of each name in `names` (all
    parent runs when None), in the order given."""
    runs = client.search_runs(
        [experiment_id], "tags.`medimg.role` = 'parent'", order_by=["attributes.start_time DESC"]
    )
    if names is None:
        return [run.info.run_id for run in runs]
    latest = {}
    for run in runs:
        latest.setdefault(run.info.run_name, run.info.run_id)
    missing = [name for name in names if name not in latest]
    if missing:
        raise SystemExit(f"no parent run named {missing}; there are {sorted(latest)}")
    return [latest[name] for name in names]


def page_of(view: str, base: str, experiment_id: str, parents: list[str]) -> str:
    if view == "runs":
        return shared_view_link(base, experiment_id, HEADLINE_VIEW)
    query = urllib.parse.urlencode(
        {"runs": json.dumps(parents), "experiments": json.dumps([experiment_id])}
    )
    return f"{base}/#/compare-runs?{query}"


class Browser:
    """Headless Chromium driven through the DevTools protocol on a pipe (fds 3 and 4: the
    `--remote-debugging-pipe` of puppeteer), so that a page can be clicked before its
    screenshot without any package beyond the standard library."""

    def __init__(self, executable: str, profile: str, size: tuple[int, int]) -> None:
        to_browser, self._in = os.pipe()
        self._out, from_browser = os.pipe()

        def fds_3_and_4() -> None:
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        # The flags keep Chromium off the network (this machine has none) and quiet.
        command = [executable, "--headless", "--no-sandbox", "--disable-gpu"]
        command += ["--hide-scrollbars", "--disable-background-networking"]
        command += ["--disable-component-update", "--disable-sync", "--no-first-run"]
        command += [f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        self.process = subprocess.Popen(
            command,
            pass_fds=(3, 4),
            preexec_fn=fds_3_and_4,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._next_id, self._buffer = 0, b""
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        attached = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)
        self.session = attached["sessionId"]
        width, height = size
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
            session=True,
        )

    def call(self, method: str, session: bool = False, **params: object) -> dict:
        """Send one command; return its result (events in between are skipped)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._in, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._out, 1 << 20)
                if not chunk:
                    raise SystemExit(f"chromium closed the pipe during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise SystemExit(f"{method}: {reply['error']}")
                return reply["result"]

    def run(self, script: str) -> object:
        result = self.call("Runtime.evaluate", session=True, expression=script, awaitPromise=True)
        return result["result"].get("value")

    def close(self) -> None:
        # Browser.close lets Chromium end its helper processes itself; the pipe may close
        # before the answer comes.
        with contextlib.suppress(SystemExit):
            self.call("Browser.close")
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._in)
        os.close(self._out)


# Run in the page before its screenshot: close MLflow's assistant panel (it takes a quarter
# of the width); on Compare also fold the charts and show the differing parameters only,
# so that the metrics come into view.
TIDY_PAGE = """
(async () => {
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  const close = document.querySelector('[data-component-id="mlflow.assistant.chat_panel.close"]');
  if (close) close.click();
  if (COMPARE) {
    const charts = [...document.querySelectorAll('[role=button][aria-expanded=true]')].find(
      (e) => e.textContent.trim() === 'Visualizations');
    if (charts) charts.click();
    for (const toggle of document.querySelectorAll('[role=switch]')) {
      if (toggle.getAttribute('aria-checked') !== 'true') toggle.click();
    }
  }
  await sleep(1500);
  return document.body.innerText.includes('Metrics');
})()
"""


def screenshot(browser: str, page: str, out: Path, size: str, compare: bool) -> None:
    width, height = (int(value) for value in size.split(","))
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        chromium = Browser(browser, profile, (width, height))
        try:
            chromium.call("Page.enable", session=True)
            chromium.call("Page.navigate", session=True, url=page)
            time.sleep(12)  # the UI's bundle loads, then the runs
            chromium.run(TIDY_PAGE.replace("COMPARE", "true" if compare else "false"))
            shot = chromium.call("Page.captureScreenshot", session=True, format="png")
        finally:
            chromium.close()
    out.write_bytes(base64.b64decode(shot["data"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="medimg-chest_xray")
    parser.add_argument("--view", choices=("runs", "compare"), default="compare")
    parser.add_argument("--runs", nargs="+", help="compare: parent runs by name (default: all)")
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
    parents = parent_runs(client, experiment.experiment_id, args.runs)
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
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    try:
        wait_until_up(base)
        page = page_of(args.view, base, experiment.experiment_id, parents)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(browser, page, args.out, args.size, compare=args.view == "compare")
        print(f"{page}\n-> {args.out}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
