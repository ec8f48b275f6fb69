"""Drain bench: how fast one worker turns a burst of source changes into exact views.

Run on demand against the real stack (``viewsync stack up``; for figures to quote, start it
with ``VIEWSYNC_JVM_PROFILE=production``). Everything happens in the bench's own Product
database, connector, topics and consumer databases, dropped at the end.

Each worker *variant* (this checkout, and optionally another checkout given with
``--compare NAME=PATH`` — e.g. the previous release — for before/after in one run) gets its
own consumer databases and consumer group. Every variant first loads the catalogue; then for
each round and each variant, with every other variant paused (SIGSTOP), the bench commits a
burst of bulk statements (``UPDATE … WHERE id BETWEEN a AND b``, 2,000 ids each) and times
from the first commit until the variant's three views show the burst's last values; a
row-by-row comparison with the reference join follows (untimed) and must find 0
differences. Bursts:

* ``price``: every product's price changes (one view row per change: order.product_view);
* ``rename``: every product's name changes (its row in both product views and every batch
  row: ~5 view rows per change);
* ``move``: every level-2 category moves to another root (rows/s and time to visible).

Then, per variant (others paused), a steady offered rate of price changes (``--rates``)
for ``--steady-seconds`` while a probe product is renamed every 100 ms: commit-to-visible
p50/p95 in the Order DB under that load.

    .venv/bin/python bench/bench_drain.py --products 12700 --rounds 3 \\
        --compare before=/path/to/old/checkout --out bench/reports/drain.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchenv import ROOT, BenchEnv, Worker, count, log, wait_for

from app.demo import seed
from tests.integration.reference import actual_views, diff_views, expected_views

STEP = 2000


def product_ids(source: sa.Engine) -> tuple[int, int]:
    with source.connect() as conn:
        lo, hi = conn.execute(sa.text("SELECT MIN(id), MAX(id) FROM products")).one()
    return int(lo), int(hi)


def bulk(source: sa.Engine, sql: str, lo: int, hi: int, **params: object) -> int:
    """Run ``sql`` (with ``:a``/``:b`` bounds) over ``[lo, hi]`` in 2,000-id statements."""
    n = 0
    for a in range(lo, hi + 1, STEP):
        with source.begin() as conn:
            n += conn.execute(sa.text(sql), {"a": a, "b": min(a + STEP - 1, hi), **params}
                              ).rowcount
    return n


class Watermarks:
    """End offsets of the source topics: when the burst is in Kafka (the connector's share)."""

    def __init__(self, env: BenchEnv) -> None:
        from confluent_kafka import Consumer

        self.topics = [env.settings.topic(t) for t in ("products", "categories")]
        self.consumer = Consumer({"bootstrap.servers": env.base.bootstrap(),
                                  "group.id": f"{env.tag}-watermarks"})

    def total(self) -> int:
        from confluent_kafka import TopicPartition

        return sum(self.consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
                   for t in self.topics
                   for p in self.consumer.list_topics(t, timeout=10).topics[t].partitions)


def exact(env: BenchEnv, w: Worker) -> int:
    return len(diff_views(expected_views(env.source), actual_views(w.dbs)))


class Burst:
    """One kind of burst: ``run`` commits it and returns (changes, a check that its last
    values are visible in a worker's views)."""

    def __init__(self, env: BenchEnv, n_products: int, n_batches: int) -> None:
        self.env = env
        self.lo, self.hi = product_ids(env.source)
        self.n_products = n_products
        self.n_batches = n_batches
        self._before: dict[str, dict[int, tuple[object, ...]]] = {}
        #: View rows the last burst changed (known for moves; see ``rows``).
        self.moved_rows = 0

    def prepare(self, kind: str) -> None:
        """Untimed work before a burst: a move needs the views as they are."""
        if kind == "move":
            self._before = expected_views(self.env.source)

    def rows(self, kind: str, changes: int) -> int:
        """View rows a burst of ``kind`` changes."""
        if kind == "price":
            return changes
        if kind == "rename":
            return changes * 2 + self.n_batches
        return self.moved_rows

    def price(self, rnd: int) -> tuple[int, Callable[[Worker], bool]]:
        price = f"{1000 + rnd}.25"
        n = bulk(self.env.source, "UPDATE products SET price = :p WHERE id BETWEEN :a AND :b",
                 self.lo, self.hi, p=price)
        return n, lambda w: count(w.dbs["order"], "SELECT COUNT(*) FROM product_view "
                                  "WHERE price = :p", p=price) == self.n_products

    def rename(self, rnd: int) -> tuple[int, Callable[[Worker], bool]]:
        pre = f"r{rnd}-"
        n = bulk(self.env.source, "UPDATE products SET name = CONCAT(:p, sku) "
                 "WHERE id BETWEEN :a AND :b", self.lo, self.hi, p=pre)

        def visible(w: Worker) -> bool:
            like = f"{pre}%"
            return (count(w.dbs["order"], "SELECT COUNT(*) FROM product_view WHERE name LIKE :l",
                          l=like) == self.n_products
                    and count(w.dbs["purchase"], "SELECT COUNT(*) FROM product_view "
                              "WHERE name LIKE :l", l=like) == self.n_products
                    and count(w.dbs["purchase"], "SELECT COUNT(*) FROM batch_view "
                              "WHERE product_name LIKE :l", l=like) == self.n_batches)
        return n, visible

    def move(self, rnd: int) -> tuple[int, Callable[[Worker], bool]]:
        """Every level-2 category moves under the next root (roots in id order)."""
        with self.env.source.begin() as conn:
            roots = [int(r[0]) for r in conn.execute(sa.text(
                "SELECT id FROM categories WHERE parent_id IS NULL ORDER BY id"))]
            level2 = conn.execute(sa.text(
                "SELECT c.id, c.parent_id FROM categories c JOIN categories p "
                "ON c.parent_id = p.id WHERE p.parent_id IS NULL")).all()
            for cid, parent in level2:
                new = roots[(roots.index(int(parent)) + 1) % len(roots)]
                conn.execute(sa.text("UPDATE categories SET parent_id = :p WHERE id = :i"),
                             {"p": new, "i": int(cid)})
        want = expected_views(self.env.source)
        self.moved_rows = sum(
            1 for name, rows in want.items() for k, row in rows.items()
            if self._before.get(name, {}).get(k) != row)

        def visible(w: Worker) -> bool:
            return not diff_views(want, actual_views(w.dbs))
        return len(level2), visible


def steady(env: BenchEnv, w: Worker, rate: int, seconds: float, lo: int, hi: int
           ) -> tuple[float, float, float]:
    """Offer ``rate`` price changes/s for ``seconds``; commit-to-visible p50/p95 (ms) of a
    probe rename in the Order DB, and the rate actually offered."""
    stop = threading.Event()
    offered = [0]

    def load() -> None:
        per_stmt = max(1, rate // 20)  # 20 statements a second
        a = lo
        t_next = time.monotonic()
        while not stop.is_set():
            b = min(a + per_stmt - 1, hi)
            with env.source.begin() as conn:
                offered[0] += conn.execute(sa.text(
                    "UPDATE products SET price = price + 0.01 WHERE id BETWEEN :a AND :b"),
                    {"a": a, "b": b}).rowcount
            a = lo if b >= hi else b + 1
            t_next += 0.05
            time.sleep(max(0.0, t_next - time.monotonic()))

    probe = hi
    samples: list[float] = []
    th = threading.Thread(target=load, daemon=True)
    t_start = time.monotonic()
    th.start()
    i = 0
    try:
        while time.monotonic() - t_start < seconds:
            name = f"probe-{rate}-{i}"
            i += 1
            with env.source.begin() as conn:
                conn.execute(sa.text("UPDATE products SET name = :n WHERE id = :i"),
                             {"n": name, "i": probe})
            t0 = time.monotonic()
            wait_for(lambda name=name: count(
                w.dbs["order"], "SELECT COUNT(*) FROM product_view WHERE product_id = :i "
                "AND name = :n", i=probe, n=name) == 1, 120, "a probe update", poll=0.005)
            samples.append((time.monotonic() - t0) * 1000)
            time.sleep(0.1)
    finally:
        stop.set()
        th.join()
    elapsed = time.monotonic() - t_start
    samples.sort()
    p95 = samples[max(0, int(len(samples) * 0.95) - 1)]
    return statistics.median(samples), p95, offered[0] / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--products", type=int, default=12_700)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bursts", default="price,rename,move")
    ap.add_argument("--rates", default="500,2000,5000",
                    help="steady offered rates (changes/s); empty for none")
    ap.add_argument("--steady-seconds", type=float, default=15.0)
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=PATH",
                    help="also run the worker of another checkout, side by side")
    ap.add_argument("--name", default="this", help="name of this checkout's variant")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "reports" / "drain.md")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    env = BenchEnv(keep=args.keep)
    variants: list[Worker] = []
    lines: list[str] = []
    #: (burst, variant) -> per round: changes, seconds to visible, differences, seconds
    #: until the whole burst was in Kafka, view rows changed
    drain: dict[tuple[str, str], list[tuple[int, float, int, float, int]]] = {}
    steady_rows: list[str] = []
    try:
        t0 = time.monotonic()
        seeded = seed(env.settings, products=args.products, seed=7)
        log(f"seeded {seeded} in {time.monotonic() - t0:.1f}s")
        n_products, n_batches = seeded["products"], seeded["batches"]
        env.start_connector()
        for spec in args.compare:
            name, _, path = spec.partition("=")
            variants.append(env.worker(name, Path(path).resolve()))
        variants.append(env.worker(args.name))
        exp = expected_views(env.source)
        for w in variants:
            w.start()
        for w in variants:
            secs = wait_for(lambda w=w: not diff_views(exp, actual_views(w.dbs)),
                            args.timeout, f"{w.name}: the initial load", poll=1.0)
            log(f"{w.name}: initial load converged after {secs:.0f}s")
        burst = Burst(env, n_products, n_batches)
        marks = Watermarks(env)
        kinds = [k for k in args.bursts.split(",") if k]
        for rnd in range(args.rounds):
            for kind in kinds:
                for w in variants:
                    for other in variants:
                        if other is not w:
                            other.pause()
                    burst.prepare(kind)
                    hw = marks.total()
                    t0 = time.monotonic()
                    changes, visible = getattr(burst, kind)(rnd * 10 + variants.index(w))
                    t_commit = time.monotonic() - t0
                    wait_for(lambda hw=hw, n=changes: marks.total() >= hw + n,
                             args.timeout, "the burst in Kafka", poll=0.01)
                    t_kafka = time.monotonic()
                    wait_for(lambda w=w, visible=visible: visible(w), args.timeout,
                             f"{w.name}: {kind} burst", poll=0.02)
                    secs = time.monotonic() - t0
                    diffs = exact(env, w)
                    rows = burst.rows(kind, changes)
                    drain.setdefault((kind, w.name), []).append(
                        (changes, secs, diffs, t_kafka - t0, rows))
                    log(f"round {rnd} {kind} {w.name}: {changes} changes, {rows} view rows "
                        "(commits took "
                        f"{t_commit:.1f}s, all in Kafka after {t_kafka - t0:.2f}s), "
                        f"visible after {secs:.2f}s = "
                        f"{changes / secs:,.0f} changes/s, {rows / secs:,.0f} view rows/s, "
                        f"{diffs} differences")
                    for other in variants:
                        other.resume()
                    # the others catch up (untimed) before the next measurement
                    for other in variants:
                        wait_for(lambda o=other, visible=visible: visible(o), args.timeout,
                                 f"{other.name}: catching up", poll=0.2)
        lo, hi = burst.lo, burst.hi
        rates = [int(r) for r in args.rates.split(",") if r]
        for rate in rates:
            for w in variants:
                for other in variants:
                    if other is not w:
                        other.pause()
                p50, p95, got = steady(env, w, rate, args.steady_seconds, lo, hi)
                steady_rows.append(f"| {w.name} | {rate:,} | {got:,.0f} | {p50:.0f} | "
                                   f"{p95:.0f} |")
                log(f"steady {rate}/s {w.name}: offered {got:.0f}/s, p50 {p50:.0f} ms, "
                    f"p95 {p95:.0f} ms")
                for other in variants:
                    other.resume()
                wait_for(lambda: all(not diff_views(expected_views(env.source),
                                                    actual_views(o.dbs)) for o in variants),
                         args.timeout, "every variant after the steady load", poll=1.0)
    except TimeoutError as exc:
        lines.append(f"**Stopped early:** {exc}")
        log(str(exc))
    finally:
        env.close()

    jvm = os.environ.get("VIEWSYNC_JVM_PROFILE", "small")
    out = [
        "# Drain bench", "",
        f"Real stack on {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; stack JVM profile `{jvm}` (as the stack was started); "
        f"{args.products:,} products; one worker per variant, the other variants paused "
        "while one is measured; every figure from this one run. Times run from the first "
        "commit of the burst until the last change is visible in every view; each "
        "measurement is followed by a row-by-row comparison with the reference join.", "",
        *lines, "",
        "## Bursts (median of rounds)", "",
        "| burst | variant | changes | view rows changed | all in Kafka after s (median) | "
        "visible after s (median) | changes/s (median) | view rows/s (median) | rounds | "
        "differences |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (kind, name), runs in drain.items():
        secs = statistics.median(r[1] for r in runs)
        rate = statistics.median(r[0] / r[1] for r in runs)
        row_rate = statistics.median(r[4] / r[1] for r in runs)
        kafka = statistics.median(r[3] for r in runs)
        rows = statistics.median(r[4] for r in runs)
        out.append(f"| {kind} | {name} | {runs[0][0]:,} | {rows:,.0f} "
                   f"| {kafka:.2f} | {secs:.2f} | {rate:,.0f} | {row_rate:,.0f} | {len(runs)} | "
                   f"{sum(r[2] for r in runs)} |")
    if any(k == "move" for k, _n in drain):
        out += ["", "The `move` check recomputes the reference join of the whole catalogue "
                "before its first poll, so its time is an upper bound (at 12,700 products the "
                "reference takes ~2 s)."]
    names = [w.name for w in variants]
    if len(names) > 1:
        out += ["", "Ratios (this / other, changes/s medians):", ""]
        for kind in {k for k, _n in drain}:
            mine = drain.get((kind, args.name))
            for name in names[:-1]:
                theirs = drain.get((kind, name))
                if mine and theirs:
                    r_m = statistics.median(r[0] / r[1] for r in mine)
                    r_t = statistics.median(r[0] / r[1] for r in theirs)
                    out.append(f"- {kind}: {args.name} / {name} = {r_m / r_t:.2f}×")
    if steady_rows:
        out += ["", "## Steady offered load: commit-to-visible (Order DB)", "",
                "| variant | target changes/s | offered changes/s | p50 ms | p95 ms |",
                "|---|---|---|---|---|", *steady_rows]
    text = "\n".join(out) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    bad = any(r[2] for runs in drain.values() for r in runs)
    return 1 if bad or lines else 0


if __name__ == "__main__":
    sys.exit(main())
