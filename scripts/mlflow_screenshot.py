"""Screenshot MLflow's compare view of an experiment's evaluated models (how docs/figures/mlflow_compare.png is made).

    python scripts/mlflow_screenshot.py --output-dir runs/digits_quickstart --out docs/figures/mlflow_compare.png \
        --top 660

Starts an MLflow server on 127.0.0.1 (a free port, one worker, no job runner) over the experiment's default SQLite
store (``sqlite:///<output_dir>/mlflow.db``, or ``--tracking-uri``), selects the per-model runs of the latest
evaluation (``<config>/evaluate:<model>``), and renders the compare page in headless Chromium (Debian package
``chromium``; ``bash scripts/setup_browser.sh`` installs it). The page is rendered with Chromium's virtual time
budget, which lets the UI's API calls finish and React render before the screenshot and DOM are taken; ``--top``
skips the first pixels of the page (the plots) so the run names and metrics fill the picture. The browser test
(tests/test_mlflow_browser.py) uses the same functions.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--hide-scrollbars"]


def chromium() -> str | None:
    """The Chromium executable on ``$PATH`` (None where it is not installed)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(backend_uri: str, workdir: Path, timeout_s: float = 90.0) -> Iterator[str]:
    """An MLflow server over ``backend_uri`` on 127.0.0.1 for the ``with`` block; yields its base URL. One worker
    and no job runner (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``) bring start-up to seconds. It runs in
    ``workdir`` (its default artifact root is relative to it) and logs to ``workdir/mlflow_server.log``."""
    port = free_port()
    log_path = workdir / "mlflow_server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the MLflow server did not become healthy in {timeout_s:.0f} s (exit code "
                                   f"{proc.poll()}); its log, {log_path}:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.25)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker: the group it was started in
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def runs_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table (the page that lists runs; the experiment's default tab may not)."""
    return f"{base}/#/experiments/{experiment_id}/runs"


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    """The compare view of ``run_ids``: one column per run, their params, metrics and tags row by row."""
    quote = lambda value: urllib.parse.quote(json.dumps(value))  # noqa: E731
    return f"{base}/#/compare-runs?runs={quote(run_ids)}&experiments={quote([experiment_id])}"


def render(url: str, screenshot: Path, width: int = 1400, height: int = 900, budget_ms: int = 20_000,
           scale: float = 1.0, timeout_s: float = 120.0) -> str:
    """Load ``url`` in headless Chromium, save a ``width`` x ``height`` pixel PNG to ``screenshot`` and return the
    rendered DOM (HTML). ``budget_ms`` of virtual time pass before both are taken (virtual time stands still while
    requests are pending, so the UI's API calls finish first); ``scale`` < 1 fits more of the page in the same
    pixels (a wider viewport drawn smaller)."""
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("chromium is not installed: run `bash scripts/setup_browser.sh` "
                                "(Debian: `apt-get install chromium`)")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--force-device-scale-factor={scale}",
               f"--window-size={round(width / scale)},{round(height / scale)}",
               f"--virtual-time-budget={budget_ms}", f"--screenshot={screenshot}", "--dump-dom", url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=profile)
    if done.returncode != 0 or not screenshot.exists():
        raise RuntimeError(f"chromium failed on {url} (exit code {done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def evaluated_model_runs(tracking_uri: str) -> tuple[str, list[tuple[str, str]]]:
    """(experiment id, [(run id, run name)]) of the per-model runs of the latest evaluation in the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiments = client.search_experiments()
    evaluations = client.search_runs([e.experiment_id for e in experiments], "tags.stage = 'evaluate'",
                                     order_by=["attributes.start_time DESC"])
    parents = [r for r in evaluations if "model" not in r.data.tags]
    if not parents:
        raise SystemExit(f"no evaluation run in {tracking_uri}: run `mid evaluate` (or `mid run`) first")
    parent = parents[0]
    models = [r for r in evaluations if r.data.tags.get("parent_run") == parent.info.run_id and "model" in r.data.tags]
    if not models:
        raise SystemExit(f"the latest evaluation in {tracking_uri} has no per-model runs; rerun `mid evaluate`")
    models.sort(key=lambda r: r.info.run_name)
    return parent.info.experiment_id, [(r.info.run_id, r.info.run_name) for r in models]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output-dir", type=Path, help="the experiment's output_dir (its mlflow.db is read)")
    p.add_argument("--tracking-uri", help="an MLflow backend store URI instead of <output_dir>/mlflow.db")
    p.add_argument("--out", type=Path, default=Path("mlflow_compare.png"), help="PNG to write")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=900)
    p.add_argument("--scale", type=float, default=1.0, help="< 1 fits more of the page into the same pixels")
    p.add_argument("--top", type=int, default=0, help="pixels of the page to skip (rendered, then cropped off)")
    args = p.parse_args(argv)
    if not (args.tracking_uri or args.output_dir):
        p.error("give --output-dir (or --tracking-uri)")
    uri = args.tracking_uri or f"sqlite:///{(args.output_dir / 'mlflow.db').resolve()}"
    experiment_id, runs = evaluated_model_runs(uri)
    with tempfile.TemporaryDirectory(prefix="mlflow-server-") as work, serve(uri, Path(work)) as base:
        shot = Path(work) / "page.png"
        render(compare_url(base, experiment_id, [run_id for run_id, _ in runs]), shot, args.width,
               args.height + args.top, scale=args.scale)
        from PIL import Image

        with Image.open(shot) as page:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.crop((0, args.top, args.width, args.top + args.height)).save(args.out, optimize=True)
    print(f"{args.out}: compare view of {', '.join(name for _, name in runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
