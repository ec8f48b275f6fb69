"""The worker's Prometheus metrics: one :class:`Metrics` owns its own ``CollectorRegistry``
(never the process-global one), so tests and tools can create as many as they like.

Every name starts with ``viewsync_``. Counters are exposed with the ``_total`` suffix (and the
client's ``_created`` sample); histograms as ``_bucket``/``_sum``/``_count``.

``viewsync_source_events_total{table}`` (counter)
    Decoded source change events, per source table (a table of the views file's
    ``[sources]``). The series of the tables given to :class:`Metrics` (the declared ones)
    exist from the start at 0; any other table's with its first event.
``viewsync_view_rows_total{view,op}`` (counter)
    View rows written to a consumer database, per view (``<consumer>.<table>``) and
    ``op`` = ``upsert`` | ``delete``.
``viewsync_sink_batch_rows`` (histogram)
    Rows per sink write (one write covers every consumer database); buckets 1 .. 100k.
``viewsync_sink_write_seconds`` (histogram)
    Wall-clock duration of one sink write (all consumer databases); buckets 1 ms .. 60 s.
``viewsync_dead_letters_total`` (counter)
    Source records sent to the dead-letter topic.
``viewsync_consumer_lag_records{topic,partition}`` (gauge)
    Records of a source partition not yet written to the views (end offset - committed).
    Each :meth:`Metrics.lag` call is a full snapshot: partitions it leaves out (no longer
    owned after a rebalance) are removed.
``viewsync_view_freshness_seconds{view}`` (histogram)
    Per view row change written: the source commit time (Debezium ``source.ts_ms``) to the
    sink's commit time. Buckets 10 ms .. 10 min. Clock skew never makes it negative.
``viewsync_view_oldest_unapplied_seconds{view}`` (gauge)
    Age of the oldest change read from the source but not yet committed to the view; 0 when
    nothing is pending.
``viewsync_shards_owned`` (gauge)
    Source partitions (shards) this worker owns now.
``viewsync_caught_up`` (gauge)
    1 when this worker has written everything it has read up to the partitions' ends, else 0.
``viewsync_connector_running`` (gauge)
    1 when the source connector and every task are RUNNING, as this worker's supervisor
    (``app.supervisor``) last saw it; 0 otherwise, also while Kafka Connect does not answer.
``viewsync_connector_restarts_total`` (counter)
    Restarts of a FAILED source connector or task this worker's supervisor has made.
``viewsync_connector_last_restart_timestamp_seconds`` (gauge)
    When the last of them was (epoch seconds; 0: none yet).
``viewsync_worker_info{worker}`` (gauge, always 1)
    Info-style series naming the worker (default: the host name); the dashboard joins it on
    ``instance`` to label the other series per worker.

The worker serves :meth:`Metrics.render` as ``GET /metrics`` (the text exposition format),
with its status page, from ``app.web`` on ``VIEWSYNC_METRICS_PORT``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable, Mapping
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

SINK_BATCH_ROWS_BUCKETS: Final = (
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 25_000.0,
    50_000.0, 100_000.0,
)
SINK_WRITE_SECONDS_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
FRESHNESS_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)

# The samples each metric type exposes, by suffix (the family's own name for a gauge).
_SUFFIXES: Final = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


class Metrics:
    """The worker's metrics in a registry of their own. Every method is thread-safe."""

    def __init__(self, worker: str | None = None, tables: Iterable[str] = ()) -> None:
        """``worker`` names the worker in ``viewsync_worker_info`` (default: the host name);
        ``tables``: the declared source tables, whose event series start at 0."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._events = Counter("viewsync_source_events", "Decoded source change events",
                               ["table"], registry=r)
        self._rows = Counter("viewsync_view_rows", "View rows written", ["view", "op"],
                             registry=r)
        self._batch_rows = Histogram("viewsync_sink_batch_rows", "Rows per sink write",
                                     buckets=SINK_BATCH_ROWS_BUCKETS, registry=r)
        self._write_seconds = Histogram("viewsync_sink_write_seconds",
                                        "Duration of one sink write (all consumer databases)",
                                        buckets=SINK_WRITE_SECONDS_BUCKETS, registry=r)
        self._dead_letters = Counter("viewsync_dead_letters", "Records sent to the DLQ",
                                     registry=r)
        self._lag = Gauge("viewsync_consumer_lag_records",
                          "Records of a source partition not yet written",
                          ["topic", "partition"], registry=r)
        self._freshness = Histogram("viewsync_view_freshness_seconds",
                                    "Source commit (source.ts_ms) to sink commit, per row change",
                                    ["view"], buckets=FRESHNESS_BUCKETS, registry=r)
        self._oldest = Gauge("viewsync_view_oldest_unapplied_seconds",
                             "Age of the oldest change read but not yet committed to the view",
                             ["view"], registry=r)
        self._shards = Gauge("viewsync_shards_owned", "Source partitions this worker owns",
                             registry=r)
        self._caught_up = Gauge("viewsync_caught_up", "1 when caught up with the sources",
                                registry=r)
        self._worker = Gauge("viewsync_worker_info", "The worker's name (always 1)",
                             ["worker"], registry=r)
        self._connector_running = Gauge(
            "viewsync_connector_running",
            "1 when the source connector and its tasks are RUNNING (this worker's view)",
            registry=r)
        self._connector_restarts = Counter(
            "viewsync_connector_restarts", "Restarts of the FAILED source connector or tasks "
            "by this worker's supervisor", registry=r)
        self._connector_last_restart = Gauge(
            "viewsync_connector_last_restart_timestamp_seconds",
            "When this worker's supervisor last restarted the source connector (0: never)",
            registry=r)
        self._restarts_seen = 0
        self._last_restart: float | None = None
        self._connector_lock = threading.Lock()
        self._lag_keys: set[tuple[str, str]] = set()
        for table in tables:
            self._events.labels(table=table)
        self.worker(socket.gethostname() if worker is None else worker)

    # --- recording ----------------------------------------------------------------------

    def worker(self, name: str) -> None:
        """Name this worker: ``viewsync_worker_info{worker=name} 1`` (replaces any earlier)."""
        self._worker.clear()
        self._worker.labels(worker=name).set(1)

    def events(self, table: str, n: int = 1) -> None:
        """``n`` decoded change events of source ``table``."""
        self._events.labels(table=table).inc(n)

    def rows_written(self, view: str, upserts: int, deletes: int) -> None:
        """One committed write of ``view``: ``upserts`` rows upserted, ``deletes`` deleted."""
        self._rows.labels(view=view, op="upsert").inc(upserts)
        self._rows.labels(view=view, op="delete").inc(deletes)

    def sink_write(self, rows: int, seconds: float) -> None:
        """One sink write (every consumer database) of ``rows`` rows that took ``seconds``."""
        self._batch_rows.observe(rows)
        self._write_seconds.observe(seconds)

    def dead_letters(self, n: int = 1) -> None:
        """``n`` records sent to the dead-letter topic."""
        self._dead_letters.inc(n)

    def lag(self, per_partition: Mapping[tuple[str, int], int]) -> None:
        """The lag of every owned source partition, ``{(topic, partition): records}``; a full
        snapshot: series of partitions not in it are removed."""
        keys = {(topic, str(partition)): max(0, n)
                for (topic, partition), n in per_partition.items()}
        for gone in self._lag_keys - keys.keys():
            self._lag.remove(*gone)
        for (topic, partition), n in keys.items():
            self._lag.labels(topic=topic, partition=partition).set(n)
        self._lag_keys = set(keys)

    def freshness(self, view: str, source_ts_ms: Iterable[int | None],
                  committed_at: float) -> int:
        """One freshness sample per row change of ``view`` committed at ``committed_at``
        (epoch seconds), from each change's source commit time ``source.ts_ms`` (epoch
        milliseconds; None or 0, i.e. unknown, is skipped). Returns the samples recorded."""
        child = self._freshness.labels(view=view)
        n = 0
        for ts_ms in source_ts_ms:
            if not ts_ms:
                continue
            child.observe(max(0.0, committed_at - ts_ms / 1000.0))
            n += 1
        return n

    def oldest_unapplied(self, view: str, age_s: float) -> None:
        """Age in seconds of the oldest change of ``view`` not yet committed (0: none)."""
        self._oldest.labels(view=view).set(max(0.0, age_s))

    def shards(self, n: int) -> None:
        """This worker owns ``n`` source partitions."""
        self._shards.set(n)

    def caught_up(self, flag: bool) -> None:
        """Whether this worker has written everything up to the partitions' ends."""
        self._caught_up.set(1 if flag else 0)

    def connector(self, running: bool | None, restarts: int,
                  last_restart: float | None) -> None:
        """The source connector as the supervisor last saw it (``None``: Connect did not
        answer), the restarts it has made so far (a running total) and the last one's time."""
        self._connector_running.set(1 if running else 0)
        with self._connector_lock:
            new = restarts - self._restarts_seen
            if new > 0:
                self._connector_restarts.inc(new)
                self._restarts_seen = restarts
            if last_restart is not None:
                self._last_restart = last_restart
                self._connector_last_restart.set(last_restart)

    def connector_restarts(self) -> tuple[int, float | None]:
        """The restarts recorded so far and the last one's time (epoch seconds)."""
        with self._connector_lock:
            return self._restarts_seen, self._last_restart

    # --- exposing -----------------------------------------------------------------------

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)

    def names(self) -> set[str]:
        """Every name exposed: each family's name and each of its sample names (a labelled
        metric's samples count even before its first observation)."""
        out: set[str] = set()
        for family in self.registry.collect():
            out.add(family.name)
            out.update(family.name + s for s in _SUFFIXES.get(family.type, ()))
            out.update(sample.name for sample in family.samples)
        return out
