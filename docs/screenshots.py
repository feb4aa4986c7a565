"""Regenerate the MLflow UI screenshots docs/mlflow.md shows (docs/img/*.png) with one command:

    python docs/screenshots.py                      # a small rank_alpha sweep into a fresh `mlflow server`
    python docs/screenshots.py --trials 28 --steps 150   # the full default sweep (slower)

It runs a real sweep (``python -m lora_lab.sweep +sweep=rank_alpha``) into a fresh ``mlflow server``
on a sqlite store in a temporary directory, then opens the pages in headless Chromium
(``chromium-headless-shell``; Debian: ``apt-get install chromium-headless-shell``), driven over the
DevTools protocol (aiohttp, which MLflow installs) so it can close MLflow's assistant panel and
scroll to what each picture is about, as a user would click:

* ``runs_table.png``: the runs table in lora_lab's saved view (r, alpha, eval_loss as columns, best first);
* ``config_view.png``: the configurations view: each configuration's seeds grouped under one row
  holding the metrics' means, best mean first;
* ``sweep_note.png``: the sweep's parent run, its description naming the best trial with links;
* ``trial_charts.png``: the best trial's metric charts (step curves; end-of-run summaries as bars);
* ``compare_charts.png``: the experiment's chart view, the trials compared.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "img"
WIDTH, HEIGHT = 1600, 1000

CLOSE_ASSISTANT = """
document.querySelector('button[data-component-id="mlflow.assistant.chat_panel.close"]')?.click();
localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f} s")


class Browser:
    """A headless Chromium page driven over the DevTools protocol."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self.session, self.ws, self.next_id = session, ws, 0

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=60)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await self.js(f"Boolean({expression})"):
                return
            await asyncio.sleep(0.5)
        raise TimeoutError(f"page never satisfied: {expression}")

    async def goto(self, url: str, ready: str, settle_s: float = 3.0) -> None:
        await self.call("Page.navigate", url=url)
        await self.wait_for(ready)
        await self.js(CLOSE_ASSISTANT)
        await self.call("Input.dispatchMouseEvent", type="mouseMoved", x=WIDTH - 5, y=HEIGHT - 5)
        await asyncio.sleep(settle_s)

    async def shot(self, path: Path) -> None:
        await self.call("Input.dispatchMouseEvent", type="mouseMoved", x=WIDTH - 5, y=HEIGHT - 5)
        await asyncio.sleep(0.5)
        data = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(data["data"]))
        print(f"wrote {path.relative_to(REPO)}")


async def take_screenshots(base: str, experiment_id: str, parent_id: str, best_id: str) -> None:
    port = free_port()
    profile = tempfile.mkdtemp(prefix="lora_lab_chromium_")
    chromium = subprocess.Popen(
        [
            shutil.which("chromium-headless-shell") or "chromium-headless-shell",
            "--no-sandbox",
            f"--remote-debugging-port={port}",
            f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{HEIGHT}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Debian's launcher is a shell script: end the whole group, browser included
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/json/version", 30)
        pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list").read())
        target = next(p for p in pages if p.get("type") == "page")
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Browser(session, ws)
                await page.call("Page.enable")
                await page.call(
                    "Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False
                )
                # first visit: MLflow opens its assistant panel once per browser; close it for good
                await page.goto(
                    f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning",
                    "document.querySelector('[role=\"grid\"], .ag-root')",
                )

                runs = f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=lora_lab-trials"
                await page.goto(runs, "document.querySelectorAll('.ag-row').length > 0")
                await page.shot(OUT / "runs_table.png")

                configs = runs.replace("lora_lab-trials", "lora_lab-configs")
                await page.goto(configs, "document.querySelectorAll('.ag-row').length > 0")
                await page.shot(OUT / "config_view.png")

                await page.goto(
                    f"{base}/#/experiments/{experiment_id}/runs/{parent_id}?workflowType=machine_learning",
                    "[...document.querySelectorAll('h1,h2,h3,h4,span')].some(e => e.textContent === 'Description')",
                )
                await page.js("""(() => {
                  for (const b of document.querySelectorAll('button, a, span')) {
                    if (/^Show more$/i.test(b.textContent.trim())) { b.click(); }
                  }
                  const head = [...document.querySelectorAll('h1,h2,h3,h4,span')].find(e => e.textContent === 'Description');
                  head.scrollIntoView({block: 'start'});
                })()""")
                await asyncio.sleep(1.5)
                await page.shot(OUT / "sweep_note.png")

                await page.goto(
                    f"{base}/#/experiments/{experiment_id}/runs/{best_id}/model-metrics?workflowType=machine_learning",
                    "document.querySelectorAll('canvas, svg.main-svg, .js-plotly-plot').length > 2",
                    settle_s=4,
                )
                await page.shot(OUT / "trial_charts.png")

                charts = runs.replace("/runs?", "/runs?compareRunsMode=CHART&")
                await page.goto(charts, "document.querySelectorAll('.js-plotly-plot, canvas').length > 2", settle_s=4)
                await page.js("""(() => {
                  for (const b of document.querySelectorAll('button, [role=radio], label')) {
                    if (/^Chart view$/i.test((b.getAttribute('aria-label') || b.textContent || '').trim())) { b.click(); }
                  }
                })()""")
                await asyncio.sleep(3)
                await page.shot(OUT / "compare_charts.png")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(chromium.pid, signal.SIGTERM)
        chromium.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12, help="rank_alpha grid points to run (28: all)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per trial")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store and leave the server running")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lora_lab_screens_"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{work / 'mlflow.db'}",
            "--artifacts-destination",
            str(work / "artifacts"),
        ],
        cwd=work,
        stdout=open(work / "server.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the server runs its web workers as children: end them together
    )
    try:
        wait_http(f"{base}/health")
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": base,
            "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        eval_every = max(args.steps // 3, 1)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "lora_lab.sweep",
                "+sweep=rank_alpha",
                f"sweep.n_trials={args.trials}",
                f"train.max_steps={args.steps}",
                f"train.eval_every={eval_every}",
                f"train.logging_steps={max(eval_every // 2, 1)}",
                f"hydra.run.dir={work / 'outputs'}",
            ],
            cwd=work,
            env=env,
            check=True,
        )
        from mlflow.tracking import MlflowClient

        client = MlflowClient(base)
        experiment = client.get_experiment_by_name("rank_alpha")
        parent = client.search_runs([experiment.experiment_id], "tags.`lora_lab.kind` = 'sweep'")[0]
        asyncio.run(
            take_screenshots(base, experiment.experiment_id, parent.info.run_id, parent.data.tags["best_run_id"])
        )
    finally:
        if args.keep:
            print(f"server: {base} (pid {server.pid}), store: {work}")
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
