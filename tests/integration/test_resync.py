"""``viewsync resync VIEW``: the workers that own the rows rebuild a view in place — a
dropped table comes back full while the other views are served, and a view's own indexes
survive a resync that never empties it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import sqlalchemy as sa

from tests.integration.conftest import ROOT, WorkerProcess, wait_converged, wait_live


def resync(worker: WorkerProcess, *views: str) -> None:
    r = subprocess.run([sys.executable, "-m", "app.cli", "resync", *views], cwd=ROOT,
                       text=True, capture_output=True, timeout=600,
                       env=dict(os.environ, VIEWSYNC_WORKER_ID=worker.worker_id))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "done in" in r.stdout, r.stdout


def count(engine: sa.Engine, sql: str, **params: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql), params).scalar_one())


def test_a_dropped_view_comes_back_full_while_the_others_are_served(
    product_db: sa.Engine, consumer_dbs: dict[str, sa.Engine], worker: WorkerProcess,
) -> None:
    wait_live(product_db, consumer_dbs, worker)
    wait_converged(product_db, consumer_dbs, worker)
    purchase, order = consumer_dbs["purchase"], consumer_dbs["order"]
    # A product with batches that is in the views (one in an orphaned category is not).
    pid = count(purchase, "SELECT MAX(product_id) FROM batch_view")
    with purchase.begin() as conn:
        conn.execute(sa.text("DROP TABLE batch_view"))
    name = f"while-dropped-{time.time():.0f}"
    with product_db.begin() as conn:  # writes both databases, and the dropped table
        conn.execute(sa.text("UPDATE products SET name = :n WHERE id = :i"),
                     {"n": name, "i": pid})
    deadline = time.monotonic() + 60
    while count(order, "SELECT COUNT(*) FROM product_view WHERE product_id = :i AND name = :n",
                i=pid, n=name) == 0:
        assert worker.alive(), worker.tail()
        assert time.monotonic() < deadline, "the Order DB was not served meanwhile"
        time.sleep(0.2)
    resync(worker, "purchase.batch_view")
    wait_converged(product_db, consumer_dbs, worker)
    assert worker.alive()


def test_a_resync_rewrites_in_place_and_the_consumers_index_survives(
    product_db: sa.Engine, consumer_dbs: dict[str, sa.Engine], worker: WorkerProcess,
) -> None:
    wait_converged(product_db, consumer_dbs, worker)
    order = consumer_dbs["order"]
    with order.begin() as conn:
        conn.execute(sa.text("CREATE INDEX IF NOT EXISTS consumer_own_sku ON product_view (sku)"))
        conn.execute(sa.text(
            "UPDATE product_view SET name = 'STALE' WHERE product_id IN "
            "(SELECT product_id FROM product_view ORDER BY product_id LIMIT 5)"))
        conn.execute(sa.text(
            "INSERT INTO product_view (product_id, sku, name, category_id, category_name, "
            "category_path, price, status) VALUES (9000000000001, 'X', 'X', 1, 'X', 'X', 1, "
            "'active')"))
    lowest: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            lowest.append(count(order, "SELECT COUNT(*) FROM product_view"))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        resync(worker, "order.product_view")
    finally:
        stop.set()
        sampler.join()
    try:
        wait_converged(product_db, consumer_dbs, worker)
        assert min(lowest) > 0, "the view was empty during the resync"
        assert count(order, "SELECT COUNT(*) FROM pg_indexes WHERE indexname = "
                     "'consumer_own_sku'") == 1
    finally:
        with order.begin() as conn:
            conn.execute(sa.text("DROP INDEX IF EXISTS consumer_own_sku"))
