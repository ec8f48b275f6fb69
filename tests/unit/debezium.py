"""Debezium-shaped Avro records for unit tests, encoded with the writer schemas that
Debezium 3.4 registered in the real registry for the bundled example's tables (captured
into tests/unit/fixtures), and hand-made writer schemas of the same envelope shape for
tables of any other schema (:func:`envelope`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.decode import encode
from app.graph import Graph
from app.views import bundled_definitions

DATA = Path(__file__).parent / "fixtures"


def graph() -> Graph:
    """The bundled example's source graph (the tables the fixtures were captured from)."""
    return bundled_definitions().graph


def writer(table: str, part: str) -> dict[str, Any]:
    return dict(json.loads((DATA / f"debezium.{table}.{part}.avsc").read_text()))


class DictSchemas:
    """A registry of the captured writer schemas (ids 100, 101, … for key, value of each
    bundled table), where a test can register more (:meth:`add`)."""

    def __init__(self) -> None:
        self.by_id: dict[int, str] = {}
        self.ids: dict[tuple[str, str], int] = {}
        for i, t in enumerate(graph().names):
            for j, part in enumerate(("key", "value")):
                sid = 100 + 2 * i + j
                self.by_id[sid] = (DATA / f"debezium.{t}.{part}.avsc").read_text()
                self.ids[(t, part)] = sid

    def add(self, schema_id: int, schema: dict[str, Any]) -> int:
        self.by_id[schema_id] = json.dumps(schema)
        return schema_id

    def schema_text(self, schema_id: int) -> str:
        return self.by_id[schema_id]


TOPICS: dict[str, str] = {f"p.product.{t}": t for t in graph().names}
SOURCE = {"version": "3.4.0.Final", "connector": "mariadb", "name": "p", "ts_ms": 1,
          "snapshot": "false", "db": "product", "sequence": None, "ts_us": None, "ts_ns": None,
          "table": "products", "server_id": 1, "gtid": "0-1-7", "file": "mysql-bin.000001",
          "pos": 400, "row": 2, "thread": None, "query": None}


def key(schemas: DictSchemas, table: str, id_: int) -> bytes:
    return encode(writer(table, "key"), schemas.ids[(table, "key")], {"id": id_})


def envelope_record(op: str, before: Any, after: Any) -> dict[str, Any]:
    """A Debezium change event value (``before``, ``after``, ``source``, ``op``, …)."""
    return {"before": before, "after": after, "source": SOURCE, "transaction": None,
            "op": op, "ts_ms": 1, "ts_us": None, "ts_ns": None}


def value(schemas: DictSchemas, table: str, op: str, before: Any, after: Any) -> bytes:
    return encode(writer(table, "value"), schemas.ids[(table, "value")],
                  envelope_record(op, before, after))


def envelope(namespace: str, columns: list[dict[str, Any]]) -> dict[str, Any]:
    """A writer value schema in the shape Debezium registers (the bundled products value's
    envelope and source) whose row record has ``columns`` (Avro fields)."""
    doc = writer("products", "value")
    doc["namespace"] = namespace
    row = doc["fields"][0]["type"][1]
    row["fields"] = columns
    row["connect.name"] = f"{namespace}.Value"
    return doc


def key_schema(namespace: str, column: str, avro_type: Any) -> dict[str, Any]:
    """A writer key schema in the shape Debezium registers."""
    return {"type": "record", "name": "Key", "namespace": namespace,
            "fields": [{"name": column, "type": avro_type}],
            "connect.name": f"{namespace}.Key"}
