"""The worker's HTTP endpoint (``VIEWSYNC_METRICS_PORT``): Prometheus metrics and a status
page, from a daemon thread of the pipeline process.

* ``GET /metrics`` — the Prometheus text format (``app.metrics``);
* ``GET /status.json`` — what ``viewsync status`` reports for the whole deployment
  (``app.status_model``: connector, every worker and its lag, each view's rows and
  staleness, dead letters; cached for a few seconds, the row counts for a minute), plus this
  worker's own history: rows/s and per-view freshness sampled every few seconds over the
  last ten minutes, and the restarts of the source connector its supervisor made;
* ``GET /`` — a page that shows all of that and refreshes itself: plain HTML, CSS and a
  little JavaScript in ``app/static/status.html`` (no build step), the chart an inline SVG.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from app.loop import Totals
from app.metrics import Metrics
from app.settings import Settings
from app.status_model import RowCounts, status

log = logging.getLogger("viewsync.web")

PAGE = (resources.files("app") / "static" / "status.html").read_bytes()

#: Seconds between two samples of the history, and how many are kept (10 minutes).
SAMPLE_EVERY_S = 5.0
HISTORY = 120
#: ``status.json`` is recomputed at most this often (it asks Connect, Kafka, the databases).
STATUS_TTL_S = 3.0
#: The views' row counts in it at most this often (a ``COUNT(*)`` scans the whole table).
COUNT_TTL_S = 60.0


class History:
    """This worker's rows/s and per-view freshness over the last minutes."""

    def __init__(self, totals: Callable[[], Totals]) -> None:
        self.totals = totals
        self.samples: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._last: tuple[float, int] | None = None

    def sample(self) -> None:
        t = self.totals()
        now = time.time()
        rate = 0.0
        if self._last is not None:
            then, rows = self._last
            rate = (t.rows - rows) / max(now - then, 1e-9)
        self._last = (now, t.rows)
        self.samples.append({"t": now, "rows_per_s": rate, "rows": t.rows,
                             "records": t.records, "dead": t.dead,
                             "freshness_s": dict(t.freshness)})


class Web:
    def __init__(self, settings: Settings, metrics: Metrics,
                 totals: Callable[[], Totals]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.history = History(totals)
        self._status: tuple[float, dict[str, Any]] | None = None
        self._counts = RowCounts(ttl_s=COUNT_TTL_S)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._stop = threading.Event()

    def status(self) -> dict[str, Any]:
        with self._lock:
            if self._status is None or time.monotonic() - self._status[0] > STATUS_TTL_S:
                try:
                    doc = status(self.settings, self._counts).to_json()
                except Exception as exc:  # the page still shows this worker's figures
                    doc = {"ok": False, "problems": [f"status: {exc}"]}
                self._status = (time.monotonic(), doc)
            doc = dict(self._status[1])
        doc["worker"] = self.settings.member_name()
        doc["deployment"] = self.settings.worker_id
        restarts, last = self.metrics.connector_restarts()  # by this worker's supervisor
        doc["connector_restarts"] = {"count": restarts, "last": last}
        doc["history"] = list(self.history.samples)
        return doc

    def serve(self, host: str, port: int) -> None:
        web = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, "text/plain; version=0.0.4", web.metrics.render())
                elif path == "/status.json":
                    self._send(200, "application/json", json.dumps(web.status()).encode())
                elif path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", PAGE)
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug(format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="viewsync-web",
                         daemon=True).start()
        threading.Thread(target=self._sampler, name="viewsync-history", daemon=True).start()

    def _sampler(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self.history.sample()

    def close(self) -> None:
        self._stop.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
