"""Pure projection: the row a view should hold for one key, computed from the source state.

Pure: no Kafka, no Faust, no SQL. Given a :class:`~app.state.SourceState` and a
:class:`~app.views.ViewDef`, :func:`project` returns the view row for a key of the view's
grain (or ``None`` when the view must not hold that key), following the declared graph
(``app.graph``) with the same rules for every schema:

* a row is **visible** iff it exists, its path exists when its table is a hierarchy (every
  ancestor exists and the chain reaches a root without a cycle), and every *required*
  reference resolves to a visible row; a view holds exactly the visible rows of its grain;
* a column reached through an *optional* reference that is NULL, dangling or resolves to an
  invisible row is NULL, and so is every column reached through it (a LEFT JOIN of the whole
  branch);
* a **path** is the label column of every ancestor from the root down, joined by the
  hierarchy's separator (a NULL label is an empty one).

Rows in the state are complete decoded source rows; a column missing from a stored row is
a bug upstream and raises ``KeyError``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from app.graph import Graph, Hierarchy, Key, Reference
from app.state import SourceState
from app.views import ViewDef

#: One view row: column name -> value, in the view's column order.
ViewRow = dict[str, Any]


@dataclass
class ViewBatch:
    """What one view needs written: rows to upsert by key, keys to delete."""

    upserts: dict[Key, ViewRow] = field(default_factory=dict)
    deletes: set[Key] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.upserts) + len(self.deletes)


class Memo:
    """Visibility and paths computed for one state (valid while the state does not change):
    shared by every view of a batch, so a rename of a hierarchy row with many rows beneath
    it costs one path per ancestor, not one per row."""

    def __init__(self) -> None:
        #: (table) -> key -> the row if visible, else None.
        self.visible: dict[str, dict[Key, dict[str, Any] | None]] = {}
        #: (table, path) -> key -> the path, or None (no path).
        self.paths: dict[tuple[str, str], dict[Key, str | None]] = {}


# --- paths and visibility --------------------------------------------------------------------


def path_of(state: SourceState, hierarchy: Hierarchy, path: str, key: Key,
            memo: Memo | None = None) -> str | None:
    """The labels from the root down to row ``key`` joined by the hierarchy's separator, or
    ``None`` when the row or an ancestor is missing, or the parent chain has a cycle.
    Iterative, so deep chains and cycles are safe; every row on the walked chain is
    memoised, and a walk stops at the first memoised ancestor."""
    memo = Memo() if memo is None else memo
    known = memo.paths.setdefault((hierarchy.source, path), {})
    if key in known:
        return known[key]
    rows = state.store(hierarchy.source)
    label, parent, sep = hierarchy.paths[path], hierarchy.parent, hierarchy.separator
    chain: list[tuple[Key, str]] = []  # (key, label), from ``key`` upwards
    on_chain: set[Key] = set()
    current: Key | None = key
    prefix: str | None  # the path of the topmost chain entry's parent plus separator
    while True:
        if current is None:
            prefix = ""
            break
        if current in known:
            above = known[current]
            prefix = None if above is None else above + sep
            break
        row = None if current in on_chain else rows.get(current)
        if row is None:  # missing, or a cycle
            prefix = None
            break
        value = row[label]
        chain.append((current, "" if value is None else str(value)))  # NULL: an empty label
        on_chain.add(current)
        current = row[parent]
    for k, name in reversed(chain):
        if prefix is None:
            known[k] = None
        else:
            p = prefix + name
            known[k] = p
            prefix = p + sep
    return known.setdefault(key, None)  # unset only when ``key`` itself is missing


def visible_row(state: SourceState, table: str, key: Key, memo: Memo | None = None
                ) -> dict[str, Any] | None:
    """Row ``key`` of ``table`` if it is visible (see the module), else ``None``."""
    memo = Memo() if memo is None else memo
    seen = memo.visible.setdefault(table, {})
    if key in seen:
        return seen[key]
    row = state.store(table).get(key)
    if row is not None:
        source = state.graph.source(table)
        h = source.hierarchy
        if h is not None and path_of(state, h, next(iter(h.paths)), key, memo) is None:
            row = None
        else:
            for ref in source.references:
                if ref.required:
                    target = row.get(ref.column)
                    if target is None or visible_row(state, ref.target, target, memo) is None:
                        row = None
                        break
    seen[key] = row
    return row


# --- projection ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """A view compiled for projection: the grain, the rows each key reaches (``chains``:
    per chain, the chain it extends — -1 for the grain row — and the reference followed)
    and, per column, (name, chain, column or None, (hierarchy, path) or None)."""

    grain: str
    chains: tuple[tuple[int, Reference], ...]
    columns: tuple[tuple[str, int, str | None, tuple[Hierarchy, str] | None], ...]


def _compile(view: ViewDef) -> _Plan:
    """The view's plan, compiled once per definition (kept on the definition itself)."""
    plan: _Plan | None = view.__dict__.get("_projection_plan")
    if plan is None:
        plan = view.__dict__["_projection_plan"] = _plan(view)
    return plan


def _plan(view: ViewDef) -> _Plan:
    graph: Graph = view.graph
    index: dict[tuple[str, ...], int] = {(): -1}
    chains: list[tuple[int, Reference]] = []
    columns = []
    for step in view.steps:
        names: tuple[str, ...] = ()
        for ref in step.hops:
            parent = index[names]
            names = (*names, ref.name)
            if names not in index:
                index[names] = len(chains)
                chains.append((parent, ref))
        h = graph.source(step.table).hierarchy
        where = None if step.path is None else (h, step.path)
        assert step.path is None or h is not None
        columns.append((step.name, index[names], step.column, where))
    return _Plan(view.grain, tuple(chains), tuple(columns))  # type: ignore[arg-type]


def project(state: SourceState, view: ViewDef, key: Key, memo: Memo | None = None
            ) -> ViewRow | None:
    """The row ``view`` should hold for ``key`` now (columns in view order), or ``None``.

    ``memo`` caches visibility and paths across calls while the state does not change.
    """
    return _project(state, _compile(view), key, Memo() if memo is None else memo)


def _project(state: SourceState, plan: _Plan, key: Key, memo: Memo) -> ViewRow | None:
    grain = visible_row(state, plan.grain, key, memo)
    if grain is None:
        return None
    reached: list[tuple[Key, dict[str, Any]] | None] = []
    for parent, ref in plan.chains:
        base = (key, grain) if parent < 0 else reached[parent]
        target = None if base is None else base[1].get(ref.column)
        row = None if target is None else visible_row(state, ref.target, target, memo)
        reached.append(None if row is None or target is None else (target, row))
    out: ViewRow = {}
    for name, chain, column, where in plan.columns:
        at = (key, grain) if chain < 0 else reached[chain]
        if at is None:
            out[name] = None
        elif column is not None:
            out[name] = at[1][column]
        else:
            assert where is not None
            out[name] = path_of(state, where[0], where[1], at[0], memo)
    return out


def project_many(state: SourceState, view: ViewDef, keys: Iterable[Key],
                 memo: Memo | None = None) -> ViewBatch:
    """Project every key of ``keys`` into the rows to upsert and the keys to delete.

    Visibility and paths are computed once per call (or once per shared ``memo``).
    """
    plan = _compile(view)
    memo = Memo() if memo is None else memo
    out = ViewBatch()
    for key in keys:
        row = _project(state, plan, key, memo)
        if row is None:
            out.deletes.add(key)
        else:
            out.upserts[key] = row
    return out
