"""``viewsync verify`` at size: rows/s and peak memory on a seeded catalogue.

Seeds ``--products`` products (1–5 batches each) in the bench's own Product database, loads
them into fresh views with a worker, stops it, then runs ``viewsync verify --json`` as a
subprocess (peak RSS from the OS) on the in-sync views and again after hand-made drift
(a deleted row, a changed row and a bogus row). Writes ``bench/reports/verify.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from benchenv import ROOT, BenchEnv, Worker, count, log, wait_for

from app.demo import seed


def run_verify(env: BenchEnv, worker_env: dict[str, str], chunk: int) -> tuple[dict[str, object],
                                                                             float, float]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "app.cli", "verify", "--json", "--chunk",
                        str(chunk)], env=worker_env, cwd=ROOT, capture_output=True, text=True)
    secs = time.monotonic() - t0
    if r.returncode not in (0, 1):
        raise RuntimeError(r.stderr[-3000:])
    out = json.loads(r.stdout)
    return out, secs, float(out["peak_rss_mb"])  # the verify process's own peak


def run_resync(w: Worker, views: list[str]) -> float:
    """``viewsync resync VIEW…`` (it waits until every shard has carried it out)."""
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "app.cli", "resync", *views], env=w.env, cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stdout[-2000:] + r.stderr[-3000:])
    return time.monotonic() - t0


def wait_live(env: BenchEnv, w: Worker) -> float:
    """Until a fresh product reaches the Order view: the worker holds its shards again."""
    pid = (1 << 35) + random.randrange(1 << 30)
    with env.source.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO categories VALUES ({pid}, NULL, 'live', 'Live')"))
        conn.execute(sa.text(f"INSERT INTO products VALUES ({pid}, 'LIVE-{pid}', 'Live', {pid}, "
                             "NULL, 'pcs', 1.00, 'active')"))
    return wait_for(lambda: count(w.dbs["order"], "SELECT COUNT(*) FROM product_view WHERE "
                                  f"product_id = {pid}") == 1, 600, "a live change", poll=0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--products", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=5000)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "reports" / "verify.md")
    args = ap.parse_args()
    env = BenchEnv(keep=args.keep)
    w = env.worker("w")
    lines: list[str] = []
    resync: list[str] = []
    try:
        seeded = seed(env.settings, products=args.products, seed=9)
        env.start_connector()
        w.start()
        want = seeded["products"]
        secs = wait_for(lambda: count(w.dbs["purchase"], "SELECT COUNT(*) FROM product_view")
                        >= want * 0.9 and count(w.dbs["purchase"], "SELECT COUNT(*) FROM "
                        "batch_view") >= seeded["batches"] * 0.9, 3600, "the initial load",
                        poll=2)
        time.sleep(10)
        w.stop()
        log(f"loaded in {secs:.0f}s; worker stopped")
        out, t, peak = run_verify(env, w.env, args.chunk)
        rows = sum(int(v["checked"]) for v in out["views"])  # type: ignore[attr-defined]
        lines.append(f"| in sync | {rows:,} | {t:.1f} s | {rows / t:,.0f} | {peak:.0f} MB | "
                     f"drift {out['drift']} |")
        log(lines[-1])
        with w.dbs["order"].begin() as conn:
            conn.execute(sa.text("DELETE FROM product_view WHERE product_id = "
                                 "(SELECT MIN(product_id) FROM product_view)"))
        with w.dbs["purchase"].begin() as conn:
            conn.execute(sa.text("UPDATE product_view SET sku = 'DRIFT' WHERE product_id = "
                                 "(SELECT m FROM (SELECT MAX(product_id) m FROM product_view) x)"))
            conn.execute(sa.text("INSERT INTO batch_view (batch_id, batch_no, product_id, sku, "
                                 "product_name, category_path, manufactured_on, expires_on, "
                                 "warranty_months) VALUES (9000000000000, 'B', 1, 'X', 'X', "
                                 "'X', NULL, NULL, NULL)"))
        out, t, peak = run_verify(env, w.env, args.chunk)
        found = {v["view"]: (v["missing"], v["extra"], v["different"])  # type: ignore[index]
                 for v in out["views"]}  # type: ignore[attr-defined]
        lines.append(f"| 3 rows of hand-made drift | {rows:,} | {t:.1f} s | {rows / t:,.0f} | "
                     f"{peak:.0f} MB | found (missing, extra, different): {found} |")
        log(lines[-1])

        # resync: the worker back (its state is on disk: it only catches up), every view
        # rebuilt in place (which mends the drift), then a dropped table brought back.
        w.start()
        log(f"worker live again after {wait_live(env, w):.1f}s")
        views = ["order.product_view", "purchase.product_view", "purchase.batch_view"]
        t = run_resync(w, views)
        resync.append(f"| `resync` of the 3 views (the drift above in them) | {rows:,} | "
                      f"{t:.1f} s | {rows / t:,.0f} |")
        log(resync[-1])
        with w.dbs["purchase"].begin() as conn:
            conn.execute(sa.text("DROP TABLE batch_view"))
        t = run_resync(w, ["purchase.batch_view"])
        n = count(w.dbs["purchase"], "SELECT COUNT(*) FROM batch_view")
        resync.append(f"| `resync purchase.batch_view` after `DROP TABLE` | {n:,} | {t:.1f} s | "
                      f"{n / t:,.0f} |")
        log(resync[-1])
        w.stop()
        out, t, peak = run_verify(env, w.env, args.chunk)
        rows = sum(int(v["checked"]) for v in out["views"])  # type: ignore[attr-defined]
        lines.append(f"| after the resyncs | {rows:,} | {t:.1f} s | {rows / t:,.0f} | "
                     f"{peak:.0f} MB | drift {out['drift']} |")
        log(lines[-1])
    finally:
        env.close()
        text = "\n".join([
            "# verify at size", "",
            f"`bench/bench_verify.py --products {args.products} --chunk {args.chunk}` on "
            f"{platform.machine()}, {os.cpu_count()} CPUs, the `bench` stack instance; "
            "`viewsync verify --json` as a subprocess, workers stopped (nothing in flight); "
            "peak RSS is the verify process's own high-water mark (`VmHWM`); time includes "
            "its start.", "",
            "| case | view rows checked | time | rows/s | peak RSS | result |",
            "|---|---|---|---|---|---|", *lines, "",
            "`viewsync resync` on the same views, one worker holding all 12 shards (time from "
            "the command sent to every shard's position recorded past it; the views stay "
            "readable throughout):", "",
            "| case | view rows | time | rows/s |", "|---|---|---|---|", *resync, ""])
        args.out.write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
