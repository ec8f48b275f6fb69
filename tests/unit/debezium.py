"""Debezium-shaped Avro records for unit tests, encoded with the writer schemas that
Debezium 3.4 registered in the real registry (captured into tests/unit/fixtures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.changes import SOURCE_TABLES, SourceTable
from app.decode import encode

DATA = Path(__file__).parent / "fixtures"


def writer(table: str, part: str) -> dict[str, Any]:
    return dict(json.loads((DATA / f"debezium.{table}.{part}.avsc").read_text()))


class DictSchemas:
    def __init__(self) -> None:
        self.by_id: dict[int, str] = {}
        self.ids: dict[tuple[str, str], int] = {}
        for i, t in enumerate(SOURCE_TABLES):
            for j, part in enumerate(("key", "value")):
                sid = 100 + 2 * i + j
                self.by_id[sid] = (DATA / f"debezium.{t}.{part}.avsc").read_text()
                self.ids[(t, part)] = sid

    def schema_text(self, schema_id: int) -> str:
        return self.by_id[schema_id]


TOPICS: dict[str, SourceTable] = {f"p.product.{t}": t for t in SOURCE_TABLES}
SOURCE = {"version": "3.4.0.Final", "connector": "mariadb", "name": "p", "ts_ms": 1,
          "snapshot": "false", "db": "product", "sequence": None, "ts_us": None, "ts_ns": None,
          "table": "products", "server_id": 1, "gtid": "0-1-7", "file": "mysql-bin.000001",
          "pos": 400, "row": 2, "thread": None, "query": None}


def key(schemas: DictSchemas, table: str, id_: int) -> bytes:
    return encode(writer(table, "key"), schemas.ids[(table, "key")], {"id": id_})


def value(schemas: DictSchemas, table: str, op: str, before: Any, after: Any) -> bytes:
    env = {"before": before, "after": after, "source": SOURCE, "transaction": None, "op": op,
           "ts_ms": 1, "ts_us": None, "ts_ns": None}
    return encode(writer(table, "value"), schemas.ids[(table, "value")], env)


