"""Break everything, lose nothing: faults while a seeded random workload runs on all four
tables, then a row-by-row comparison of every view with the reference join.

Every case runs on the tests' own stack (``conftest``), so killing its servers never touches
the user's. Recovery *times* are measured by ``bench/bench_recovery.py``; here the only
timeouts are generous upper bounds.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, Producer, TopicPartition

from app.connectors import ConnectClient, ConnectError
from app.settings import Settings
from app.stack.manager import Stack
from app.supervisor import all_running
from app.topic_range import end_offsets, partitions
from tests.integration.conftest import WorkerProcess, wait_converged, wait_live
from tests.integration.faults import kill9, start_again, stop_clean
from tests.integration.reference import actual_views, diff_views, expected_views
from tests.integration.workload import Workload

RECOVERY_TIMEOUT = 240.0


def _seeded(product_db: sa.Engine) -> Workload:
    seed = random.randrange(1 << 30)
    print(f"\nworkload seed: {seed}")
    return Workload(product_db, seed=seed)


# ------------------------------------------------------------------ clean restarts / outages
@pytest.mark.parametrize(
    ("component", "down_for"),
    [("purchase-db", 5.0), ("connect", 0.0), ("kafka", 3.0), ("order-db", 30.0)],
    ids=["purchase-db-outage", "connect-restart", "kafka-broker-restart",
         "order-db-unreachable-30s"],
)
def test_views_converge_across_a_clean_stop_of(
    component: str, down_for: float, stack: Stack, product_db: sa.Engine,
    consumer_dbs: dict[str, sa.Engine], worker: WorkerProcess,
) -> None:
    """A component stopped cleanly and kept down while changes flow (the Order DB for 30 s:
    every connection refused), then started again; the same worker process carries on."""
    wait_live(product_db, consumer_dbs, worker)
    wl = _seeded(product_db)
    wl.run(30)
    stop_clean(stack, component)
    deadline = time.monotonic() + down_for
    wl.run(60)
    while time.monotonic() < deadline:
        wl.run(2)
        time.sleep(0.5)
    start_again(stack, component)
    wl.run(30)
    wait_converged(product_db, consumer_dbs, worker, timeout=RECOVERY_TIMEOUT)
    assert worker.alive()
    if component.endswith("-db"):
        assert "sink write failed" in worker.log.read_text(), "the outage was never noticed"


# ------------------------------------------------------------------ kill -9 of a component
@pytest.mark.parametrize(
    "component", ["kafka", "connect", "registry", "product-db", "purchase-db", "order-db"])
def test_views_converge_after_kill_9_of(
    component: str, stack: Stack, product_db: sa.Engine,
    consumer_dbs: dict[str, sa.Engine], worker: WorkerProcess,
) -> None:
    """SIGKILL of one component right after a burst (Debezium and the worker are busy with
    it), more changes while it is down (except for the Product DB itself), a start, more
    changes: every view exact again, with the same worker process."""
    wait_live(product_db, consumer_dbs, worker)
    wl = _seeded(product_db)
    wl.run(80)
    kill9(stack, component)
    if component != "product-db":
        wl.run(40)
    start_again(stack, component)
    wl.run(40)
    wait_converged(product_db, consumer_dbs, worker, timeout=RECOVERY_TIMEOUT)
    assert worker.alive(), worker.tail()


def test_worker_killed_in_the_middle_of_a_sink_transaction(
    stack: Stack, settings: Settings, product_db: sa.Engine,
    consumer_dbs: dict[str, sa.Engine], worker: WorkerProcess,
) -> None:
    """The Purchase DB transaction writes product_view, then blocks on batch_view (locked by
    another session); the worker is SIGKILLed right there. Its open transaction dies with
    it; the next start rewrites what was not committed."""
    wait_live(product_db, consumer_dbs, worker)
    wl = _seeded(product_db)
    wl.run(20)
    wait_converged(product_db, consumer_dbs, worker, timeout=RECOVERY_TIMEOUT)
    purchase = consumer_dbs["purchase"]
    with purchase.connect() as locker:
        locker.execute(sa.text("LOCK TABLES batch_view WRITE"))
        try:
            while not _waiting_on_lock(purchase):
                wl.run(5)  # changes that touch both product_view and batch_view
                time.sleep(0.3)
                assert worker.alive(), worker.tail()
            worker.kill()
        finally:
            locker.execute(sa.text("UNLOCK TABLES"))
    wl.run(40)
    worker.start()
    wl.run(40)
    wait_converged(product_db, consumer_dbs, worker, timeout=RECOVERY_TIMEOUT)


def _waiting_on_lock(engine: sa.Engine) -> bool:
    """A worker statement on batch_view is waiting for the table lock."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT state, info FROM information_schema.processlist "
            "WHERE info LIKE '%batch_view%' AND state LIKE '%lock%'")).all()
    return bool(rows)


# ------------------------------------------------------------------ registry, cold cache
def test_registry_down_while_a_worker_starts_with_an_empty_schema_cache(
    stack: Stack, settings: Settings, product_db: sa.Engine,
    consumer_dbs: dict[str, sa.Engine], worker: WorkerProcess,
) -> None:
    """The worker restarts (empty schema cache) while the registry is down: it waits for
    the registry — no crash loop, no dead letters for good records — and converges once the
    registry is back."""
    wait_live(product_db, consumer_dbs, worker)
    before = _dead_letter_end(settings)
    worker.stop()
    wl = _seeded(product_db)
    wl.run(30)  # Connect still has the schemas cached: these reach Kafka
    time.sleep(3)
    kill9(stack, "registry")
    try:
        worker.start()
        wl.run(30)
        time.sleep(10)
        assert worker.alive(), "the worker gave up while the registry was down:\n" + (
            worker.tail())
    finally:
        start_again(stack, "registry")
    wl.run(20)
    wait_converged(product_db, consumer_dbs, worker, timeout=RECOVERY_TIMEOUT)
    assert _dead_letter_end(settings) == before, "good records were dead-lettered"


# ------------------------------------------------------------------ the connector heals itself
#: How long the registry stays down, and how long the connector may take to run again after.
REGISTRY_DOWN_S = 25.0
HEAL_TIMEOUT = 180.0


def test_registry_outage_after_a_connect_restart_heals_without_a_manual_restart(
    stack: Stack, settings: Settings, product_db: sa.Engine,
    consumer_dbs: dict[str, sa.Engine], worker: WorkerProcess,
) -> None:
    """Kafka Connect SIGKILLed and started again (its converters' schema caches cold), then
    the registry stopped for 25 s while source changes are made: the source task fails at its
    first record (Connect's error retries do not cover the Apicurio converter's registry
    errors) — and runs again by itself once the registry is back, with no `viewsync connectors
    restart`: the worker's supervisor (``app.supervisor``) restarts the FAILED task with
    backoff and says so in its log. Every view exact again.

    ``VIEWSYNC_TEST_SUPERVISE=false`` runs the same with the worker's supervisor off: then the
    test fails (the task stays FAILED), and heals the connector itself for the tests after it.
    """
    supervise = os.environ.get("VIEWSYNC_TEST_SUPERVISE", "true") != "false"
    client = ConnectClient(settings)
    client.apply()  # this checkout's config: its error-retry settings
    client.wait_running(timeout=120)
    env = dict(worker.env)
    if not supervise:
        worker.stop()
        worker.env = dict(env, VIEWSYNC_CONNECTOR_SUPERVISE="false")
        worker.start()
    try:
        wait_live(product_db, consumer_dbs, worker)
        logged = len(worker.log.read_text(errors="replace"))
        wl = _seeded(product_db)
        wl.run(40)
        kill9(stack, "connect")
        start_again(stack, "connect")
        stop_clean(stack, "registry")  # before the restarted task has converted a record
        failed = ""
        try:
            deadline = time.monotonic() + REGISTRY_DOWN_S
            while time.monotonic() < deadline:
                wl.run(3)
                failed = failed or next((t.get("trace", "") for t in _status(client)
                                         .get("tasks", []) if t["state"] == "FAILED"), "")
                time.sleep(0.5)
        finally:
            start_again(stack, "registry")
        assert failed, ("the source task never failed while the registry was down: this test "
                        "no longer exercises the heal (did the converters keep their caches?)")
        print("the task failed:", failed.strip().splitlines()[0][:300])
        t0 = time.monotonic()
        st = _status(client)
        while not all_running(st):
            assert time.monotonic() - t0 < HEAL_TIMEOUT, (
                f"the connector did not run again within {HEAL_TIMEOUT:.0f}s of the registry's "
                f"return (nothing restarted it): {st}\n--- worker log ---\n{worker.tail()}")
            time.sleep(1)
            st = _status(client)
        print(f"connector RUNNING again {time.monotonic() - t0:.1f}s after the registry's return")
        wl.run(30)
        wait_converged(product_db, consumer_dbs, worker, timeout=RECOVERY_TIMEOUT)
        restarts = [ln for ln in worker.log.read_text(errors="replace")[logged:].splitlines()
                    if "viewsync.supervisor" in ln and "restarting it" in ln]
        assert restarts, "the connector runs again, but the worker's supervisor never said so"
        print(f"{len(restarts)} restart(s) by the supervisor; the first: {restarts[0][:300]}")
        assert worker.alive(), worker.tail()
    finally:
        try:
            client.wait_running(timeout=10)
        except ConnectError as exc:
            print(f"the connector is not running ({str(exc)[:200]}): restarted for the tests "
                  "after this one")
            client.restart(only_failed=True)
            client.wait_running(timeout=120)
        if not supervise:
            worker.stop()
            worker.env = env
            worker.start()


def _status(client: ConnectClient) -> dict[str, Any]:
    """The connector's status now (empty while Connect is still starting)."""
    try:
        return client.status()
    except ConnectError:
        return {}


# ------------------------------------------------------------------ poison records
def _dead_letter_end(settings: Settings) -> int:
    c = Consumer({"bootstrap.servers": settings.bootstrap(), "group.id": "dlq-probe"})
    try:
        _low, high = c.get_watermark_offsets(
            TopicPartition(settings.dead_letter_topic, 0), timeout=10)
        return max(high, 0)
    finally:
        c.close()


def _dead_letters_from(settings: Settings, offset: int, n: int, timeout: float
                       ) -> Iterator[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
    c = Consumer({"bootstrap.servers": settings.bootstrap(),
                  "group.id": f"dlq-{uuid.uuid4().hex}", "enable.auto.commit": False})
    c.assign([TopicPartition(settings.dead_letter_topic, 0, offset)])
    got = 0
    deadline = time.monotonic() + timeout
    try:
        while got < n and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            got += 1
            yield msg.key(), msg.value(), {k: v for k, v in (msg.headers() or [])}
    finally:
        c.close()


def _product_key(settings: Settings, product_id: int) -> bytes:
    """A well-formed key of the products topic (the registry's key schema id, as Debezium
    writes it) for ``product_id``."""
    topic = settings.topic("products")
    c = Consumer({"bootstrap.servers": settings.bootstrap(),
                  "group.id": f"key-{uuid.uuid4().hex}", "enable.auto.commit": False})
    try:
        ends = end_offsets(settings, topic, partitions(settings, topic))
        c.assign([TopicPartition(topic, p, max(hi - 1, 0)) for p, hi in ends.items()])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and not msg.error() and (k := msg.key()) and k[:1] == b"\0":
                zigzag = (product_id << 1) ^ (product_id >> 63)
                varint = bytearray()
                while zigzag > 0x7F:
                    varint.append((zigzag & 0x7F) | 0x80)
                    zigzag >>= 7
                varint.append(zigzag)
                return bytes(k[:5]) + bytes(varint)
    finally:
        c.close()
    raise AssertionError("no record on the products topic to take the key schema id from")


def test_poison_records_are_dead_lettered_with_their_reason_and_nothing_else_is(
    settings: Settings, product_db: sa.Engine, consumer_dbs: dict[str, sa.Engine],
    worker: WorkerProcess,
) -> None:
    """Garbage bytes, a value with an unknown schema id, valid Avro of another schema (as key
    and as value), between good changes on the products topic: exactly those are
    dead-lettered, each with its reason and original bytes; every view stays exact. A record
    without a key never gets that far: the source topics are compacted and the broker refuses
    it (the decoder dead-letters one anyway, on a topic that is not compacted: unit tests)."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from fastavro import parse_schema, schemaless_writer

    wait_live(product_db, consumer_dbs, worker)
    before = _dead_letter_end(settings)
    marker = uuid.uuid4().hex.encode()
    registry = SchemaRegistryClient({"url": settings.registry_url()})
    other = '{"type":"record","name":"Other","namespace":"viewsync.test",' \
            '"fields":[{"name":"x","type":"string"}]}'
    other_id = registry.register_schema(f"viewsync-test-other-{marker.decode()}",
                                        Schema(other, "AVRO"))
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(json.loads(other)), {"x": marker.decode()})
    other_bytes = b"\x00" + struct.pack(">I", other_id) + buf.getvalue()
    # Keys of products that do not exist: a poison record must not shadow a real row's
    # latest record in the compacted topic.
    key = _product_key(settings, (1 << 39) + random.randrange(1 << 30))
    key2 = _product_key(settings, (1 << 39) + random.randrange(1 << 30))

    poison = {
        "garbage": (b"garbage-" + marker, b"\xff\x00not avro at all" + marker),
        "unknown-schema-id": (key, b"\x00" + struct.pack(">I", 2_000_000_000) + marker),
        "another-schema-value": (key2, other_bytes),
        "another-schema-key": (other_bytes, b"another-key-" + marker),
    }
    wl = _seeded(product_db)
    errors: list[str] = []
    p = Producer({"bootstrap.servers": settings.bootstrap()})

    def report(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    for k, v in poison.values():
        wl.run(10)
        p.produce(settings.topic("products"), key=k, value=v, on_delivery=report)
        assert p.flush(30) == 0
    assert not errors, errors
    p.produce(settings.topic("products"), key=None, value=b"null-key-" + marker,
              on_delivery=report)
    assert p.flush(30) == 0
    assert errors and "INVALID_RECORD" in errors[0], (
        f"the broker accepted a record without a key on a compacted topic: {errors}")
    wl.run(10)
    got = list(_dead_letters_from(settings, before, len(poison), timeout=120))
    wait_converged(product_db, consumer_dbs, worker, timeout=RECOVERY_TIMEOUT)
    time.sleep(2)
    assert _dead_letter_end(settings) == before + len(poison), (
        f"{_dead_letter_end(settings) - before} dead letters for {len(poison)} poison "
        "records:\n" + worker.tail())
    by_key = {k: (v, h) for k, v, h in got}
    for name, (k, v) in poison.items():
        assert k in by_key, f"{name} was not dead-lettered"
        value, headers = by_key[k]
        assert value == v, name  # nothing lost: the original bytes
        reason = headers["viewsync.reason"].decode()
        assert reason, name
        assert headers["viewsync.source"].startswith(settings.topic("products").encode())
        print(f"{name}: {reason[:160]}")
    assert b"2000000000" in by_key[poison["unknown-schema-id"][0]][1]["viewsync.reason"]
    assert worker.alive()


# ------------------------------------------------------------------ big transactions
def test_one_transaction_of_10k_rows_across_all_four_tables(
    product_db: sa.Engine, consumer_dbs: dict[str, sa.Engine], worker: WorkerProcess,
) -> None:
    base = (1 << 36) + random.randrange(1 << 30) * 100_000
    cats = [{"i": base + i, "p": None if i < 10 else base + i % 10, "c": f"c{i}",
             "n": f"Cat {i}"} for i in range(100)]
    wts = [{"i": base + i, "n": f"W {i}", "m": i} for i in range(100)]
    prods = [{"i": base + i, "s": f"BIG-{base + i}", "n": f"Big {i}", "c": base + i % 100,
              "w": base + i % 100 if i % 3 else None} for i in range(4_900)]
    batches = [{"i": base + i, "p": base + i % 4_900, "b": f"B{i}"} for i in range(4_900)]
    with product_db.begin() as conn:
        conn.execute(sa.text("INSERT INTO categories VALUES (:i, :p, :c, :n)"), cats)
        conn.execute(sa.text("INSERT INTO warranty_types VALUES (:i, :n, :m)"), wts)
        conn.execute(sa.text("INSERT INTO products VALUES (:i, :s, :n, :c, :w, 'pcs', 9.99, "
                             "'active')"), prods)
        conn.execute(sa.text("INSERT INTO batches VALUES (:i, :p, :b, '2024-01-01', NULL)"),
                     batches)
    wait_converged(product_db, consumer_dbs, worker, timeout=RECOVERY_TIMEOUT)
    # ... and one transaction that changes all of them again.
    with product_db.begin() as conn:
        conn.execute(sa.text("UPDATE categories SET name = CONCAT(name, '*') "
                             "WHERE id BETWEEN :a AND :b"), {"a": base, "b": base + 99})
        conn.execute(sa.text("UPDATE warranty_types SET months = months + 1 "
                             "WHERE id BETWEEN :a AND :b"), {"a": base, "b": base + 99})
        conn.execute(sa.text("UPDATE products SET price = price + 1 "
                             "WHERE id BETWEEN :a AND :b"), {"a": base, "b": base + 4_899})
        conn.execute(sa.text("DELETE FROM batches WHERE id BETWEEN :a AND :b"),
                     {"a": base, "b": base + 2_000})
    wait_converged(product_db, consumer_dbs, worker, timeout=RECOVERY_TIMEOUT)


# ------------------------------------------------------------------ schema evolution
def _ddl(product_db: sa.Engine, sql: str) -> None:
    with product_db.begin() as conn:
        conn.execute(sa.text(sql))


def test_schema_evolution_mid_stream(
    product_db: sa.Engine, consumer_dbs: dict[str, sa.Engine], worker: WorkerProcess,
) -> None:
    """A Product-service migration while changes flow: a column added (and written), then
    dropped again; a VARCHAR that the views carry widened and a longer value written. The
    views keep flowing and the longer value reaches every view (the sink widens the view
    column); the worker never stops."""
    wait_live(product_db, consumer_dbs, worker)
    wl = _seeded(product_db)
    wl.run(20)
    _ddl(product_db, "ALTER TABLE products ADD COLUMN note VARCHAR(64) NULL")
    try:
        wl.run(30)
        _ddl(product_db, "UPDATE products SET note = 'a note' ORDER BY id DESC LIMIT 20")
        wl.run(10)
        wait_converged(product_db, consumer_dbs, worker, timeout=RECOVERY_TIMEOUT)
    finally:
        _ddl(product_db, "ALTER TABLE products DROP COLUMN note")
    wl.run(30)
    wait_converged(product_db, consumer_dbs, worker, timeout=RECOVERY_TIMEOUT)

    _ddl(product_db, "ALTER TABLE products MODIFY name VARCHAR(600) NOT NULL")
    try:
        long_name = ("Łódź 𝔘nicode " * 40)[:420]
        cat = next(iter(wl.m.categories))
        pid = (1 << 37) + random.randrange(1 << 30)
        with product_db.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO products (id, sku, name, category_id, warranty_type_id, unit, "
                "price, status) VALUES (:i, :s, :n, :c, NULL, 'pcs', 1.00, 'active')"),
                {"i": pid, "s": f"LONG-{pid}", "n": long_name, "c": cat})
            conn.execute(sa.text("INSERT INTO batches VALUES (:i, :p, 'LONG', NULL, NULL)"),
                         {"i": pid, "p": pid})
            conn.execute(sa.text("UPDATE products SET name = :n ORDER BY id DESC LIMIT 5"),
                         {"n": long_name[:300]})
        wl.run(20)
        # Exact means the 420-character name is in all three views. (The view columns may
        # be wide already: the tests' stack keeps its view tables from one run to the next.)
        wait_converged(product_db, consumer_dbs, worker, timeout=RECOVERY_TIMEOUT)
    finally:
        _ddl(product_db, "UPDATE products SET name = LEFT(name, 255) WHERE CHAR_LENGTH(name) > 255")
        _ddl(product_db, "ALTER TABLE products MODIFY name VARCHAR(255) NOT NULL")
    wl.run(20)
    wait_converged(product_db, consumer_dbs, worker, timeout=RECOVERY_TIMEOUT)
    assert worker.alive()


# ------------------------------------------------------------------ binlog gap
def test_binlog_gap_fails_loudly_and_resnapshot_recovers_exactly(
    settings: Settings, product_db: sa.Engine, consumer_dbs: dict[str, sa.Engine],
    worker: WorkerProcess,
) -> None:
    """The connector stopped, changes (deletes among them) made, the binlog purged past the
    connector's position, the connector resumed: Debezium must refuse to go on (no silent
    skip). ``viewsync connectors resnapshot`` — the documented recovery — ends exact, and a
    second run finds nothing more to delete.

    The gap holds changes of the test's own that every view must show (a product added, one
    deleted, one renamed, in a root category): the random workload alone may change no view
    row (its products can all sit in categories that form a cycle, which no view shows).
    Whatever fails, the connector is left running for the tests after this one."""
    wait_live(product_db, consumer_dbs, worker)
    wl = _seeded(product_db)
    base = (1 << 36) + random.randrange(1 << 40)
    cat, kept, gone, added = base, base + 1, base + 2, base + 3
    with product_db.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO categories VALUES ({cat}, NULL, 'gap', 'Gap')"))
        for pid in (kept, gone):
            conn.execute(sa.text(
                f"INSERT INTO products VALUES ({pid}, 'GAP-{pid}', 'Before', {cat}, NULL, "
                "'pcs', 1.00, 'active')"))
            conn.execute(sa.text(
                f"INSERT INTO batches VALUES ({pid}, {pid}, 'GAP', '2024-01-01', NULL)"))
    wl.run(60)
    wait_converged(product_db, consumer_dbs, worker, timeout=RECOVERY_TIMEOUT)
    client = ConnectClient(settings)
    healthy = False
    try:
        client.stop()
        with product_db.begin() as conn:  # inside the gap
            conn.execute(sa.text(
                f"INSERT INTO products VALUES ({added}, 'GAP-{added}', 'Added', {cat}, NULL, "
                "'pcs', 1.00, 'active')"))
            conn.execute(sa.text(f"UPDATE products SET name = 'Renamed' WHERE id = {kept}"))
            conn.execute(sa.text(f"DELETE FROM batches WHERE product_id = {gone}"))
            conn.execute(sa.text(f"DELETE FROM products WHERE id = {gone}"))
        wl.run(80)
        _purge_binlog(product_db)
        client.resume()
        deadline = time.monotonic() + 120
        trace = ""
        while time.monotonic() < deadline and not trace:
            tasks = client.status().get("tasks", [])
            trace = next((t.get("trace", "") for t in tasks if t["state"] == "FAILED"), "")
            time.sleep(0.5)
        assert trace, "the connector went on past a binlog gap: " + str(client.status())
        assert "no longer available" in trace or "binlog" in trace.lower(), trace[:2000]
        print("connector refused the gap:", trace.splitlines()[0][:300])
        time.sleep(3)
        problems = "\n".join(diff_views(expected_views(product_db), actual_views(consumer_dbs)))
        for pid in (kept, gone, added):  # none of the gap's own changes is in any view
            assert str(pid) in problems, (
                f"product {pid}'s change from inside the gap is in the views; where did it "
                f"come from? differences:\n{problems[:3000]}")

        first = _resnapshot()
        healthy = True
        assert sum(first["tombstones"].values()) > 0, first
        wl.run(30)
        wait_converged(product_db, consumer_dbs, worker, timeout=RECOVERY_TIMEOUT)
        second = _resnapshot()
        assert sum(second["tombstones"].values()) == 0, second
        wl.run(10)
        wait_converged(product_db, consumer_dbs, worker, timeout=RECOVERY_TIMEOUT)
        assert worker.alive()
    finally:
        if not healthy:
            try:
                client.wait_running(timeout=10)
            except ConnectError as exc:
                print(f"the test failed with the connector not running ({str(exc)[:200]}): "
                      "resnapshot to heal it")
                _resnapshot()


def _purge_binlog(product_db: sa.Engine) -> None:
    """Purge every binlog file but a fresh one. MariaDB skips (with a warning) a file that a
    binlog dump thread still reads: the stopped connector's may linger a moment."""
    deadline = time.monotonic() + 60
    while True:
        with product_db.begin() as conn:
            conn.execute(sa.text("FLUSH BINARY LOGS"))
            current = conn.execute(sa.text("SHOW MASTER STATUS")).one()[0]
            conn.execute(sa.text(f"PURGE BINARY LOGS TO '{current}'"))
            files = [r[0] for r in conn.execute(sa.text("SHOW BINARY LOGS"))]
        if files == [current]:
            return
        assert time.monotonic() < deadline, f"binlog files not purged: {files}"
        time.sleep(1)


def _resnapshot() -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "app.cli", "connectors", "resnapshot",
                        "--timeout", "600"], capture_output=True, text=True, timeout=900)
    print(r.stdout, r.stderr[-3000:])
    assert r.returncode == 0, r.stderr[-3000:]
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return out
