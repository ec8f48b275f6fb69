"""Soak: a steady mix of changes for a long time; worker memory and lag over time.

A catalogue is seeded and loaded, then a steady mix is offered for ``--minutes`` (default
30) at ``--rate`` changes/s (default 1,800: half the ~3.6k/s one worker drains, see
``bench/reports/drain.md``): bulk price updates, product renames, batch updates, a category
rename now and then, and a seeded random workload (inserts, moves, deletes on all four
tables). Every ``--sample`` seconds the worker's RSS (the worker process and its pipeline
process) and its lag (end offsets of the four source topics minus the group's committed
offsets) are recorded. At the end the load stops and every view is compared row by row with
the reference join.

Runs on the ``bench`` stack instance; writes ``bench/reports/soak.md``, ``soak.csv`` and
``soak.svg`` (RSS and lag over time).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import threading
import time
from pathlib import Path

import sqlalchemy as sa
from benchenv import ROOT, BenchEnv, Worker, log
from confluent_kafka import Consumer, TopicPartition

from app.demo import seed
from app.positions import Positions, records_to_go
from tests.integration.reference import actual_views, diff_views, expected_views
from tests.integration.workload import Workload


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MB."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1024


class Lag:
    def __init__(self, env: BenchEnv, group: str) -> None:
        self.topics = list(env.settings.source_topics())
        self.c = Consumer({"bootstrap.servers": env.settings.bootstrap(), "group.id": group,
                           "enable.auto.commit": False})

    def __call__(self) -> int:
        tps = [TopicPartition(t, p) for t in self.topics
               for p in self.c.list_topics(t, timeout=10).topics[t].partitions]
        done: Positions = {}
        ends: Positions = {}
        for tp in self.c.committed(tps, timeout=10):
            _lo, hi = self.c.get_watermark_offsets(tp, timeout=10)
            done[(tp.topic, tp.partition)] = max(tp.offset, 0)
            ends[(tp.topic, tp.partition)] = hi
        return records_to_go(ends, done)

    def close(self) -> None:
        self.c.close()


def offer(env: BenchEnv, rate: int, stop: threading.Event, offered: list[int]) -> None:
    """The steady mix: 20 statements a second sized to ``rate`` rows changed per second."""
    with env.source.connect() as conn:
        lo, hi = (int(x) for x in conn.execute(sa.text(
            "SELECT MIN(id), MAX(id) FROM products")).one())
        blo, bhi = (int(x) for x in conn.execute(sa.text(
            "SELECT MIN(id), MAX(id) FROM batches")).one())
        cats = [int(r[0]) for r in conn.execute(sa.text("SELECT id FROM categories"))]
    rng = random.Random(5)
    per = max(1, rate // 20)
    t_next = time.monotonic()
    tick = 0
    while not stop.is_set():
        kind = rng.random()
        with env.source.begin() as conn:
            if kind < 0.6:
                a = rng.randint(lo, max(lo, hi - per))
                n = conn.execute(sa.text("UPDATE products SET price = price + 0.01 "
                                         "WHERE id BETWEEN :a AND :b"), {"a": a, "b": a + per - 1})
            elif kind < 0.8:
                a = rng.randint(lo, max(lo, hi - per))
                n = conn.execute(sa.text("UPDATE products SET name = CONCAT('P', :t, '-', id) "
                                         "WHERE id BETWEEN :a AND :b"),
                                 {"a": a, "b": a + per - 1, "t": tick})
            elif kind < 0.995:
                a = rng.randint(blo, max(blo, bhi - per))
                n = conn.execute(sa.text("UPDATE batches SET batch_no = CONCAT('B', :t) "
                                         "WHERE id BETWEEN :a AND :b"),
                                 {"a": a, "b": a + per - 1, "t": tick})
            else:
                n = conn.execute(sa.text("UPDATE categories SET name = CONCAT('Cat ', :t) "
                                         "WHERE id = :c"), {"c": rng.choice(cats), "t": tick})
            offered[0] += n.rowcount
        tick += 1
        t_next += 0.05
        time.sleep(max(0.0, t_next - time.monotonic()))


def churn(wl: Workload, stop: threading.Event, steps: list[int]) -> None:
    """Inserts, moves and deletes on all four tables, ~5 transactions a second."""
    while not stop.is_set():
        wl.step()
        steps[0] += 1
        time.sleep(0.2)


def svg(samples: list[tuple[float, float, int]]) -> str:
    """RSS (MB) and lag (records) over time, two stacked line charts, no dependencies."""
    w, h, pad = 720, 200, 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{2 * h + 20}" '
           'font-family="sans-serif" font-size="11">']
    t_max = max(s[0] for s in samples) or 1
    for i, (label, idx, colour) in enumerate((("worker RSS (MB)", 1, "#1f77b4"),
                                              ("lag (records)", 2, "#d62728"))):
        y0 = i * (h + 20)
        vals = [float(s[idx]) for s in samples]
        v_max = max(vals) * 1.1 or 1
        pts = " ".join(f"{pad + (s[0] / t_max) * (w - 2 * pad):.1f},"
                       f"{y0 + h - pad / 2 - (v / v_max) * (h - pad):.1f}"
                       for s, v in zip(samples, vals, strict=True))
        out += [f'<text x="{pad}" y="{y0 + 14}">{label}: max {max(vals):,.0f}, '
                f'last {vals[-1]:,.0f}</text>',
                f'<line x1="{pad}" y1="{y0 + h - pad / 2}" x2="{w - pad}" '
                f'y2="{y0 + h - pad / 2}" stroke="#999"/>',
                f'<text x="{w - pad}" y="{y0 + h - 4}" text-anchor="end">'
                f'{t_max / 60:.0f} min</text>',
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/>']
    out.append("</svg>")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--products", type=int, default=12_700)
    ap.add_argument("--rate", type=int, default=1_800)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--sample", type=float, default=10.0)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "reports" / "soak.md")
    args = ap.parse_args()

    env = BenchEnv(keep=args.keep)
    w: Worker = env.worker("w")
    samples: list[tuple[float, float, int]] = []
    offered, steps = [0], [0]
    result = "not reached"
    ok = False
    try:
        seed(env.settings, products=args.products, seed=3)
        env.start_connector()
        w.start()
        lag = Lag(env, f'{w.env["VIEWSYNC_WORKER_ID"]}.{w.env["VIEWSYNC_WORKER_NAME"]}')
        t0 = time.monotonic()
        while True:  # the initial load
            time.sleep(2)
            if time.monotonic() - t0 > 30 and lag() == 0:
                break
        log(f"loaded in {time.monotonic() - t0:.0f}s; soaking {args.minutes:.0f} min at "
            f"{args.rate}/s")
        stop = threading.Event()
        wl = Workload(env.source, seed=17)
        threads = [threading.Thread(target=offer, args=(env, args.rate, stop, offered)),
                   threading.Thread(target=churn, args=(wl, stop, steps))]
        for th in threads:
            th.start()
        t_start = time.monotonic()
        try:
            while time.monotonic() - t_start < args.minutes * 60:
                time.sleep(args.sample)
                assert w.proc is not None and w.alive(), "the worker died:\n" + w.tail()
                samples.append((time.monotonic() - t_start, rss_mb(w.proc.pid), lag()))
                log(f"t={samples[-1][0]:.0f}s rss={samples[-1][1]:.0f}MB lag={samples[-1][2]} "
                    f"offered={offered[0] / (time.monotonic() - t_start):.0f}/s")
        finally:
            stop.set()
            for th in threads:
                th.join()
        elapsed = time.monotonic() - t_start
        t_end = time.monotonic()
        problems = diff_views(expected_views(env.source), actual_views(w.dbs))
        while problems and time.monotonic() - t_end < 300:
            time.sleep(2)
            problems = diff_views(expected_views(env.source), actual_views(w.dbs))
        ok = not problems
        result = (f"0 differences, {time.monotonic() - t_end:.1f}s after the load stopped"
                  if ok else f"{len(problems)} differences after 300 s, e.g. {problems[:3]}")
        log(result)
        lag.close()
    finally:
        env.close()
        if samples:
            write_report(args, samples, offered[0], steps[0], elapsed if samples else 0, result)
    return 0 if ok else 1


def write_report(args: argparse.Namespace, samples: list[tuple[float, float, int]],
                 offered: int, steps: int, elapsed: float, result: str) -> None:
    base = args.out.with_suffix("")
    (base.with_suffix(".csv")).write_text(
        "seconds,rss_mb,lag\n" + "".join(f"{t:.0f},{r:.1f},{lg}\n" for t, r, lg in samples))
    (base.with_suffix(".svg")).write_text(svg(samples))
    rss = [s[1] for s in samples]
    lags = [s[2] for s in samples]
    first_min = [s[1] for s in samples if s[0] <= 120] or rss[:1]
    text = "\n".join([
        "# Soak", "",
        f"`bench/bench_soak.py --products {args.products} --rate {args.rate} --minutes "
        f"{args.minutes:g}` on {platform.machine()}, {os.cpu_count()} CPUs, the `bench` stack "
        f"instance (JVM profile `{os.environ.get('VIEWSYNC_JVM_PROFILE', 'production')}`), one "
        "worker. Sampled every "
        f"{args.sample:g} s: RSS of the worker and its pipeline process, and lag (records in "
        "the four source topics not yet committed by the worker's group).", "",
        "![RSS and lag over time](soak.svg)", "",
        "| measurement | result |", "|---|---|",
        f"| duration | {elapsed / 60:.1f} min |",
        f"| rows changed in the source | {offered:,} by bulk statements "
        f"({offered / elapsed:,.0f}/s) + {steps:,} random transactions |",
        f"| RSS: first 2 min (max) → end | {max(first_min):.0f} MB → {rss[-1]:.0f} MB "
        f"(max {max(rss):.0f} MB) |",
        f"| lag: median / max / last sample | {sorted(lags)[len(lags) // 2]:,} / "
        f"{max(lags):,} / {lags[-1]:,} records |",
        f"| row-by-row check at the end | {result} |",
        "", "Samples: [soak.csv](soak.csv).", ""])
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
