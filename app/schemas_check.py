"""``viewsync schemas check``: will the source's schemas still read as the contracts?

The worker reads every record through the contract schemas in ``schemas/`` (Avro schema
resolution: extra columns are ignored, a missing column without default or a changed type is
an error that dead-letters the record). This check runs the same resolution, before anything
ships:

- for every source subject in the registry (``<topic>-key`` / ``<topic>-value``), its latest
  registered schema, and the subject's compatibility rule (a registry that accepts any change
  is worth knowing about);
- for a *proposed* writer schema (``--proposed products.value=new.avsc``, e.g. the Avro
  schema of a Product-service migration, as Debezium would register it), the same check
  before the migration runs.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import fastavro
from fastavro.read import SchemaResolutionError
from fastavro.utils import generate_many

from app.changes import SOURCE_TABLES, SourceTable
from app.clients import registry_config
from app.decode import contract
from app.settings import Settings


@dataclass
class SchemaCheck:
    subject: str
    version: int | None
    compatibility: str | None
    problem: str | None  # None: reads as the contract

    @property
    def ok(self) -> bool:
        return self.problem is None


def reads_as_contract(table: SourceTable, part: str, writer_schema: str) -> str | None:
    """``None`` when records written with ``writer_schema`` read as the contract of
    ``table``'s ``part``; else what does not."""
    try:
        writer = fastavro.parse_schema(json.loads(writer_schema))
    except Exception as exc:
        return f"not a valid Avro schema: {exc}"
    reader = fastavro.parse_schema(contract(table, part))
    try:
        for record in generate_many(writer, 5):
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, writer, record)
            buf.seek(0)
            fastavro.schemaless_reader(buf, writer, reader)
    except SchemaResolutionError as exc:
        text = str(exc)
        return text if len(text) <= 300 else text[:300] + "…"
    return None


def check_registry(settings: Settings) -> list[SchemaCheck]:
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    client = SchemaRegistryClient(registry_config(settings))
    try:
        default_level: str | None = str(client.get_compatibility())
    except SchemaRegistryError:
        default_level = None
    out = []
    for table in SOURCE_TABLES:
        for part in ("key", "value"):
            subject = f"{settings.topic(table)}-{part}"
            try:
                latest = client.get_latest_version(subject)
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404:
                    out.append(SchemaCheck(subject, None, default_level,
                                           "not registered yet (Debezium registers a table's "
                                           "schemas with its first change)"))
                    continue
                raise
            try:
                level: str | None = str(client.get_compatibility(subject))
            except SchemaRegistryError:
                level = default_level
            text = latest.schema.schema_str or ""
            out.append(SchemaCheck(subject, latest.version, level,
                                   reads_as_contract(table, part, text)))
    return out


def check_proposed(table: str, part: str, text: str) -> SchemaCheck:
    if table not in SOURCE_TABLES or part not in ("key", "value"):
        raise ValueError(f"{table}.{part}: expected <table>.key or <table>.value with a table "
                         f"of {', '.join(SOURCE_TABLES)}")
    source_table: SourceTable = next(t for t in SOURCE_TABLES if t == table)
    return SchemaCheck(f"proposed {table}.{part}", None, None,
                       reads_as_contract(source_table, part, text))


def as_json(checks: list[SchemaCheck]) -> list[dict[str, Any]]:
    return [{"subject": c.subject, "version": c.version, "compatibility": c.compatibility,
             "ok": c.ok, "problem": c.problem} for c in checks]
