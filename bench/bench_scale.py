"""Scale-out bench: the drain with 1, 2 and 4 workers of one deployment, and the failover
pause after a worker's kill -9 and after a clean stop.

Run on demand on the bench stack instance (``bench/benchenv.py``; production JVM flags).
One seeded catalogue, one connector; one deployment per worker count, each with its own
consumer databases (so every deployment writes all of its views).

* **drain** — per round and per deployment (the others paused with SIGSTOP; their lease
  session timeout is set long enough not to notice): a burst of bulk statements is committed
  (``price``: 1 view row per change; ``rename``: about 5), timed from the first commit until
  the deployment's views show the burst's last values; the views are then compared row by
  row with the reference join (0 differences expected). The paused deployments catch up
  untimed before their turn.
* **failover** — a deployment of 2 workers with the default lease session timeout: the worker
  owning a product's shard is killed -9 (or stopped with SIGTERM), the product is renamed at
  once, and the time until the rename is visible in the Order DB is the pause. The worker is
  started again and the shards settle before the next round.

    .venv/bin/python bench/bench_scale.py --products 100000 --out bench/reports/scale.md
    .venv/bin/python bench/bench_scale.py --products 1000000 --phases failover \\
        --out bench/reports/failover-1m.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_drain import Burst, Watermarks, exact
from benchenv import ROOT, BenchEnv, count, log, wait_for

from app.demo import seed
from tests.integration.reference import actual_views, diff_views, expected_views


class Deployment:
    def __init__(self, env: BenchEnv, name: str, n: int, **settings: str) -> None:
        first = env.worker(name, **settings)
        self.name = name
        self.workers = [first] + [env.sibling(first, f"{name}-w{i}") for i in range(1, n)]
        self.dbs = first.dbs

    def start(self) -> None:
        for w in self.workers:
            w.start()

    def pause(self) -> None:
        for w in self.workers:
            w.pause()

    def resume(self) -> None:
        for w in self.workers:
            w.resume()

    def owners(self) -> dict[int, str]:
        with self.dbs["order"].connect() as conn:
            return {int(s): str(o) for s, o in conn.execute(
                sa.text("SELECT shard, owner FROM viewsync_shards"))}


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def drain_phase(env: BenchEnv, args: argparse.Namespace, n_products: int, n_batches: int,
                lines: list[str]) -> None:
    counts = [int(n) for n in args.workers.split(",")]
    deployments = [Deployment(env, f"n{n}", n, VIEWSYNC_LEASE_SESSION_TIMEOUT_MS="300000")
                   for n in counts]
    exp = expected_views(env.source)
    for d in deployments:  # one at a time: each initial load has the machine to itself
        t0 = time.monotonic()
        d.start()
        wait_for(lambda d=d: not diff_views(exp, actual_views(d.dbs)), args.timeout,
                 f"{d.name}: the initial load", poll=2.0)
        log(f"{d.name}: initial load exact after {time.monotonic() - t0:.0f}s")
        d.pause()
    burst = Burst(env, n_products, n_batches)
    marks = Watermarks(env)
    kinds = [k for k in args.bursts.split(",") if k]
    results: dict[tuple[str, int], list[float]] = {}
    last = None
    for rnd in range(args.rounds):
        for kind in kinds:
            for i, d in enumerate(deployments):
                d.resume()
                if last is not None:  # catch up on the other deployments' bursts, untimed
                    wait_for(lambda d=d, last=last: last(d.workers[0]), args.timeout,
                             f"{d.name}: catching up", poll=0.2)
                burst.prepare(kind)
                hw = marks.total()
                t0 = time.monotonic()
                changes, visible = getattr(burst, kind)(rnd * 10 + i)
                wait_for(lambda hw=hw, n=changes: marks.total() >= hw + n, args.timeout,
                         "the burst in Kafka", poll=0.01)
                wait_for(lambda d=d, visible=visible: visible(d.workers[0]), args.timeout,
                         f"{d.name}: {kind} burst", poll=0.02)
                secs = time.monotonic() - t0
                diffs = exact(env, d.workers[0])
                last = visible
                rate = changes / secs
                results.setdefault((kind, len(d.workers)), []).append(rate)
                log(f"round {rnd} {kind} {d.name}: {changes} changes visible after "
                    f"{secs:.2f}s = {rate:,.0f} changes/s, {diffs} differences")
                if diffs:
                    raise AssertionError(f"{d.name}: {diffs} differences after a {kind} burst")
                d.pause()
    for d in deployments:
        d.resume()
        for w in d.workers:
            w.stop()
    lines += ["## Drain: changes/s until every view shows the burst (median of "
              f"{args.rounds} rounds)", "",
              "| burst | " + " | ".join(f"{n} worker{'s' if n > 1 else ''}" for n in counts)
              + " |", "|---|" + "---|" * len(counts)]
    for kind in kinds:
        base = median(results[(kind, counts[0])])
        cells = [f"{median(results[(kind, n)]):,.0f} ({median(results[(kind, n)]) / base:.2f}×)"
                 for n in counts]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", "Every round: 0 differences against the reference join afterwards.", ""]


def failover_phase(env: BenchEnv, args: argparse.Namespace, lines: list[str]) -> None:
    d = Deployment(env, "fo", 2)
    exp = expected_views(env.source)
    t0 = time.monotonic()
    d.start()
    wait_for(lambda: not diff_views(exp, actual_views(d.dbs)), args.timeout,
             "fo: the initial load", poll=2.0)
    log(f"fo: initial load exact after {time.monotonic() - t0:.0f}s")
    shards = int(d.workers[0].env.get("VIEWSYNC_SHARDS", "12"))
    with env.source.connect() as conn:
        ids = [int(r[0]) for r in conn.execute(sa.text(
            "SELECT p.id FROM products p JOIN categories c ON c.id = p.category_id "
            "ORDER BY p.id LIMIT 2000"))]
    pauses: dict[str, list[float]] = {"kill -9": [], "clean stop": []}

    def settled() -> bool:
        o = d.owners()
        return len(o) == shards and set(o.values()) == {w.name for w in d.workers}

    for rnd in range(args.failover_rounds):
        for how in pauses:
            wait_for(settled, 120, "both workers owning shards", poll=0.2)
            time.sleep(2.0)
            owners = d.owners()
            victim = d.workers[rnd % 2]
            pid = next(i for i in ids if owners[i % shards] == victim.name)
            if how == "kill -9":
                victim.kill()
            else:
                victim.stop()
            t0 = time.monotonic()
            name = f"fo-{rnd}-{how}"
            with env.source.begin() as conn:
                conn.execute(sa.text("UPDATE products SET name = :n WHERE id = :i"),
                             {"n": name, "i": pid})
            wait_for(lambda name=name, pid=pid: count(
                d.dbs["order"], "SELECT COUNT(*) FROM product_view WHERE product_id = :i "
                "AND name = :n", i=pid, n=name) == 1, 300, f"{how}: the change", poll=0.02)
            secs = time.monotonic() - t0
            pauses[how].append(secs)
            log(f"failover round {rnd}, {how} of {victim.name}: the change of product {pid} "
                f"(its shard) visible after {secs:.2f}s")
            victim.start()
    diffs = exact(env, d.workers[0])
    for w in d.workers:
        w.stop()
    timeout = d.workers[0].settings.lease_session_timeout_ms / 1000
    lines += [f"## Failover pause (2 workers, lease session timeout {timeout:.0f} s)", "",
              "From the moment a worker is killed or stopped to a change of a product in one "
              "of its shards being visible in the Order DB (median of "
              f"{args.failover_rounds} rounds; all rounds: "
              + "; ".join(f"{k} {', '.join(f'{x:.1f}' for x in v)} s"
                          for k, v in pauses.items()) + ").", "",
              "| how | pause (median) |", "|---|---|"]
    lines += [f"| {k} | {median(v):.1f} s |" for k, v in pauses.items()]
    lines += ["", f"Afterwards: {diffs} differences against the reference join.", ""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--products", type=int, default=100_000)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bursts", default="price,rename")
    ap.add_argument("--failover-rounds", type=int, default=3)
    ap.add_argument("--phases", default="drain,failover")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "reports" / "scale.md")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    env = BenchEnv(keep=args.keep)
    lines: list[str] = []
    try:
        t0 = time.monotonic()
        seeded = seed(env.settings, products=args.products, seed=11)
        log(f"seeded {seeded} in {time.monotonic() - t0:.1f}s")
        env.start_connector()
        phases = args.phases.split(",")
        if "drain" in phases:
            drain_phase(env, args, seeded["products"], seeded["batches"], lines)
        if "failover" in phases:
            failover_phase(env, args, lines)
    finally:
        s = env.settings
        head = [f"# Scale-out bench ({time.strftime('%Y-%m-%d')})", "",
                f"`bench/bench_scale.py --products {args.products} --workers {args.workers} "
                f"--rounds {args.rounds} --phases {args.phases}`; {platform.machine()}, "
                f"{os.cpu_count()} cores; source topics with {s.source_partitions} partitions "
                f"(products, batches), {s.shards} shards; bench stack, JVM profile "
                f"{s.jvm_profile}.", ""]
        args.out.write_text("\n".join(head + lines) + "\n")
        log(f"report: {args.out}")
        env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
