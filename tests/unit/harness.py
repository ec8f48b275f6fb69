"""A worker without Kafka, over any declared graph: the join engine, the projection and one
in-memory sink per view, kept as the worker keeps the real ones; random change histories
drawn from the graph; and the convergence check against the generic reference join
(``tests.unit.reference``).

:class:`Harness` drives the worker's own :class:`~app.pipeline.Pipeline` (``apply``/``redo``
mark the dirty keys per view, ``take_batch`` projects them, ``commit`` makes the state
durable), fed with changes instead of records.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import event
from hypothesis import strategies as st

from app.changes import Change, Op
from app.decode import Decoder
from app.graph import Graph, Key
from app.join import Affected, JoinEngine
from app.pipeline import Pipeline
from app.state import MemoryStore, SourceState, StateStore
from app.views import Definitions, ViewDef
from tests.unit.debezium import DictSchemas
from tests.unit.reference import Views, has_cycle, reference_affected, reference_join

Rows = dict[Key, dict[str, Any]]
History = dict[tuple[str, Key], list[Change]]

PROPERTY_EXAMPLES = int(os.environ.get("VIEWSYNC_PROPERTY_EXAMPLES", "200"))


def worker_pipeline(store: StateStore, views: Sequence[ViewDef]) -> Pipeline:
    """The worker's own pipeline (``app.pipeline``) over ``store``; the harness feeds it
    changes, so its decoder reads no topic."""
    return Pipeline(Decoder(DictSchemas(), {}, store.state.graph), store, views)


def tables_of(state: SourceState) -> dict[str, Rows]:
    return {t: {k: dict(v) for k, v in state.store(t).items()} for t in state.graph.names}


def copy_state(state: SourceState) -> SourceState:
    """The rows only: the indexes of the copy are rebuilt from them."""
    return SourceState(state.graph, tables_of(state))


def assert_indexes_rebuildable(engine: JoinEngine) -> None:
    assert engine.indexes() == JoinEngine(copy_state(engine.state)).indexes()


@dataclass
class Harness:
    """A worker over a state store, with one in-memory sink per view."""

    defs: Definitions
    store: StateStore | None = None
    sinks: dict[str, Rows] = field(default_factory=dict)
    #: Further oracles the sinks must equal (tables -> views), e.g. the demo's own.
    oracles: tuple[Callable[[Mapping[str, Rows]], Views], ...] = ()

    def __post_init__(self) -> None:
        if self.store is None:
            self.store = MemoryStore(self.graph)
        self.sinks = {v.name: {} for v in self.views}
        self.pipeline = self._pipeline()

    def _pipeline(self) -> Pipeline:
        assert self.store is not None
        return worker_pipeline(self.store, self.views)

    @property
    def graph(self) -> Graph:
        return self.defs.graph

    @property
    def views(self) -> tuple[ViewDef, ...]:
        return self.defs.views

    @property
    def engine(self) -> JoinEngine:
        return self.pipeline.engine

    @property
    def state(self) -> SourceState:
        assert self.store is not None
        return self.store.state

    def apply(self, change: Change, prune: bool = True) -> Affected:
        affected = self.pipeline.apply(change, prune=prune)
        self.flush()
        return affected

    def redo(self, change: Change) -> None:
        self.pipeline.redo(change)
        self.flush()

    def crash_after_state_commit(self, changes: list[Change]) -> None:
        """The worker committed the state of a batch holding ``changes`` and died before the
        sink write: the restarted worker redoes them over the state that already holds
        them, one replayed batch at a time."""
        for change in changes:
            self.pipeline.apply(change)
        self.pipeline.take_batch()  # the rows never reach the sinks
        self.pipeline.commit()
        self.restart()
        for change in changes:
            self.redo(change)

    def flush(self) -> None:
        views, _changes = self.pipeline.take_batch()
        self.pipeline.commit()
        for name, batch in views.items():
            sink = self.sinks[name]
            sink.update(batch.upserts)
            for key in batch.deletes:
                sink.pop(key, None)

    def put(self, table: str, row: dict[str, Any], op: Op = "u") -> Affected:
        key = row[self.graph.source(table).key]
        return self.apply(Change(table, key, after=row, op=op))

    def delete(self, table: str, key: Key, tombstone: bool = False) -> Affected:
        affected = self.apply(Change(table, key, after=None, op="d"))
        if tombstone:
            affected = self.apply(Change(table, key, after=None, op="t"))
        return affected

    def restart(self) -> None:
        """A new pipeline over the same (persisted) store, as after a worker restart."""
        self.pipeline = self._pipeline()

    def view(self, name: str) -> Rows:
        return self.sinks[name]

    def expected(self, tables: Mapping[str, Rows] | None = None) -> Views:
        tables = tables_of(self.state) if tables is None else tables
        return reference_join(self.graph, self.views, tables)

    def check_sinks(self, tables: Mapping[str, Rows] | None = None) -> None:
        tables = tables_of(self.state) if tables is None else tables
        assert self.sinks == reference_join(self.graph, self.views, tables)
        for oracle in self.oracles:
            assert self.sinks == oracle(tables)

    def check(self) -> None:
        """Sinks equal the reference join of the state; indexes equal rebuilt ones."""
        self.check_sinks()
        assert_indexes_rebuildable(self.engine)


# --- random histories ----------------------------------------------------------------------


@dataclass(frozen=True)
class Space:
    """What a random history of a graph draws from: per table, the keys its rows may have,
    a key no row ever has (a dangling reference), how many keys at least have a history,
    and per plain column its values. References favour the keys that have a history (their
    rows come and go in any order: a reference may resolve before, after or never)."""

    graph: Graph
    keys: Mapping[str, Sequence[Key]]
    dangling: Mapping[str, Key]
    values: Mapping[str, Mapping[str, st.SearchStrategy[Any]]]
    min_keys: Mapping[str, int] = field(default_factory=dict)
    #: Whether a required reference may be NULL (the row is then never visible).
    null_required: bool = False

    #: Strategies already built, by table and the keys chosen (built once, drawn often).
    _cache: dict[Any, st.SearchStrategy[dict[str, Any]]] = field(
        default_factory=dict, repr=False, compare=False)

    def refs(self, table: str, chosen: Mapping[str, Sequence[Key]]) -> list[Key]:
        have = list(chosen.get(table, ()))
        return [*have * 4, *self.keys[table], self.dangling[table]]

    def columns(self, table: str, chosen: Mapping[str, Sequence[Key]]
                ) -> st.SearchStrategy[dict[str, Any]]:
        """A row of ``table`` without its key."""
        src = self.graph.source(table)
        links = [r.target for r in src.references] + [table] * (src.hierarchy is not None)
        cache_key = (table, tuple(tuple(chosen.get(t, ())) for t in links))
        if cache_key in self._cache:
            return self._cache[cache_key]
        fixed: dict[str, st.SearchStrategy[Any]] = {}
        for ref in src.references:
            if ref.column == src.key:  # a 1:1 extension: the row's own key
                continue
            refs = self.refs(ref.target, chosen)
            if not ref.required:
                fixed[ref.column] = st.none() | st.sampled_from(refs)
            elif self.null_required:  # NULL one time in ten or so
                fixed[ref.column] = st.sampled_from([None, *refs])
            else:
                fixed[ref.column] = st.sampled_from(refs)
        if src.hierarchy is not None:  # a root two times in three
            refs = self.refs(table, chosen)
            fixed[src.hierarchy.parent] = st.sampled_from([*[None] * (2 * len(refs)), *refs])
        for column in src.columns:
            if column not in fixed and column != src.key:
                fixed[column] = self.values[table][column]
        self._cache[cache_key] = out = st.fixed_dictionaries(fixed)
        return out


INT_KEYS: tuple[Key, ...] = (1, 2, 3, 2**40)
#: Strings that differ only by case or are not ASCII: each its own key.
STRING_KEYS: tuple[Key, ...] = ("k", "K", "ß", "Ünï")


def generic_space(graph: Graph, **kw: Any) -> Space:
    """A space for any graph: a few integer or string keys per table (by its key type) and
    two values for every other column (the core compares values, it never reads types)."""
    keys = {s.name: INT_KEYS if s.key_type == "int" else STRING_KEYS for s in graph.sources}
    return Space(
        graph, keys=keys,
        dangling={t: (9 if k[0] == 1 else "zz") for t, k in keys.items()},
        values={s.name: dict.fromkeys(s.columns, st.sampled_from(["a", "b"]))
                for s in graph.sources},
        min_keys=dict.fromkeys(keys, 2), **kw)


@st.composite
def key_history(draw: st.DrawFn, space: Space, table: str, key: Key,
                chosen: Mapping[str, Sequence[Key]]) -> list[Change]:
    """The change events of one row: snapshot/insert, updates, deletes (+tombstones),
    reinserts. Before-images are garbage on purpose: the engine must not read them."""
    columns = space.columns(table, chosen)
    name = space.graph.source(table).key

    def row() -> dict[str, Any]:
        return {name: key, **draw(columns)}

    events: list[Change] = []
    previous: dict[str, Any] | None = None
    for i in range(draw(st.integers(1, 4))):
        after = row() if draw(st.integers(0, 3)) else None  # absent one time in four
        junk = row() if draw(st.booleans()) else None
        if after is None:
            if previous is not None or draw(st.booleans()):
                events.append(Change(table, key, after=None, before=junk, op="d"))
            if draw(st.booleans()):
                events.append(Change(table, key, after=None, op="t"))
        else:
            op: Op = (
                "u" if previous is not None else ("r" if i == 0 and draw(st.booleans()) else "c")
            )
            events.append(Change(table, key, after=after, before=junk, op=op))
        previous = after
    return events


@st.composite
def histories(draw: st.DrawFn, space: Space) -> History:
    chosen: dict[str, list[Key]] = {}
    for table, ids in space.keys.items():
        chosen[table] = draw(st.lists(st.sampled_from(list(ids)), unique=True,
                                      min_size=space.min_keys.get(table, 1),
                                      max_size=len(ids)))
    out: History = {}
    for table, keys in chosen.items():
        for key in keys:
            out[(table, key)] = draw(key_history(space, table, key, chosen))
    return out


def final_tables(graph: Graph, history: Mapping[tuple[str, Key], list[Change]]
                 ) -> dict[str, Rows]:
    tables: dict[str, Rows] = {t: {} for t in graph.names}
    for (table, key), events in history.items():
        last = events[-1].after if events else None
        if last is not None:
            tables[table][key] = dict(last)
    return tables


def _order(k: tuple[str, Key]) -> tuple[str, str, str]:
    return (k[0], type(k[1]).__name__, repr(k[1]))


def converge(h: Harness, history: History, data: st.DataObject) -> None:
    """Deliver ``history`` in a drawn interleaving, with replays, restarts and crashes
    between a state commit and its sink write; after every step the sinks equal the
    reference join of the state and the fan-out equals the brute-force one; at the end the
    state holds the final rows and the indexes equal rebuilt ones."""
    pending = {k: deque(v) for k, v in history.items() if v}
    delivered: dict[tuple[str, Key], list[Change]] = {k: [] for k in pending}
    replays = restarts = crashes = 0
    saw_cycle = False
    most_rows = {v.name: 0 for v in h.views}
    while any(pending.values()):
        action = data.draw(st.integers(0, 15), label="action")
        started = [k for k, v in delivered.items() if v]
        if action == 0 and replays < 4 and started:
            # consumer restart without commit: a suffix of one key's events comes again
            key = data.draw(st.sampled_from(sorted(started, key=_order)), label="replay key")
            start = data.draw(st.integers(0, len(delivered[key]) - 1), label="replay from")
            again = delivered[key][start:]
            del delivered[key][start:]
            pending[key].extendleft(reversed(again))
            replays += 1
            continue
        if action == 1 and restarts < 3:
            h.restart()
            restarts += 1
        ready = sorted((k for k, v in pending.items() if v), key=_order)
        key = data.draw(st.sampled_from(ready), label="deliver")
        change = pending[key].popleft()
        delivered[key].append(change)
        if action == 2 and crashes < 3:
            batch = [change]
            for _ in range(data.draw(st.integers(0, 3), label="batch size")):
                more = sorted((k for k, v in pending.items() if v), key=_order)
                if not more:
                    break
                k2 = data.draw(st.sampled_from(more), label="batch member")
                batch.append(pending[k2].popleft())
                delivered[k2].append(batch[-1])
            h.crash_after_state_commit(batch)
            crashes += 1
            h.check_sinks()
            continue
        affected = h.apply(change)
        tables = tables_of(h.state)
        want = reference_affected(h.graph, tables, change.table, change.key)
        got = {t: k for t, k in affected.keys.items() if k}
        assert got == want, f"fan-out of {change.table}[{change.key!r}]"
        h.check_sinks(tables)
        saw_cycle = saw_cycle or has_cycle(h.graph, tables)
        for name, rows in h.sinks.items():
            most_rows[name] = max(most_rows[name], len(rows))
    truth = final_tables(h.graph, history)
    assert tables_of(h.state) == truth
    h.check_sinks(truth)
    assert_indexes_rebuildable(h.engine)
    event(f"events={min(sum(map(len, history.values())) // 20 * 20, 80)}+")
    for name, rows in h.sinks.items():
        event(f"final {name} rows={min(len(rows), 3)}+")
        event(f"most {name} rows at once={min(most_rows[name], 3)}+")
    event(f"replays={replays}, restarts={restarts}, crashes={crashes}")
    event(f"hierarchy cycle seen={saw_cycle}")
