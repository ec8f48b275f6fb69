"""Pipeline: raw Kafka records in, view batches and dead letters out (no server)."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal

import pytest

from app.decode import SchemaUnavailable
from app.loop import BatchLoop
from app.pipeline import Pipeline
from app.records import DeadLetter, RawRecord
from app.restore import plan
from app.state import MemoryStore, StateStore
from app.views import bundled_definitions
from tests.unit.debezium import DictSchemas, key, value
from tests.unit.doubles import MemorySink, memory_loop, memory_pipeline

CAT = {"id": 1, "parent_id": None, "code": "t", "name": "Tools"}
PROD = {"id": 10, "sku": "S", "name": "Saw", "category_id": 1, "warranty_type_id": None,
        "unit": "pcs", "price": Decimal("9.99"), "status": "active"}
BATCH = {"id": 100, "product_id": 10, "batch_no": "B1", "manufactured_on": 19723,
         "expires_on": None}


def rec(topic_table: str, k: bytes | None, v: bytes | None, offset: int = 0) -> RawRecord:
    return RawRecord(f"p.product.{topic_table}", 0, offset, k, v)


def pipeline() -> tuple[Pipeline, DictSchemas]:
    s = DictSchemas()
    return memory_pipeline(s), s


def test_batch_before_product_then_everything_visible() -> None:
    p, s = pipeline()
    result = p.process([
        rec("batches", key(s, "batches", 100), value(s, "batches", "c", None, BATCH)),
        rec("products", key(s, "products", 10), value(s, "products", "c", None, PROD)),
    ])
    # no category yet: nothing is visible, every dirty key is a delete
    assert result.views["purchase.batch_view"].deletes == {100}
    assert result.views["order.product_view"].deletes == {10}
    result = p.process([
        rec("categories", key(s, "categories", 1), value(s, "categories", "r", None, CAT))])
    batch = result.views["purchase.batch_view"].upserts[100]
    assert batch["category_path"] == "Tools" and batch["sku"] == "S"
    assert batch["manufactured_on"] == dt.date(2024, 1, 1)
    assert result.views["order.product_view"].upserts[10]["price"] == Decimal("9.99")
    assert result.changes == 1 and not result.dead_letters


def test_keys_changed_twice_in_a_batch_are_written_once_with_the_latest_state() -> None:
    p, s = pipeline()
    renamed = dict(CAT, name="Hand Tools")
    result = p.process([
        rec("categories", key(s, "categories", 1), value(s, "categories", "c", None, CAT)),
        rec("products", key(s, "products", 10), value(s, "products", "c", None, PROD)),
        rec("categories", key(s, "categories", 1), value(s, "categories", "u", CAT, renamed)),
    ])
    assert result.views["order.product_view"].upserts[10]["category_path"] == "Hand Tools"
    assert result.rows == 2  # order and purchase product rows, once each


def test_malformed_record_is_a_dead_letter_and_the_rest_goes_on() -> None:
    p, s = pipeline()
    result = p.process([
        rec("products", b"junk", b"junk", offset=7),
        rec("categories", key(s, "categories", 1), value(s, "categories", "c", None, CAT)),
    ])
    assert len(result.dead_letters) == 1
    dl = result.dead_letters[0]
    assert dl.record.offset == 7 and "wire format" in dl.reason
    assert result.changes == 1


def test_delete_then_tombstone_removes_rows() -> None:
    p, s = pipeline()
    p.process([
        rec("categories", key(s, "categories", 1), value(s, "categories", "c", None, CAT)),
        rec("products", key(s, "products", 10), value(s, "products", "c", None, PROD)),
    ])
    result = p.process([
        rec("products", key(s, "products", 10), value(s, "products", "d", PROD, None)),
        rec("products", key(s, "products", 10), None),
    ])
    assert result.views["order.product_view"].deletes == {10}
    assert result.views["purchase.product_view"].deletes == {10}
    assert not result.views["order.product_view"].upserts


# --- the batch loop: write order, retries, replay after a crash ------------------------------


def _loop(store: StateStore, sink: MemorySink) -> tuple[BatchLoop, DictSchemas, list[DeadLetter]]:
    """The worker's loop, sole owner of its one shard (taken over before any batch)."""
    s = DictSchemas()
    dead: list[DeadLetter] = []

    async def send(dl: DeadLetter) -> None:
        dead.append(dl)

    return memory_loop(sink, store=store, schemas=s, send_dead_letter=send), s, dead


async def sole_owner(loop: BatchLoop) -> None:
    await loop.own(frozenset({0}))
    await loop.settle()


def test_done_only_after_the_write_and_one_write_in_flight(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.retry.FIRST_DELAY", 0.001)
    sink = MemorySink()
    loop, s, dead = _loop(MemoryStore(bundled_definitions().graph), sink)
    acked: list[int] = []

    async def run() -> None:
        await sole_owner(loop)
        sink.unavailable, sink.writes = 2, 0
        await loop.handle([
            rec("categories", key(s, "categories", 1), value(s, "categories", "c", None, CAT), 0),
            rec("products", b"junk", b"junk", 1),
        ], done=lambda: acked.append(1))
        assert not acked  # the write runs in the background
        await loop.handle([
            rec("products", key(s, "products", 10), value(s, "products", "c", None, PROD), 2),
        ], done=lambda: acked.append(2))
        assert acked == [1]  # the first write is done before the second batch is handed over
        await loop.drain()

    asyncio.run(run())
    assert acked == [1, 2]
    # the first batch had no rows, only the shard's positions to record: retried twice
    assert sink.writes == 2
    assert sink.shards[0][1] == {("p.product.products", 0): 3, ("p.product.categories", 0): 1}
    assert sink.rows["order.product_view"][10]["category_path"] == "Tools"
    assert [d.record.offset for d in dead] == [1]
    assert loop.totals.written == {("p.product.products", 0): 3, ("p.product.categories", 0): 1}


def test_a_restarted_pipeline_replays_over_a_state_ahead_of_the_views() -> None:
    """State committed with positions 0..2, sink never written (crash): the replay from the
    group's offset 0 must rewrite every view, though the state already holds the rows."""
    store = MemoryStore(bundled_definitions().graph)
    first, s = memory_pipeline(store=store), DictSchemas()
    records = [
        rec("categories", key(s, "categories", 1), value(s, "categories", "c", None, CAT), 0),
        rec("products", key(s, "products", 10), value(s, "products", "c", None, PROD), 1),
        rec("products", key(s, "products", 10),
            value(s, "products", "u", PROD, dict(PROD, price=Decimal("1.00"))), 2),
    ]
    first.process(records)  # state committed; the views never got these rows
    again = memory_pipeline(store=store)
    assert again.replay_until == {("p.product.categories", 0): 1, ("p.product.products", 0): 3}
    result = again.process(records[:2])  # a replay of the first records only
    # redone from the current state: the latest price at once, never the older row
    assert result.views["order.product_view"].upserts[10]["price"] == Decimal("1.00")
    assert 10 in result.views["purchase.product_view"].upserts  # not pruned: a replay
    # the store's position does not move back to the replayed records'
    assert store.positions() == again.replay_until


def test_restore_plan_reads_only_what_the_store_lacks() -> None:
    committed = {("a", 0): 100, ("b", 0): 50, ("c", 0): 0}
    got = plan(committed, {("a", 0): 100, ("b", 0): 20})
    assert got.ranges == {("b", 0): (20, 50)}
    assert plan(committed, {}).ranges == {("a", 0): (None, 100), ("b", 0): (None, 50)}
    assert plan(committed, {("a", 0): 120, ("b", 0): 60}).ranges == {}


def test_a_registry_outage_mid_batch_is_waited_out_and_the_batch_processed_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.retry.FIRST_DELAY", 0.001)
    s = DictSchemas()

    class Flaky:
        down = 2

        def schema_text(self, schema_id: int) -> str:
            if schema_id == s.ids[("products", "value")] and self.down:
                self.down -= 1
                raise SchemaUnavailable("registry unreachable")
            return s.schema_text(schema_id)

    sink = MemorySink()

    async def no_dead_letters(dl: DeadLetter) -> None:
        raise AssertionError(dl)

    loop = memory_loop(sink, schemas=Flaky(), send_dead_letter=no_dead_letters)
    acked: list[int] = []

    async def run() -> None:
        await sole_owner(loop)
        await loop.handle([
            rec("categories", key(s, "categories", 1), value(s, "categories", "c", None, CAT), 0),
            rec("products", key(s, "products", 10), value(s, "products", "c", None, PROD), 0),
        ], done=lambda: acked.append(1))
        await loop.drain()

    asyncio.run(run())
    assert acked == [1]
    assert sink.rows["order.product_view"][10]["category_path"] == "Tools"
    assert loop.totals.records == 2 and loop.totals.dead == 0
