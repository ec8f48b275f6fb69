"""Sink: write projected view rows into each consumer's database with SQLAlchemy 2 Core.

Deciding *whether* a row is upserted or deleted is pure (``app.project``); this module only
builds and runs the statements: batched ``INSERT … ON CONFLICT DO UPDATE`` on PostgreSQL,
``INSERT … ON DUPLICATE KEY UPDATE`` on MariaDB, batched ``DELETE … WHERE key IN (…)``, one
transaction per consumer database per batch. Writes are idempotent: replaying a batch
rewrites the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Connection, Engine

from app.pipeline import ViewBatch
from app.settings import Settings
from app.views import VIEWS, ColumnType, ViewDef, consumers

log = logging.getLogger("viewsync.sink")

#: Rows per statement; keeps statements well under packet/parameter limits.
CHUNK = 1000


def sa_type(t: ColumnType) -> sa.types.TypeEngine[Any]:
    if t == "bigint":
        return sa.BigInteger()
    if t == "int":
        return sa.Integer()
    if t == "text":
        return sa.Text()
    if t == "date":
        return sa.Date()
    if t == "numeric(12,2)":
        return sa.Numeric(12, 2)
    if t.startswith("varchar("):
        return sa.String(int(t[len("varchar(") : -1]))
    raise ValueError(f"unknown column type {t!r}")


def view_table(view: ViewDef, metadata: sa.MetaData) -> sa.Table:
    """The SQLAlchemy table of a view definition."""
    cols = [
        sa.Column(c.name, sa_type(c.type), primary_key=(c.name == view.key),
                  nullable=c.nullable and c.name != view.key, autoincrement=False)
        for c in view.columns
    ]
    return sa.Table(view.table, metadata, *cols)


def _chunks(items: Sequence[Any], n: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def upsert_statement(table: sa.Table, key: str, dialect: str) -> sa.Executable:
    """The dialect's upsert into ``table``, executed with a list of rows (executemany).

    Built once per table and reused: SQLAlchemy caches its compiled form and batches the
    rows into multi-row ``VALUES`` itself ("insertmanyvalues" on PostgreSQL, PyMySQL's
    multi-row executemany on MariaDB).
    """
    others = [c.name for c in table.columns if c.name != key]
    if dialect == "postgresql":
        pg = postgresql.insert(table)
        return pg.on_conflict_do_update(
            index_elements=[key], set_={c: pg.excluded[c] for c in others}
        )
    if dialect in ("mysql", "mariadb"):
        my = mysql.insert(table)
        return my.on_duplicate_key_update({c: my.inserted[c] for c in others})
    raise ValueError(f"unsupported consumer database dialect {dialect!r}")


def delete_statement(table: sa.Table, key: str) -> sa.Executable:
    """``DELETE … WHERE key IN (:keys)``, with ``keys`` an expanding list parameter."""
    return sa.delete(table).where(table.c[key].in_(sa.bindparam("keys", expanding=True)))


class ConsumerSink:
    """One consumer database and its view tables."""

    def __init__(self, consumer: str, url: str, views: Sequence[ViewDef]) -> None:
        self.consumer = consumer
        self.engine: Engine = sa.create_engine(url, pool_pre_ping=True, future=True)
        self.metadata = sa.MetaData()
        self.views = [v for v in views if v.consumer == consumer]
        self.tables = {v.name: view_table(v, self.metadata) for v in self.views}
        self._upserts = {v.name: upsert_statement(self.tables[v.name], v.key, self.dialect)
                         for v in self.views}
        self._deletes = {v.name: delete_statement(self.tables[v.name], v.key)
                         for v in self.views}

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def create_tables(self) -> None:
        self.metadata.create_all(self.engine, checkfirst=True)

    def write(self, batches: Mapping[str, ViewBatch]) -> int:
        """Write every view's batch in one transaction; return rows touched."""
        todo = [(v, batches[v.name]) for v in self.views if len(batches.get(v.name, ViewBatch()))]
        if not todo:
            return 0
        n = 0
        with self.engine.begin() as conn:
            for view, batch in todo:
                n += self._write_view(conn, view, batch)
        return n

    def _write_view(self, conn: Connection, view: ViewDef, batch: ViewBatch) -> int:
        if batch.deletes:
            for keys in _chunks(sorted(batch.deletes)):
                conn.execute(self._deletes[view.name], {"keys": list(keys)})
        if batch.upserts:
            # Sorted by key: concurrent writers (scale-out) lock rows in the same order.
            rows = [batch.upserts[k] for k in sorted(batch.upserts)]
            for chunk in _chunks(rows):
                conn.execute(self._upserts[view.name], list(chunk))
        return len(batch)

    def dispose(self) -> None:
        self.engine.dispose()


class Sink:
    """Every consumer database of the configured views."""

    def __init__(self, settings: Settings, views: Sequence[ViewDef] = VIEWS) -> None:
        self.consumers = [
            ConsumerSink(c, settings.consumer_url(c), views) for c in consumers(tuple(views))
        ]

    def create_tables(self) -> None:
        for c in self.consumers:
            c.create_tables()

    def write(self, batches: Mapping[str, ViewBatch]) -> int:
        return sum(c.write(batches) for c in self.consumers)

    def dispose(self) -> None:
        for c in self.consumers:
            c.dispose()


def create_view_tables(settings: Settings, views: Sequence[ViewDef] = VIEWS) -> None:
    sink = Sink(settings, views)
    try:
        sink.create_tables()
    finally:
        sink.dispose()
