"""Decode: Kafka record (Confluent wire format, Avro) → :class:`app.changes.Change`.

Debezium envelopes, tombstones, snapshot reads (``op = r``) and Debezium's semantic types
are handled here and nowhere else. The *contract* of a source table is generated from the
views file (``app.graph``: its declared key column and key type, and its declared columns);
no Avro reader schema is written by hand. Records are read with Debezium's writer schema
alone (fetched by id from the registry, cached), and each writer schema is checked once
against the contract (:func:`check_writer`): the key record has the declared key column of
the declared kind, the row record (``before``/``after``) has every declared column. A row
keeps only the declared columns (a column the views file does not declare is dropped), each
turned into a plain Python value by its writer field's Debezium type (:func:`converter`).
A record that cannot be decoded — or whose writer schema does not read as the contract —
becomes a :class:`DecodeFailure` (a value, not an exception) that the worker sends to the
dead-letter topic, with the reason.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Context, Decimal
from typing import Any, Protocol, cast

import fastavro

from app.changes import Change, Op
from app.graph import Graph, Key, Source

MAGIC = 0
_SCHEMA_ID = struct.Struct(">I")
_OPS: frozenset[str] = frozenset({"c", "u", "d", "r"})
_PARTS = ("key", "value")

#: Converts one non-null value read by fastavro into the plain Python value of a column.
Convert = Callable[[Any], Any]


class SchemaSource(Protocol):
    """Gives the Avro schema text registered under an id (the schema registry).

    Raises ``KeyError`` for an id the registry does not know (the record is malformed) and
    :class:`SchemaUnavailable` when the registry cannot be asked right now.
    """

    def schema_text(self, schema_id: int) -> str: ...


class SchemaUnavailable(Exception):
    """The registry could not be reached: retry later; the record itself may be fine.

    Deliberately not turned into a :class:`DecodeFailure`: a registry outage must not send
    good records to the dead-letter topic.
    """


@dataclass(frozen=True, slots=True)
class DecodeFailure:
    """A record that could not be decoded, and why."""

    topic: str
    reason: str


# --- Debezium's types → plain Python values ------------------------------------------------
#
# Debezium's MariaDB connector (documentation: "Data type mappings", with
# time.precision.mode=adaptive_time_microseconds and decimal.handling.mode=precise, as
# connectors/product-source.json configures it) names a column's semantic type in the
# field's ``connect.name``; Avro logical types (``decimal``, ``date``, ``timestamp-*``) are
# converted by fastavro itself. Everything else (int, long, float, double, boolean, string,
# bytes; ENUM ``io.debezium.data.Enum``, SET ``EnumSet``, JSON ``io.debezium.data.Json``,
# YEAR ``io.debezium.time.Year``; TINYINT(1), an int16) is already a plain value.

_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_EPOCH = dt.datetime(1970, 1, 1)
_UTC = dt.UTC
_DAY_US = 86_400_000_000
_DECIMAL_CONTEXT = Context(prec=100)  # MariaDB's DECIMAL has at most 65 digits


def _date(days: int) -> dt.date:
    """``io.debezium.time.Date`` (DATE): days since the epoch."""
    return dt.date.fromordinal(_EPOCH_ORDINAL + days)


def _timestamp_ms(ms: int) -> dt.datetime:
    """``io.debezium.time.Timestamp`` (DATETIME(0-3)): ms since the epoch, no time zone."""
    return _EPOCH + dt.timedelta(milliseconds=ms)


def _timestamp_us(us: int) -> dt.datetime:
    """``io.debezium.time.MicroTimestamp`` (DATETIME(4-6)): µs since the epoch, no zone."""
    return _EPOCH + dt.timedelta(microseconds=us)


def _timestamp_ns(ns: int) -> dt.datetime:
    """``io.debezium.time.NanoTimestamp``: ns since the epoch (to the µs, rounded down)."""
    return _EPOCH + dt.timedelta(microseconds=ns // 1000)


def _zoned_timestamp(text: str) -> dt.datetime:
    """``io.debezium.time.ZonedTimestamp`` (TIMESTAMP): ISO-8601 with an offset (Debezium
    writes UTC, ``…Z``) → an aware datetime in UTC."""
    value = dt.datetime.fromisoformat(text)
    return value.replace(tzinfo=_UTC) if value.tzinfo is None else value.astimezone(_UTC)


def _time_us(us: int) -> dt.time:
    """A time of day in µs past midnight → ``datetime.time``. (MariaDB's TIME is also a
    duration, up to ±838 h; Debezium captures only 00:00:00–23:59:59.999999 correctly, so a
    value outside a day is refused rather than turned into a wrong time.)"""
    if not 0 <= us < _DAY_US:
        raise ValueError(f"TIME value of {us} µs is not a time of day (Debezium captures "
                         "only 00:00:00 to 23:59:59.999999)")
    s, us = divmod(us, 1_000_000)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    return dt.time(h, m, s, us)


def _time_ms(ms: int) -> dt.time:
    """``io.debezium.time.Time`` / Kafka Connect's ``Time``: ms past midnight."""
    return _time_us(ms * 1000)


def _time_ns(ns: int) -> dt.time:
    """``io.debezium.time.NanoTime``: ns past midnight (to the µs, rounded down)."""
    return _time_us(ns // 1000)


def _naive(value: dt.datetime) -> dt.datetime:
    """A wall-clock DATETIME that fastavro read as a UTC ``timestamp-*``: without the zone."""
    return value.replace(tzinfo=None)


def _decimal(scale: int) -> Convert:
    """Kafka Connect's ``Decimal`` without Avro's ``decimal`` logical type: the unscaled
    value's big-endian two's complement bytes, and the schema's scale."""

    def convert(raw: bytes) -> Decimal:
        unscaled = int.from_bytes(raw, "big", signed=True)
        return Decimal(unscaled).scaleb(-scale, _DECIMAL_CONTEXT)

    return convert


#: Debezium / Kafka Connect semantic type → (the Avro types it is written as, conversion).
_SEMANTIC: dict[str, tuple[frozenset[str], Convert]] = {
    "io.debezium.time.Date": (frozenset({"int"}), _date),
    "io.debezium.time.Timestamp": (frozenset({"long"}), _timestamp_ms),
    "io.debezium.time.MicroTimestamp": (frozenset({"long"}), _timestamp_us),
    "io.debezium.time.NanoTimestamp": (frozenset({"long"}), _timestamp_ns),
    "io.debezium.time.ZonedTimestamp": (frozenset({"string"}), _zoned_timestamp),
    "io.debezium.time.Time": (frozenset({"int"}), _time_ms),
    "io.debezium.time.MicroTime": (frozenset({"long"}), _time_us),
    "io.debezium.time.NanoTime": (frozenset({"long"}), _time_ns),
    # time.precision.mode=connect (Kafka Connect's own logical types) when the Avro
    # converter did not tag them with Avro logical types:
    "org.apache.kafka.connect.data.Date": (frozenset({"int"}), _date),
    "org.apache.kafka.connect.data.Time": (frozenset({"int"}), _time_ms),
    "org.apache.kafka.connect.data.Timestamp": (frozenset({"long"}), _timestamp_ms),
}

#: Avro logical types fastavro converts itself (``<avro type>-<logical type>``).
_FASTAVRO_LOGICAL = frozenset({
    "bytes-decimal", "fixed-decimal", "int-date", "int-time-millis", "long-time-micros",
    "long-timestamp-millis", "long-timestamp-micros", "long-local-timestamp-millis",
    "long-local-timestamp-micros", "string-uuid"})
#: Semantic types of a wall-clock DATETIME (no time zone).
_WALL_CLOCK = frozenset({"io.debezium.time.Timestamp", "io.debezium.time.MicroTimestamp",
                         "io.debezium.time.NanoTimestamp",
                         "org.apache.kafka.connect.data.Timestamp"})


def _non_null(avro_type: Any) -> list[Any]:
    """The branches of a field's type other than ``null`` (one for a nullable column)."""
    branches = avro_type if isinstance(avro_type, list) else [avro_type]
    return [b for b in branches if b != "null"]


def _primitive(avro_type: Any) -> Any:
    """The Avro type name of one (non-union) type: ``long``, ``string``, ``record``, …"""
    while isinstance(avro_type, dict):
        avro_type = avro_type.get("type")
    return avro_type


def converter(avro_type: Any) -> Convert | None:
    """The conversion of a column written as ``avro_type`` (a field's type in an expanded
    writer schema) to its plain Python value, or ``None`` where fastavro's value already is
    one. Chosen by the field's ``connect.name`` (Debezium's semantic type) and Avro logical
    type:

    ============================================  ===========================================
    DATE ``io.debezium.time.Date``                ``datetime.date``
    DATETIME(0-3) ``io.debezium.time.Timestamp``  naive ``datetime.datetime``
    DATETIME(4-6) ``…MicroTimestamp``             naive ``datetime.datetime``
    ``…NanoTimestamp``                            naive ``datetime.datetime`` (to the µs)
    TIMESTAMP ``…ZonedTimestamp`` (ISO-8601)      aware ``datetime.datetime`` in UTC
    TIME ``…MicroTime`` (``…Time``, ``…NanoTime``)  ``datetime.time`` (a time of day)
    DECIMAL (Avro ``decimal``, Kafka Connect
    ``Decimal``)                                  ``decimal.Decimal``
    YEAR ``io.debezium.time.Year``                ``int``
    ENUM, SET, JSON (``io.debezium.data.*``)      ``str``
    BIT(1), BOOLEAN                               ``bool``
    TINYINT(1) (an int16), other integers         ``int``
    FLOAT, DOUBLE                                 ``float``
    CHAR, VARCHAR, TEXT (utf8mb4)                 ``str``
    ============================================  ===========================================
    """
    branches = _non_null(avro_type)
    if len(branches) != 1 or not isinstance(branches[0], dict):
        return None
    t = branches[0]
    prim = _primitive(t)
    name = t.get("connect.name")
    logical = t.get("logicalType")
    if logical is not None and f"{prim}-{logical}" in _FASTAVRO_LOGICAL:
        if logical in ("timestamp-millis", "timestamp-micros") and name in _WALL_CLOCK:
            return _naive  # fastavro reads timestamp-* as UTC: a DATETIME has no zone
        if logical == "uuid":
            return str
        return None
    if name == "org.apache.kafka.connect.data.Decimal" and prim == "bytes":
        params = t.get("connect.parameters") or {}
        return _decimal(int(params.get("scale") or t.get("scale") or 0))
    semantic = _SEMANTIC.get(str(name))
    if semantic is not None and prim in semantic[0]:
        return semantic[1]
    return None


# --- the contract: declared columns and key, checked once per writer schema ----------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """How records of one writer schema read as one table's contract (key or value)."""

    #: The declared key column.
    key: str
    #: The declared columns a row keeps, in declared order (the value's plan; the key's: ()).
    columns: tuple[str, ...] = ()
    #: The declared columns whose values are converted, and how.
    convert: tuple[tuple[str, Convert], ...] = ()
    #: The writer's row columns that are not declared: a row is copied whole without them,
    #: unless ``pick`` (most are dropped): then its declared columns are picked one by one.
    drop: tuple[str, ...] = ()
    pick: bool = False


_KEY_KINDS = {"int": frozenset({"int", "long"}), "string": frozenset({"string"})}


def _key_kind_problem(source: Source, where: str, avro_type: Any) -> str | None:
    """Whether the key column written as ``avro_type`` gives keys of the declared type."""
    branches = _non_null(avro_type)
    kinds = {_primitive(b) for b in branches}
    logical = {b.get("logicalType") for b in branches if isinstance(b, dict)} - {None}
    if len(branches) == 1 and not logical and kinds <= _KEY_KINDS[source.key_type]:
        return None
    wanted = "an integer" if source.key_type == "int" else "a string"
    written = "/".join(sorted(str(k) for k in kinds)) + (
        f" ({', '.join(sorted(map(str, logical)))})" if logical else "")
    return (f"{where} {source.key!r} is written as {written}, not {wanted} (key_type "
            f"{source.key_type!r})")


def _record_fields(t: Any) -> dict[str, Any] | None:
    if isinstance(t, dict) and t.get("type") == "record":
        return {f["name"]: f["type"] for f in t.get("fields", [])}
    return None


def _row_record(envelope: Any) -> dict[str, Any] | None:
    """The fields of the row record of a Debezium value (its ``after`` image), if any."""
    fields = _record_fields(envelope)
    if fields is None or "op" not in fields:
        return None
    rows = _non_null(fields.get("after", "null"))
    if len(rows) != 1:
        return None
    return _record_fields(rows[0])


def _plan(source: Source, part: str, writer: Any) -> _Plan | str:
    """The plan of records written with ``writer`` (an expanded writer schema) as the
    contract of ``source``'s ``part``, or what does not read as it."""
    if part == "key":
        fields = _record_fields(writer)
        if fields is None:
            return "not a record"
        if source.key not in fields:
            names = ", ".join(fields) or "none"
            return f"the key has no column {source.key!r} (its columns: {names})"
        if len(fields) > 1:  # Debezium's record key (compaction, tombstones) is not the row's
            return (f"the key has the columns {', '.join(fields)}, not the declared key "
                    f"{source.key!r} alone (a composite primary key: viewsync keys a row by "
                    "one column)")
        problem = _key_kind_problem(source, "the key column", fields[source.key])
        return problem if problem is not None else _Plan(key=source.key)
    row = _row_record(writer)
    if row is None:
        return "not a Debezium change event (no op field, or no before/after row record)"
    missing = [c for c in source.columns if c not in row]
    if missing:
        return (f"its row has no column(s) {', '.join(missing)} (declared for "
                f"{source.name} in the views file)")
    problem = _key_kind_problem(source, "the row's key column", row[source.key])
    if problem is not None:
        return problem
    convert = tuple((c, fn) for c in source.columns if (fn := converter(row[c])) is not None)
    drop = tuple(c for c in row if c not in source.columns)
    return _Plan(key=source.key, columns=source.columns, convert=convert, drop=drop,
                 pick=len(drop) >= len(source.columns))


def check_writer(source: Source, part: str, writer_schema: Any) -> str | None:
    """``None`` when records written with ``writer_schema`` (its JSON text, the parsed JSON
    or a fastavro-parsed schema) read as the contract of ``source``'s ``part`` (``key`` or
    ``value``); else what does not — the same rule the decoder applies to every writer
    schema: the key record has the declared key column, of the declared key type; the row
    record (``before``/``after``) has every declared column, its key column of that type.
    Extra writer columns are fine (the decoder drops them)."""
    if part not in _PARTS:
        raise ValueError(f"part {part!r}: key or value")
    try:
        doc = json.loads(writer_schema) if isinstance(writer_schema, str) else writer_schema
        expanded = fastavro.parse_schema(doc, expand=True)
    except Exception as exc:
        return f"not a valid Avro schema: {exc}"
    plan = _plan(source, part, expanded)
    return plan if isinstance(plan, str) else None


# --- the decoder ---------------------------------------------------------------------------


class Decoder:
    """Decodes the records of the source topics (``topic_tables``: topic -> a table of
    ``graph``) into :class:`Change` values keeping the declared columns."""

    def __init__(self, schemas: SchemaSource, topic_tables: Mapping[str, str],
                 graph: Graph) -> None:
        self._schemas = schemas
        self._topic_tables = dict(topic_tables)
        self._sources = {t: graph.source(t) for t in self._topic_tables.values()}
        self._writers: dict[int, Any] = {}
        #: (schema id, table, part) -> its plan, or why it does not read as the contract.
        self._plans: dict[tuple[int, str, str], _Plan | str] = {}

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(self._topic_tables)

    def _writer(self, schema_id: int) -> Any:
        parsed = self._writers.get(schema_id)
        if parsed is None:
            parsed = fastavro.parse_schema(json.loads(self._schemas.schema_text(schema_id)))
            self._writers[schema_id] = parsed
        return parsed

    def _plan_for(self, schema_id: int, writer: Any, table: str, part: str) -> _Plan | str:
        """Decided once per writer schema id (and table, part)."""
        plan = _plan(self._sources[table], part, fastavro.parse_schema(writer, expand=True))
        self._plans[(schema_id, table, part)] = plan
        return plan

    def _read(self, data: bytes, table: str, part: str) -> tuple[_Plan, dict[str, Any]]:
        if len(data) < 5 or data[0] != MAGIC:
            raise ValueError(f"{part} is not in the registry wire format (magic byte, schema id)")
        (schema_id,) = _SCHEMA_ID.unpack_from(data, 1)
        writer = self._writer(schema_id)
        plan = self._plans.get((schema_id, table, part))
        if plan is None:
            plan = self._plan_for(schema_id, writer, table, part)
        if isinstance(plan, str):
            name = writer.get("name", writer.get("type")) if isinstance(writer, dict) else writer
            raise ValueError(f"{part} was written with schema id {schema_id} ({name}), which "
                             f"does not read as the {table} {part} contract: {plan}")
        buf = io.BytesIO(data)
        buf.seek(5)
        record = fastavro.schemaless_reader(buf, writer, None)
        if not isinstance(record, dict):
            raise ValueError(f"{part} is not an Avro record")
        return plan, record

    @staticmethod
    def _row(plan: _Plan, row: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        if plan.pick:
            out = {c: row[c] for c in plan.columns}
        else:
            out = dict(row)
            for c in plan.drop:
                del out[c]
        if not plan.convert:
            return out
        col = ""
        try:
            for col, fn in plan.convert:
                value = out[col]
                if value is not None:
                    out[col] = fn(value)
        except Exception as exc:
            raise ValueError(f"column {col}: {exc}") from None
        return out

    def snapshot_marker(self, topic: str, value: bytes) -> str | None:
        """Debezium's ``source.snapshot`` of a change record (``"first"``, ``"true"``,
        ``"last"``, …; ``None``/``"false"`` while streaming). For recovery tools."""
        table = self._topic_tables[topic]
        source = self._read(value, table, "value")[1].get("source") or {}
        marker = source.get("snapshot")
        return str(marker) if marker is not None else None

    def decode(self, topic: str, key: bytes | None, value: bytes | None) -> Change | DecodeFailure:
        table = self._topic_tables.get(topic)
        if table is None:
            return DecodeFailure(topic, f"topic {topic!r} is not a source table topic")
        try:
            if key is None:
                raise ValueError("record has no key")
            plan, record = self._read(key, table, "key")
            row_key: Key | None = record[plan.key]
            if row_key is None:
                raise ValueError(f"the key's {plan.key} is null")
            if value is None:  # tombstone: the row is gone (its delete event came before)
                return Change(table=table, key=row_key, after=None, op="t")
            vplan, env = self._read(value, table, "value")
            return self._envelope(table, vplan, row_key, env)
        except SchemaUnavailable:
            raise
        except Exception as exc:  # every other failure: a dead letter with its reason
            return DecodeFailure(topic, f"{type(exc).__name__}: {exc}")

    def _envelope(self, table: str, plan: _Plan, key: Key, env: Mapping[str, Any]) -> Change:
        op = env.get("op")
        if op not in _OPS:
            raise ValueError(f"unknown Debezium op {op!r}")
        before = self._row(plan, env.get("before"))
        after = self._row(plan, env.get("after"))
        if op == "d":
            after = None
        elif after is None:
            raise ValueError(f"op {op!r} without an after image")
        elif after[plan.key] != key:  # exact: an int as an int, a string code point by code point
            raise ValueError(f"key {plan.key} {key!r} differs from the row's {plan.key} "
                             f"{after[plan.key]!r}")
        src = env.get("source") or {}
        gtid, file, pos, row = (src.get(k) for k in ("gtid", "file", "pos", "row"))
        position = f"{gtid or ''}@{file or ''}:{pos or ''}:{row or 0}"
        return Change(table=table, key=key, after=after, before=before,
                      op=cast(Op, op), position=position, ts_ms=int(src.get("ts_ms") or 0))


def encode(schema: Any, schema_id: int, record: Mapping[str, Any]) -> bytes:
    """Encode a record in the registry wire format (used by tests and tools)."""
    buf = io.BytesIO()
    buf.write(bytes([MAGIC]))
    buf.write(_SCHEMA_ID.pack(schema_id))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), dict(record))
    return buf.getvalue()


class RegistrySchemas:
    """:class:`SchemaSource` backed by the Confluent-compatible API of the registry."""

    def __init__(self, registry: str | Mapping[str, Any]) -> None:
        """``registry``: its URL, or a client configuration (``app.clients.registry_config``:
        the URL and its basic auth)."""
        from confluent_kafka.schema_registry import SchemaRegistryClient

        conf = {"url": registry} if isinstance(registry, str) else dict(registry)
        self._client = SchemaRegistryClient(conf)

    def schema_text(self, schema_id: int) -> str:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            return str(self._client.get_schema(schema_id).schema_str)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise KeyError(f"schema id {schema_id} is not in the registry") from exc
            raise SchemaUnavailable(f"registry error for schema id {schema_id}: {exc}") from exc
        except Exception as exc:  # connection refused, timeout, ...
            raise SchemaUnavailable(f"registry unreachable: {exc}") from exc
