"""Pipeline: raw Kafka records in, view batches and dead letters out (no server)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from app.decode import Decoder
from app.pipeline import Pipeline, RawRecord
from app.state import MemoryStore
from tests.unit.debezium import TOPICS, DictSchemas, key, value

CAT = {"id": 1, "parent_id": None, "code": "t", "name": "Tools"}
PROD = {"id": 10, "sku": "S", "name": "Saw", "category_id": 1, "warranty_type_id": None,
        "unit": "pcs", "price": Decimal("9.99"), "status": "active"}
BATCH = {"id": 100, "product_id": 10, "batch_no": "B1", "manufactured_on": 19723,
         "expires_on": None}


def rec(topic_table: str, k: bytes | None, v: bytes | None, offset: int = 0) -> RawRecord:
    return RawRecord(f"p.product.{topic_table}", 0, offset, k, v)


def pipeline() -> tuple[Pipeline, DictSchemas]:
    s = DictSchemas()
    return Pipeline(Decoder(s, TOPICS), MemoryStore()), s


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
