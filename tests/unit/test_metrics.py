"""app.metrics: each metric records what its method says, in a registry of its own, and the
HTTP endpoint answers ``/metrics``."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from app.metrics import FRESHNESS_BUCKETS, Metrics
from app.views import bundled_definitions


def _value(m: Metrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, labels)
    assert v is not None, f"no sample {name}{labels}"
    return v


def test_registries_are_independent() -> None:
    a, b = Metrics(worker="a", tables=["products"]), Metrics(worker="b", tables=["products"])
    a.events("products", 3)
    assert _value(a, "viewsync_source_events_total", table="products") == 3
    assert _value(b, "viewsync_source_events_total", table="products") == 0


def test_every_declared_table_has_a_series_from_the_start() -> None:
    tables = bundled_definitions().graph.names
    m = Metrics(tables=tables)
    for table in tables:
        assert _value(m, "viewsync_source_events_total", table=table) == 0
    other = Metrics(tables=("brands", "items"))
    assert _value(other, "viewsync_source_events_total", table="brands") == 0
    assert other.registry.get_sample_value("viewsync_source_events_total",
                                           {"table": "products"}) is None
    other.events("variants", 2)  # a table not given: its series with its first event
    assert _value(other, "viewsync_source_events_total", table="variants") == 2


def test_counters_increase() -> None:
    m = Metrics()
    m.events("categories")
    m.events("categories", 4)
    m.rows_written("order.product_view", upserts=10, deletes=2)
    m.rows_written("order.product_view", upserts=5, deletes=0)
    m.dead_letters()
    m.dead_letters(2)
    assert _value(m, "viewsync_source_events_total", table="categories") == 5
    assert _value(m, "viewsync_view_rows_total", view="order.product_view", op="upsert") == 15
    assert _value(m, "viewsync_view_rows_total", view="order.product_view", op="delete") == 2
    assert _value(m, "viewsync_dead_letters_total") == 3
    with pytest.raises(ValueError):
        m.events("products", -1)


def test_the_connector_as_the_supervisor_saw_it() -> None:
    """A running total of restarts comes in with each check: the counter grows by what is
    new, never twice for the same restart."""
    m = Metrics()
    assert _value(m, "viewsync_connector_running") == 0
    assert _value(m, "viewsync_connector_restarts_total") == 0
    assert _value(m, "viewsync_connector_last_restart_timestamp_seconds") == 0
    m.connector(True, 0, None)
    assert _value(m, "viewsync_connector_running") == 1
    m.connector(False, 1, 1_700_000_000.0)
    m.connector(False, 1, 1_700_000_000.0)
    m.connector(None, 3, 1_700_000_050.0)  # Connect did not answer: not known to run
    assert _value(m, "viewsync_connector_running") == 0
    assert _value(m, "viewsync_connector_restarts_total") == 3
    assert _value(m, "viewsync_connector_last_restart_timestamp_seconds") == 1_700_000_050.0
    assert m.connector_restarts() == (3, 1_700_000_050.0)


def test_sink_write_fills_both_histograms() -> None:
    m = Metrics()
    m.sink_write(rows=1, seconds=0.002)
    m.sink_write(rows=5_000, seconds=0.3)
    assert _value(m, "viewsync_sink_batch_rows_count") == 2
    assert _value(m, "viewsync_sink_batch_rows_sum") == 5_001
    assert _value(m, "viewsync_sink_batch_rows_bucket", le="1.0") == 1
    assert _value(m, "viewsync_sink_batch_rows_bucket", le="5000.0") == 2
    assert _value(m, "viewsync_sink_batch_rows_bucket", le="100000.0") == 2
    assert _value(m, "viewsync_sink_write_seconds_bucket", le="0.0025") == 1
    assert _value(m, "viewsync_sink_write_seconds_bucket", le="0.25") == 1
    assert _value(m, "viewsync_sink_write_seconds_bucket", le="0.5") == 2
    assert _value(m, "viewsync_sink_write_seconds_sum") == pytest.approx(0.302)


def test_freshness_one_sample_per_change_skipping_unknown_times() -> None:
    m = Metrics()
    committed = 1_700_000_000.0
    ts = [1_700_000_000_000 - 5, 1_699_999_998_000, None, 0, 1_700_000_001_000]
    assert m.freshness("purchase.batch_view", ts, committed) == 3
    view = {"view": "purchase.batch_view"}
    assert _value(m, "viewsync_view_freshness_seconds_count", **view) == 3
    # 5 ms and a future commit time (clock skew, clamped to 0) are both <= 10 ms; 2 s is not
    assert _value(m, "viewsync_view_freshness_seconds_bucket", le="0.01", **view) == 2
    assert _value(m, "viewsync_view_freshness_seconds_bucket", le="1.0", **view) == 2
    assert _value(m, "viewsync_view_freshness_seconds_bucket", le="2.5", **view) == 3
    assert _value(m, "viewsync_view_freshness_seconds_sum", **view) == pytest.approx(2.005)
    assert FRESHNESS_BUCKETS[0] == 0.01 and FRESHNESS_BUCKETS[-1] == 600


def test_lag_is_a_snapshot_of_the_owned_partitions() -> None:
    m = Metrics()
    m.lag({("product.products", 0): 7, ("product.products", 1): 0, ("product.batches", 2): 3})
    assert _value(m, "viewsync_consumer_lag_records", topic="product.products",
                  partition="0") == 7
    assert _value(m, "viewsync_consumer_lag_records", topic="product.batches",
                  partition="2") == 3
    m.lag({("product.products", 1): 4})  # a rebalance took the other two away
    assert _value(m, "viewsync_consumer_lag_records", topic="product.products",
                  partition="1") == 4
    for topic, partition in (("product.products", "0"), ("product.batches", "2")):
        assert m.registry.get_sample_value(
            "viewsync_consumer_lag_records", {"topic": topic, "partition": partition}) is None


def test_gauges() -> None:
    m = Metrics(worker="w1")
    m.oldest_unapplied("order.product_view", 12.5)
    m.shards(6)
    m.caught_up(True)
    assert _value(m, "viewsync_view_oldest_unapplied_seconds", view="order.product_view") == 12.5
    assert _value(m, "viewsync_shards_owned") == 6
    assert _value(m, "viewsync_caught_up") == 1
    assert _value(m, "viewsync_worker_info", worker="w1") == 1
    m.oldest_unapplied("order.product_view", 0)
    m.shards(0)
    m.caught_up(False)
    m.worker("w2")
    assert _value(m, "viewsync_view_oldest_unapplied_seconds", view="order.product_view") == 0
    assert _value(m, "viewsync_shards_owned") == 0
    assert _value(m, "viewsync_caught_up") == 0
    assert _value(m, "viewsync_worker_info", worker="w2") == 1
    assert m.registry.get_sample_value("viewsync_worker_info", {"worker": "w1"}) is None


def test_worker_defaults_to_the_host_name() -> None:
    assert _value(Metrics(), "viewsync_worker_info", worker=socket.gethostname()) == 1


def test_render_and_names() -> None:
    m = Metrics()
    m.events("products")
    m.sink_write(10, 0.01)
    text = m.render().decode()
    assert 'viewsync_source_events_total{table="products"} 1.0' in text
    assert "# TYPE viewsync_sink_batch_rows histogram" in text
    names = m.names()
    assert all(n.startswith("viewsync_") for n in names), names
    assert {"viewsync_source_events_total", "viewsync_sink_batch_rows_bucket",
            "viewsync_view_freshness_seconds_bucket", "viewsync_consumer_lag_records",
            "viewsync_worker_info", "viewsync_caught_up"} <= names
    # nothing of the process-global registry (process_*, python_gc_*) leaks in
    assert "process_cpu_seconds_total" not in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def served() -> Iterator[tuple[Metrics, int]]:
    """The worker's own endpoint (``app.web.Web``: metrics, status page, status.json)."""
    from app.loop import Totals
    from app.settings import load_settings
    from app.web import Web

    m = Metrics(worker="served")
    web = Web(load_settings(), m, Totals)
    port = _free_port()
    web.serve("127.0.0.1", port)
    try:
        yield m, port
    finally:
        web.close()


def test_the_worker_serves_metrics_and_its_page_over_http(served: tuple[Metrics, int]) -> None:
    m, port = served
    m.dead_letters(2)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        body = resp.read().decode()
    assert "viewsync_dead_letters_total 2.0" in body
    assert 'viewsync_worker_info{worker="served"} 1.0' in body
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/html")
        assert b"viewsync" in resp.read()
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=10)


def test_the_status_json_has_the_restarts_of_this_workers_supervisor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from app.loop import Totals
    from app.settings import load_settings
    from app.status_model import Status
    from app.web import Web

    monkeypatch.setattr("app.web.status", lambda settings, counts: Status(connector="RUNNING"))
    m = Metrics(worker="w")
    web = Web(load_settings(), m, Totals)
    assert web.status()["connector_restarts"] == {"count": 0, "last": None}
    m.connector(True, 2, 1_700_000_000.0)
    doc = web.status()
    assert doc["connector"] == "RUNNING"
    assert doc["connector_restarts"] == {"count": 2, "last": 1_700_000_000.0}
