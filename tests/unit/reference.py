"""A generic reference join: every view's rows computed naively from the final source tables,
for any declared graph, independently of the worker's code (``app.join``, ``app.project``,
``ViewDef.steps``, the state's indexes and memo).

It reads the declared graph (the input: tables, keys, references, hierarchies) and the
views' column ``source`` texts, and applies the rules as the README and the contract state
them:

* a row is **visible** iff it exists, every *required* reference resolves to a visible row
  and, in a hierarchy, its path exists: every ancestor exists and the chain reaches a NULL
  parent without a cycle. Paths are built top-down here (breadth first from the roots, so a
  row whose chain is broken or cyclic is never reached), where ``app.project`` walks up;
* a column reached through an *optional* reference that is NULL, dangling or resolves to an
  invisible row is NULL, and so is every column reached through it;
* a path is the labels from the root down to the row joined by the separator;
* keys compare exactly (an ``int`` as an int, a ``str`` byte for byte: ``"acme"`` and
  ``"ACME"`` are two rows).

:func:`reference_affected` is the fan-out of one change by brute force over the whole
state (no index): the changed row, its subtree in a hierarchy, then every row that
references one of those, transitively.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from app.graph import Graph, Key
from app.views import ViewDef

Row = Mapping[str, Any]
Tables = Mapping[str, Mapping[Key, Row]]
Views = dict[str, dict[Key, dict[str, Any]]]


class _Join:
    def __init__(self, graph: Graph, tables: Tables) -> None:
        self.graph = graph
        self.tables = {s.name: dict(tables.get(s.name, {})) for s in graph.sources}
        #: (table, reference name) -> (column, target table, required)
        self.refs = {(s.name, r.name): (r.column, r.target, r.required)
                     for s in graph.sources for r in s.references}
        self.paths: dict[tuple[str, str], dict[Key, str]] = {}
        self.rooted: dict[str, set[Key]] = {}
        for s in graph.sources:
            h = s.hierarchy
            if h is None:
                continue
            rows = self.tables[s.name]
            children: dict[Key | None, list[Key]] = {}
            for key, row in rows.items():
                children.setdefault(row[h.parent], []).append(key)
            labels: dict[str, dict[Key, str]] = {p: {} for p in h.paths}
            frontier: list[tuple[Key, dict[str, str]]] = [
                (k, {p: rows[k][col] for p, col in h.paths.items()})
                for k in children.get(None, [])]
            while frontier:
                nxt: list[tuple[Key, dict[str, str]]] = []
                for key, here in frontier:
                    for p in h.paths:
                        labels[p][key] = here[p]
                    for child in children.get(key, []):
                        nxt.append((child, {p: here[p] + h.separator + rows[child][col]
                                            for p, col in h.paths.items()}))
                frontier = nxt
            for p in h.paths:
                self.paths[(s.name, p)] = labels[p]
            self.rooted[s.name] = set(labels[next(iter(h.paths))])
        self._visible: dict[tuple[str, Key], bool] = {}

    def visible(self, table: str, key: Key | None) -> bool:
        if key is None:
            return False
        memo = (table, key)
        if memo not in self._visible:
            row = self.tables[table].get(key)
            ok = row is not None and (table not in self.rooted or key in self.rooted[table])
            for (src, _name), (column, target, required) in self.refs.items():
                if ok and src == table and required:
                    ok = self.visible(target, row[column])  # type: ignore[index]
            self._visible[memo] = ok
        return self._visible[memo]

    def value(self, grain: str, key: Key, source: str) -> Any:
        *hops, last = source.split(".")
        table, at = grain, key
        for hop in hops:
            column, target, _required = self.refs[(table, hop)]
            nxt = self.tables[table][at][column]
            if not self.visible(target, nxt):
                return None  # an optional branch that does not resolve: all NULL
            table, at = target, nxt
        if (table, last) in self.paths:
            return self.paths[(table, last)][at]
        return self.tables[table][at][last]

    def view(self, view: ViewDef) -> dict[Key, dict[str, Any]]:
        out: dict[Key, dict[str, Any]] = {}
        for key in self.tables[view.grain]:
            if self.visible(view.grain, key):
                out[key] = {c.name: self.value(view.grain, key, c.source) for c in view.columns}
        return out


def reference_join(graph: Graph, views: Iterable[ViewDef], tables: Tables) -> Views:
    """Every view of ``views`` over ``tables`` ({table: {key: row}}), from scratch."""
    join = _Join(graph, tables)
    return {v.name: join.view(v) for v in views}


def reference_affected(graph: Graph, tables: Tables, table: str, key: Key
                       ) -> dict[str, frozenset[Key]]:
    """The rows (per table, none empty) a change of row ``key`` of ``table`` may alter, in
    the state after the change, by brute force: the row, its subtree if ``table`` is a
    hierarchy (every row whose chain of existing parents meets ``key``), then every row
    whose reference names one of those, transitively."""
    rows = {s.name: dict(tables.get(s.name, {})) for s in graph.sources}
    start = {key}
    h = graph.source(table).hierarchy
    if h is not None:
        for k in rows[table]:
            seen: set[Key] = set()
            current: Key | None = k
            while current is not None and current not in seen:
                if current == key:
                    start.add(k)
                    break
                seen.add(current)
                row = rows[table].get(current)
                current = None if row is None else row[h.parent]
    out: dict[str, set[Key]] = {table: start}
    grew = True
    while grew:
        grew = False
        for s in graph.sources:
            for r in s.references:
                targets = out.get(r.target)
                if not targets:
                    continue
                found = {k for k, row in rows[s.name].items() if row[r.column] in targets}
                have = out.setdefault(s.name, set())
                if not found <= have:
                    have |= found
                    grew = True
    return {t: frozenset(k) for t, k in out.items() if k}


def has_cycle(graph: Graph, tables: Tables) -> bool:
    """Whether a hierarchy of ``tables`` holds a cycle (a self-parent included)."""
    for h in graph.hierarchies:
        rows = tables.get(h.source, {})
        for start in rows:
            seen: set[Key] = set()
            current: Key | None = start
            while current is not None and current in rows:
                if current in seen:
                    return True
                seen.add(current)
                current = rows[current][h.parent]
    return False
