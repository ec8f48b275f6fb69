"""Decode: wire format, Debezium envelopes, tombstones, Debezium's types, dead-letter reasons.

The writer schemas in tests/unit/fixtures are the ones Debezium 3.4 registered in the real
registry for the bundled example's tables (captured from `viewsync stack up`), so these tests
encode exactly what the connector produces and decode it against the contract the views file
declares (its [sources]). Tables of other schemas (a string key, every Debezium type the
MariaDB connector emits) use hand-made writer schemas of the same envelope shape.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest

from app.changes import Change
from app.decode import DecodeFailure, Decoder, SchemaUnavailable, check_writer, encode
from app.graph import Graph, Source
from tests.unit.debezium import (
    TOPICS,
    DictSchemas,
    envelope,
    envelope_record,
    graph,
    key,
    key_schema,
    value,
    writer,
)


@pytest.fixture
def schemas() -> DictSchemas:
    return DictSchemas()


@pytest.fixture
def decoder(schemas: DictSchemas) -> Decoder:
    return Decoder(schemas, TOPICS, graph())


PRODUCT = {"id": 2**40, "sku": "S1", "name": "Hammer", "category_id": 7,
           "warranty_type_id": None, "unit": "pcs", "price": Decimal("1234567890.12"),
           "status": "active"}


def _change(out: Change | DecodeFailure) -> Change:
    assert not isinstance(out, DecodeFailure), out
    return out


def _failure(out: Change | DecodeFailure) -> str:
    assert isinstance(out, DecodeFailure), out
    return out.reason


def test_create_with_decimal_and_big_id(decoder: Decoder, schemas: DictSchemas) -> None:
    ch = _change(decoder.decode("p.product.products", key(schemas, "products", 2**40),
                                value(schemas, "products", "c", None, PRODUCT)))
    assert ch.table == "products" and ch.key == 2**40 and ch.op == "c"
    assert ch.after == PRODUCT
    assert isinstance(ch.after["price"], Decimal) and ch.after["price"] == Decimal("1234567890.12")
    assert ch.position == "0-1-7@mysql-bin.000001:400:2" and ch.ts_ms == 1


def test_snapshot_read_is_an_upsert(decoder: Decoder, schemas: DictSchemas) -> None:
    ch = _change(decoder.decode("p.product.products", key(schemas, "products", 2**40),
                                value(schemas, "products", "r", None, PRODUCT)))
    assert ch.op == "r" and ch.after == PRODUCT and not ch.is_delete


def test_snapshot_marker(decoder: Decoder, schemas: DictSchemas) -> None:
    v = value(schemas, "products", "r", None, PRODUCT)
    assert decoder.snapshot_marker("p.product.products", v) == "false"


def test_debezium_dates_become_dates(decoder: Decoder, schemas: DictSchemas) -> None:
    row = {"id": 5, "product_id": 9, "batch_no": "B", "manufactured_on": 19723,
           "expires_on": None}
    ch = _change(decoder.decode("p.product.batches", key(schemas, "batches", 5),
                                value(schemas, "batches", "u", row, row)))
    assert ch.after is not None
    assert ch.after["manufactured_on"] == dt.date(2024, 1, 1)
    assert ch.after["expires_on"] is None
    assert ch.before is not None and ch.before["manufactured_on"] == dt.date(2024, 1, 1)


def test_delete_has_no_after(decoder: Decoder, schemas: DictSchemas) -> None:
    ch = _change(decoder.decode("p.product.products", key(schemas, "products", 2**40),
                                value(schemas, "products", "d", PRODUCT, None)))
    assert ch.is_delete and ch.op == "d" and ch.before == PRODUCT


def test_tombstone_is_a_delete(decoder: Decoder, schemas: DictSchemas) -> None:
    ch = _change(decoder.decode("p.product.products", key(schemas, "products", 3), None))
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
    assert reason in _failure(decoder.decode(topic, k, v))


def test_unknown_schema_id_is_a_failure(decoder: Decoder) -> None:
    bad = b"\x00\x00\x00\x03\xe7" + b"\x02"
    assert "KeyError" in _failure(decoder.decode("p.product.products", bad, None))


def test_key_and_row_id_must_agree(decoder: Decoder, schemas: DictSchemas) -> None:
    reason = _failure(decoder.decode("p.product.products", key(schemas, "products", 1),
                                     value(schemas, "products", "c", None, PRODUCT)))
    assert "differs" in reason


def test_a_writer_schema_without_a_declared_column_is_a_failure_naming_it(
        schemas: DictSchemas) -> None:
    w = writer("products", "value")
    value_rec = w["fields"][0]["type"][1]
    value_rec["fields"] = [f for f in value_rec["fields"] if f["name"] != "sku"]
    schemas.add(999, w)
    dec = Decoder(schemas, TOPICS, graph())
    row = {k: v for k, v in PRODUCT.items() if k != "sku"}
    reason = _failure(dec.decode("p.product.products", key(schemas, "products", 2**40),
                                 encode(w, 999, envelope_record("c", None, row))))
    assert "schema id 999" in reason and "products value contract" in reason
    assert "no column(s) sku" in reason
    # the same rule as `viewsync schemas check`
    assert "sku" in (check_writer(graph().source("products"), "value", w) or "")


def test_registry_outage_is_raised_not_dead_lettered(schemas: DictSchemas) -> None:
    """A good record must not go to the dead-letter topic because the registry is down."""

    class Down:
        def schema_text(self, schema_id: int) -> str:
            raise SchemaUnavailable("registry unreachable")

    dec = Decoder(Down(), TOPICS, graph())
    with pytest.raises(SchemaUnavailable):
        dec.decode("p.product.products", key(schemas, "products", 1), None)


@pytest.mark.parametrize("table", graph().names)
def test_debeziums_writer_schemas_read_as_the_generated_contracts(table: str) -> None:
    source = graph().source(table)
    for part in ("key", "value"):
        assert check_writer(source, part, writer(table, part)) is None
        assert check_writer(source, part, json.dumps(writer(table, part))) is None


def test_a_writer_row_with_an_extra_column_drops_it(schemas: DictSchemas) -> None:
    """ALTER TABLE … ADD COLUMN: the new column is not declared; the change decodes as
    before, without it."""
    w = writer("products", "value")
    w["fields"][0]["type"][1]["fields"].append(
        {"name": "colour", "type": ["null", "string"], "default": None})
    schemas.add(998, w)
    dec = Decoder(schemas, TOPICS, graph())
    row = dict(PRODUCT, colour="red")
    ch = _change(dec.decode("p.product.products", key(schemas, "products", 2**40),
                            encode(w, 998, envelope_record("u", row, row))))
    assert ch.after == PRODUCT and ch.before == PRODUCT


def test_only_the_declared_columns_are_kept(schemas: DictSchemas) -> None:
    narrow = Graph((Source("products", "id", "int", ("id", "name", "price")),))
    dec = Decoder(schemas, {"p.product.products": "products"}, narrow)
    ch = _change(dec.decode("p.product.products", key(schemas, "products", 2**40),
                            value(schemas, "products", "c", None, PRODUCT)))
    assert ch.after == {"id": 2**40, "name": "Hammer", "price": Decimal("1234567890.12")}


def test_valid_avro_of_another_schema_is_a_failure_naming_the_schema(
    schemas: DictSchemas) -> None:
    other = {"type": "record", "name": "Other", "namespace": "x",
             "fields": [{"name": "x", "type": "string"}]}
    schemas.add(777, other)
    dec = Decoder(schemas, TOPICS, graph())
    reason = _failure(dec.decode("p.product.products", key(schemas, "products", 5),
                                 encode(other, 777, {"x": "hello"})))
    assert "schema id 777 (x.Other)" in reason and "products value contract" in reason


def test_a_key_without_the_declared_key_column_is_a_failure(schemas: DictSchemas) -> None:
    k = key_schema("p.product.products", "product_id", "long")
    schemas.add(996, k)
    dec = Decoder(schemas, TOPICS, graph())
    reason = _failure(dec.decode("p.product.products", encode(k, 996, {"product_id": 5}),
                                 None))
    assert "schema id 996" in reason and "products key contract" in reason
    assert "no column 'id'" in reason


def test_a_composite_record_key_is_a_failure(schemas: DictSchemas) -> None:
    """The table's primary key is (id, lot) but the views file declares id: two rows would
    share one key while Debezium compacts and tombstones them apart."""
    k = key_schema("p.product.products", "id", "long")
    k["fields"].append({"name": "lot", "type": "int"})
    schemas.add(995, k)
    reason = _failure(Decoder(schemas, TOPICS, graph()).decode(
        "p.product.products", encode(k, 995, {"id": 5, "lot": 1}), None))
    assert "the columns id, lot" in reason and "composite" in reason


# --- a string key ----------------------------------------------------------------------

BRANDS = Graph((Source("brands", "code", "string", ("code", "name", "country")),))
BRAND_COLUMNS: list[dict[str, Any]] = [
    {"name": "code", "type": "string"},
    {"name": "name", "type": "string"},
    {"name": "country", "type": ["null", "string"], "default": None},
    {"name": "note", "type": ["null", "string"], "default": None},  # not declared
]


def _brands(schemas: DictSchemas) -> tuple[Decoder, dict[str, Any], dict[str, Any]]:
    ns = "p.shop.brands"
    k, v = key_schema(ns, "code", "string"), envelope(ns, BRAND_COLUMNS)
    schemas.add(500, k)
    schemas.add(501, v)
    return Decoder(schemas, {"p.shop.brands": "brands"}, BRANDS), k, v


def test_a_string_keyed_table(schemas: DictSchemas) -> None:
    dec, k, v = _brands(schemas)
    row = {"code": "ACME", "name": "Acme Ünïcode ✓", "country": None, "note": "x"}
    ch = _change(dec.decode("p.shop.brands", encode(k, 500, {"code": "ACME"}),
                            encode(v, 501, envelope_record("c", None, row))))
    assert ch.table == "brands" and ch.key == "ACME" and isinstance(ch.key, str)
    assert ch.after == {"code": "ACME", "name": "Acme Ünïcode ✓", "country": None}
    tomb = _change(dec.decode("p.shop.brands", encode(k, 500, {"code": "ACME"}), None))
    assert tomb.op == "t" and tomb.key == "ACME"


def test_string_keys_compare_exactly(schemas: DictSchemas) -> None:
    """MariaDB's default collation equates `acme` and `ACME`; the decoder does not."""
    dec, k, v = _brands(schemas)
    row = {"code": "ACME", "name": "n", "country": None, "note": None}
    reason = _failure(dec.decode("p.shop.brands", encode(k, 500, {"code": "acme"}),
                                 encode(v, 501, envelope_record("u", row, row))))
    assert "differs" in reason


def test_a_key_of_the_wrong_kind_is_a_failure(schemas: DictSchemas) -> None:
    ns = "p.shop.brands"
    k = key_schema(ns, "code", "long")
    schemas.add(502, k)
    dec = Decoder(schemas, {"p.shop.brands": "brands"}, BRANDS)
    reason = _failure(dec.decode("p.shop.brands", encode(k, 502, {"code": 7}), None))
    assert "schema id 502" in reason and "not a string" in reason
    # an integer key written as a string
    s = key_schema("p.product.products", "id", "string")
    schemas.add(503, s)
    reason = _failure(Decoder(schemas, TOPICS, graph()).decode(
        "p.product.products", encode(s, 503, {"id": "7"}), None))
    assert "not an integer" in reason


# --- every Debezium type of the MariaDB connector ----------------------------------------

def _t(avro: str, connect_name: str | None = None, **extra: Any) -> list[Any]:
    t: dict[str, Any] = {"type": avro, "connect.version": 1, **extra}
    if connect_name is not None:
        t["connect.name"] = connect_name
    return ["null", t]


#: column -> (its Avro field type as Debezium writes it, the value written, the value read)
TYPES: dict[str, tuple[Any, Any, Any]] = {
    # DATE
    "day": (_t("int", "io.debezium.time.Date"), 19723, dt.date(2024, 1, 1)),
    # DATETIME(3) and DATETIME (0-3): ms since the epoch, no zone
    "at_ms": (_t("long", "io.debezium.time.Timestamp"), 1_704_110_400_123,
              dt.datetime(2024, 1, 1, 12, 0, 0, 123_000)),
    # DATETIME(6): µs
    "at_us": (_t("long", "io.debezium.time.MicroTimestamp"), 1_704_110_400_123_456,
              dt.datetime(2024, 1, 1, 12, 0, 0, 123_456)),
    "at_ns": (_t("long", "io.debezium.time.NanoTimestamp"), 1_704_110_400_123_456_789,
              dt.datetime(2024, 1, 1, 12, 0, 0, 123_456)),
    # TIMESTAMP: ISO-8601 in UTC
    "stamped": (_t("string", "io.debezium.time.ZonedTimestamp"), "2024-01-01T12:00:00.5Z",
                dt.datetime(2024, 1, 1, 12, 0, 0, 500_000, tzinfo=dt.UTC)),
    # TIME (adaptive_time_microseconds): µs past midnight
    "opens": (_t("long", "io.debezium.time.MicroTime"), 34_200_000_001,
              dt.time(9, 30, 0, 1)),
    "closes": (_t("int", "io.debezium.time.Time"), 61_200_000, dt.time(17, 0)),
    # YEAR
    "since": (_t("int", "io.debezium.time.Year"), 1999, 1999),
    # DECIMAL, decimal.handling.mode=precise (as the Avro converter writes it)
    "price": (_t("bytes", "org.apache.kafka.connect.data.Decimal", scale=2, precision=12,
                 logicalType="decimal", **{"connect.parameters": {"scale": "2"}}),
              Decimal("-12.34"), Decimal("-12.34")),
    # ENUM, SET, JSON
    "status": (_t("string", "io.debezium.data.Enum",
                  **{"connect.parameters": {"allowed": "active,retired"}}), "active", "active"),
    "tags": (_t("string", "io.debezium.data.EnumSet"), "a,b", "a,b"),
    "attrs": (_t("string", "io.debezium.data.Json"), '{"a": [1, 2]}', '{"a": [1, 2]}'),
    # BIT(1) / BOOLEAN; TINYINT(1) is an int16 (Avro int) unless a converter maps it
    "bit_flag": (["null", "boolean"], True, True),
    "tiny_flag": (_t("int", None, **{"connect.type": "int16"}), 1, 1),
    # DOUBLE, FLOAT
    "weight": (["null", "double"], 0.1 + 0.2, 0.1 + 0.2),
    "ratio": (["null", "float"], 0.5, 0.5),
    # utf8mb4 text
    "label": ("string", "Zürich 東京 🚀", "Zürich 東京 🚀"),
}


def _things(schemas: DictSchemas, columns: list[dict[str, Any]], sid: int = 600) -> Decoder:
    ns = "p.shop.things"
    schemas.add(sid, key_schema(ns, "id", "long"))
    schemas.add(sid + 1, envelope(ns, columns))
    graph_ = Graph((Source("things", "id", "int",
                           ("id", *[c["name"] for c in columns if c["name"] != "id"])),))
    return Decoder(schemas, {"p.shop.things": "things"}, graph_)


def _decode_things(dec: Decoder, schemas: DictSchemas, row: dict[str, Any], sid: int = 600
                   ) -> Change | DecodeFailure:
    k = json.loads(schemas.schema_text(sid))
    v = json.loads(schemas.schema_text(sid + 1))
    return dec.decode("p.shop.things", encode(k, sid, {"id": row["id"]}),
                      encode(v, sid + 1, envelope_record("c", None, row)))


def test_every_debezium_type_becomes_a_plain_value(schemas: DictSchemas) -> None:
    columns = [{"name": "id", "type": "long"}] + [
        {"name": n, "type": t, **({"default": None} if isinstance(t, list) else {})}
        for n, (t, _w, _r) in TYPES.items()]
    dec = _things(schemas, columns)
    row = {"id": 1, **{n: w for n, (_t, w, _r) in TYPES.items()}}
    ch = _change(_decode_things(dec, schemas, row))
    assert ch.after is not None
    for name, (_t, _w, expected) in TYPES.items():
        got = ch.after[name]
        assert got == expected and type(got) is type(expected), (name, got, expected)
    # nulls stay nulls
    nulls = {"id": 2, **{n: None for n, (t, _w, _r) in TYPES.items() if isinstance(t, list)},
             "label": ""}
    ch = _change(_decode_things(dec, schemas, nulls))
    assert ch.after == nulls


def test_kafka_connect_decimal_without_the_avro_logical_type(schemas: DictSchemas) -> None:
    t = _t("bytes", "org.apache.kafka.connect.data.Decimal",
           **{"connect.parameters": {"scale": "30"}})
    dec = _things(schemas, [{"name": "id", "type": "long"},
                            {"name": "amount", "type": t, "default": None}])
    # DECIMAL(65,30): more digits than the default decimal context's 28
    unscaled = -12345678901234567890123456789012345_123456789012345678901234567890
    raw = unscaled.to_bytes(32, "big", signed=True)
    ch = _change(_decode_things(dec, schemas, {"id": 1, "amount": raw}))
    assert ch.after is not None and isinstance(ch.after["amount"], Decimal)
    assert str(ch.after["amount"]) == (
        "-12345678901234567890123456789012345.123456789012345678901234567890")


def test_connect_timestamps_read_by_fastavro_are_wall_clock(schemas: DictSchemas) -> None:
    """time.precision.mode=connect: a DATETIME as Avro timestamp-millis, which fastavro
    reads in UTC; a DATETIME has no zone."""
    t = _t("long", "org.apache.kafka.connect.data.Timestamp", logicalType="timestamp-millis")
    dec = _things(schemas, [{"name": "id", "type": "long"},
                            {"name": "at", "type": t, "default": None}])
    ch = _change(_decode_things(dec, schemas, {
        "id": 1, "at": dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)}))
    assert ch.after is not None and ch.after["at"] == dt.datetime(2024, 1, 1, 12)


def test_a_time_that_is_not_a_time_of_day_is_a_failure_naming_the_column(
        schemas: DictSchemas) -> None:
    dec = _things(schemas, [{"name": "id", "type": "long"},
                            {"name": "opens", "type": _t("long", "io.debezium.time.MicroTime"),
                             "default": None}])
    reason = _failure(_decode_things(dec, schemas, {"id": 1, "opens": 25 * 3600 * 10**6}))
    assert "column opens" in reason and "time of day" in reason
