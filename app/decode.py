"""Decode: Kafka record (Confluent wire format, Avro) → :class:`app.changes.Change`.

Debezium envelopes, tombstones, snapshot reads (``op = r``) and Avro logical types are
handled here and nowhere else. Records are read with Debezium's writer schema (fetched by id
from the registry, cached) resolved to the contract's reader schema in ``schemas/``, so a
source schema that drifts away from the contract is caught here, per record, with a reason.
A record that cannot be decoded becomes a :class:`DecodeFailure` (a value, not an
exception) that the worker sends to the dead-letter topic.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

import fastavro
from fastavro.read import SchemaResolutionError

from app.changes import SOURCE_TABLES, Change, Op, SourceTable
from app.resources import bundled

SCHEMAS_DIR = bundled("schemas")
MAGIC = 0
EPOCH = dt.date(1970, 1, 1)
_OPS: frozenset[str] = frozenset({"c", "u", "d", "r"})


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


def contract(table: SourceTable, part: str) -> dict[str, Any]:
    """The contract (reader) schema of one table's ``key`` or ``value``."""
    text = (SCHEMAS_DIR / f"{table}.{part}.avsc").read_text(encoding="utf-8")
    return cast(dict[str, Any], json.loads(text))


def _row_schema(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """The row record of a contract's value (its ``before``/``after`` image)."""
    return cast(dict[str, Any], envelope["fields"][0]["type"][1])


def contract_columns(table: SourceTable) -> tuple[str, ...]:
    """The columns of ``table`` the contract carries (its value's row image), in order."""
    return tuple(f["name"] for f in _row_schema(contract(table, "value"))["fields"])


def _converters(record_schema: Mapping[str, Any]) -> dict[str, Callable[[Any], Any]]:
    """Column -> conversion for Debezium semantic types that Avro does not tag itself."""
    out: dict[str, Callable[[Any], Any]] = {}
    for f in record_schema["fields"]:
        types = f["type"] if isinstance(f["type"], list) else [f["type"]]
        for t in types:
            if isinstance(t, dict) and t.get("connect.name") == "io.debezium.time.Date":
                out[f["name"]] = lambda days: None if days is None else EPOCH + dt.timedelta(days)
    return out


class Decoder:
    """Decodes the records of the four source topics."""

    def __init__(self, schemas: SchemaSource, topic_tables: Mapping[str, SourceTable]) -> None:
        self._schemas = schemas
        self._topic_tables = dict(topic_tables)
        self._writers: dict[int, Any] = {}
        self._fast: dict[tuple[int, SourceTable, str], bool] = {}
        self._readers: dict[tuple[SourceTable, str], Any] = {}
        self._convert: dict[SourceTable, dict[str, Callable[[Any], Any]]] = {}
        for table in SOURCE_TABLES:
            for part in ("key", "value"):
                self._readers[(table, part)] = fastavro.parse_schema(contract(table, part))
            self._convert[table] = _converters(_row_schema(contract(table, "value")))

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(self._topic_tables)

    def _writer(self, schema_id: int) -> Any:
        parsed = self._writers.get(schema_id)
        if parsed is None:
            parsed = fastavro.parse_schema(json.loads(self._schemas.schema_text(schema_id)))
            self._writers[schema_id] = parsed
        return parsed

    def _reader_for(self, schema_id: int, table: SourceTable, part: str) -> Any:
        """The reader schema to resolve with, or ``None`` where the writer schema already
        reads exactly as the contract (then records are read with the writer schema alone:
        about half the cost). Decided once per writer schema id."""
        key = (schema_id, table, part)
        if key not in self._fast:
            writer = fastavro.parse_schema(self._writer(schema_id), expand=True)
            reader = fastavro.parse_schema(self._readers[(table, part)], expand=True)
            self._fast[key] = reads_as(writer, reader, rows_exact=part == "value")
        return None if self._fast[key] else self._readers[(table, part)]

    def _read(self, data: bytes, table: SourceTable, part: str) -> dict[str, Any]:
        if len(data) < 5 or data[0] != MAGIC:
            raise ValueError(f"{part} is not in the registry wire format (magic byte, schema id)")
        (schema_id,) = struct.unpack(">I", data[1:5])
        writer = self._writer(schema_id)
        try:
            record = fastavro.schemaless_reader(
                io.BytesIO(data[5:]), writer, self._reader_for(schema_id, table, part)
            )
        except SchemaResolutionError as exc:
            name = writer.get("name", writer.get("type")) if isinstance(writer, dict) else writer
            cause = str(exc)
            raise ValueError(
                f"{part} was written with schema id {schema_id} ({name}), which does not read "
                f"as the {table} {part} contract: "
                f"{cause if len(cause) <= 200 else cause[:200] + '…'}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{part} is not an Avro record")
        return record

    def _row(self, table: SourceTable, row: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        out = dict(row)
        for col, fn in self._convert[table].items():
            out[col] = fn(out.get(col))
        return out

    def snapshot_marker(self, topic: str, value: bytes) -> str | None:
        """Debezium's ``source.snapshot`` of a change record (``"first"``, ``"true"``,
        ``"last"``, …; ``None``/``"false"`` while streaming). For recovery tools."""
        table = self._topic_tables[topic]
        source = self._read(value, table, "value").get("source") or {}
        marker = source.get("snapshot")
        return str(marker) if marker is not None else None

    def decode(self, topic: str, key: bytes | None, value: bytes | None) -> Change | DecodeFailure:
        table = self._topic_tables.get(topic)
        if table is None:
            return DecodeFailure(topic, f"topic {topic!r} is not a source table topic")
        try:
            if key is None:
                raise ValueError("record has no key")
            key_id = int(self._read(key, table, "key")["id"])
            if value is None:  # tombstone: the row is gone (its delete event came before)
                return Change(table=table, key=key_id, after=None, op="t")
            env = self._read(value, table, "value")
            return self._envelope(table, key_id, env)
        except SchemaUnavailable:
            raise
        except Exception as exc:  # every other failure: a dead letter with its reason
            return DecodeFailure(topic, f"{type(exc).__name__}: {exc}")

    def _envelope(self, table: SourceTable, key_id: int, env: Mapping[str, Any]) -> Change:
        op = env.get("op")
        if op not in _OPS:
            raise ValueError(f"unknown Debezium op {op!r}")
        before = self._row(table, env.get("before"))
        after = self._row(table, env.get("after"))
        if op == "d":
            after = None
        elif after is None:
            raise ValueError(f"op {op!r} without an after image")
        elif int(after["id"]) != key_id:
            raise ValueError(f"key id {key_id} differs from the row's id {after['id']}")
        src = env.get("source") or {}
        gtid, file, pos, row = (src.get(k) for k in ("gtid", "file", "pos", "row"))
        position = f"{gtid or ''}@{file or ''}:{pos or ''}:{row or 0}"
        return Change(table=table, key=key_id, after=after, before=before,
                      op=cast(Op, op), position=position, ts_ms=int(src.get("ts_ms") or 0))


#: What decides how a value is read; names, namespaces, docs, defaults and Kafka Connect's
#: annotations do not.
_SHAPE_KEYS = ("type", "items", "values", "symbols", "size", "logicalType", "precision",
               "scale")


def _shape(t: Any) -> Any:
    """An expanded Avro type reduced to what decides how its values are read."""
    if isinstance(t, list):  # a union: the order of its branches does not change a value
        branches = [_shape(b) for b in t]
        return sorted(branches, key=json.dumps)
    if isinstance(t, dict):
        out = {k: _shape(v) if k in ("items", "values") else v
               for k, v in t.items() if k in _SHAPE_KEYS}
        if "fields" in t:
            out["fields"] = [(f["name"], _shape(f["type"])) for f in t["fields"]]
        if set(out) == {"type"}:
            return _shape(out["type"]) if isinstance(out["type"], dict | list) else out["type"]
        return out
    return t


def reads_as(writer: Any, reader: Any, rows_exact: bool) -> bool:
    """Whether reading with ``writer`` alone gives what resolving to ``reader`` gives, for
    every field our code reads: each field of the reader record is in the writer record
    with the same shape (extra writer fields are ignored by the decoder), except that the
    row images (``before``/``after``) must have exactly the contract's columns."""
    if not (isinstance(writer, dict) and isinstance(reader, dict)
            and writer.get("type") == reader.get("type") == "record"):
        return bool(_shape(writer) == _shape(reader))
    fields = {f["name"]: f["type"] for f in writer["fields"]}
    for f in reader["fields"]:
        if f["name"] not in fields:
            return False
        w, r = fields[f["name"]], f["type"]
        if rows_exact and f["name"] in ("before", "after"):
            if _shape(w) != _shape(r):
                return False
        elif (isinstance(r, dict) and r.get("type") == "record") or (
                isinstance(r, list) and any(isinstance(b, dict) for b in r)):
            if not _covers(w, r):
                return False
        elif _shape(w) != _shape(r):
            return False
    return True


def _covers(writer: Any, reader: Any) -> bool:
    """Like :func:`reads_as` for a nested record or a union of one: branch by branch."""
    ws = writer if isinstance(writer, list) else [writer]
    rs = reader if isinstance(reader, list) else [reader]
    if len(ws) != len(rs):
        return False
    key = json.dumps  # pair the branches by kind, whatever their order
    ws = sorted(ws, key=lambda b: key(b.get("type") if isinstance(b, dict) else b))
    rs = sorted(rs, key=lambda b: key(b.get("type") if isinstance(b, dict) else b))
    return all(reads_as(w, r, rows_exact=False) for w, r in zip(ws, rs, strict=True))


def encode(schema: Any, schema_id: int, record: Mapping[str, Any]) -> bytes:
    """Encode a record in the registry wire format (used by tests and tools)."""
    buf = io.BytesIO()
    buf.write(bytes([MAGIC]))
    buf.write(struct.pack(">I", schema_id))
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
