"""End-to-end pipeline benchmark on the real stack (run on demand; needs `viewsync stack up`).

Everything runs in the bench's own Product database, connector, topics and consumer
databases (``bench/benchenv.py``), dropped at the end (``--keep`` keeps them).

Measures, in one run:
1. seeding N products (1–5 batches each) into the Product DB (rows/s);
2. the initial load: a fresh connector snapshots them and a fresh worker fills the three
   views; time until every view holds its expected row count, rows/s, and the worker's peak
   RSS (worker and pipeline process together);
3. a rename of the root category with the largest subtree: time until every affected row
   shows the new path in the Order DB (PostgreSQL) and in the Purchase DB (MariaDB);
4. commit-to-visible of single product updates (median, p90, max over --updates);
5. a SIGKILL of the worker holding the whole state, and a restart: time from the restart
   until a change made meanwhile is visible;
6. a row-by-row comparison of every view with the reference join.
What was measured is written to the report even when a later step fails or times out.

    .venv/bin/python bench/bench_pipeline.py --products 1000000 --out bench/reports/pipeline-1m.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchenv import ROOT, BenchEnv, Worker, count, log, wait_for

from app.demo import seed
from tests.integration.reference import actual_views, diff_views, expected_views


class PeakRss:
    """Samples the resident memory of a worker and its children once a second."""

    def __init__(self, w: Worker) -> None:
        self.w = w
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._rss())
            time.sleep(1.0)

    def _rss(self) -> float:
        if self.w.proc is None or not self.w.alive():
            return 0.0
        total = 0.0
        pids = [self.w.proc.pid]
        try:
            children = Path(f"/proc/{self.w.proc.pid}/task/{self.w.proc.pid}/children")
            pids += [int(p) for p in children.read_text().split()]
            for pid in pids:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        except (OSError, ValueError):
            pass
        return total

    def stop(self) -> float:
        self._stop.set()
        return self.peak_mb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--products", type=int, default=100_000)
    ap.add_argument("--updates", type=int, default=30)
    ap.add_argument("--load-timeout", type=float, default=3600.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "reports" / "pipeline.md")
    ap.add_argument("--keep", action="store_true", help="keep the bench databases and connector")
    args = ap.parse_args()

    env = BenchEnv(keep=args.keep)
    results: list[tuple[str, str]] = []
    w = env.worker("w")
    source = env.source
    dbs = w.dbs
    ok = False
    try:
        # 1. seed
        t0 = time.monotonic()
        seeded = seed(env.settings, products=args.products, seed=7)
        secs = time.monotonic() - t0
        total = sum(seeded.values())
        results.append(("seed Product DB", f"{total:,} rows in {secs:.1f}s "
                        f"({total / secs:,.0f} rows/s)"))
        log(results[-1][1])

        # 2. initial load through a fresh connector and worker
        want = {"order.product_view": None, "purchase.product_view": None,
                "purchase.batch_view": None}
        with source.connect() as conn:
            visible = int(conn.execute(sa.text(
                "SELECT COUNT(*) FROM products")).scalar_one())
        want["order.product_view"] = want["purchase.product_view"] = visible
        want["purchase.batch_view"] = seeded["batches"]
        env.start_connector()
        t0 = time.monotonic()
        w.start()
        rss = PeakRss(w)

        def loaded() -> bool:
            return (count(dbs["order"], "SELECT COUNT(*) FROM product_view")
                    == want["order.product_view"]
                    and count(dbs["purchase"], "SELECT COUNT(*) FROM batch_view")
                    == want["purchase.batch_view"]
                    and count(dbs["purchase"], "SELECT COUNT(*) FROM product_view")
                    == want["purchase.product_view"])

        secs = wait_for(loaded, args.load_timeout, "the initial load", poll=1.0)
        peak = rss.stop()
        rows = sum(v or 0 for v in want.values())
        results.append(("initial load (snapshot → 3 views, incl. worker start)",
                        f"{rows:,} view rows in {secs:.1f}s ({rows / secs:,.0f} rows/s); "
                        f"worker peak RSS {peak:,.0f} MB"))
        log(results[-1][1])

        # 3. rename of the root with the largest subtree
        with source.connect() as conn:
            roots = {int(r[0]): str(r[1]) for r in conn.execute(
                sa.text("SELECT id, name FROM categories WHERE parent_id IS NULL"))}
        sizes = {rid: count(dbs["order"], "SELECT COUNT(*) FROM product_view "
                            "WHERE category_path = :n OR category_path LIKE :p",
                            n=name, p=f"{name} > %")
                 for rid, name in roots.items()}
        rid = max(sizes, key=lambda r: sizes[r])
        new = f"Renamed {env.tag}"
        n_batches = count(dbs["purchase"], "SELECT COUNT(*) FROM batch_view WHERE "
                          "category_path = :n OR category_path LIKE :p",
                          n=roots[rid], p=f"{roots[rid]} > %")
        with source.begin() as conn:
            conn.execute(sa.text("UPDATE categories SET name = :n WHERE id = :i"),
                         {"n": new, "i": rid})
        t0 = time.monotonic()
        wait_for(lambda: count(
            dbs["order"], "SELECT COUNT(*) FROM product_view WHERE category_path LIKE :p",
            p=f"{new}%") == sizes[rid], 1200, "the rename in the Order DB", poll=0.1)
        t_order = time.monotonic() - t0
        wait_for(lambda: count(
            dbs["purchase"], "SELECT COUNT(*) FROM batch_view WHERE category_path LIKE :p",
            p=f"{new}%") == n_batches, 1200, "the rename in the Purchase DB", poll=0.1)
        t_purchase = time.monotonic() - t0
        results.append((f"rename of a root: {sizes[rid]:,} products + {n_batches:,} batches",
                        f"Order DB {t_order:.2f}s, Purchase DB {t_purchase:.2f}s "
                        "after commit"))
        log(results[-1][1])

        # 4. commit-to-visible of single updates
        pid = count(source, "SELECT MIN(id) FROM products")
        samples = []
        for i in range(args.updates):
            name = f"upd-{env.tag}-{i}"
            with source.begin() as conn:
                conn.execute(sa.text("UPDATE products SET name = :n WHERE id = :i"),
                             {"n": name, "i": pid})
            samples.append(wait_for(lambda name=name: count(
                dbs["order"], "SELECT COUNT(*) FROM product_view WHERE product_id = :i "
                "AND name = :n", i=pid, n=name) == 1, 60, "an update", poll=0.005))
        samples.sort()
        results.append((f"commit-to-visible, {args.updates} single updates (Order DB)",
                        f"median {statistics.median(samples) * 1000:.0f} ms, p90 "
                        f"{samples[int(len(samples) * 0.9) - 1] * 1000:.0f} ms, max "
                        f"{samples[-1] * 1000:.0f} ms"))
        log(results[-1][1])

        # 5. crash and restart: SIGKILL, change meanwhile, start again
        w.kill()
        with source.begin() as conn:
            conn.execute(sa.text("UPDATE products SET name = 'after-restart' WHERE id = :i"),
                         {"i": pid})
        t0 = time.monotonic()
        w.start()
        secs = wait_for(lambda: count(
            dbs["order"], "SELECT COUNT(*) FROM product_view WHERE product_id = :i "
            "AND name = 'after-restart'", i=pid) == 1, 1800, "the update after a restart",
            poll=0.05)
        results.append(("SIGKILL + restart of the worker: a change made while it was down "
                        "is visible", f"{secs:.1f}s after the restart"))
        log(results[-1][1])

        # 6. exactness: the views converge to the reference join (polled, as the tests do)
        want_views = expected_views(source)
        t0 = time.monotonic()
        problems = diff_views(want_views, actual_views(dbs))
        if problems:
            log(f"first check: {len(problems)} differences (polling): {problems[:3]}")
        while problems and time.monotonic() - t0 < 120:
            time.sleep(1.0)
            problems = diff_views(want_views, actual_views(dbs))
        results.append(("row-by-row comparison with the reference join",
                        f"0 differences ({time.monotonic() - t0:.1f}s after the restart check)"
                        if not problems else
                        f"{len(problems)} differences after 120s, e.g. "
                        + "; ".join(problems[:5])))
        ok = not problems
        log(results[-1][1])
    except TimeoutError as exc:
        results.append(("stopped early", str(exc)))
        log(str(exc))
    finally:
        env.close()
        s = w.settings
        report = [
            "# End-to-end pipeline benchmark", "",
            f"Real stack on {platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}; stack JVM profile "
            f"`{os.environ.get('VIEWSYNC_JVM_PROFILE', 'small')}` (as the stack was started); "
            f"one worker, one partition per topic; `worker_store={s.worker_store}`, "
            f"`pipeline_process={s.pipeline_process}`, `sink_batch_size={s.sink_batch_size}`, "
            f"`sink_max_wait_ms={s.sink_max_wait_ms}`; {args.products:,} products seeded. "
            "One run: numbers are from the same run, side by side.", "",
            "| measurement | result |", "|---|---|",
            *[f"| {k} | {v} |" for k, v in results], "",
        ]
        text = "\n".join(report)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
