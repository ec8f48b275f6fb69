"""``app.status_model`` without a server: the row-count cache the status page relies on (a
``COUNT(*)`` scans the table, so a page refreshed every few seconds must not run one each
time). SQLite stands in for a table here, not for a consumer database."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from app.status_model import RowCounts
from app.views import bundled_views, view_named


@pytest.fixture
def engine() -> sa.Engine:
    e = sa.create_engine("sqlite://")
    with e.begin() as conn:
        conn.execute(sa.text("CREATE TABLE product_view (product_id INTEGER PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO product_view VALUES (1), (2)"))
    return e


def add_row(engine: sa.Engine, key: int) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO product_view VALUES ({key})"))


def test_without_a_ttl_every_call_counts(engine: sa.Engine) -> None:
    counts, view = RowCounts(), view_named("order.product_view", bundled_views())
    assert counts.count(engine, view) == 2
    add_row(engine, 3)
    assert counts.count(engine, view) == 3


def test_within_the_ttl_the_last_count_is_reused_then_counted_again(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr("app.status_model.time.monotonic", lambda: now[0])
    counts, view = RowCounts(ttl_s=60.0), view_named("order.product_view", bundled_views())
    assert counts.count(engine, view) == 2
    add_row(engine, 3)
    now[0] += 59.0
    assert counts.count(engine, view) == 2
    now[0] += 2.0
    assert counts.count(engine, view) == 3
    # each view has its own count
    assert counts.count(engine, view_named("purchase.product_view", bundled_views())) == 3


def test_a_failed_task_is_a_problem_with_its_trace_and_who_heals_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from typing import Any

    from app.settings import load_settings
    from app.status_model import Status, _connector

    trace = ("org.apache.kafka.connect.errors.ConnectException: Tolerance exceeded in error "
             "handler\n\tat x.y(Z.java:1)\nCaused by: io.apicurio.registry.rest.client.exception."
             "RestClientException: Connection refused\n")
    doc: dict[str, Any] = {"name": "product-source", "connector": {"state": "RUNNING"},
                           "tasks": [{"id": 0, "state": "FAILED", "trace": trace},
                                     {"id": 1, "state": "UNASSIGNED"}]}
    monkeypatch.setattr("app.connectors.ConnectClient.status", lambda self: doc)
    st = Status()
    _connector(load_settings(), st)
    assert st.tasks == ["FAILED", "UNASSIGNED"]
    assert st.problems == [
        "connector task 0 is FAILED: org.apache.kafka.connect.errors.ConnectException: "
        "Tolerance exceeded in error handler … Caused by: io.apicurio.registry.rest.client."
        "exception.RestClientException: Connection refused (the workers restart it with "
        "backoff)",
        "connector task 1 is UNASSIGNED"]
    st = Status()
    _connector(load_settings(connector_supervise=False), st)
    assert not st.problems[0].endswith("backoff)")
