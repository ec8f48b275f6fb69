"""``viewsync verify``: prove that every view equals the join of the source tables.

Reads the source tables and each consumer view in chunks of keys (memory bounded by the
chunk and the hierarchies' tables, whatever the catalogue's size), computes the rows each
view must hold with the worker's own projection (``app.project``), and reports per view the
rows that are missing, extra or different, with a few examples. No table or column is named
here: the queries follow the declared graph (``app.graph``). A view is checked in
consecutive ranges of its grain's key; with each range's grain rows come the rows they reach
— every table the view reads, by the keys the rows reference (``IN`` lists, along every
reference a column follows and every required one, recursively) — except a hierarchy's
table, read whole (a path needs every ancestor) when first needed and again before each
re-read.

Keys are ranged and compared exactly (``app.graph``): an integer key as a number; a string
key in byte order of its UTF-8 text (code point order: Python's own ``str`` order), whatever
the columns' collations — on MariaDB as ``CAST(CONVERT(k USING utf8mb4) AS BINARY)``, on
PostgreSQL as ``k COLLATE "C"`` — so the source range and the view range hold the same keys
and every view row is compared exactly once, an extra one included. Rows read by key lists
are filtered to the exact keys asked (a case-insensitive ``IN`` returns ``ACME`` for
``acme``). The price of exactness: MariaDB serves no such expression from an index, and
PostgreSQL only from an index in the "C" collation, so each range of a string key scans its
table (verify time grows with the square of the rows; integer keys read index ranges).

It only reads, so it may run while workers run: every row that differs is read again (source
and view) once the workers have applied every change in flight. A difference that stays the
same is drift; a row that meanwhile matches was in flight; a row that is still changing
after ``rechecks`` re-reads is reported as *unsettled*, not as drift.

"In flight" is measured, not guessed: before a re-read, verify waits ``settle_s`` (for the
connector to publish what the source committed), reads the source topics' ends, and waits
until every shard of the view's database has recorded positions past them (``app.shards``):
a row still stale then is not lagging. Workers that do not get there within ``wait_s`` (down,
or catching up) make every row that still differs *unsettled*: verify cannot tell drift from
lag then, and says so.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from app.graph import Graph, Key, KeyType, Reference
from app.positions import behind, records_to_go
from app.project import project_many
from app.reshard import shard_rows, written
from app.settings import Settings
from app.state import SourceState
from app.topic_range import topic_ends
from app.views import ViewDef

Row = dict[str, Any]
Bound = Key | None  # None: unbounded

#: Drifted keys kept per view; past this many, resync the view instead of repairing rows.
MAX_KEYS = 100_000

#: Keys per ``IN (...)`` list.
IN_CHUNK = 1000


@dataclass
class ViewReport:
    view: str
    checked: int = 0
    missing: int = 0
    extra: int = 0
    different: int = 0
    unsettled: int = 0
    examples: list[str] = field(default_factory=list)
    #: The keys of the rows that drifted (what ``verify --repair`` asks the workers to
    #: rewrite), at most :data:`MAX_KEYS`.
    keys: list[Key] = field(default_factory=list)

    @property
    def drift(self) -> int:
        return self.missing + self.extra + self.different


# ------------------------------------------------------------------ key ranges (pure)
@dataclass(frozen=True)
class _Range:
    lo: Bound  # exclusive
    hi: Bound  # inclusive


def exact(sql: str, key_type: KeyType, dialect: str) -> str:
    """``sql`` (a key column, a parameter) as an expression that orders and compares
    exactly: an integer as itself; a string by the bytes of its UTF-8 text, whatever its
    collation (MariaDB's default ones equate ``acme`` and ``ACME``, and even ``utf8mb4_bin``
    ignores trailing spaces: a binary string does neither). UTF-8 byte order is code point
    order, which is how Python orders ``str``."""
    if key_type == "int":
        return sql
    if dialect == "postgresql":
        return f'{sql} COLLATE "C"'  # byte order of the database's encoding (UTF-8)
    if dialect in ("mysql", "mariadb"):
        return f"CAST(CONVERT({sql} USING utf8mb4) AS BINARY)"
    raise ValueError(f"verify: string keys on a {dialect!r} database are not supported "
                     "(supported: mariadb, mysql, postgresql)")


def _where(column: str, r: _Range, key_type: KeyType = "int", dialect: str = ""
           ) -> tuple[str, dict[str, Key]]:
    """The ``WHERE`` clause of the keys in ``r`` (``lo < key <= hi``), and its parameters."""
    k = exact(column, key_type, dialect)
    parts: list[str] = []
    params: dict[str, Key] = {}
    if r.lo is not None:
        parts.append(f"{k} > {exact(':lo', key_type, dialect)}")
        params["lo"] = r.lo
    if r.hi is not None:
        parts.append(f"{k} <= {exact(':hi', key_type, dialect)}")
        params["hi"] = r.hi
    return (" WHERE " + " AND ".join(parts)) if parts else "", params


def pages(page: Callable[[Bound], list[Row]], key: str, chunk: int
          ) -> Iterator[tuple[_Range, list[Row]]]:
    """Consecutive ranges covering every key, each with its rows: ``page(last)`` reads the
    first ``chunk`` rows (in key order) with a key above ``last`` (``None``: from the
    start). The first range is unbounded below, the last above, each starts where the one
    before ends: every key, of either side, falls in exactly one."""
    last: Bound = None
    while True:
        rows = page(last)
        hi: Bound = rows[-1][key] if len(rows) == chunk else None
        yield _Range(last, hi), rows
        if hi is None:
            return
        last = hi


def exact_rows(rows: Iterable[Row], key: str, wanted: Iterable[Key]) -> dict[Key, Row]:
    """The rows whose ``key`` is one of ``wanted`` exactly, by key (an ``IN`` under a
    case-insensitive or space-padding collation returns more)."""
    keys = set(wanted)
    return {r[key]: r for r in rows if r[key] in keys}


# ------------------------------------------------------------------ reached rows (pure)
def follows(view: ViewDef) -> dict[str, tuple[Reference, ...]]:
    """Per source table, the references the projection of ``view`` may follow from its
    rows: every required one (visibility rests on it) and every one a column reads
    through."""
    graph = view.graph
    refs = {r for r in graph.references if r.required}
    refs.update(ref for step in view.steps for ref in step.hops)
    out: dict[str, list[Reference]] = {}
    for r in graph.references:  # declaration order: a stable order of queries
        if r in refs:
            out.setdefault(r.source, []).append(r)
    return {t: tuple(rs) for t, rs in out.items()}


def _reach_order(grain: str, refs: Mapping[str, Sequence[Reference]]) -> list[str]:
    """The tables reachable from ``grain`` along ``refs``, every referring table before the
    tables it refers to (references between tables form no cycle)."""
    done: set[str] = set()
    post: list[str] = []

    def visit(table: str) -> None:
        if table in done:
            return
        done.add(table)
        for ref in refs.get(table, ()):
            visit(ref.target)
        post.append(table)

    visit(grain)
    return post[::-1]


def reached(view: ViewDef, grain_rows: Mapping[Key, Row],
            fetch: Callable[[str, list[Key]], Iterable[Row]],
            whole: Callable[[str], MutableMapping[Key, Row]]
            ) -> dict[str, MutableMapping[Key, Row]]:
    """The source tables the projection of ``grain_rows`` (rows of ``view``'s grain, by key)
    reads: per table the rows it may reach, for :class:`~app.state.SourceState`.

    ``fetch(table, keys)`` reads the rows of those keys (it may return more: only the keys
    asked are kept); ``whole(table)`` reads a hierarchy's table whole (a path needs every
    ancestor; the references of its rows are followed only from the rows reached). Each
    table is read once, after every table that refers to it."""
    graph: Graph = view.graph
    refs = follows(view)
    tables: dict[str, MutableMapping[Key, Row]] = {}
    wanted: dict[str, set[Key]] = {}
    for table in _reach_order(view.grain, refs):
        source = graph.source(table)
        rows: Mapping[Key, Row]
        if table == view.grain:
            rows = grain_rows
            store: MutableMapping[Key, Row] = dict(grain_rows)
            if source.hierarchy is not None:  # the chunk's rows over their ancestors
                store = ChainMap(store, whole(table))
        else:
            keys = wanted.get(table, set())
            if source.hierarchy is not None:
                everything = whole(table)
                rows = {k: everything[k] for k in keys if k in everything}
                store = everything
            else:
                found = exact_rows(fetch(table, sorted(keys)), source.key, keys) if keys else {}
                rows = store = found
        for ref in refs.get(table, ()):
            targets = wanted.setdefault(ref.target, set())
            for row in rows.values():
                value = row[ref.column]
                if value is not None:
                    targets.add(value)
        tables[table] = store
    return tables


# ------------------------------------------------------------------ the verifier
class Verifier:
    def __init__(self, settings: Settings, views: Sequence[ViewDef],
                 chunk: int = 5000, rechecks: int = 3, settle_s: float = 2.0,
                 wait_s: float = 120.0, examples: int = 5,
                 say: Callable[[str], None] = lambda _m: None) -> None:
        if chunk < 1:
            raise ValueError(f"chunk: at least 1 key per read, not {chunk}")
        self.settings = settings
        self.views = list(views)
        self.chunk = chunk
        self.rechecks = rechecks
        self.settle_s = settle_s
        self.wait_s = wait_s
        #: The workers did not apply the changes in flight within ``wait_s``: what still
        #: differs cannot be told from lag (and is not waited for again).
        self.lagging = False
        self.max_examples = examples
        self.say = say
        # UTC sessions: a TIMESTAMP reads as the UTC wall clock, as Debezium gives it
        self.source = sa.create_engine(settings.product_url(), pool_pre_ping=True,
                                       connect_args={"init_command": "SET time_zone = '+00:00'"})
        self.consumers = {v.consumer: sa.create_engine(settings.consumer_url(v.consumer),
                                                       pool_pre_ping=True) for v in self.views}
        self.rows_read = 0
        #: Hierarchy tables read whole, until :meth:`_forget` (before each re-read).
        self._whole: dict[str, dict[Key, Row]] = {}

    def close(self) -> None:
        self.source.dispose()
        for e in self.consumers.values():
            e.dispose()

    # ------------------------------------------------------------------ reading
    def _select(self, engine: sa.Engine, sql: str, **params: Any) -> list[Row]:
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]
        self.rows_read += len(rows)
        return rows

    def _by_keys(self, engine: sa.Engine, sql: str, keys: Sequence[Key]) -> list[Row]:
        """``sql`` (with ``IN :ids``) for ``keys``, :data:`IN_CHUNK` keys per query."""
        out: list[Row] = []
        for i in range(0, len(keys), IN_CHUNK):
            with engine.connect() as conn:
                out += [dict(r) for r in conn.execute(sa.text(sql).bindparams(
                    sa.bindparam("ids", expanding=True)),
                    {"ids": list(keys[i:i + IN_CHUNK])}).mappings()]
        self.rows_read += len(out)
        return out

    @staticmethod
    def _quote(engine: sa.Engine, name: str) -> str:
        """An identifier as ``engine``'s database needs it (as the sink created it)."""
        return str(engine.dialect.identifier_preparer.quote(name))

    def _source_select(self, graph: Graph, table: str) -> str:
        """``SELECT <columns> FROM <table>``: every column the worker keeps of its rows."""
        q = self._quote
        cols = ", ".join(q(self.source, c) for c in graph.source(table).columns)
        return f"SELECT {cols} FROM {q(self.source, table)}"

    def _fetch(self, graph: Graph, table: str, keys: list[Key]) -> list[Row]:
        key = self._quote(self.source, graph.source(table).key)
        return self._by_keys(self.source, f"{self._source_select(graph, table)} "
                             f"WHERE {key} IN :ids", keys)

    def _whole_table(self, graph: Graph, table: str) -> dict[Key, Row]:
        if table not in self._whole:
            key = graph.source(table).key
            self._whole[table] = {r[key]: r for r in self._select(
                self.source, self._source_select(graph, table))}
        return self._whole[table]

    def _forget(self) -> None:
        self._whole.clear()

    def _ranges(self, view: ViewDef) -> Iterator[tuple[_Range, list[Row]]]:
        """Consecutive key ranges of the view's grain covering every key, with their rows."""
        graph, source = view.graph, view.graph.source(view.grain)
        select = self._source_select(graph, view.grain)
        k = exact(self._quote(self.source, source.key), source.key_type,
                  self.source.dialect.name)
        last = exact(":last", source.key_type, self.source.dialect.name)

        def page(after: Bound) -> list[Row]:
            where = "" if after is None else f" WHERE {k} > {last}"
            return self._select(self.source, f"{select}{where} ORDER BY {k} LIMIT {self.chunk}",
                                **({} if after is None else {"last": after}))

        return pages(page, source.key, self.chunk)

    def _pair(self, view: ViewDef, keys: list[Key]) -> tuple[dict[Key, Row], dict[Key, Row]]:
        """Expected and actual rows of ``keys`` of ``view``, read now."""
        source = view.graph.source(view.grain)
        rows = exact_rows(self._fetch(view.graph, view.grain, keys), source.key, keys)
        expected = self._expected(view, rows, keys)
        engine = self.consumers[view.consumer]
        q = self._quote
        cols = ", ".join(q(engine, c.name) for c in view.columns)
        actual = exact_rows(self._by_keys(
            engine, f"SELECT {cols} FROM {q(engine, view.table)} "
            f"WHERE {q(engine, view.key)} IN :ids", keys), view.key, keys)
        return expected, actual

    # ------------------------------------------------------------------ checking
    def _expected(self, view: ViewDef, rows: Mapping[Key, Row],
                  keys: Iterable[Key] | None = None) -> dict[Key, Row]:
        """The rows ``view`` must hold for ``keys`` (default: those of ``rows``), from the
        grain's ``rows`` and what they reach."""
        graph = view.graph
        tables = reached(view, rows, lambda t, ks: self._fetch(graph, t, ks),
                         lambda t: self._whole_table(graph, t))
        state = SourceState(graph, tables)
        return dict(project_many(state, view, rows if keys is None else keys).upserts)

    def _actual(self, view: ViewDef, r: _Range) -> dict[Key, Row]:
        engine = self.consumers[view.consumer]
        q = self._quote
        cols = ", ".join(q(engine, c.name) for c in view.columns)
        where, params = _where(q(engine, view.key), r, view.key_type, engine.dialect.name)
        rows = self._select(engine, f"SELECT {cols} FROM {q(engine, view.table)}{where}",
                            **params)
        return {row[view.key]: row for row in rows}

    @staticmethod
    def _differing(view: ViewDef, expected: Mapping[Key, Row], actual: Mapping[Key, Row]
                   ) -> dict[Key, tuple[Row | None, Row | None]]:
        out: dict[Key, tuple[Row | None, Row | None]] = {}
        for key in expected.keys() | actual.keys():
            want, got = expected.get(key), actual.get(key)
            if want is None or got is None or any(
                    not _same(want.get(c.name), got.get(c.name)) for c in view.columns):
                out[key] = (want, got)
        return out

    def _record(self, view: ViewDef, report: ViewReport, key: Key,
                pair: tuple[Row | None, Row | None]) -> None:
        want, got = pair
        if len(report.keys) < MAX_KEYS:
            report.keys.append(key)
        at = f"{view.key}={_show(key)}"
        if got is None:
            report.missing += 1
            self._example(report, f"missing {at}: expected {want}")
        elif want is None:
            report.extra += 1
            self._example(report, f"extra {at}: {got}")
        else:
            report.different += 1
            bad = [c.name for c in view.columns if want.get(c.name) != got.get(c.name)]
            self._example(report, f"{at} differs in " + ", ".join(
                f"{c}: expected {want.get(c)!r}, got {got.get(c)!r}" for c in bad))

    # ------------------------------------------------------------------ waiting
    def _settle(self, view: ViewDef) -> None:
        """Before a re-read: the connector's delay, then the workers' (see the module)."""
        time.sleep(self.settle_s)
        if self.lagging:
            return
        try:
            target = topic_ends(self.settings, self.settings.source_topics())
        except Exception as exc:  # Kafka unreachable: say so, and go on without it
            self.say(f"  cannot read the source topics' ends ({exc}); re-reading after "
                     f"{self.settle_s:g}s only")
            return
        t0 = last = time.monotonic()
        while True:
            written_now = written(shard_rows(self.settings), view.consumer)
            if written_now is None:
                return  # no deployment has written this database yet: nothing to wait for
            if not behind(written_now, target):
                return
            if time.monotonic() - t0 > self.wait_s:
                left = records_to_go(target, written_now)
                self.say(f"  the workers have not applied the changes in flight within "
                         f"{self.wait_s:g}s ({left:,} records to go in {view.consumer}); "
                         "rows that still differ are reported as unsettled, not as drift")
                self.lagging = True
                return
            if time.monotonic() - last > 10:
                last = time.monotonic()
                self.say(f"  waiting for the workers ({last - t0:.0f}s)")
            time.sleep(0.5)

    def _example(self, report: ViewReport, text: str) -> None:
        if len(report.examples) < self.max_examples:
            report.examples.append(text)

    def run(self) -> list[ViewReport]:
        t0 = time.monotonic()
        reports = []
        for view in self.views:
            report = ViewReport(view.name)
            key = view.graph.source(view.grain).key
            suspects: dict[Key, tuple[Row | None, Row | None]] = {}
            for r, rows in self._ranges(view):
                expected = self._expected(view, {row[key]: row for row in rows})
                actual = self._actual(view, r)
                report.checked += len(expected.keys() | actual.keys())
                suspects.update(self._differing(view, expected, actual))
            for attempt in range(self.rechecks):
                if not suspects:
                    break
                self.say(f"{view.name}: {len(suspects)} row(s) differ; reading them again "
                         f"once the changes in flight are applied ({attempt + 1}/"
                         f"{self.rechecks})")
                self._settle(view)
                self._forget()
                expected, actual = self._pair(view, sorted(suspects))
                now = self._differing(view, expected, actual)
                changing: dict[Key, tuple[Row | None, Row | None]] = {}
                for k, pair in now.items():
                    if pair == suspects.get(k) and not self.lagging:
                        self._record(view, report, k, pair)  # the same difference: drift
                    else:
                        changing[k] = pair  # moved since the last read: in flight
                suspects = changing
            if self.rechecks == 0:
                for k, pair in suspects.items():
                    self._record(view, report, k, pair)
            else:
                report.unsettled = len(suspects)
                for k in sorted(suspects)[: self.max_examples]:
                    self._example(report, f"unsettled {view.key}={_show(k)}: still changing")
            reports.append(report)
            self.say(f"{view.name}: {report.checked:,} rows checked, {report.drift} "
                     f"difference(s), {report.unsettled} unsettled "
                     f"({time.monotonic() - t0:.1f}s)")
        return reports


def _show(key: Key) -> str:
    """A key in a message: an integer as is, a string quoted (``'acme '`` shows its space)."""
    return str(key) if isinstance(key, int) else repr(key)


def verify(settings: Settings, views: Sequence[ViewDef], **kw: Any) -> list[ViewReport]:
    v = Verifier(settings, views, **kw)
    try:
        return v.run()
    finally:
        v.close()


def _same(want: Any, got: Any) -> bool:
    """Equal values; a point in time compares as its UTC instant whether or not it carries
    a zone (the source's TIMESTAMP reads naive in a UTC session, the worker writes it with
    its zone into a ``timestamptz`` column)."""
    if isinstance(want, dt.datetime) and isinstance(got, dt.datetime):
        return _utc(want) == _utc(got)
    return bool(want == got)


def _utc(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo is None else t.astimezone(dt.UTC).replace(tzinfo=None)
