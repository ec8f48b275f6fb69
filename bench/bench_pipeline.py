"""End-to-end benchmark on the real stack (run on demand; needs `viewsync stack up`).

Everything runs in its own Product database, connector, topics and consumer databases, so
the stack's main data is untouched; all of it is dropped at the end (``--keep`` keeps it).

Measures, in one run:
1. seeding N products into the Product DB (rows/s);
2. the initial load: a fresh connector snapshots them and a fresh worker fills the three
   views; time until every view holds its expected row count, and rows/s;
3. a rename of the root category with the largest subtree: time until every affected row
   shows the new path in the Order DB (PostgreSQL) and in the Purchase DB (MariaDB);
4. commit-to-visible of single product updates (median, p90, max over --updates);
5. a SIGKILL of the worker and a restart: time until a change made meanwhile is visible.
Finally the views are compared row by row with the reference join.

    .venv/bin/python bench/bench_pipeline.py --products 100000 --out bench/reports/pipeline.md
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.connectors import ConnectClient  # noqa: E402
from app.demo import seed  # noqa: E402
from app.settings import Settings, load_settings  # noqa: E402
from app.sink import create_view_tables  # noqa: E402
from app.stack.components import SQL_DIR  # noqa: E402
from app.stack.manager import Stack, ensure_source_topics  # noqa: E402
from tests.integration.reference import actual_views, diff_views, expected_views  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def count(engine: sa.Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql), params).scalar_one())


def wait_for(fn: Any, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if fn():
            return time.monotonic() - t0
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--products", type=int, default=100_000)
    ap.add_argument("--updates", type=int, default=30)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "reports" / "pipeline.md")
    ap.add_argument("--keep", action="store_true", help="keep the bench databases and connector")
    args = ap.parse_args()

    base = load_settings()
    stack = Stack(base)
    down = [n for n, _p, _pid, ok in stack.status() if not ok]
    if down:
        raise SystemExit(f"stack components down: {', '.join(down)} (run: viewsync stack up)")
    tag = f"bench{random.randrange(10**6)}"
    stack.defn.mariadb_sql("product-db", f"CREATE DATABASE {tag}; USE {tag};"
                           + (SQL_DIR / "product.sql").read_text())
    stack.defn.psql(f'CREATE DATABASE "order_{tag}" OWNER "{base.db_user}"')
    stack.defn.mariadb_sql("purchase-db", f"CREATE DATABASE purchase_{tag}")
    s: Settings = load_settings(
        source_database=tag, topic_prefix=tag, connector_name=f"{tag}-source",
        order_db_url=base.consumer_url("order").rsplit("/", 1)[0] + f"/order_{tag}",
        purchase_db_url=base.consumer_url("purchase").rsplit("/", 1)[0] + f"/purchase_{tag}",
    )
    create_view_tables(s)
    source = sa.create_engine(s.product_url())
    dbs = {c: sa.create_engine(s.consumer_url(c)) for c in ("order", "purchase")}
    results: list[tuple[str, str]] = []
    worker: subprocess.Popen[bytes] | None = None
    tmp = Path(tempfile.mkdtemp(prefix="viewsync-bench-"))
    try:
        # 1. seed
        t0 = time.monotonic()
        seeded = seed(s, products=args.products, seed=7)
        secs = time.monotonic() - t0
        total = sum(seeded.values())
        results.append(("seed Product DB", f"{total:,} rows in {secs:.1f}s "
                        f"({total / secs:,.0f} rows/s)"))

        # 2. initial load through a fresh connector and worker
        exp = expected_views(source)
        want = {k: len(v) for k, v in exp.items()}
        ensure_source_topics(s)
        client = ConnectClient(s)
        client.apply()
        client.wait_running(timeout=120)
        env = dict(os.environ, VIEWSYNC_SOURCE_DATABASE=tag, VIEWSYNC_TOPIC_PREFIX=tag,
                   VIEWSYNC_ORDER_DB_URL=s.consumer_url("order"),
                   VIEWSYNC_PURCHASE_DB_URL=s.consumer_url("purchase"),
                   VIEWSYNC_WORKER_ID=f"{tag}-worker", VIEWSYNC_WORKER_DATA_DIR=str(tmp))
        t0 = time.monotonic()
        with open(tmp / "worker.log", "ab") as wlog:
            worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], cwd=ROOT,
                                      env=env, stdout=wlog, stderr=subprocess.STDOUT)

        def loaded() -> bool:
            return (count(dbs["order"], "SELECT COUNT(*) FROM product_view")
                    == want["order.product_view"]
                    and count(dbs["purchase"], "SELECT COUNT(*) FROM batch_view")
                    == want["purchase.batch_view"]
                    and count(dbs["purchase"], "SELECT COUNT(*) FROM product_view")
                    == want["purchase.product_view"])

        secs = wait_for(loaded, 3600, "the initial load")
        rows = sum(want.values())
        results.append(("initial load (snapshot → 3 views, incl. worker start)",
                        f"{rows:,} view rows in {secs:.1f}s ({rows / secs:,.0f} rows/s)"))
        log(f"initial load: {rows} rows in {secs:.1f}s")

        # 3. rename of the root with the largest subtree
        with source.connect() as conn:
            roots = {int(r[0]): str(r[1]) for r in conn.execute(
                sa.text("SELECT id, name FROM categories WHERE parent_id IS NULL"))}
        sizes = {rid: count(dbs["order"], "SELECT COUNT(*) FROM product_view "
                            "WHERE category_path = :n OR category_path LIKE :p",
                            n=name, p=f"{name} > %")
                 for rid, name in roots.items()}
        rid = max(sizes, key=lambda r: sizes[r])
        new = f"Renamed {tag}"
        n_batches = count(dbs["purchase"], "SELECT COUNT(*) FROM batch_view WHERE "
                          "category_path = :n OR category_path LIKE :p",
                          n=roots[rid], p=f"{roots[rid]} > %")
        with source.begin() as conn:
            conn.execute(sa.text("UPDATE categories SET name = :n WHERE id = :i"),
                         {"n": new, "i": rid})
        t0 = time.monotonic()
        wait_for(lambda: count(
            dbs["order"], "SELECT COUNT(*) FROM product_view WHERE category_path LIKE :p",
            p=f"{new}%") == sizes[rid], 600, "the rename in the Order DB")
        t_order = time.monotonic() - t0
        wait_for(lambda: count(
            dbs["purchase"], "SELECT COUNT(*) FROM batch_view WHERE category_path LIKE :p",
            p=f"{new}%") == n_batches, 600, "the rename in the Purchase DB")
        t_purchase = time.monotonic() - t0
        results.append((f"rename of a root: {sizes[rid]:,} products + {n_batches:,} batches",
                        f"Order DB {t_order:.2f}s, Purchase DB {t_purchase:.2f}s "
                        "after commit"))

        # 4. commit-to-visible of single updates
        pid = count(source, "SELECT MIN(id) FROM products")
        samples = []
        for i in range(args.updates):
            name = f"upd-{tag}-{i}"
            with source.begin() as conn:
                conn.execute(sa.text("UPDATE products SET name = :n WHERE id = :i"),
                             {"n": name, "i": pid})
            samples.append(wait_for(lambda name=name: count(
                dbs["order"], "SELECT COUNT(*) FROM product_view WHERE product_id = :i "
                "AND name = :n", i=pid, n=name) == 1, 60, "an update"))
        samples.sort()
        results.append((f"commit-to-visible, {args.updates} single updates (Order DB)",
                        f"median {statistics.median(samples) * 1000:.0f} ms, p90 "
                        f"{samples[int(len(samples) * 0.9) - 1] * 1000:.0f} ms, max "
                        f"{samples[-1] * 1000:.0f} ms"))

        # 5. crash and restart: SIGKILL, start again, time until an update is visible
        #    (consumer-group rejoin + state recovery from the changelog topics)
        worker.kill()
        worker.wait(30)
        with source.begin() as conn:
            conn.execute(sa.text("UPDATE products SET name = 'after-restart' WHERE id = :i"),
                         {"i": pid})
        t0 = time.monotonic()
        with open(tmp / "worker.log", "ab") as wlog:
            worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], cwd=ROOT,
                                      env=env, stdout=wlog, stderr=subprocess.STDOUT)
        secs = wait_for(lambda: count(
            dbs["order"], "SELECT COUNT(*) FROM product_view WHERE product_id = :i "
            "AND name = 'after-restart'", i=pid) == 1, 900, "the update after a restart")
        results.append(("SIGKILL + restart of the worker: update visible after start",
                        f"{secs:.1f}s"))

        # 6. exactness
        problems = diff_views(expected_views(source), actual_views(dbs))
        results.append(("row-by-row comparison with the reference join",
                        "0 differences" if not problems else f"{len(problems)} differences"))
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(60)
        if not args.keep:
            ConnectClient(s).delete()
            for e in dbs.values():
                e.dispose()
            source.dispose()
            stack.defn.mariadb_sql("product-db", f"DROP DATABASE IF EXISTS {tag}")
            stack.defn.mariadb_sql("purchase-db", f"DROP DATABASE IF EXISTS purchase_{tag}")
            stack.defn.psql(f'DROP DATABASE IF EXISTS "order_{tag}" WITH (FORCE)')

    report = [
        "# End-to-end pipeline benchmark", "",
        f"Real stack on {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; one worker, one partition per topic; "
        f"`worker_store={s.worker_store}`; "
        f"`sink_batch_size={s.sink_batch_size}`, `sink_max_wait_ms={s.sink_max_wait_ms}`; "
        f"{args.products:,} products seeded. One run: numbers are from the same run, "
        "side by side.", "",
        "| measurement | result |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in results], "",
    ]
    text = "\n".join(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0 if results[-1][1] == "0 differences" else 1


if __name__ == "__main__":
    sys.exit(main())
