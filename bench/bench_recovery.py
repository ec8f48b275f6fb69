"""Recovery after a crash of each component: SIGKILL, start, time until every view is exact.

For each component of the stack (Kafka, Kafka Connect, the registry, the Product DB, the
Purchase DB, the Order DB) and for the worker: a seeded random workload runs, the component
is killed with SIGKILL right after a burst (Debezium and the worker are busy with it), more
changes are made while it is down (not for the Product DB itself), it is started again
(``back``: it answers its readiness check), one probe change is committed, and the clock runs
until every view equals the reference join row by row (``exact``). The goal is ``exact`` at
most 15 s after ``back``. Each case is repeated ``--rounds`` times; medians are reported.

Runs on the ``bench`` stack instance (see ``benchenv``) in a tagged Product database; writes
``bench/reports/recovery.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from benchenv import ROOT, BenchEnv, log

from tests.integration.faults import kill9, start_again
from tests.integration.reference import actual_views, diff_views, expected_views
from tests.integration.workload import Workload

COMPONENTS = ("kafka", "connect", "registry", "product-db", "purchase-db", "order-db", "worker")
GOAL_S = 15.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--components", default=",".join(COMPONENTS),
                    help=f"comma-separated subset of {','.join(COMPONENTS)}")
    ap.add_argument("--down-for", type=float, default=3.0,
                    help="seconds a killed component stays down (default 3)")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--connector-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a connector setting (e.g. the previous "
                    "connect.keep.alive.interval.ms=60000, for a before/after run)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "reports" / "recovery.md")
    args = ap.parse_args()
    wanted = [c for c in args.components.split(",") if c]
    unknown = set(wanted) - set(COMPONENTS)
    if unknown:
        ap.error(f"unknown components: {', '.join(sorted(unknown))}")

    env = BenchEnv(keep=args.keep)
    w = env.worker("w")
    results: dict[str, list[tuple[float, float]]] = {c: [] for c in wanted}
    failures: list[str] = []
    try:
        env.start_connector(dict(kv.split("=", 1) for kv in args.connector_set))
        w.start()
        wl = Workload(env.source, seed=11)
        wl.run(200)
        wait_exact(env, w.dbs, args.timeout)
        log("warmed up: views exact")
        for rnd in range(args.rounds):
            for comp in wanted:
                wl.rng = random.Random(1000 * rnd + COMPONENTS.index(comp))
                wl.run(80)
                t_kill = time.monotonic()
                if comp == "worker":
                    w.kill()
                else:
                    kill9(env.stack, comp)
                if comp != "product-db":
                    wl.run(40)
                time.sleep(max(0.0, args.down_for - (time.monotonic() - t_kill)))
                if comp == "worker":
                    w.start()
                else:
                    start_again(env.stack, comp)
                t_back = time.monotonic()
                probe(env.source)
                try:
                    t_exact = wait_exact(env, w.dbs, args.timeout)
                except TimeoutError as exc:
                    failures.append(f"{comp} round {rnd + 1}: {exc}")
                    log(failures[-1])
                    continue
                results[comp].append((t_exact - t_back, t_exact - t_kill))
                log(f"{comp} round {rnd + 1}: exact {t_exact - t_back:.1f}s after back, "
                    f"{t_exact - t_kill:.1f}s after the kill")
    finally:
        env.close()
        write_report(args, results, failures)
    return 1 if failures else 0


def probe(source: sa.Engine) -> None:
    """One committed change after the component is back (the clock's reference point)."""
    pid = (1 << 38) + random.randrange(1 << 30)
    with source.begin() as conn:
        conn.execute(sa.text("INSERT INTO categories VALUES (:i, NULL, 'probe', 'Probe')"),
                     {"i": pid})
        conn.execute(sa.text(
            "INSERT INTO products (id, sku, name, category_id, warranty_type_id, unit, price, "
            "status) VALUES (:i, :s, 'Probe', :i, NULL, 'pcs', 1.00, 'active')"),
            {"i": pid, "s": f"PROBE-{pid}"})


def wait_exact(env: BenchEnv, dbs: dict[str, sa.Engine], timeout: float) -> float:
    """The monotonic time at which every view first equals the reference join."""
    deadline = time.monotonic() + timeout
    problems: list[str] = []
    while time.monotonic() < deadline:
        try:
            problems = diff_views(expected_views(env.source), actual_views(dbs))
        except sa.exc.DBAPIError as exc:  # a database still starting
            problems = [f"cannot read: {str(exc.orig).splitlines()[0]}"]
        if not problems:
            return time.monotonic()
        time.sleep(0.25)
    raise TimeoutError(f"not exact after {timeout:.0f}s: {len(problems)} differences, e.g. "
                       + "; ".join(problems[:3]))


def write_report(args: argparse.Namespace, results: dict[str, list[tuple[float, float]]],
                 failures: list[str]) -> None:
    lines = [
        "# Recovery after SIGKILL of each component", "",
        f"`bench/bench_recovery.py --rounds {args.rounds} --down-for {args.down_for}"
        + "".join(f" --connector-set {kv}" for kv in args.connector_set) + "` on "
        f"{platform.machine()}, {os.cpu_count()} CPUs, the `bench` stack instance (JVM profile "
        f"`{os.environ.get('VIEWSYNC_JVM_PROFILE', 'production')}`), one worker. A seeded "
        "random workload on all four tables; the component is killed right after a burst, "
        f"stays down ~{args.down_for:.0f} s (changes keep coming, except when the Product DB "
        "is the one down), is started again (**back** = it answers its readiness check), one "
        "probe change is committed, and the clock stops when every view equals the reference "
        f"join row by row (**exact**). Goal: exact ≤ {GOAL_S:.0f} s after back. Medians of "
        "the rounds (all rounds in brackets).", "",
        "| killed | exact after back (median) | rounds | exact after the kill (median) | goal |",
        "|---|---|---|---|---|",
    ]
    for comp, rows in results.items():
        if not rows:
            lines.append(f"| {comp} | — | — | — | not measured |")
            continue
        back = [r[0] for r in rows]
        kill = [r[1] for r in rows]
        med = statistics.median(back)
        lines.append(
            f"| {comp} | {med:.1f} s | {', '.join(f'{b:.1f}' for b in back)} | "
            f"{statistics.median(kill):.1f} s | {'met' if med <= GOAL_S else 'MISSED'} |")
    if failures:
        lines += ["", "Failures:", *[f"- {f}" for f in failures]]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
