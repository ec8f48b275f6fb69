"""``viewsync verify``: prove that every view equals the join of the source tables.

Reads the source tables and each consumer view in chunks of keys (memory bounded by the
chunk, whatever the catalogue's size), computes the rows each view must hold with the
worker's own projection (``app.project``), and reports per view the rows that are missing,
extra or different, with a few examples. A product-grain view is checked in ranges of
product ids, a batch-grain view in ranges of batch ids (with the products those batches
reference); categories and warranty types are read whole (they are small).

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

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from app.changes import SourceTable
from app.decode import contract_columns
from app.positions import behind, records_to_go
from app.project import project_many
from app.reshard import shard_rows, written
from app.settings import Settings
from app.state import SourceState
from app.topic_range import topic_ends
from app.views import Grain, ViewDef

Row = dict[str, Any]
Bound = int | None  # None: unbounded


def _cols(table: SourceTable) -> str:
    """The SELECT list of ``table``: the contract's columns (``app.decode``), in order."""
    return ", ".join(contract_columns(table))


#: Drifted keys kept per view; past this many, resync the view instead of repairing rows.
MAX_KEYS = 100_000


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
    keys: list[int] = field(default_factory=list)

    @property
    def drift(self) -> int:
        return self.missing + self.extra + self.different


@dataclass
class _Range:
    lo: Bound  # exclusive
    hi: Bound  # inclusive


def _where(column: str, r: _Range) -> tuple[str, dict[str, int]]:
    parts, params = [], {}
    if r.lo is not None:
        parts.append(f"{column} > :lo")
        params["lo"] = r.lo
    if r.hi is not None:
        parts.append(f"{column} <= :hi")
        params["hi"] = r.hi
    return (" WHERE " + " AND ".join(parts)) if parts else "", params


class Verifier:
    def __init__(self, settings: Settings, views: Sequence[ViewDef],
                 chunk: int = 5000, rechecks: int = 3, settle_s: float = 2.0,
                 wait_s: float = 120.0, examples: int = 5,
                 say: Callable[[str], None] = lambda _m: None) -> None:
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
        self.source = sa.create_engine(settings.product_url(), pool_pre_ping=True)
        self.consumers = {v.consumer: sa.create_engine(settings.consumer_url(v.consumer),
                                                       pool_pre_ping=True) for v in self.views}
        self.rows_read = 0

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

    def _dimensions(self) -> tuple[dict[int, Row], dict[int, Row]]:
        cats = {r["id"]: r for r in self._select(
            self.source, f"SELECT {_cols('categories')} FROM categories")}
        wts = {r["id"]: r for r in self._select(
            self.source, f"SELECT {_cols('warranty_types')} FROM warranty_types")}
        return cats, wts

    def _ranges(self, table: SourceTable) -> Iterator[tuple[_Range, list[Row]]]:
        """Consecutive key ranges of ``table`` covering every id, with their rows."""
        cols = _cols(table)
        last: Bound = None
        while True:
            where = "" if last is None else " WHERE id > :last"
            rows = self._select(self.source, f"SELECT {cols} FROM {table}{where} ORDER BY id "
                                f"LIMIT {self.chunk}", **({} if last is None else {"last": last}))
            hi: Bound = rows[-1]["id"] if len(rows) == self.chunk else None
            yield _Range(last, hi), rows
            if hi is None:
                return
            last = hi

    def _products(self, ids: set[int]) -> dict[int, Row]:
        rows = self._by_keys(self.source, f"SELECT {_cols('products')} FROM products "
                             "WHERE id IN :ids", sorted(ids))
        return {r["id"]: r for r in rows}

    def _by_keys(self, engine: sa.Engine, sql: str, keys: list[int]) -> list[Row]:
        out: list[Row] = []
        for i in range(0, len(keys), 1000):
            with engine.connect() as conn:
                out += [dict(r) for r in conn.execute(sa.text(sql).bindparams(
                    sa.bindparam("ids", expanding=True)), {"ids": keys[i:i + 1000]}).mappings()]
        self.rows_read += len(out)
        return out

    def _pair(self, view: ViewDef, keys: list[int], dims: tuple[dict[int, Row],
              dict[int, Row]]) -> tuple[dict[int, Row], dict[int, Row]]:
        """Expected and actual rows of ``keys`` of ``view``, read now."""
        table = view.grain_table
        rows = self._by_keys(self.source, f"SELECT {_cols(table)} FROM {table} "
                             "WHERE id IN :ids", keys)
        expected = self._expected(view, rows, dims)
        cols = ", ".join(c.name for c in view.columns)
        actual = {r[view.key]: r for r in self._by_keys(
            self.consumers[view.consumer],
            f"SELECT {cols} FROM {view.table} WHERE {view.key} IN :ids", keys)}
        return expected, actual

    # ------------------------------------------------------------------ checking
    def _expected(self, view: ViewDef, rows: list[Row], dims: tuple[dict[int, Row],
                  dict[int, Row]]) -> dict[int, Row]:
        cats, wts = dims
        if view.grain is Grain.PRODUCT:
            state = SourceState(categories=cats, warranty_types=wts,
                                products={r["id"]: r for r in rows})
        else:
            state = SourceState(categories=cats, warranty_types=wts,
                                products=self._products({r["product_id"] for r in rows}),
                                batches={r["id"]: r for r in rows})
        return dict(project_many(state, view, [r["id"] for r in rows]).upserts)

    def _actual(self, view: ViewDef, r: _Range) -> dict[int, Row]:
        cols = ", ".join(c.name for c in view.columns)
        where, params = _where(view.key, r)
        rows = self._select(self.consumers[view.consumer],
                            f"SELECT {cols} FROM {view.table}{where}", **params)
        return {row[view.key]: row for row in rows}

    @staticmethod
    def _differing(view: ViewDef, expected: Mapping[int, Row], actual: Mapping[int, Row]
                   ) -> dict[int, tuple[Row | None, Row | None]]:
        out: dict[int, tuple[Row | None, Row | None]] = {}
        for key in expected.keys() | actual.keys():
            want, got = expected.get(key), actual.get(key)
            if want is None or got is None or any(
                    want.get(c.name) != got.get(c.name) for c in view.columns):
                out[key] = (want, got)
        return out

    def _record(self, view: ViewDef, report: ViewReport, key: int,
                pair: tuple[Row | None, Row | None]) -> None:
        want, got = pair
        if len(report.keys) < MAX_KEYS:
            report.keys.append(key)
        if got is None:
            report.missing += 1
            self._example(report, f"missing {view.key}={key}: expected {want}")
        elif want is None:
            report.extra += 1
            self._example(report, f"extra {view.key}={key}: {got}")
        else:
            report.different += 1
            bad = [c.name for c in view.columns if want.get(c.name) != got.get(c.name)]
            self._example(report, f"{view.key}={key} differs in " + ", ".join(
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
        dims = self._dimensions()
        reports = []
        for view in self.views:
            report = ViewReport(view.name)
            suspects: dict[int, tuple[Row | None, Row | None]] = {}
            for r, rows in self._ranges(view.grain_table):
                expected = self._expected(view, rows, dims)
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
                dims = self._dimensions()
                expected, actual = self._pair(view, sorted(suspects), dims)
                now = self._differing(view, expected, actual)
                changing: dict[int, tuple[Row | None, Row | None]] = {}
                for key, pair in now.items():
                    if pair == suspects.get(key) and not self.lagging:
                        self._record(view, report, key, pair)  # the same difference: drift
                    else:
                        changing[key] = pair  # moved since the last read: in flight
                suspects = changing
            if self.rechecks == 0:
                for key, pair in suspects.items():
                    self._record(view, report, key, pair)
            else:
                report.unsettled = len(suspects)
                for key in sorted(suspects)[: self.max_examples]:
                    self._example(report, f"unsettled {view.key}={key}: still changing")
            reports.append(report)
            self.say(f"{view.name}: {report.checked:,} rows checked, {report.drift} "
                     f"difference(s), {report.unsettled} unsettled "
                     f"({time.monotonic() - t0:.1f}s)")
        return reports


def verify(settings: Settings, views: Sequence[ViewDef], **kw: Any) -> list[ViewReport]:
    v = Verifier(settings, views, **kw)
    try:
        return v.run()
    finally:
        v.close()
