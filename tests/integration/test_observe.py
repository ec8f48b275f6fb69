"""Seeing the pipeline: the worker's Prometheus endpoint (scraped by a real Prometheus, the
Debian package), and ``viewsync status`` going red with Kafka Connect stopped and green
again once it is back."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings
from app.stack.manager import Stack
from tests.integration.conftest import ROOT, WorkerProcess, wait_converged, wait_live
from tests.integration.faults import start_again, stop_clean
from tests.integration.workload import Workload

VIEWS = ("order.product_view", "purchase.product_view", "purchase.batch_view")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def observed(exclusive: None, tmp_path: Path) -> Iterator[WorkerProcess]:
    port = free_port()
    w = WorkerProcess(tmp_path, VIEWSYNC_METRICS_PORT=str(port))
    w.start()
    try:
        yield w
    finally:
        w.stop()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_the_metrics_count_a_workload_and_prometheus_scrapes_them(
    product_db: sa.Engine, consumer_dbs: dict[str, sa.Engine], observed: WorkerProcess,
    tmp_path: Path,
) -> None:
    port = int(observed.env["VIEWSYNC_METRICS_PORT"])
    wait_live(product_db, consumer_dbs, observed)
    Workload(product_db, seed=random.randrange(1 << 30)).run(40)
    wait_converged(product_db, consumer_dbs, observed)
    deadline = time.monotonic() + 30
    while True:
        m = scrape(port)
        checks = {f"{v} upserts > 0": value(m, "viewsync_view_rows_total", view=v, op="upsert")
                  for v in VIEWS}
        checks |= {
            "product events > 0": value(m, "viewsync_source_events_total", table="products"),
            "order freshness count > 0": value(m, "viewsync_view_freshness_seconds_count",
                                               view="order.product_view"),
            "sink writes > 0": value(m, "viewsync_sink_write_seconds_count"),
        }
        failed = {k: v for k, v in checks.items() if not v > 0}
        if value(m, "viewsync_shards_owned") != Settings().shards:
            failed[f"shards owned == {Settings().shards}"] = value(m, "viewsync_shards_owned")
        if value(m, "viewsync_caught_up") != 1:
            failed["caught up == 1"] = value(m, "viewsync_caught_up")
            failed |= {f"lag {dict(k[1])}": v for k, v in m.items()
                       if k[0] == "viewsync_consumer_lag_records" and v}
        if not failed:
            break
        assert time.monotonic() < deadline, (
            f"metrics never showed the workload; failed checks (value now): {failed}\n"
            + observed.tail())
        time.sleep(1.0)
    # every freshness observation is below the histogram's top bucket's count
    assert value(m, "viewsync_view_freshness_seconds_bucket", view="order.product_view",
                 le="+Inf") == value(m, "viewsync_view_freshness_seconds_count",
                                     view="order.product_view")

    prometheus = shutil.which("prometheus")
    assert prometheus, "the Debian package `prometheus` is not installed (run.sh test does it)"
    web = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global: {scrape_interval: 1s}\nscrape_configs:\n"
                   f"  - job_name: viewsync\n    static_configs: [{{targets: "
                   f"['127.0.0.1:{port}']}}]\n")
    proc = subprocess.Popen([prometheus, f"--config.file={cfg}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{web}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                url = (f"http://127.0.0.1:{web}/api/v1/query?query="
                       "sum(viewsync_view_rows_total)")
                with urllib.request.urlopen(url, timeout=5) as r:
                    result = json.loads(r.read())["data"]["result"]
                if result and float(result[0]["value"][1]) > 0:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus never scraped the worker"
            time.sleep(1.0)
    finally:
        proc.terminate()
        proc.wait(30)


def status(worker: WorkerProcess) -> tuple[int, dict[str, Any]]:
    r = subprocess.run([sys.executable, "-m", "app.cli", "status", "--json"], cwd=ROOT,
                       text=True, capture_output=True, timeout=120,
                       env=dict(os.environ, VIEWSYNC_WORKER_ID=worker.worker_id))
    return r.returncode, json.loads(r.stdout)


def wait_status(worker: WorkerProcess, code: int, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        rc, doc = status(worker)
        if rc == code:
            return doc
        assert time.monotonic() < deadline, f"status never exited {code}: {doc}"
        time.sleep(2.0)


def test_status_is_red_with_connect_stopped_and_green_once_it_is_back(
    stack: Stack, product_db: sa.Engine, consumer_dbs: dict[str, sa.Engine],
    observed: WorkerProcess,
) -> None:
    wait_live(product_db, consumer_dbs, observed)
    green = wait_status(observed, 0)
    assert len(green["workers"]) == 1 and green["connector"] == "RUNNING"
    assert {v["view"] for v in green["views"]} == set(VIEWS)
    assert all(v["rows"] > 0 and v["staleness_s"] is not None for v in green["views"])
    stop_clean(stack, "connect")
    try:
        rc, red = status(observed)
        assert rc == 1, red
        assert any("connect" in p.lower() for p in red["problems"]), red["problems"]
    finally:
        start_again(stack, "connect")
    wait_status(observed, 0)


def test_the_status_page_shows_live_figures_in_headless_chromium(
    product_db: sa.Engine, consumer_dbs: dict[str, sa.Engine], observed: WorkerProcess,
    tmp_path: Path,
) -> None:
    """Debian's Chromium (through chromium-driver) loads the worker's page, sees the figures
    change after a workload, and takes a screenshot (``VIEWSYNC_SCREENSHOT_DIR`` keeps it:
    the README's picture comes from here)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, ("the Debian packages chromium and chromium-driver are not "
                                 "installed (run.sh test installs them)")
    opts = Options()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1000,1000"):
        opts.add_argument(arg)
    port = int(observed.env["VIEWSYNC_METRICS_PORT"])
    wait_live(product_db, consumer_dbs, observed)
    browser = webdriver.Chrome(service=Service(driver), options=opts)

    def text(element_id: str) -> str:
        return str(browser.execute_script(
            f"return document.getElementById('{element_id}').textContent"))

    def until(what: str, ok: Callable[[], bool], timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            assert time.monotonic() < deadline, f"the page never showed {what}"
            time.sleep(0.5)

    try:
        browser.get(f"http://127.0.0.1:{port}/")
        until("its health", lambda: text("health") in ("OK", "problems"))
        until("three views", lambda: browser.execute_script(
            "return document.querySelectorAll('#views tr').length") == 3)
        until("a first figure", lambda: text("rows") not in ("–", "?", ""))
        before = int(text("rows").replace(",", ""))
        Workload(product_db, seed=random.randrange(1 << 30)).run(80)
        wait_converged(product_db, consumer_dbs, observed)
        until("the workload's rows", lambda: int(text("rows").replace(",", "")) > before)
        until("a chart", lambda: bool(browser.execute_script(
            "return document.querySelector('#chart polyline') !== null")))
        assert text("connector") == "RUNNING"
        shot = tmp_path / "status-page.png"
        assert browser.save_screenshot(str(shot))
        keep = os.environ.get("VIEWSYNC_SCREENSHOT_DIR")
        if keep:
            shutil.copy(shot, Path(keep) / "status-page.png")
    finally:
        browser.quit()
