"""``viewsync schemas check``: will the source's schemas still read as the contracts?

The contract of a source table is generated from the views file (its ``[sources.<table>]``:
the key column and key type, the declared columns). The worker checks every writer schema
against it once (``app.decode.check_writer``) and dead-letters the records of one that does
not read as it: a key without the declared key column (or of another type), a row without a
declared column. Extra columns are fine. This check runs the same rule, before anything
ships:

- for every declared table's subjects in the registry (``<topic>-key`` / ``<topic>-value``),
  its latest registered schema, and the subject's compatibility rule (a registry that
  accepts any change is worth knowing about);
- for a *proposed* writer schema (``--proposed <table>.value=new.avsc``, e.g. the Avro
  schema of a Product-service migration, as Debezium would register it), the same check
  before the migration runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.clients import registry_config
from app.decode import check_writer
from app.graph import Graph
from app.settings import Settings

PARTS = ("key", "value")


@dataclass
class SchemaCheck:
    subject: str
    version: int | None
    compatibility: str | None
    problem: str | None  # None: reads as the contract

    @property
    def ok(self) -> bool:
        return self.problem is None


def check_registry(settings: Settings) -> list[SchemaCheck]:
    """The latest schema of every declared table's key and value subjects."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    graph = settings.graph()
    client = SchemaRegistryClient(registry_config(settings))
    try:
        default_level: str | None = str(client.get_compatibility())
    except SchemaRegistryError:
        default_level = None
    out = []
    for source in graph.sources:
        for part in PARTS:
            subject = f"{settings.topic(source.name)}-{part}"
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
                                   check_writer(source, part, text)))
    return out


def check_proposed(graph: Graph, table: str, part: str, text: str) -> SchemaCheck:
    """A proposed writer schema (its JSON text) of ``table``'s ``part``."""
    if table not in graph or part not in PARTS:
        raise ValueError(f"{table}.{part}: expected <table>.key or <table>.value with a table "
                         f"of {', '.join(graph.names)}")
    return SchemaCheck(f"proposed {table}.{part}", None, None,
                       check_writer(graph.source(table), part, text))


def as_json(checks: list[SchemaCheck]) -> list[dict[str, Any]]:
    return [{"subject": c.subject, "version": c.version, "compatibility": c.compatibility,
             "ok": c.ok, "problem": c.problem} for c in checks]
