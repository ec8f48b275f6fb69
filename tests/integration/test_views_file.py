"""Views from a file: the fourth view of the contract (Inventory, in a database of its own)
is added by the views file alone, fills from the state and follows changes; a column added
to its definition is added to the table and backfilled."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from app.resources import bundled
from app.settings import Settings
from app.stack.manager import Stack
from tests.integration.conftest import ROOT, WorkerProcess, wait_converged, wait_live
from tests.integration.reference import ACTUAL_SQL, expected_views
from tests.integration.workload import Workload

#: The Inventory view of the contract (the unit tests' fixture).
INVENTORY = (ROOT / "tests" / "unit" / "fixtures" / "inventory.views.toml").read_text()


def expected_inventory(product_db: sa.Engine, with_name: bool) -> dict[int, dict[str, Any]]:
    """From the reference join (CONTRACT.md): one row per visible product."""
    views = expected_views(product_db)  # rows in the views' column order
    names = {name: [c.strip() for c in sql.split("SELECT ", 1)[1].split(" FROM")[0].split(",")]
             for name, sql in ACTUAL_SQL.items()}
    out = {}
    for pid, order_row in views["order.product_view"].items():
        o = dict(zip(names["order.product_view"], order_row, strict=True))
        p = dict(zip(names["purchase.product_view"], views["purchase.product_view"][pid],
                     strict=True))
        row = {"product_id": pid, "sku": o["sku"], "unit": p["unit"], "status": o["status"],
               "category_code": p["category_code"], "warranty_months": o["warranty_months"]}
        if with_name:
            row["name"] = o["name"]
        out[pid] = row
    return out


def actual_inventory(engine: sa.Engine, with_name: bool) -> dict[int, dict[str, Any]]:
    cols = "product_id, sku, unit, status, category_code, warranty_months" + (
        ", name" if with_name else "")
    try:
        with engine.connect() as conn:
            return {int(r["product_id"]): dict(r) for r in conn.execute(
                sa.text(f"SELECT {cols} FROM product_view")).mappings()}
    except sa.exc.ProgrammingError:  # the table or the new column is not there yet
        return {}


def wait_inventory(product_db: sa.Engine, engine: sa.Engine, worker: WorkerProcess,
                   with_name: bool, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        want, got = expected_inventory(product_db, with_name), actual_inventory(engine,
                                                                                 with_name)
        if want == got:
            return
        assert worker.alive(), worker.tail()
        if time.monotonic() > deadline:
            diff = [f"{k}: {got.get(k)} != {want.get(k)}" for k in sorted(set(want) | set(got))
                    if got.get(k) != want.get(k)]
            raise AssertionError(f"{len(diff)} differences in inventory.product_view:\n"
                                 + "\n".join(diff[:20]) + "\n" + worker.tail())
        time.sleep(0.5)


def test_the_inventory_view_comes_from_the_file_alone_and_a_new_column_is_backfilled(
    stack: Stack, settings: Settings, product_db: sa.Engine,
    consumer_dbs: dict[str, sa.Engine], exclusive: None, tmp_path: Path,
) -> None:
    stack.defn.psql("SELECT 1")  # the consumers' PostgreSQL server is up
    exists = stack.defn.psql("SELECT 1 FROM pg_database WHERE datname = 'inventory'")
    if "1" not in exists:
        stack.defn.psql(f'CREATE DATABASE inventory OWNER "{settings.db_user}"')
    url = settings.consumer_url("inventory")
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # a consumer that never had the view
        conn.execute(sa.text("DROP TABLE IF EXISTS product_view"))
        conn.execute(sa.text("DROP TABLE IF EXISTS viewsync_shards"))
    views = tmp_path / "views.toml"
    base = (bundled("schemas") / "views.toml").read_text()
    views.write_text(base + INVENTORY)
    worker = WorkerProcess(tmp_path, VIEWSYNC_VIEWS_FILE=str(views))
    assert os.environ.get("VIEWSYNC_INVENTORY_DB_URL") is None  # the local stack's default
    try:
        worker.start()
        wait_live(product_db, consumer_dbs, worker)
        wl = Workload(product_db, seed=random.randrange(1 << 30))
        wl.run(40)
        wait_converged(product_db, consumer_dbs, worker)
        wait_inventory(product_db, engine, worker, with_name=False)

        # a column added to the definition: the table gains it and every row is backfilled
        worker.stop()
        views.write_text(base + INVENTORY.replace(
            "\n]", '\n  { name = "name", source = "name", type = "text" },\n]'))
        worker.start()
        wl.run(20)
        wait_inventory(product_db, engine, worker, with_name=True)
        wait_converged(product_db, consumer_dbs, worker)
    finally:
        worker.stop()
        engine.dispose()
