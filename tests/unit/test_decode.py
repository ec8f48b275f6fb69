"""Decode: wire format, Debezium envelopes, tombstones, logical types, dead-letter reasons.

The writer schemas in tests/unit/fixtures are the ones Debezium 3.4 registered in the real
registry for the Product tables (captured from `viewsync stack up`), so these tests encode
exactly what the connector produces and decode it through the contract in schemas/.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from app.changes import SOURCE_TABLES, SourceTable
from app.decode import DecodeFailure, Decoder, SchemaUnavailable, contract, encode
from tests.unit.debezium import SOURCE, TOPICS, DictSchemas, key, value, writer


@pytest.fixture
def schemas() -> DictSchemas:
    return DictSchemas()


@pytest.fixture
def decoder(schemas: DictSchemas) -> Decoder:
    return Decoder(schemas, TOPICS)


PRODUCT = {"id": 2**40, "sku": "S1", "name": "Hammer", "category_id": 7,
           "warranty_type_id": None, "unit": "pcs", "price": Decimal("1234567890.12"),
           "status": "active"}


def test_create_with_decimal_and_big_id(decoder: Decoder, schemas: DictSchemas) -> None:
    ch = decoder.decode("p.product.products", key(schemas, "products", 2**40),
                        value(schemas, "products", "c", None, PRODUCT))
    assert not isinstance(ch, DecodeFailure), ch
    assert ch.table == "products" and ch.key == 2**40 and ch.op == "c"
    assert ch.after == PRODUCT
    assert isinstance(ch.after["price"], Decimal) and ch.after["price"] == Decimal("1234567890.12")
    assert ch.position == "0-1-7@mysql-bin.000001:400:2"


def test_snapshot_read_is_an_upsert(decoder: Decoder, schemas: DictSchemas) -> None:
    ch = decoder.decode("p.product.products", key(schemas, "products", 2**40),
                        value(schemas, "products", "r", None, PRODUCT))
    assert not isinstance(ch, DecodeFailure)
    assert ch.op == "r" and ch.after == PRODUCT and not ch.is_delete


def test_debezium_dates_become_dates(decoder: Decoder, schemas: DictSchemas) -> None:
    row = {"id": 5, "product_id": 9, "batch_no": "B", "manufactured_on": 19723,
           "expires_on": None}
    ch = decoder.decode("p.product.batches", key(schemas, "batches", 5),
                        value(schemas, "batches", "u", row, row))
    assert not isinstance(ch, DecodeFailure)
    assert ch.after is not None
    assert ch.after["manufactured_on"] == dt.date(2024, 1, 1)
    assert ch.after["expires_on"] is None
    assert ch.before is not None and ch.before["manufactured_on"] == dt.date(2024, 1, 1)


def test_delete_has_no_after(decoder: Decoder, schemas: DictSchemas) -> None:
    ch = decoder.decode("p.product.products", key(schemas, "products", 2**40),
                        value(schemas, "products", "d", PRODUCT, None))
    assert not isinstance(ch, DecodeFailure)
    assert ch.is_delete and ch.op == "d" and ch.before == PRODUCT


def test_tombstone_is_a_delete(decoder: Decoder, schemas: DictSchemas) -> None:
    ch = decoder.decode("p.product.products", key(schemas, "products", 3), None)
    assert not isinstance(ch, DecodeFailure)
    assert ch.is_delete and ch.op == "t" and ch.key == 3


@pytest.mark.parametrize(
    ("topic", "k", "v", "reason"),
    [
        ("p.product.products", b"\x00\x00", b"", "wire format"),
        ("p.product.products", None, None, "no key"),
        ("elsewhere", b"", b"", "not a source table topic"),
        ("p.product.products", b"\x01\x00\x00\x00\x64\x02", None, "wire format"),
    ],
)
def test_malformed_records_are_failures_with_reason(
    decoder: Decoder, topic: str, k: bytes | None, v: bytes | None, reason: str
) -> None:
    out = decoder.decode(topic, k, v)
    assert isinstance(out, DecodeFailure)
    assert reason in out.reason


def test_unknown_schema_id_is_a_failure(decoder: Decoder, schemas: DictSchemas) -> None:
    bad = b"\x00\x00\x00\x03\xe7" + b"\x02"
    out = decoder.decode("p.product.products", bad, None)
    assert isinstance(out, DecodeFailure) and "KeyError" in out.reason


def test_key_and_row_id_must_agree(decoder: Decoder, schemas: DictSchemas) -> None:
    out = decoder.decode("p.product.products", key(schemas, "products", 1),
                         value(schemas, "products", "c", None, PRODUCT))
    assert isinstance(out, DecodeFailure) and "differs" in out.reason


def test_schema_that_drifts_from_the_contract_is_a_failure(schemas: DictSchemas) -> None:
    """A writer schema without a column the contract needs cannot be resolved."""
    w = writer("products", "value")
    value_rec = w["fields"][0]["type"][1]
    value_rec["fields"] = [f for f in value_rec["fields"] if f["name"] != "sku"]
    schemas.by_id[999] = json.dumps(w)
    dec = Decoder(schemas, TOPICS)
    row = {k: v for k, v in PRODUCT.items() if k != "sku"}
    env = {"before": None, "after": row, "source": SOURCE, "transaction": None, "op": "c",
           "ts_ms": 1, "ts_us": None, "ts_ns": None}
    out = dec.decode("p.product.products", key(schemas, "products", 2**40), encode(w, 999, env))
    assert isinstance(out, DecodeFailure)
    assert "sku" in out.reason


@pytest.mark.parametrize("table", SOURCE_TABLES)
def test_contracts_are_valid_avro(table: SourceTable) -> None:
    import fastavro

    for part in ("key", "value"):
        fastavro.parse_schema(contract(table, part))


def test_registry_outage_is_raised_not_dead_lettered(schemas: DictSchemas) -> None:
    """A good record must not go to the dead-letter topic because the registry is down."""

    class Down:
        def schema_text(self, schema_id: int) -> str:
            raise SchemaUnavailable("registry unreachable")

    dec = Decoder(Down(), TOPICS)
    with pytest.raises(SchemaUnavailable):
        dec.decode("p.product.products", key(schemas, "products", 1), None)


@pytest.mark.parametrize("table", SOURCE_TABLES)
def test_debezium_schemas_are_read_without_resolution_and_give_the_same_values(
        table: SourceTable, schemas: DictSchemas) -> None:
    """Debezium's writer schemas read exactly as the contract (extra envelope and source
    fields aside), so records skip schema resolution; the values are the same either way."""
    import fastavro

    from app.decode import reads_as

    for part in ("key", "value"):
        w = fastavro.parse_schema(writer(table, part), expand=True)
        r = fastavro.parse_schema(contract(table, part), expand=True)
        assert reads_as(w, r, rows_exact=part == "value")
    rows = {"categories": {"id": 3, "parent_id": None, "code": "c", "name": "n"},
            "warranty_types": {"id": 3, "name": "w", "months": 12},
            "products": dict(PRODUCT, id=3),
            "batches": {"id": 3, "product_id": 9, "batch_no": "b", "manufactured_on": 19723,
                        "expires_on": None}}
    k, v = key(schemas, table, 3), value(schemas, table, "u", rows[table], rows[table])
    fast = Decoder(schemas, TOPICS)
    slow = Decoder(schemas, TOPICS)
    slow._fast = dict.fromkeys(  # force resolution for every writer schema
        [(sid, t, p) for (t, p), sid in schemas.ids.items()], False)
    assert fast.decode(f"p.product.{table}", k, v) == slow.decode(f"p.product.{table}", k, v)


def test_a_writer_row_with_an_extra_column_is_resolved_to_the_contract(
        schemas: DictSchemas) -> None:
    """ALTER TABLE … ADD COLUMN: the row no longer reads as the contract; resolution drops
    the new column and the change decodes as before."""
    w = writer("products", "value")
    value_rec = w["fields"][0]["type"][1]
    value_rec["fields"].append({"name": "colour", "type": ["null", "string"], "default": None})
    schemas.by_id[998] = json.dumps(w)
    dec = Decoder(schemas, TOPICS)
    row = dict(PRODUCT, colour="red")
    env = {"before": None, "after": row, "source": SOURCE, "transaction": None, "op": "c",
           "ts_ms": 1, "ts_us": None, "ts_ns": None}
    out = dec.decode("p.product.products", key(schemas, "products", 2**40), encode(w, 998, env))
    assert not isinstance(out, DecodeFailure)
    assert out.after == PRODUCT


def test_valid_avro_of_another_schema_is_a_failure_naming_the_schema(
    schemas: DictSchemas) -> None:
    other = {"type": "record", "name": "Other", "namespace": "x",
             "fields": [{"name": "x", "type": "string"}]}
    schemas.by_id[777] = json.dumps(other)
    dec = Decoder(schemas, TOPICS)
    out = dec.decode("p.product.products", key(schemas, "products", 5),
                     encode(other, 777, {"x": "hello"}))
    assert isinstance(out, DecodeFailure)
    assert "schema id 777 (x.Other)" in out.reason and "products value contract" in out.reason


def test_the_contract_columns_of_each_table() -> None:
    from app.decode import contract_columns

    assert contract_columns("products") == (
        "id", "sku", "name", "category_id", "warranty_type_id", "unit", "price", "status")
    assert contract_columns("batches") == (
        "id", "product_id", "batch_no", "manufactured_on", "expires_on")
    assert contract_columns("categories") == ("id", "parent_id", "code", "name")
    assert contract_columns("warranty_types") == ("id", "name", "months")
