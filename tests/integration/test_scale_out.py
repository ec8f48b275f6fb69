"""N workers of one deployment on partitioned source topics: workers started, killed -9,
added and stopped for good while a seeded random workload runs; every view ends exactly the
reference join, and every shard is owned by a live worker.

The session's ``worker`` is stopped for these cases (a deployment of its own would fence
these workers off the views, as it should) and started again afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.connectors import ConnectClient
from app.settings import Settings, load_settings
from app.sink import create_view_tables
from app.stack.manager import Stack, StackError, ensure_source_topics
from tests.integration.conftest import LIVE_TIMEOUT, ROOT, WorkerProcess
from tests.integration.reference import actual_views, diff_views, expected_views
from tests.integration.workload import Workload

SHARDS = Settings().shards  # the session worker's: one shard count per set of views


class Deployment:
    def __init__(self, tmp: Path, **env: str) -> None:
        self.tmp = tmp
        self.id = f"it-{uuid.uuid4().hex[:8]}"
        self.workers: dict[str, WorkerProcess] = {}
        self.env = env

    def start(self, name: str) -> WorkerProcess:
        w = self.workers.get(name)
        if w is None:
            w = self.workers[name] = WorkerProcess(
                self.tmp, worker_id=self.id, name=name,
                **{"VIEWSYNC_SHARDS": str(SHARDS), **self.env})
        w.start()
        return w

    def running(self) -> list[WorkerProcess]:
        return [w for w in self.workers.values() if w.alive()]

    def logs(self) -> str:
        return "\n".join(f"--- {w.name} ---\n{w.tail(25)}" for w in self.workers.values())

    def stop_all(self) -> None:
        for w in self.workers.values():
            w.stop()


@pytest.fixture
def deployment(exclusive: None, tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(tmp_path)
    try:
        yield d
    finally:
        d.stop_all()


def converge(product_db: sa.Engine, consumer_dbs: dict[str, sa.Engine],
             workers: Sequence[WorkerProcess], d: Deployment,
             timeout: float = LIVE_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        problems = diff_views(expected_views(product_db), actual_views(consumer_dbs))
        if not problems:
            return
        dead = [w.name for w in workers if not w.alive()]
        if dead or time.monotonic() > deadline:
            why = f"workers exited: {dead}" if dead else f"no convergence in {timeout:.0f}s"
            shown = "\n".join(problems[:40])
            pytest.fail(f"{why}; {len(problems)} differences:\n{shown}\n{d.logs()}",
                        pytrace=False)
        time.sleep(0.5)


def owners(consumer_dbs: dict[str, sa.Engine]) -> dict[str, dict[int, str]]:
    out = {}
    for name, engine in consumer_dbs.items():
        with engine.connect() as conn:
            out[name] = {int(s): str(o) for s, o in conn.execute(
                sa.text("SELECT shard, owner FROM viewsync_shards"))}
    return out


def wait_owned(consumer_dbs: dict[str, sa.Engine], names: set[str], d: Deployment,
               timeout: float = LIVE_TIMEOUT) -> None:
    """Every shard claimed in every database by one of ``names`` (and every name owning)."""
    deadline = time.monotonic() + timeout
    while True:
        got = owners(consumer_dbs)
        ok = all(set(o) >= set(range(SHARDS))
                 and {o[s] for s in range(SHARDS)} == names for o in got.values())
        if ok:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"shards not owned by {sorted(names)} within {timeout:.0f}s: {got}\n"
                        + d.logs(), pytrace=False)
        time.sleep(0.25)


def wait_taken_over(consumer_dbs: dict[str, sa.Engine], d: Deployment,
                    timeout: float = LIVE_TIMEOUT) -> None:
    """Every shard of every database has recorded positions: taken over after a reset."""
    deadline = time.monotonic() + timeout
    while True:
        left = {}
        for name, engine in consumer_dbs.items():
            with engine.connect() as conn:
                left[name] = sorted(int(s) for (s,) in conn.execute(sa.text(
                    "SELECT shard FROM viewsync_shards WHERE positions IS NULL")))
        if not any(left.values()):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"shards with no positions after {timeout:.0f}s: {left}\n{d.logs()}",
                        pytrace=False)
        time.sleep(0.25)


def _products_on_two_shards(wl: Workload, conn: sa.Connection) -> tuple[int, int]:
    """Two products whose rows are in different shards, in a root category of their own
    (none of them in the workload's model: it never moves or deletes them)."""
    cat = wl._id()
    conn.execute(sa.text("INSERT INTO categories VALUES (:i, NULL, :c, 'Movers')"),
                 {"i": cat, "c": f"m{cat}"})
    ids = []
    for shard in (1, 4):
        pid = wl._id()
        while pid % SHARDS != shard:
            pid = wl._id()
        conn.execute(sa.text(
            "INSERT INTO products VALUES (:i, :s, 'Mover', :c, NULL, 'pcs', 1.00, 'active')"),
            {"i": pid, "s": f"MOVE-{pid}", "c": cat})
        ids.append(pid)
    return ids[0], ids[1]


def _two_workers(product_db: sa.Engine, consumer_dbs: dict[str, sa.Engine],
                 d: Deployment) -> tuple[Workload, WorkerProcess, WorkerProcess]:
    """A seeded workload and workers w1 and w2, converged, owning the shards between them."""
    seed = random.randrange(1 << 30)
    print(f"\nworkload seed: {seed}")
    wl = Workload(product_db, seed=seed)
    w1, w2 = d.start("w1"), d.start("w2")
    wl.run(40)
    converge(product_db, consumer_dbs, [w1, w2], d)
    wait_owned(consumer_dbs, {"w1", "w2"}, d)
    return wl, w1, w2


def test_workers_come_and_go_and_every_view_stays_exact(
    stack: Stack, settings: Settings, product_db: sa.Engine,
    consumer_dbs: dict[str, sa.Engine], deployment: Deployment,
) -> None:
    assert settings.source_partitions >= 4
    d = deployment
    wl, w1, w2 = _two_workers(product_db, consumer_dbs, d)

    # kill -9 one worker while the workload runs; its shards move to the other; then it
    # comes back
    busy = threading.Thread(target=wl.run, args=(120,))
    busy.start()
    time.sleep(1.0)
    w1.kill()
    busy.join()
    wait_owned(consumer_dbs, {"w2"}, d)
    converge(product_db, consumer_dbs, [w2], d)
    d.start("w1")
    wl.run(20)

    # a third worker joins (rebalance) while a batch moves P1 -> P2 -> P1 between products
    # on different shards and a category subtree moves
    with product_db.begin() as conn:
        p1, p2 = _products_on_two_shards(wl, conn)
        bid = wl._id()
        conn.execute(sa.text("INSERT INTO batches VALUES (:b, :p, 'MOVING', NULL, NULL)"),
                     {"b": bid, "p": p1})
    w3 = d.start("w3")
    for target in (p2, p1, p2, p1):
        with product_db.begin() as conn:
            conn.execute(sa.text("UPDATE batches SET product_id = :p WHERE id = :b"),
                         {"p": target, "b": bid})
        with product_db.begin() as conn:
            wl.move_category(conn)
        time.sleep(0.3)
    converge(product_db, consumer_dbs, [w1, w2, w3], d)
    with consumer_dbs["purchase"].connect() as conn:
        assert conn.execute(sa.text("SELECT product_id FROM batch_view WHERE batch_id = :b"),
                            {"b": bid}).scalar_one() == p1
    wl.run(40)
    converge(product_db, consumer_dbs, [w1, w2, w3], d)
    wait_owned(consumer_dbs, {"w1", "w2", "w3"}, d)

    # one worker stops for good: its shards move to the others
    before = len(w3.log.read_text())
    w2.stop()
    wl.run(60)
    wait_owned(consumer_dbs, {"w1", "w3"}, d)
    converge(product_db, consumer_dbs, [w1, w3], d)
    deadline = time.monotonic() + LIVE_TIMEOUT  # logged once the takeover completes
    while "taken over" not in w3.log.read_text()[before:]:
        assert time.monotonic() < deadline, d.logs()
        time.sleep(0.25)


def test_a_worker_paused_past_its_lease_is_fenced_and_every_view_stays_exact(
    stack: Stack, product_db: sa.Engine,
    consumer_dbs: dict[str, sa.Engine], deployment: Deployment,
) -> None:
    """A worker frozen (SIGSTOP) longer than its lease session while the workload runs: the
    group gives its shards to the other worker, which claims them. Thawed, the frozen worker
    goes on from where it stood — its next writes carry the old epochs and are refused —,
    gives its shards up, rejoins the group, and takes its share again. No write of the old
    owner lands after the new owner's claim: the views end exactly the join."""
    d = deployment
    d.env["VIEWSYNC_SINK_IDLE_TRANSACTION_TIMEOUT_S"] = "3"
    wl, w1, w2 = _two_workers(product_db, consumer_dbs, d)

    busy = threading.Thread(target=wl.run, args=(150,))
    busy.start()
    time.sleep(1.0)
    w1.pause()
    try:
        # Past the lease session the group gives w2 every shard, and w2 claims them while
        # w1 is still frozen — even when w1 froze inside a write that holds shard rows: the
        # database ends that session after VIEWSYNC_SINK_IDLE_TRANSACTION_TIMEOUT_S.
        wait_owned(consumer_dbs, {"w2"}, d, timeout=60)
    finally:
        w1.resume()
    busy.join()
    wait_owned(consumer_dbs, {"w1", "w2"}, d)  # w1 back in the group, owning again
    converge(product_db, consumer_dbs, [w1, w2], d)
    wl.run(30)
    converge(product_db, consumer_dbs, [w1, w2], d)
    assert w1.alive() and w2.alive(), d.logs()
    print("w1 fenced and gave up:", "gives up shards" in w1.log.read_text())


def _cli(d: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=300,
                          env=dict(os.environ, VIEWSYNC_WORKER_ID=d.id, **d.env))


def test_the_shard_count_changes_with_the_workers_stopped_and_the_views_stay_exact(
    stack: Stack, product_db: sa.Engine, consumer_dbs: dict[str, sa.Engine],
    deployment: Deployment,
) -> None:
    """The documented procedure: stop every worker, `viewsync shards reshard N`, start them
    with VIEWSYNC_SHARDS=N. Changes made meanwhile, and after, reach every view."""
    wl = Workload(product_db, seed=random.randrange(1 << 30))
    d = deployment
    w1, w2 = d.start("w1"), d.start("w2")
    wl.run(40)
    converge(product_db, consumer_dbs, [w1, w2], d)
    wait_owned(consumer_dbs, {"w1", "w2"}, d)  # both caught up and in the lease group
    refused = _cli(d, "shards", "reshard", "8")
    assert refused.returncode == 1 and "stop every one of them" in refused.stderr
    w1.stop()
    w2.stop()
    wl.run(30)  # nobody writes the views now
    try:
        done = _cli(d, "shards", "reshard", "8")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "starts from the positions all old shards had reached" in done.stdout
        for w in (w1, w2):
            w.env["VIEWSYNC_SHARDS"] = "8"
            w.start()
        wl.run(30)
        converge(product_db, consumer_dbs, [w1, w2], d)
        deadline = time.monotonic() + LIVE_TIMEOUT
        while True:  # both workers back in the group, owning the 8 shards between them
            got = owners(consumer_dbs)
            status = json.loads(_cli(d, "shards", "status", "--json").stdout)
            if len(status["workers"]) == 2 and all(
                    set(o) == set(range(8)) and set(o.values()) == {"w1", "w2"}
                    for o in got.values()):
                break
            assert time.monotonic() < deadline, (got, status["workers"])
            time.sleep(1.0)
    finally:
        d.stop_all()
        back = _cli(d, "shards", "reshard", str(SHARDS))  # the session worker's count
        assert back.returncode == 0, back.stdout + back.stderr


def _delete_topics(settings: Settings, prefix: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.bootstrap()})
    names = [t for t in admin.list_topics(timeout=30).topics
             if t.startswith(prefix) or t == f"_schema-history.{prefix}"]
    for fut in admin.delete_topics(names).values():
        fut.result(30)


def _create_topics(settings: Settings) -> None:
    deadline = time.monotonic() + 60
    while True:  # a topic being deleted cannot be created again for a moment
        try:
            ensure_source_topics(settings)
            return
        except StackError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def test_the_source_partitions_change_by_the_documented_procedure(
    stack: Stack, settings: Settings, product_db: sa.Engine, tmp_path: Path,
) -> None:
    """README, "Changing the source partitions": stop the connector and the workers, delete
    the source topics, `viewsync shards reshard N --reset`, snapshot into topics with the new
    partition count, start the workers with fresh data directories; the views (never
    emptied) end exact. Own connector, topics and consumer databases."""
    tag = f"repart{random.randrange(10**6)}"
    stack.defn.psql(f'CREATE DATABASE "order_{tag}" OWNER "{settings.db_user}"')
    stack.defn.mariadb_sql("purchase-db", f"CREATE DATABASE purchase_{tag}")
    urls = {c: settings.consumer_url(c).rsplit("/", 1)[0] + f"/{c}_{tag}"
            for c in ("order", "purchase")}
    env = {"VIEWSYNC_TOPIC_PREFIX": tag, "VIEWSYNC_ORDER_DB_URL": urls["order"],
           "VIEWSYNC_PURCHASE_DB_URL": urls["purchase"]}
    before = load_settings(topic_prefix=tag, connector_name=f"{tag}-a", source_partitions=2,
                           order_db_url=urls["order"], purchase_db_url=urls["purchase"])
    after = load_settings(topic_prefix=tag, connector_name=f"{tag}-b", source_partitions=6,
                          order_db_url=urls["order"], purchase_db_url=urls["purchase"])
    engines = {c: sa.create_engine(u) for c, u in urls.items()}
    d = Deployment(tmp_path, **env)
    wl = Workload(product_db, seed=random.randrange(1 << 30))
    try:
        create_view_tables(before)
        _create_topics(before)
        ConnectClient(before).apply()
        ConnectClient(before).wait_running(timeout=120)
        w1, w2 = d.start("a1"), d.start("a2")
        wl.run(30)
        converge(product_db, engines, [w1, w2], d, timeout=300)
        # the procedure
        for w in (w1, w2):
            w.stop()
        ConnectClient(before).delete()
        _delete_topics(settings, tag)
        wl.run(30)  # while nothing runs: these arrive through the fresh snapshot
        _create_topics(after)
        reset = _cli(d, "shards", "reshard", str(SHARDS), "--reset")
        assert reset.returncode == 0, reset.stdout + reset.stderr
        ConnectClient(after).apply()
        ConnectClient(after).wait_running(timeout=120)
        w3, w4 = d.start("b1"), d.start("b2")  # fresh data directories
        wl.run(30)
        converge(product_db, engines, [w3, w4], d, timeout=300)
        # The views can equal the join as soon as a rebuild's rows are written; the shards'
        # positions are recorded when their takeover completes, a moment later.
        wait_taken_over(engines, d)
    finally:
        d.stop_all()
        for s in (before, after):
            with contextlib.suppress(Exception):
                ConnectClient(s).delete()
        with contextlib.suppress(Exception):
            _delete_topics(settings, tag)
        for e in engines.values():
            e.dispose()
        stack.defn.psql(f'DROP DATABASE IF EXISTS "order_{tag}" WITH (FORCE)')
        stack.defn.mariadb_sql("purchase-db", f"DROP DATABASE IF EXISTS purchase_{tag}")
