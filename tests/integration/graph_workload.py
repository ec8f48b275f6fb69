"""A seeded random workload generated from a views file's declared graph, and the views it
must lead to — for any schema, nothing of a particular one named here.

The generator reads the graph (tables, keys, references, hierarchies: the views file's
``[sources]``) and the MariaDB column types (``information_schema.COLUMNS``), and writes rows
of every declared table with values by type: inserts, updates of plain columns, of
references (re-points) and of hierarchy parents (moves), deletes, primary-key changes (an
``UPDATE`` of the key, or a delete and an insert under the new key, either with or without
re-pointing the referrers in the same transaction), multi-row statements and transactions
of several statements.

* References pick an existing key, a dangling key (inserted later: an insert of a table
  often takes a key some row already names), or — for string keys — a *near miss* of an
  existing key (another case, a trailing space): the source's case-insensitive, space-padding
  collation would join it, viewsync's exact key comparison does not, so the referring row
  is invisible (README, "Your own schema").
* String keys that equal an existing key under the source column's collation (``acme`` and
  ``ACME``) cannot both exist: MariaDB refuses the second one (duplicate key), so that
  transaction is rolled back and counted as ``refused`` — it cannot happen in the source.
  A key changed to another case of itself (``acme`` → ``ACME``) can, and is done.
* Hierarchy moves never make a cycle: a new parent is picked outside the row's subtree
  (the rows whose chain of parents reaches it, dangling ones included); as a safety net,
  every transaction reads the hierarchies before it commits and is rolled back if one holds
  a cycle (counted as ``cycle``).

The model of the rows is the source itself, read again after every transaction.

:func:`expected_views` is the views' rows computed from the source tables as they are (one
consistent snapshot, every declared table read whole) by the generic reference join of
``tests/unit/reference.py`` (independent of the worker's join and projection);
:func:`actual_views` reads the consumer tables; both are normalised by :func:`norm`.
"""

from __future__ import annotations

import datetime as dt
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from app.graph import Graph, Key
from app.views import ViewDef
from tests.unit.reference import reference_join

Row = dict[str, Any]
Tables = dict[str, dict[Key, Row]]
Views = dict[str, dict[Key, dict[str, Any]]]

#: Every session of the source in UTC: TIMESTAMP values are written and read as UTC wall
#: clocks (a ``timestamptz`` view column holds the same instant).
UTC_SESSION = {"init_command": "SET time_zone = '+00:00'"}


def source_engine(url: str) -> sa.Engine:
    return sa.create_engine(url, pool_pre_ping=True, connect_args=UTC_SESSION)


def q(name: str) -> str:
    return f"`{name}`"


# --------------------------------------------------------------------- column types
@dataclass(frozen=True)
class SqlColumn:
    """One column of a source table as ``information_schema.COLUMNS`` describes it."""

    name: str
    data_type: str  # DATA_TYPE, lower case: int, varchar, enum, datetime, ...
    column_type: str  # COLUMN_TYPE: tinyint(1), enum('a','b'), decimal(10,2), ...
    nullable: bool
    has_default: bool
    max_chars: int | None
    precision: int | None
    scale: int | None
    fraction: int

    @property
    def enum_values(self) -> list[str]:
        inner = self.column_type[self.column_type.index("(") + 1 : self.column_type.rindex(")")]
        return [v.replace("''", "'") for v in re.findall(r"'((?:[^']|'')*)'", inner)]


def read_columns(engine: sa.Engine, database: str, tables: Iterable[str]
                 ) -> dict[str, dict[str, SqlColumn]]:
    wanted = set(tables)
    out: dict[str, dict[str, SqlColumn]] = {t: {} for t in wanted}
    with engine.connect() as conn:
        for r in conn.execute(sa.text(
                "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, "
                "COLUMN_DEFAULT, CHARACTER_MAXIMUM_LENGTH, NUMERIC_PRECISION, NUMERIC_SCALE, "
                "DATETIME_PRECISION FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = :db "
                "ORDER BY TABLE_NAME, ORDINAL_POSITION"), {"db": database}):
            if r[0] not in wanted:
                continue
            out[r[0]][r[1]] = SqlColumn(
                name=r[1], data_type=str(r[2]).lower(), column_type=str(r[3]).lower(),
                nullable=r[4] == "YES", has_default=r[5] is not None,
                max_chars=None if r[6] is None else int(r[6]),
                precision=None if r[7] is None else int(r[7]),
                scale=None if r[8] is None else int(r[8]), fraction=int(r[9] or 0))
    missing = [t for t, cols in out.items() if not cols]
    if missing:
        raise AssertionError(f"declared tables missing from {database}: {missing}")
    return out


# --------------------------------------------------------------------- reading the source
def read_tables(engine: sa.Engine, graph: Graph) -> Tables:
    """Every declared table, whole, in one consistent snapshot: {table: {key: row}}."""
    out: Tables = {}
    with engine.connect() as conn:
        conn.execute(sa.text("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        conn.execute(sa.text("START TRANSACTION WITH CONSISTENT SNAPSHOT"))
        for s in graph.sources:
            out[s.name] = {r[s.key]: dict(r) for r in conn.execute(
                sa.text(f"SELECT * FROM {q(s.name)}")).mappings()}
        conn.execute(sa.text("COMMIT"))
    return out


def norm(value: Any) -> Any:
    """One comparable form of a value read from the source or a consumer database:

    * ``bool`` → ``int`` (TINYINT(1) is an integer in the source; a ``boolean`` or
      ``smallint`` view column reads back as ``bool`` or ``int``);
    * an aware ``datetime`` → its UTC wall clock, naive (a ``timestamptz`` column reads
      back in the session's zone; the source's TIMESTAMP is read in a UTC session, so its
      naive value is the UTC wall clock already); a naive one (DATETIME, ``timestamp``)
      stays as it is;
    * ``Decimal`` stays ``Decimal`` (compared by value: ``1.5 == 1.50``; the source and the
      view have the same scale anyway); ``float`` (DOUBLE, ``double``) compared exactly;
    * ``str``, ``int``, ``date``, ``None``: as they are (strings byte for byte).
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def expected_views(engine: sa.Engine, graph: Graph, views: Sequence[ViewDef]) -> Views:
    """Every view's rows by the reference join of the source tables as they now are."""
    joined = reference_join(graph, views, read_tables(engine, graph))
    return {name: {k: {c: norm(v) for c, v in row.items()} for k, row in rows.items()}
            for name, rows in joined.items()}


def actual_views(consumers: Mapping[str, sa.Engine], views: Sequence[ViewDef]) -> Views:
    """Every view's rows as its consumer table holds them (a table not created yet: none)."""
    out: Views = {}
    for v in views:
        cols = ", ".join(c.name for c in v.columns)
        try:
            with consumers[v.consumer].connect() as conn:
                rows = conn.execute(sa.text(f"SELECT {cols} FROM {v.table}")).mappings().all()
        except sa.exc.ProgrammingError:
            rows = []
        out[v.name] = {r[v.key]: {c: norm(r[c]) for c in r} for r in rows}
    return out


def diff_views(expected: Views, actual: Views) -> list[str]:
    """Every missing, extra or different row, one line each (different: the columns)."""
    problems: list[str] = []
    for name in expected:
        exp, act = expected[name], actual.get(name, {})
        for key in sorted(exp.keys() - act.keys(), key=repr):
            problems.append(f"{name}: missing {key!r}: expected {exp[key]}")
        for key in sorted(act.keys() - exp.keys(), key=repr):
            problems.append(f"{name}: extra {key!r}: {act[key]}")
        for key in sorted(exp.keys() & act.keys(), key=repr):
            if exp[key] != act[key]:
                cols = {c: (exp[key][c], act[key].get(c)) for c in exp[key]
                        if exp[key][c] != act[key].get(c)}
                problems.append(f"{name}: row {key!r} differs (column: (expected, got)): "
                                f"{cols}")
    return problems


# --------------------------------------------------------------------- the workload
_WORDS = ["Alpha", "Nova", "Terra", "Zürich", "Ærø", "北京", "東京", "Ğüneş", "naïve",
          "O'Brien", 'say "hi"', "back\\slash", "50%_off", "🚀", "Ĳssel", "Straße", "x"]


class Refused(Exception):
    """A transaction the generator gives up (rolled back): it cannot happen in the source."""


class GraphWorkload:
    """Seeded random changes to every table of ``graph`` in the database of ``engine``."""

    def __init__(self, engine: sa.Engine, graph: Graph,
                 columns: Mapping[str, Mapping[str, SqlColumn]], seed: int,
                 scale: int = 6) -> None:
        self.engine = engine
        self.graph = graph
        self.columns = columns
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        #: What the current transaction did beyond its statements (counted if it commits).
        self._notes: list[str] = []
        self.rows: Tables = read_tables(engine, graph)
        self._counter = 0
        #: Row counts the workload keeps each table around: tables nothing refers to grow
        #: largest (scale · 2^depth of its references), a hierarchy three times that.
        self.target = {s.name: scale * 2 ** self._depth(s.name)
                       * (3 if s.hierarchy is not None else 1) for s in graph.sources}
        #: The references into each table: (source table, column), a hierarchy's parent too.
        self.referrers: dict[str, list[tuple[str, str]]] = {s.name: [] for s in graph.sources}
        for r in graph.references:
            self.referrers[r.target].append((r.source, r.column))
        for h in graph.hierarchies:
            self.referrers[h.source].append((h.source, h.parent))

    def _depth(self, table: str) -> int:
        refs = self.graph.source(table).references
        return 0 if not refs else 1 + max(self._depth(r.target) for r in refs)

    def _order(self) -> list[str]:
        """The tables, each after the tables it refers to."""
        return sorted(self.graph.names, key=self._depth)

    # ------------------------------------------------------------ values
    def _n(self) -> int:
        self._counter += 1
        return self._counter

    def _text(self, col: SqlColumn) -> str:
        n = col.max_chars or 64
        if col.data_type == "char":  # fixed width: the source strips trailing spaces
            return "".join(self.rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÜ") for _ in range(n))
        r = self.rng.random()
        if r < 0.03:
            return ""
        words = [self.rng.choice(_WORDS) for _ in range(self.rng.randint(1, 3))]
        text = " ".join(words) + f" {self.rng.randint(0, 999)}"
        if r < 0.10:
            text = f" {text} "  # leading and trailing spaces are part of the value
        return text[:n]

    def _datetime(self, lo: int, hi: int, fraction: int) -> dt.datetime:
        base = dt.datetime(lo, 1, 1)
        span = (dt.datetime(hi, 1, 1) - base).total_seconds()
        value = base + dt.timedelta(seconds=self.rng.randrange(int(span)),
                                    microseconds=self.rng.randrange(1_000_000))
        step = 10 ** (6 - fraction)
        return value.replace(microsecond=value.microsecond // step * step)

    def value(self, col: SqlColumn) -> Any:
        """A random value of the column's type (NULL sometimes, when it is nullable)."""
        if col.nullable and self.rng.random() < 0.1:
            return None
        t = col.data_type
        if t in ("varchar", "char", "text", "tinytext", "mediumtext", "longtext"):
            return self._text(col)
        if t == "enum":
            return self.rng.choice(col.enum_values)
        if t == "tinyint":
            if col.column_type.startswith("tinyint(1)"):  # a flag, now and then not 0/1
                return self.rng.choice([0, 1, 1, 0, 1]) if self.rng.random() < 0.95 else (
                    self.rng.choice([-1, 2, 127]))
            return self.rng.randint(-128, 127)
        if t in ("smallint", "mediumint", "int", "bigint"):
            return self.rng.randint(-30000, 30000)
        if t == "decimal":
            p, s = col.precision or 10, col.scale or 0
            edge = 10 ** p - 1
            unscaled = self.rng.choice([self.rng.randint(0, 10 ** min(p, 6)),
                                        self.rng.randint(-edge, edge), edge, 0])
            return Decimal(unscaled).scaleb(-s)
        if t in ("double", "float"):
            return self.rng.choice([round(self.rng.uniform(0, 5), 2), 0.0,
                                    self.rng.uniform(-1e6, 1e6), 1 / 3, 1e-300, -2.5e300])
        if t == "date":
            if self.rng.random() < 0.1:
                return self.rng.choice([dt.date(1970, 1, 1), dt.date(1969, 12, 31),
                                        dt.date(2000, 2, 29)])
            return dt.date(1900, 1, 1) + dt.timedelta(days=self.rng.randrange(73000))
        if t == "datetime":
            return self._datetime(1950, 2090, col.fraction)  # before 1970 too
        if t == "timestamp":
            return self._datetime(1971, 2037, col.fraction)
        raise NotImplementedError(f"no generator for the type {col.column_type} of {col.name}")

    # ------------------------------------------------------------ keys
    def fresh_key(self, table: str) -> Key:
        src = self.graph.source(table)
        col = self.columns[table][src.key]
        if src.key_type == "int":
            return (1 << 33) + self._n() if col.data_type == "bigint" else self._n()
        # ASCII in every case, UTF-8 of 2, 3 and 4 bytes (shards hash the bytes; verify
        # ranges keys in byte order), now and then a trailing space (part of the key)
        word = self.rng.choice(["acme", "Nord", "ZETA", "k", "Qu", "Zürich", "東京", "🚀"])
        key = f"{word}-{self._n()}"
        r = self.rng.random()
        key = key.upper() if r < 0.2 else key + " " if r < 0.25 else key
        return key[: col.max_chars or len(key)]

    def near_miss(self, key: Key) -> Key | None:
        """A key the source's collation equates with ``key`` while viewsync does not."""
        if not isinstance(key, str):
            return None
        if key.swapcase() != key and self.rng.random() < 0.7:
            return key.swapcase()
        return key + " "

    def dangling(self, table: str) -> list[Key]:
        """The keys of ``table`` that rows name without the row being there."""
        rows = self.rows[table]
        named = {self.rows[src][k][col] for src, col in self.referrers[table]
                 for k in self.rows[src]}
        return sorted((k for k in named if k is not None and k not in rows), key=repr)

    def new_key(self, table: str) -> Key:
        waiting = self.dangling(table)
        if waiting and self.rng.random() < 0.5:
            return self.rng.choice(waiting)  # a dangling reference resolves
        return self.fresh_key(table)

    def subtree(self, table: str, key: Key) -> set[Key]:
        """``key`` and every row whose chain of parents reaches it."""
        h = self.graph.source(table).hierarchy
        assert h is not None
        children: dict[Key, list[Key]] = {}
        for k, row in self.rows[table].items():
            if row[h.parent] is not None:
                children.setdefault(row[h.parent], []).append(k)
        out, todo = {key}, [key]
        while todo:
            for c in children.get(todo.pop(), []):
                if c not in out:
                    out.add(c)
                    todo.append(c)
        return out

    def ref_value(self, table: str, column: str, key: Key) -> Any:
        """A value for a reference column (or a hierarchy's parent) of row ``key``."""
        src = self.graph.source(table)
        col = self.columns[table][column]
        h = src.hierarchy
        if h is not None and column == h.parent:
            target = table
            avoid = self.subtree(table, key)
        else:
            target = next(r.target for r in src.references if r.column == column)
            avoid = set()
        existing = sorted((k for k in self.rows[target] if k not in avoid), key=repr)
        r = self.rng.random()
        if col.nullable and r < (0.25 if h is not None and column == h.parent else 0.12):
            return None  # (in a hierarchy: a root)
        if existing and r < 0.87:
            return self.rng.choice(existing)
        if existing and r < 0.93:
            miss = self.near_miss(self.rng.choice(existing))
            if miss is not None and miss not in avoid:
                self._notes.append("near-miss-reference")
                return miss
        waiting = [k for k in self.dangling(target) if k not in avoid]
        if waiting and r < 0.97:
            return self.rng.choice(waiting)
        return self.fresh_key(target)  # dangling until a row of that key is inserted

    def column_value(self, table: str, column: str, key: Key) -> Any:
        if any(c == column for _t, c in self._references_of(table)):
            return self.ref_value(table, column, key)
        return self.value(self.columns[table][column])

    def _references_of(self, table: str) -> list[tuple[str, str]]:
        src = self.graph.source(table)
        out = [(r.target, r.column) for r in src.references]
        if src.hierarchy is not None:
            out.append((table, src.hierarchy.parent))
        return out

    # ------------------------------------------------------------ statements
    def _x(self, conn: sa.Connection, sql: str, **params: Any) -> int:
        return conn.execute(sa.text(sql), params).rowcount

    def _insert_row(self, conn: sa.Connection, table: str, row: Row) -> None:
        cols = ", ".join(q(c) for c in row)
        marks = ", ".join(f":p{i}" for i in range(len(row)))
        self._x(conn, f"INSERT INTO {q(table)} ({cols}) VALUES ({marks})",
                **{f"p{i}": v for i, v in enumerate(row.values())})
        self.rows[table][row[self.graph.source(table).key]] = row  # seen by later statements

    def _new_row(self, table: str, key: Key) -> Row:
        src = self.graph.source(table)
        row: Row = {src.key: key}
        for name, col in self.columns[table].items():
            if name == src.key:
                continue
            if col.has_default and col.data_type == "timestamp" and self.rng.random() < 0.3:
                continue  # the source's default (CURRENT_TIMESTAMP)
            row[name] = self.column_value(table, name, key)
        return row

    def insert(self, conn: sa.Connection, table: str) -> None:
        key = self.new_key(table)
        if isinstance(key, str) and self.rng.random() < 0.08 and self.rows[table]:
            miss = self.near_miss(self.rng.choice(sorted(self.rows[table], key=repr)))
            key = miss if miss is not None else key  # refused while the other one exists
        self._insert_row(conn, table, self._new_row(table, key))

    def _pick(self, table: str) -> Key | None:
        keys = sorted(self.rows[table], key=repr)
        return self.rng.choice(keys) if keys else None

    def _plain_columns(self, table: str) -> list[str]:
        key = self.graph.source(table).key
        return [c for c in self.columns[table] if c != key]

    def update(self, conn: sa.Connection, table: str) -> None:
        key = self._pick(table)
        if key is None:
            return self.insert(conn, table)
        cols = self.rng.sample(self._plain_columns(table),
                               k=min(len(self._plain_columns(table)), self.rng.randint(1, 3)))
        values = {c: self.column_value(table, c, key) for c in cols}
        sets = ", ".join(f"{q(c)} = :v{i}" for i, c in enumerate(values))
        src = self.graph.source(table)
        self._x(conn, f"UPDATE {q(table)} SET {sets} WHERE {q(src.key)} = :k", k=key,
                **{f"v{i}": v for i, v in enumerate(values.values())})
        self.rows[table][key].update(values)

    def delete(self, conn: sa.Connection, table: str) -> None:
        key = self._pick(table)
        if key is None:
            return
        src = self.graph.source(table)
        self._x(conn, f"DELETE FROM {q(table)} WHERE {q(src.key)} = :k", k=key)
        del self.rows[table][key]

    def rekey(self, conn: sa.Connection, table: str) -> None:
        """A primary-key change: an UPDATE of the key or a delete and an insert under the new
        key; now and then with every referrer re-pointed in the same transaction."""
        old = self._pick(table)
        if old is None:
            return
        src = self.graph.source(table)
        if isinstance(old, str) and old.swapcase() != old and self.rng.random() < 0.3:
            new: Key = old.swapcase()  # the same key to the collation: a case change
            self._notes.append("rekey-case")
        else:
            new = self.new_key(table)
        row = dict(self.rows[table][old])
        if self.rng.random() < 0.6:
            self._x(conn, f"UPDATE {q(table)} SET {q(src.key)} = :n WHERE {q(src.key)} = :o",
                    n=new, o=old)
            self._notes.append("rekey-update")
        else:
            self._x(conn, f"DELETE FROM {q(table)} WHERE {q(src.key)} = :o", o=old)
            self._notes.append("rekey-delete-insert")
            row[src.key] = new
            self._insert_row(conn, table, row)
        self.rows[table].pop(old, None)
        self.rows[table][new] = {**row, src.key: new}
        if self.rng.random() < 0.5:
            for other, column in self.referrers[table]:
                self._x(conn, f"UPDATE {q(other)} SET {q(column)} = :n WHERE {q(column)} = :o",
                        n=new, o=old)
            self._notes.append("rekey-cascade")

    def bulk(self, conn: sa.Connection, table: str) -> None:
        """One statement on many rows: re-point every row naming a key (a hierarchy's
        children move together), or delete them all, or set one column of many rows."""
        refs = self._references_of(table)
        src = self.graph.source(table)
        r = self.rng.random()
        if refs and r < 0.7:
            _target, column = self.rng.choice(refs)
            named = sorted({row[column] for row in self.rows[table].values()
                            if row[column] is not None}, key=repr)
            if not named:
                return
            old = self.rng.choice(named)
            if r < 0.2:
                self._x(conn, f"DELETE FROM {q(table)} WHERE {q(column)} = :o", o=old)
                self._notes.append("bulk-delete")
            else:  # (a hierarchy: a parent outside the moved rows' subtrees: outside old's)
                new = self.ref_value(table, column, old)
                self._x(conn, f"UPDATE {q(table)} SET {q(column)} = :n WHERE {q(column)} = :o",
                        n=new, o=old)
                self._notes.append("bulk-repoint")
        else:
            keys = sorted(self.rows[table], key=repr)
            some = self.rng.sample(keys, k=min(len(keys), self.rng.randint(2, 12)))
            linked = {col for _t, col in refs}
            plain = [c for c in self._plain_columns(table) if c not in linked]
            if not some or not plain:
                return
            column = self.rng.choice(plain)
            marks = ", ".join(f":k{i}" for i in range(len(some)))
            self._x(conn, f"UPDATE {q(table)} SET {q(column)} = :v WHERE {q(src.key)} IN "
                    f"({marks})", v=self.value(self.columns[table][column]),
                    **{f"k{i}": k for i, k in enumerate(some)})
            self._notes.append("bulk-update")

    # ------------------------------------------------------------ driving
    def _cycle(self, conn: sa.Connection) -> str | None:
        """A hierarchy of the source holding a cycle now (inside the transaction)."""
        for h in self.graph.hierarchies:
            key = self.graph.source(h.source).key
            parent = {r[0]: r[1] for r in conn.execute(sa.text(
                f"SELECT {q(key)}, {q(h.parent)} FROM {q(h.source)}"))}
            for start in parent:
                seen: set[Key] = set()
                at: Key | None = start
                while at is not None and at in parent:
                    if at in seen:
                        return f"{h.source}: {at!r}"
                    seen.add(at)
                    at = parent[at]
        return None

    def _op(self, conn: sa.Connection) -> str:
        names = self.graph.names
        table = self.rng.choices(names, weights=[self.target[t] for t in names])[0]
        size, target = len(self.rows[table]), self.target[table]
        grow = 0.55 if size < target * 0.7 else 0.12 if size > target * 1.3 else 0.28
        # A table others refer to loses rows and keys less often (each one can make many
        # rows invisible); a table nothing refers to, more often.
        referred = bool(self.referrers[table])
        r = self.rng.random()
        for op, p in (("insert", grow), ("update", 0.35),
                      ("delete", 0.05 if referred else 0.12),
                      ("rekey", 0.04 if referred else 0.07), ("bulk", 0.08)):
            if r < p:
                getattr(self, op)(conn, table)
                return f"{op} {table}"
            r -= p
        self.update(conn, table)
        return f"update {table}"

    def transaction(self, ops: int) -> bool:
        """``ops`` random statements in one transaction; False when it was rolled back
        (the source refused it, or it would have made a cycle)."""
        done: list[str] = []
        self._notes = []
        try:
            with self.engine.begin() as conn:
                for _ in range(ops):
                    done.append(self._op(conn))
                cycle = self._cycle(conn)
                if cycle is not None:
                    raise Refused(f"cycle in {cycle}")
        except sa.exc.IntegrityError as exc:  # a key the source's collation equates
            if getattr(exc.orig, "args", [None])[0] != 1062:
                raise
            self.counts["refused"] += 1
            self.rows = read_tables(self.engine, self.graph)
            return False
        except Refused:
            self.counts["cycle"] += 1
            self.rows = read_tables(self.engine, self.graph)
            return False
        self.counts.update(op.split()[0] for op in done)
        self.counts.update(self._notes)
        self.rows = read_tables(self.engine, self.graph)
        return True

    def step(self) -> None:
        self.transaction(1 if self.rng.random() < 0.7 else self.rng.randint(2, 4))

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def seed(self) -> None:
        """Fill every table to its target size, the referenced tables first (references
        still dangle now and then: a key named before its row exists)."""
        for table in self._order():
            while len(self.rows[table]) < self.target[table]:
                try:
                    with self.engine.begin() as conn:
                        for _ in range(min(10, self.target[table] - len(self.rows[table]))):
                            self.insert(conn, table)
                        if self._cycle(conn) is not None:
                            raise Refused("cycle")
                except (sa.exc.IntegrityError, Refused):
                    self.counts["refused"] += 1
                self.rows = read_tables(self.engine, self.graph)
