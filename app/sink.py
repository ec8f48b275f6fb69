"""Sink: write projected view rows into each consumer's database with SQLAlchemy 2 Core.

Deciding *whether* a row is upserted or deleted is pure (``app.project``); this module only
builds and runs the statements. The contract the pipeline relies on is :class:`ViewSink`:
create the view tables, write one batch (one transaction per consumer database), close; a
database that cannot be reached raises :class:`SinkUnavailable` (the pipeline retries), any
other error is a bug and propagates. Writes are idempotent: replaying a batch rewrites the
same rows.

Statements come from one :class:`Dialect` per database kind, looked up by SQLAlchemy's
dialect name in :data:`DIALECTS` (the shape of debezium-connector-jdbc's
``DatabaseDialect``): PostgreSQL ``INSERT … ON CONFLICT DO UPDATE``, MariaDB/MySQL
``INSERT … ON DUPLICATE KEY UPDATE``, and ``DELETE … WHERE key IN (…)`` for both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Connection, Engine

from app.graph import Key, shard_of
from app.positions import Positions
from app.project import ViewBatch
from app.settings import Settings
from app.shards import (
    Claim,
    Fenced,
    Progress,
    ShardCountMismatch,
    decode_positions,
    encode_positions,
)
from app.views import ColumnType, ViewDef, consumers

log = logging.getLogger("viewsync.sink")

#: Rows per statement; keeps statements well under packet/parameter limits.
CHUNK = 1000

#: A view's VARCHAR column widened past this many characters becomes TEXT (MariaDB counts
#: every VARCHAR of a row against a 64 KiB row limit; TEXT is stored off-row).
MAX_VARCHAR = 2048


class SinkUnavailable(Exception):
    """A consumer database cannot be reached now; the same write may succeed later."""


class ViewSink(Protocol):
    """What the pipeline writes view rows through."""

    def create_tables(self) -> list[str]:
        """Create the view tables that are missing, add the columns a view gained; return
        the views that gained columns."""
        ...

    def write(self, batches: Mapping[str, ViewBatch], progress: Progress | None = None) -> int:
        """Write every view's batch (one transaction per database); return rows touched.

        With ``progress``, each transaction first checks that the writer still holds every
        shard it claimed (raises :class:`~app.shards.Fenced` otherwise) and records the
        shards' positions with the rows."""
        ...

    def claim(self, shard: int, shards: int, owner: str) -> Claim:
        """Take ``shard`` over in every database (its epoch goes up by one); return the
        epochs and the positions its rows were written up to."""
        ...

    def keys(self, view: ViewDef, shard: int, shards: int) -> set[Key]:
        """The keys of ``view``'s rows in ``shard``, as the database has them."""
        ...

    def close(self) -> None: ...


# --- dialects ---------------------------------------------------------------------------------


class Dialect(Protocol):
    """The statements of one kind of consumer database."""

    def upsert(self, table: sa.Table, key: str) -> sa.Executable:
        """Insert-or-update of ``table`` by ``key``, run with :meth:`upsert_params`."""
        ...

    def upsert_params(
        self, table: sa.Table, rows: Sequence[Mapping[str, Any]]
    ) -> list[Mapping[str, Any]] | dict[str, Any]:
        """The parameters of one upsert of ``rows``: a list (executemany) or one set."""
        ...

    def delete(self, table: sa.Table, key: str) -> sa.Executable:
        """Delete of the rows whose ``key`` is in the expanding list parameter ``keys``."""
        ...


def _delete(table: sa.Table, key: str) -> sa.Executable:
    return sa.delete(table).where(table.c[key].in_(sa.bindparam("keys", expanding=True)))


class PostgresDialect:
    """One ``INSERT … SELECT FROM unnest(<one array per column>) ON CONFLICT DO UPDATE`` per
    chunk: a single statement with one parameter per column, whatever the number of rows
    (no per-row statement, no per-chunk SQL to compile)."""

    def upsert(self, table: sa.Table, key: str) -> sa.Executable:
        pg: sa.engine.Dialect = postgresql.dialect()  # type: ignore[no-untyped-call]

        def array_type(c: sa.Column[Any]) -> str:
            # An explicit cast to VARCHAR(n) truncates silently in PostgreSQL: text goes in
            # as TEXT and the column's own type checks the length (see ``_fit``).
            return "TEXT" if isinstance(c.type, sa.String) else c.type.compile(dialect=pg)

        arrays = ", ".join(f"CAST(:{c.name} AS {array_type(c)}[])" for c in table.columns)
        quoted = ", ".join(f'"{c.name}"' for c in table.columns)
        updates = ", ".join(f'"{c.name}" = EXCLUDED."{c.name}"' for c in table.columns
                            if c.name != key)
        return sa.text(
            f'INSERT INTO "{table.name}" ({quoted}) SELECT * FROM unnest({arrays}) '
            f'ON CONFLICT ("{key}") DO UPDATE SET {updates}')

    def upsert_params(
        self, table: sa.Table, rows: Sequence[Mapping[str, Any]]
    ) -> list[Mapping[str, Any]] | dict[str, Any]:
        return {c.name: [r[c.name] for r in rows] for c in table.columns}

    def delete(self, table: sa.Table, key: str) -> sa.Executable:
        return _delete(table, key)


class MariaDbDialect:
    """``INSERT … VALUES … ON DUPLICATE KEY UPDATE``, executed with the rows (the driver
    sends multi-row ``VALUES``)."""

    def upsert(self, table: sa.Table, key: str) -> sa.Executable:
        stmt = mysql.insert(table)
        others = [c.name for c in table.columns if c.name != key]
        return stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in others})

    def upsert_params(
        self, table: sa.Table, rows: Sequence[Mapping[str, Any]]
    ) -> list[Mapping[str, Any]] | dict[str, Any]:
        return list(rows)

    def delete(self, table: sa.Table, key: str) -> sa.Executable:
        return _delete(table, key)


#: SQLAlchemy dialect name -> the statements for it.
DIALECTS: dict[str, Dialect] = {
    "postgresql": PostgresDialect(),
    "mysql": MariaDbDialect(),
    "mariadb": MariaDbDialect(),
}


def dialect_for(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unsupported consumer database dialect {name!r} "
                         f"(supported: {', '.join(sorted(DIALECTS))})") from None


def upsert_statement(table: sa.Table, key: str, dialect: str) -> sa.Executable:
    return dialect_for(dialect).upsert(table, key)


def delete_statement(table: sa.Table, key: str) -> sa.Executable:
    return _delete(table, key)


# --- tables -----------------------------------------------------------------------------------


def sa_type(t: ColumnType) -> sa.types.TypeEngine[Any]:
    fixed: dict[str, sa.types.TypeEngine[Any]] = {
        "bigint": sa.BigInteger(), "int": sa.Integer(), "smallint": sa.SmallInteger(),
        "text": sa.Text(), "date": sa.Date(), "boolean": sa.Boolean(),
        "double": sa.Double(), "timestamp": sa.DateTime(), "time": sa.Time(),
        "timestamptz": sa.DateTime(timezone=True),
    }
    if t in fixed:
        return fixed[t]
    if t.startswith("numeric("):
        p, _, sc = t[len("numeric(") : -1].partition(",")
        return sa.Numeric(int(p), int(sc))
    if t.startswith("varchar("):
        return sa.String(int(t[len("varchar(") : -1]))
    raise ValueError(f"unknown column type {t!r}")


def _key_type(view: ViewDef, t: ColumnType) -> sa.types.TypeEngine[Any]:
    """The key column's type: a string key compares exactly, byte for byte — MariaDB's
    default collations would make ``acme`` and ``ACME`` one row, and its ``_bin`` ones
    ``a`` and ``a `` (``utf8mb4_nopad_bin`` does neither); on PostgreSQL ``COLLATE "C"``
    orders by bytes, so ``verify``'s key ranges use the index."""
    base = sa_type(t)
    if view.key_type == "string" and isinstance(base, sa.String):
        return (base.with_variant(sa.String(base.length, collation="utf8mb4_nopad_bin"),
                                  "mysql", "mariadb")
                .with_variant(sa.String(base.length, collation="C"), "postgresql"))
    return base


def view_table(view: ViewDef, metadata: sa.MetaData) -> sa.Table:
    """The SQLAlchemy table of a view definition."""
    cols = [
        sa.Column(c.name, _key_type(view, c.type) if c.name == view.key else sa_type(c.type),
                  primary_key=(c.name == view.key),
                  nullable=c.nullable and c.name != view.key, autoincrement=False)
        for c in view.columns
    ]
    return sa.Table(view.table, metadata, *cols)


#: Per shard: the epoch of its owner's claim and the positions its rows are written up to.
SHARDS_TABLE = "viewsync_shards"


def shards_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        SHARDS_TABLE, metadata,
        sa.Column("shard", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("shards", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("positions", sa.Text(), nullable=True),
    )


def _chunks(items: Sequence[Any], n: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _missing_table(exc: Exception) -> bool:
    """Whether ``exc`` says a table does not exist (PostgreSQL 42P01, MariaDB 1146)."""
    if isinstance(exc, sa_exc.NoSuchTableError):
        return True
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) == "42P01" or bool(
        getattr(orig, "args", None) and orig.args[0] == 1146)  # type: ignore[union-attr]


def _unavailable(exc: sa_exc.DBAPIError) -> bool:
    """Whether a database error means "cannot reach the database" (retry later)."""
    return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) or bool(
        exc.connection_invalidated)


def _end_idle_transactions(engine: Engine, seconds: float) -> None:
    """Have the database end this engine's sessions that sit idle inside a transaction for
    ``seconds``: a writer frozen mid-write (a paused VM, a stop-the-world pause, a network
    cut) would otherwise hold its shard rows locked — and the claims of the shards' next
    owner waiting — until it wakes up, or until TCP gives up on it hours later. Thawed, it
    finds its session gone; its retry is then fenced (``app.shards``)."""
    if engine.dialect.name == "postgresql":
        stmt = f"SET idle_in_transaction_session_timeout = {int(seconds * 1000)}"
    elif engine.dialect.name in ("mysql", "mariadb"):
        stmt = f"SET SESSION idle_transaction_timeout = {max(1, round(seconds))}"
    else:
        return

    warned = False

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        nonlocal warned
        cur = dbapi_conn.cursor()
        try:
            cur.execute(stmt)
            dbapi_conn.commit()  # a SET is transactional in PostgreSQL
        except Exception as exc:  # e.g. MySQL, which has no such limit: go on without it
            dbapi_conn.rollback()
            if not warned:
                warned = True
                log.warning("%s: the database refused %r (%s); a worker frozen inside a "
                            "write will hold its shards until it wakes up", engine.url.database,
                            stmt, exc)
        finally:
            cur.close()


class ConsumerSink:
    """One consumer database and its view tables."""

    def __init__(self, consumer: str, url: str, views: Sequence[ViewDef],
                 idle_transaction_timeout_s: float = 0.0) -> None:
        self.consumer = consumer
        # READ COMMITTED: no gap locks on MariaDB, so workers writing interleaved keys of
        # one table (their shards) do not deadlock on each other's gaps. (PostgreSQL's
        # default.)
        self.engine: Engine = sa.create_engine(url, pool_pre_ping=True,
                                               isolation_level="READ COMMITTED")
        if idle_transaction_timeout_s > 0:
            _end_idle_transactions(self.engine, idle_transaction_timeout_s)
        self.metadata = sa.MetaData()
        self.views = [v for v in views if v.consumer == consumer]
        self.tables = {v.name: view_table(v, self.metadata) for v in self.views}
        self.shards = shards_table(self.metadata)
        self._dialect = dialect_for(self.engine.dialect.name)
        self._upserts = {v.name: self._dialect.upsert(self.tables[v.name], v.key)
                         for v in self.views}
        self._deletes = {v.name: self._dialect.delete(self.tables[v.name], v.key)
                         for v in self.views}
        self._widths: dict[str, dict[str, int]] = {}

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def create_tables(self) -> list[str]:
        """Create the missing view tables and add the columns a view's definition gained
        (nullable: the rows there have no value yet); return the views that gained some."""
        self.metadata.create_all(self.engine, checkfirst=True)
        self._widths.clear()
        grown = []
        inspector = sa.inspect(self.engine)
        for view in self.views:
            have = {str(c["name"]) for c in inspector.get_columns(view.table)}
            table = self.tables[view.name]
            for col in view.columns:
                if col.name in have:
                    continue
                ddl = table.c[col.name].type.compile(dialect=self.engine.dialect)
                q = self.engine.dialect.identifier_preparer.quote
                with self.engine.begin() as conn:
                    conn.execute(sa.text(
                        f"ALTER TABLE {q(view.table)} ADD COLUMN {q(col.name)} {ddl} NULL"))
                log.warning("%s: column %s added (empty until the view is resynced)",
                            view.name, col.name)
                grown.append(view.name)
        return sorted(set(grown))

    def write(self, batches: Mapping[str, ViewBatch], progress: Progress | None = None) -> int:
        """Write every view's batch in one transaction; return rows touched.

        With ``progress``: the shard rows of the writer's shards are locked first (a claim
        waits for the transaction, and the transaction for a claim) and their epochs
        checked, and the shards' positions are recorded with the rows — the transaction
        runs for the positions alone when ``progress.flush`` is set."""
        try:
            return self._write(batches, progress)
        except (sa_exc.ProgrammingError, sa_exc.NoSuchTableError) as exc:
            if not _missing_table(exc):
                raise
        # A view table was dropped under us: create it (empty) and write again. Its other
        # rows come back with `viewsync resync <view>`.
        log.warning("%s: a view table is missing; creating it empty — run `viewsync resync` "
                    "for it to be filled", self.consumer)
        self._widths.clear()
        self.create_tables()
        return self._write(batches, progress)

    def _write(self, batches: Mapping[str, ViewBatch], progress: Progress | None) -> int:
        todo = [(v, b) for v in self.views if (b := batches.get(v.name)) is not None and len(b)]
        epochs = progress.for_consumer(self.consumer) if progress is not None else {}
        record = progress is not None and bool(epochs) and (bool(todo) or progress.flush)
        if not todo and not record:
            return 0
        for view, batch in todo:
            if batch.upserts:
                self._fit(view, batch)
        n = 0
        with self.engine.begin() as conn:
            if epochs:
                self._check_epochs(conn, epochs)
            for view, batch in todo:
                n += self._write_view(conn, view, batch)
            if record and progress is not None and progress.positions is not None:
                conn.execute(
                    sa.update(self.shards).where(self.shards.c.shard.in_(sorted(epochs)))
                    .values(positions=encode_positions(progress.positions)))
        return n

    def _check_epochs(self, conn: Connection, epochs: Mapping[int, int]) -> None:
        t = self.shards
        rows = conn.execute(sa.select(t.c.shard, t.c.epoch, t.c.owner)
                            .where(t.c.shard.in_(sorted(epochs)))
                            .order_by(t.c.shard).with_for_update()).all()
        held = {int(r.shard): (int(r.epoch), str(r.owner)) for r in rows}
        for shard, epoch in sorted(epochs.items()):
            now = held.get(shard)
            if now is None or now[0] != epoch:
                by = f"by {now[1]} (epoch {now[0]})" if now else "(no claim left)"
                raise Fenced(f"{self.consumer}: shard {shard} was claimed {by} after this "
                             f"worker's claim (epoch {epoch}); it no longer owns the shard")

    def claim(self, shard: int, shards: int, owner: str) -> tuple[int, Positions | None]:
        """Take ``shard`` over: its epoch goes up by one; return the new epoch and the
        positions its rows are written up to (``None``: never written here)."""
        t = self.shards
        for attempt in range(2):
            try:
                with self.engine.begin() as conn:
                    row = conn.execute(sa.select(t).where(t.c.shard == shard)
                                       .with_for_update()).first()
                    if row is None:
                        conn.execute(sa.insert(t).values(shard=shard, shards=shards, epoch=1,
                                                         owner=owner, positions=None))
                        return 1, None
                    if int(row.shards) != shards:
                        raise ShardCountMismatch(
                            f"{self.consumer}: its views are divided into {row.shards} "
                            f"shards, this worker is configured with {shards} (VIEWSYNC_SHARDS);"
                            f" change it with `viewsync shards reshard {shards}`")
                    epoch = int(row.epoch) + 1
                    conn.execute(sa.update(t).where(t.c.shard == shard)
                                 .values(epoch=epoch, owner=owner))
                    return epoch, decode_positions(row.positions)
            except sa_exc.IntegrityError:  # two first claims at once: the second retries
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def keys(self, view: ViewDef, shard: int, shards: int) -> set[Key]:
        col = self.tables[view.name].c[view.key]
        with self.engine.connect() as conn:
            if view.key_type == "int":
                # ((k % n) + n) % n: SQL's % keeps a negative key's sign, Python's does not
                return {int(k) for (k,) in conn.execute(
                    sa.select(col).where((col % shards + shards) % shards == shard))}
            # a stable hash the database cannot compute: every key, filtered here
            return {str(k) for (k,) in conn.execute(sa.select(col))
                    if shard_of(str(k), shards) == shard}

    def _varchar_widths(self, view: ViewDef) -> dict[str, int]:
        """The view table's VARCHAR columns and their widths as the database has them now
        (a column widened before a restart stays wide)."""
        if view.name not in self._widths:
            cols = sa.inspect(self.engine).get_columns(view.table)
            self._widths[view.name] = {
                str(c["name"]): int(length) for c in cols
                if isinstance(c["type"], sa.String) and not isinstance(c["type"], sa.Text)
                and (length := getattr(c["type"], "length", None)) is not None}
        return self._widths[view.name]

    def _fit(self, view: ViewDef, batch: ViewBatch) -> None:
        """Widen a VARCHAR column of the view table that a value of ``batch`` does not fit.

        The source widened the column (a Product-service migration): the view follows,
        instead of failing the batch forever. DDL runs outside the write transaction
        (MariaDB commits implicitly on DDL).
        """
        widths = self._varchar_widths(view)
        if not widths:
            return
        for col, width in list(widths.items()):
            longest = max((len(v) for r in batch.upserts.values()
                           if isinstance(v := r[col], str)), default=0)
            if longest <= width:
                continue
            new = max(longest, 2 * width)
            target = f"VARCHAR({new})" if new <= MAX_VARCHAR else "TEXT"
            nullable = self.tables[view.name].c[col].nullable
            with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    conn.execute(sa.text(
                        f'ALTER TABLE "{view.table}" ALTER COLUMN "{col}" TYPE {target}'))
                else:
                    conn.execute(sa.text(
                        f"ALTER TABLE `{view.table}` MODIFY `{col}` {target}"
                        f"{'' if nullable else ' NOT NULL'}"))
            log.warning("%s.%s: column %s widened from VARCHAR(%d) to %s for a %d-character "
                        "value (the source column was widened)", self.consumer, view.table,
                        col, width, target, longest)
            if new <= MAX_VARCHAR:
                widths[col] = new
            else:
                del widths[col]

    def _write_view(self, conn: Connection, view: ViewDef, batch: ViewBatch) -> int:
        if batch.deletes:
            for keys in _chunks(sorted(batch.deletes)):
                conn.execute(self._deletes[view.name], {"keys": list(keys)})
        if batch.upserts:
            # Sorted by key: concurrent writers (scale-out) lock rows in the same order.
            rows = [batch.upserts[k] for k in sorted(batch.upserts)]
            table = self.tables[view.name]
            for chunk in _chunks(rows):
                conn.execute(self._upserts[view.name],
                             self._dialect.upsert_params(table, chunk))
        return len(batch)

    def dispose(self) -> None:
        self.engine.dispose()


class DatabaseSink:
    """:class:`ViewSink` over every consumer database of the configured views.

    ``urls`` maps a consumer name to its SQLAlchemy URL.
    """

    def __init__(self, urls: Mapping[str, str], views: Sequence[ViewDef],
                 idle_transaction_timeout_s: float = 0.0) -> None:
        self.consumers = [ConsumerSink(c, urls[c], views, idle_transaction_timeout_s)
                          for c in consumers(tuple(views))]

    def create_tables(self) -> list[str]:
        with _translated("create view tables"):
            return [v for c in self.consumers for v in c.create_tables()]

    def write(self, batches: Mapping[str, ViewBatch], progress: Progress | None = None) -> int:
        with _translated("write"):
            return sum(c.write(batches, progress) for c in self.consumers)

    def claim(self, shard: int, shards: int, owner: str) -> Claim:
        epochs: dict[str, int] = {}
        positions: dict[str, Positions | None] = {}
        with _translated(f"claim shard {shard}"):
            for c in self.consumers:
                epochs[c.consumer], positions[c.consumer] = c.claim(shard, shards, owner)
        return Claim(shard, epochs, positions)

    def keys(self, view: ViewDef, shard: int, shards: int) -> set[Key]:
        with _translated(f"read {view.name}"):
            for c in self.consumers:
                if view.name in c.tables:
                    return c.keys(view, shard, shards)
        raise KeyError(view.name)

    def close(self) -> None:
        for c in self.consumers:
            c.dispose()


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn "database unreachable" errors into :class:`SinkUnavailable`."""
    try:
        yield
    except sa_exc.DBAPIError as exc:
        if _unavailable(exc):
            orig = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise SinkUnavailable(f"{what}: {orig}") from exc
        raise


def sink_urls(settings: Settings, views: Sequence[ViewDef] | None = None) -> dict[str, str]:
    """Consumer name -> database URL, from the settings (for ``views``, default the
    settings' views)."""
    return {c: settings.consumer_url(c) for c in consumers(tuple(views or settings.views()))}


def create_view_tables(settings: Settings, views: Sequence[ViewDef] | None = None) -> None:
    views = views or settings.views()
    sink = DatabaseSink(sink_urls(settings, views), views)
    try:
        sink.create_tables()
    finally:
        sink.close()
