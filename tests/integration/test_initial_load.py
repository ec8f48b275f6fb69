"""Initial load: a worker started against a Product DB that already holds data fills the
views from Debezium's snapshot (op = r).

A second connector (own name, topic prefix and binlog server id) snapshots the whole Product
database into its own topics; a fresh worker reads them into two fresh consumer databases,
which must then equal the reference join of the source.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from app.connectors import ConnectClient
from app.demo import seed
from app.settings import Settings, load_settings
from app.sink import create_view_tables
from app.stack.manager import Stack, ensure_source_topics
from tests.integration.conftest import WorkerProcess, wait_converged


@pytest.fixture
def snapshot_setup(
    stack: Stack, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, dict[str, sa.Engine]]]:
    tag = f"snap{random.randrange(10**6)}"
    stack.defn.psql(f'CREATE DATABASE "order_{tag}" OWNER "{settings.db_user}"')
    stack.defn.mariadb_sql("purchase-db", f"CREATE DATABASE purchase_{tag}")
    order_url = settings.consumer_url("order").rsplit("/", 1)[0] + f"/order_{tag}"
    purchase_url = settings.consumer_url("purchase").rsplit("/", 1)[0] + f"/purchase_{tag}"
    snap = load_settings(topic_prefix=tag, connector_name=f"{tag}-source",
                         order_db_url=order_url, purchase_db_url=purchase_url)
    create_view_tables(snap)  # as `stack up` does for the main consumer databases
    engines = {"order": sa.create_engine(order_url), "purchase": sa.create_engine(purchase_url)}
    try:
        yield snap, engines
    finally:
        ConnectClient(snap).delete()
        for e in engines.values():
            e.dispose()
        stack.defn.psql(f'DROP DATABASE IF EXISTS "order_{tag}" WITH (FORCE)')
        stack.defn.mariadb_sql("purchase-db", f"DROP DATABASE IF EXISTS purchase_{tag}")


def test_views_fill_from_the_snapshot_of_existing_data(
    settings: Settings, product_db: sa.Engine,
    snapshot_setup: tuple[Settings, dict[str, sa.Engine]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    snap, engines = snapshot_setup
    seed(settings, products=300, seed=random.randrange(1 << 30))  # data before the connector

    ensure_source_topics(snap)
    client = ConnectClient(snap)
    assert client.apply() is True
    client.wait_running(timeout=120)

    worker = WorkerProcess(
        tmp_path_factory.mktemp("snapshot-worker"),
        VIEWSYNC_TOPIC_PREFIX=snap.topic_prefix,
        VIEWSYNC_ORDER_DB_URL=snap.consumer_url("order"),
        VIEWSYNC_PURCHASE_DB_URL=snap.consumer_url("purchase"),
    )
    t0 = time.monotonic()
    worker.start()
    try:
        views = wait_converged(product_db, engines, worker, timeout=300)
    finally:
        worker.stop()
    rows = sum(len(v) for v in views.values())
    secs = time.monotonic() - t0
    print(f"\ninitial load: {rows} view rows from the snapshot in {secs:.1f}s "
          f"(incl. worker start-up) = {rows / secs:.0f} rows/s")
    assert rows > 0
