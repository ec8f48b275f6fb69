"""``viewsync dlq list | show | replay`` against the real stack."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from typing import Any

import sqlalchemy as sa
from confluent_kafka import Producer

from app.decode import Decoder, RegistrySchemas
from app.settings import Settings
from app.topic_range import end_offsets, partitions, read_range
from tests.integration.conftest import WorkerProcess, wait_converged, wait_live


def _cli(*args: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "app.cli", "dlq", *args, "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def _latest_record_of(settings: Settings, product_id: int
                      ) -> tuple[int, int, bytes, bytes]:
    """(partition, offset, key, value) of the newest record of ``product_id`` on the
    products topic (the last 200 records of each partition)."""
    topic = settings.topic("products")
    decoder = Decoder(RegistrySchemas(settings.registry_url()), {topic: "products"},
                      settings.graph())
    ends = end_offsets(settings, topic, partitions(settings, topic))
    found = None
    for r in read_range(settings, topic, {p: max(0, e - 200) for p, e in ends.items()}, ends):
        if r.key is None or r.value is None:
            continue
        ch = decoder.decode(topic, r.key, r.value)
        if getattr(ch, "key", None) == product_id:
            found = (r.partition, r.offset, r.key, r.value)
    assert found is not None, f"no record of product {product_id} on {topic}"
    return found


def _dead_letter(settings: Settings, key: bytes, value: bytes, source: tuple[int, int],
                 reason: str) -> None:
    p = Producer({"bootstrap.servers": settings.bootstrap()})
    part, offset = source
    p.produce(settings.dead_letter_topic, key=key, value=value, headers={
        "viewsync.reason": reason.encode(),
        "viewsync.source": f"{settings.topic('products')}[{part}]@{offset}".encode()})
    assert p.flush(30) == 0


def _view_count(consumer_dbs: dict[str, sa.Engine], pid: int) -> int:
    n = 0
    for e in consumer_dbs.values():
        with e.connect() as conn:
            n += conn.execute(sa.text("SELECT COUNT(*) FROM product_view WHERE product_id = :i"),
                              {"i": pid}).scalar_one()
    return n


def test_dead_letter_listed_shown_and_replayed_once(
    settings: Settings, product_db: sa.Engine, consumer_dbs: dict[str, sa.Engine],
    worker: WorkerProcess,
) -> None:
    """A change that (say) an older worker could not decode sits in the dead-letter topic and
    is missing from the views; once the cause is fixed, ``replay`` puts it back, exactly
    once, and the views are exact again. A dead letter whose row changed since is superseded,
    not replayed."""
    wait_live(product_db, consumer_dbs, worker)  # no takeover rewrites the deleted rows
    wait_converged(product_db, consumer_dbs, worker)
    pid = (1 << 40) + random.randrange(1 << 30)
    with product_db.begin() as conn:
        conn.execute(sa.text("INSERT INTO categories VALUES (:i, NULL, 'dlq', 'DLQ')"),
                     {"i": pid})
        conn.execute(sa.text(
            "INSERT INTO products (id, sku, name, category_id, warranty_type_id, unit, price, "
            "status) VALUES (:i, :s, 'Replayed', :i, NULL, 'pcs', 3.00, 'active')"),
            {"i": pid, "s": f"DLQ-{pid}"})
    wait_converged(product_db, consumer_dbs, worker)
    part, offset, key, value = _latest_record_of(settings, pid)
    # As if that change had been dead-lettered instead of applied:
    for e in consumer_dbs.values():
        with e.begin() as conn:
            conn.execute(sa.text("DELETE FROM product_view WHERE product_id = :i"), {"i": pid})
    reason = f"simulated: schema unknown to the registry ({pid})"
    _dead_letter(settings, key, value, (part, offset), reason)

    listed = _cli("list")
    mine = [d for d in listed["dead_letters"] if d["reason"] == reason]
    assert len(mine) == 1, listed["dead_letters"][-3:]
    assert mine[0]["source"] == f"{settings.topic('products')}[{part}]@{offset}"
    shown = _cli("show", str(mine[0]["offset"]))
    assert shown["reason"] == reason and shown["value_hex"] == value.hex()

    dry = _cli("replay", "--dry-run")
    assert mine[0]["offset"] in [d["offset"] for d in dry["replayed"]]
    assert _view_count(consumer_dbs, pid) == 0, "a dry run replayed something"
    done = _cli("replay")
    assert mine[0]["offset"] in [d["offset"] for d in done["replayed"]]
    deadline = time.monotonic() + 90
    while _view_count(consumer_dbs, pid) < 2:
        assert time.monotonic() < deadline, "the replayed change never reached the views"
        time.sleep(0.2)
    again = _cli("replay")
    assert mine[0]["offset"] not in [d["offset"] for d in again["replayed"]]
    wait_converged(product_db, consumer_dbs, worker)

    # A dead letter of an old change, after the row changed: superseded, never replayed.
    with product_db.begin() as conn:
        conn.execute(sa.text("UPDATE products SET name = 'Newer' WHERE id = :i"), {"i": pid})
    wait_converged(product_db, consumer_dbs, worker)
    _dead_letter(settings, key, value, (part, offset), reason + " (old)")
    old = _cli("replay")
    assert [d for d in old["superseded"] if d["reason"] == reason + " (old)"], old
    assert not [d for d in old["replayed"] if d["reason"] == reason + " (old)"], old
    wait_converged(product_db, consumer_dbs, worker)
