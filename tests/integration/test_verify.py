"""``viewsync verify`` against the real stack: in sync, hand-made drift found (and only it),
no false drift while a workload runs."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from typing import Any

import sqlalchemy as sa

from tests.integration.conftest import WorkerProcess, wait_converged, wait_live
from tests.integration.workload import Workload


def _verify(*args: str, worker: WorkerProcess | None = None) -> tuple[int, dict[str, Any]]:
    env = dict(os.environ, **({"VIEWSYNC_WORKER_ID": worker.worker_id} if worker else {}))
    r = subprocess.run([sys.executable, "-m", "app.cli", "verify", "--json", *args],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    return r.returncode, json.loads(r.stdout)


def _by_view(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["view"]: v for v in out["views"]}


def test_verify_finds_hand_made_drift_and_only_it(
    product_db: sa.Engine, consumer_dbs: dict[str, sa.Engine], worker: WorkerProcess,
) -> None:
    # The worker live (its shards taken over): no takeover rewrites the hand-made drift.
    wait_live(product_db, consumer_dbs, worker)
    wait_converged(product_db, consumer_dbs, worker)
    rc, out = _verify()
    assert rc == 0 and out["drift"] == 0, out

    order, purchase = consumer_dbs["order"], consumer_dbs["purchase"]
    with order.begin() as conn:
        gone = conn.execute(sa.text(
            "SELECT * FROM product_view ORDER BY product_id LIMIT 1")).mappings().one()
        conn.execute(sa.text("DELETE FROM product_view WHERE product_id = :i"),
                     {"i": gone["product_id"]})
    with purchase.begin() as conn:
        changed = conn.execute(sa.text(
            "SELECT product_id, sku FROM product_view ORDER BY product_id DESC LIMIT 1")).one()
        conn.execute(sa.text("UPDATE product_view SET sku = 'DRIFT' WHERE product_id = :i"),
                     {"i": changed.product_id})
        bogus = (1 << 45) + random.randrange(1 << 30)
        conn.execute(sa.text(
            "INSERT INTO batch_view (batch_id, batch_no, product_id, sku, product_name, "
            "category_path, manufactured_on, expires_on, warranty_months) "
            "VALUES (:b, 'BOGUS', :p, 'X', 'X', 'X', NULL, NULL, NULL)"),
            {"b": bogus, "p": changed.product_id})
    repaired = False
    try:
        rc, out = _verify("--rechecks", "1")
        views = _by_view(out)
        assert rc == 1, out
        assert (views["order.product_view"]["missing"], views["order.product_view"]["extra"],
                views["order.product_view"]["different"]) == (1, 0, 0), views
        assert (views["purchase.product_view"]["missing"],
                views["purchase.product_view"]["extra"],
                views["purchase.product_view"]["different"]) == (0, 0, 1), views
        assert (views["purchase.batch_view"]["missing"], views["purchase.batch_view"]["extra"],
                views["purchase.batch_view"]["different"]) == (0, 1, 0), views
        assert str(gone["product_id"]) in views["order.product_view"]["examples"][0]
        assert "DRIFT" in views["purchase.product_view"]["examples"][0]
        assert str(bogus) in views["purchase.batch_view"]["examples"][0]
        rc, out = _verify("--rechecks", "0", "order.product_view")
        assert [v["view"] for v in out["views"]] == ["order.product_view"]
        # --repair: the worker that owns each drifted row rewrites it; verify only reads
        rc, out = _verify("--rechecks", "1", "--repair", worker=worker)
        assert rc == 0, out
        rc, out = _verify()
        assert rc == 0 and out["drift"] == 0, out
        repaired = True
    finally:  # mend by hand if the repair did not (the worker only writes what changes)
        if not repaired:
            _mend(order, purchase, dict(gone), changed, bogus)
    rc, out = _verify()
    assert rc == 0, out


def _mend(order: sa.Engine, purchase: sa.Engine, gone: dict[str, Any], changed: Any,
          bogus: int) -> None:
    with order.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO product_view VALUES (:product_id, :sku, :name, :category_id, "
            ":category_name, :category_path, :warranty_name, :warranty_months, :price, "
            ":status) ON CONFLICT DO NOTHING"), gone)
    with purchase.begin() as conn:
        conn.execute(sa.text("UPDATE product_view SET sku = :s WHERE product_id = :i"),
                     {"s": changed.sku, "i": changed.product_id})
        conn.execute(sa.text("DELETE FROM batch_view WHERE batch_id = :b"), {"b": bogus})


def test_verify_reports_no_drift_while_changes_flow(
    product_db: sa.Engine, consumer_dbs: dict[str, sa.Engine], worker: WorkerProcess,
) -> None:
    """Rows in flight while verify reads are read again, not reported."""
    wait_converged(product_db, consumer_dbs, worker)
    wl = Workload(product_db, seed=random.randrange(1 << 30))
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            wl.step()
            stop.wait(0.05)

    th = threading.Thread(target=load)
    th.start()
    try:
        # Verify waits for the workers before a re-read, but only ``--settle`` for the
        # connector: a 2-core CI machine can delay its publishing past the default 2 s.
        rc, out = _verify("--chunk", "500", "--settle", "5")
    finally:
        stop.set()
        th.join()
    assert rc == 0, out
    assert sum(wl.counts.values()) > 0
    wait_converged(product_db, consumer_dbs, worker)


def test_verify_waits_for_a_lagging_pipeline_instead_of_reporting_drift(
    product_db: sa.Engine, consumer_dbs: dict[str, sa.Engine], worker: WorkerProcess,
) -> None:
    """Rows the workers have not applied yet are lag, not drift: verify waits for the
    workers to apply the changes in flight (up to ``--wait``) before it re-reads a row, and
    calls what still differs past that *unsettled*. With the pipeline stopped for longer
    than ``--settle`` × ``--rechecks``, a fixed pause would report those rows as drift."""
    wait_live(product_db, consumer_dbs, worker)
    wait_converged(product_db, consumer_dbs, worker)
    wl = Workload(product_db, seed=random.randrange(1 << 30))
    pid = (1 << 36) + random.randrange(1 << 30)
    worker.pause_pipeline()
    try:
        with product_db.begin() as conn:  # a change every view must show, and a workload
            conn.execute(sa.text(f"INSERT INTO categories VALUES ({pid}, NULL, 'lag', 'Lag')"))
            conn.execute(sa.text(f"INSERT INTO products VALUES ({pid}, 'LAG-{pid}', 'Lag', "
                                 f"{pid}, NULL, 'pcs', 1.00, 'active')"))
            conn.execute(sa.text(f"INSERT INTO batches VALUES ({pid}, {pid}, 'LAG', NULL, "
                                 "NULL)"))
        wl.run(15)  # changes the stopped pipeline does not apply
        rc, out = _verify("--settle", "0.2", "--wait", "1")
        assert rc == 0 and out["drift"] == 0, out
        assert sum(v["unsettled"] for v in out["views"]) > 0, out  # lag past --wait
        later = threading.Timer(4.0, worker.resume_pipeline)
        later.start()
        try:
            rc, out = _verify("--settle", "0.2", "--rechecks", "1")
        finally:
            later.cancel()
    finally:
        worker.resume_pipeline()
    assert rc == 0, out
    assert out["drift"] == 0 and all(v["unsettled"] == 0 for v in out["views"]), out
    wait_converged(product_db, consumer_dbs, worker)
