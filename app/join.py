"""The pure join engine: keeps a copy of the source tables and says which view rows to redo.

Pure: no Kafka, no Faust, no SQL. :class:`JoinEngine` applies one :class:`~app.changes.Change`
at a time to a :class:`~app.state.SourceState` (one key -> row store per declared source
table and a reverse index per reference and hierarchy; plain dicts in tests, RocksDB in the
worker) and returns the :class:`Affected` view keys: per source table, the rows whose view
rows may differ now — found by walking back along the reverse indexes from the changed row
(a hierarchy adds its subtree first), never by a scan — and which columns of the changed
row changed, so that a view that reads none of them (and no join column) is not rewritten.
The projection (``app.project``) then recomputes exactly those rows from the state.

Change events of different tables arrive in any order, so the state routinely holds
dangling references (a row whose referenced row has not arrived, a hierarchy row whose parent
was deleted). The reverse indexes are therefore keyed by the *referenced* id whether or not
that row exists; when it arrives later, its dependants are found through the index.

Rules that keep this correct under replays and restarts:

* a stored row is never mutated in place: the engine assigns a fresh ``dict``, so a
  persistent store sees every write;
* indexes are maintained from the engine's own old copy of the row, never from the
  event's before-image;
* the affected keys depend only on the changed key and the state *after* the change, so a
  replayed event yields the same keys as its first delivery;
* the changed columns are the difference between the engine's old copy and the new row.
  They let a view skip a change only while the views hold exactly the projection of the
  state (the invariant the worker keeps); a change replayed over a state that is ahead of
  the views must be applied with ``prune=False`` (every view redone), and a change that
  alters nothing (a duplicate) is never pruned.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.changes import Change
from app.graph import Key
from app.state import SourceState
from app.views import ViewDef

__all__ = ["Affected", "JoinEngine", "SourceState"]


@dataclass(frozen=True, slots=True)
class Affected:
    """The rows whose view rows may have changed because of one change of ``table``.

    ``keys``: per source table, the keys of its rows that depend on the changed row (the
    changed row itself among them). ``changed`` names the columns of the changed row that
    differ from the engine's previous copy; ``None`` means "treat every column as changed"
    (a row that appeared or vanished, a duplicate, or a replay).
    """

    table: str
    keys: Mapping[str, frozenset[Key]] = field(default_factory=dict)
    changed: frozenset[str] | None = None

    def touches(self, view: ViewDef) -> bool:
        """Whether the change can alter any row of ``view``."""
        if self.table not in view.depends_on:
            return False
        return self.changed is None or not self.changed.isdisjoint(view.relevant(self.table))

    def keys_for(self, view: ViewDef) -> frozenset[Key]:
        """The keys of ``view`` to recompute: none when the change cannot alter the view."""
        if not self.touches(view):
            return frozenset()
        return self.keys.get(view.grain, frozenset())

    def of(self, table: str) -> frozenset[Key]:
        """The affected keys of ``table``."""
        return self.keys.get(table, frozenset())


def _changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> frozenset[str] | None:
    diff = frozenset(k for k, v in new.items() if k not in old or old[k] != v)
    diff |= old.keys() - new.keys()
    return diff or None


class JoinEngine:
    """Applies changes to a :class:`SourceState`, maintaining the reverse indexes it holds."""

    def __init__(self, state: SourceState) -> None:
        self.state = state
        self.graph = state.graph
        #: Per table, the reverse indexes its rows are entered in: (index, column).
        self._own_indexes: dict[str, list[tuple[str, str]]] = {t: [] for t in self.graph.names}
        for index, (table, column) in self.graph.index_columns.items():
            self._own_indexes[table].append((index, column))

    # --- indexes --------------------------------------------------------------------------

    def rebuild_indexes(self) -> None:
        """Recompute every reverse index from the rows the stores hold now."""
        self.state.rebuild_indexes()

    def indexes(self) -> dict[str, dict[Key, frozenset[Key]]]:
        """A frozen copy of every reverse index (for tests and diagnostics)."""
        return {name: index.snapshot() for name, index in self.state.indexes.items()}

    def _reindex(self, table: str, key: Key, old: Mapping[str, Any] | None,
                 new: Mapping[str, Any] | None) -> None:
        """Move ``key`` in every index of ``table`` from its old reference to its new one."""
        for name, column in self._own_indexes[table]:
            old_ref = None if old is None else old.get(column)
            new_ref = None if new is None else new.get(column)
            if old_ref == new_ref:
                continue
            index = self.state.indexes[name]
            if old_ref is not None:
                index.discard(old_ref, key)
            if new_ref is not None:
                index.add(new_ref, key)

    # --- applying changes -----------------------------------------------------------------

    def apply(self, change: Change, prune: bool = True) -> Affected:
        """Apply ``change`` to the state and return the view keys it may have changed.

        ``after=None`` deletes the row (a no-op when it is absent). Applying the same change
        twice, or an older change again followed by the newer ones (a replay), is harmless
        for the state; for the views, a replay over a state that is ahead of them must pass
        ``prune=False``.
        """
        store = self.state.store(change.table)
        old = store.get(change.key)
        new = None if change.after is None else dict(change.after)
        changed: frozenset[str] | None = None
        if old != new:
            if prune and old is not None and new is not None:
                changed = _changed(old, new)
            self._reindex(change.table, change.key, old, new)
            if new is None:
                del store[change.key]
            else:
                store[change.key] = new
        return self.affected(change.table, change.key, changed)

    def affected(self, table: str, key: Key, changed: frozenset[str] | None = None
                 ) -> Affected:
        """The rows that depend on row ``key`` of ``table`` in the current state: the row
        (and, in a hierarchy, its subtree), then every row that references one of them,
        transitively."""
        hierarchy = self.graph.source(table).hierarchy
        start = set(self.subtree(table, key)) if hierarchy is not None else {key}
        out: dict[str, set[Key]] = {}
        work: list[tuple[str, set[Key]]] = [(table, start)]
        while work:
            t, keys = work.pop()
            have = out.setdefault(t, set())
            new = keys - have
            if not new:
                continue
            have |= new
            for ref in self.graph.referrers(t):
                index = self.state.indexes[ref.index]
                found: set[Key] = set()
                for k in new:
                    found.update(index.get(k))
                if found:
                    work.append((ref.source, found))
        return Affected(table, {t: frozenset(k) for t, k in out.items()}, changed)

    def subtree(self, table: str, key: Key) -> Iterator[Key]:
        """``key`` and every row below it in ``table``'s hierarchy, breadth first; a cycle
        terminates."""
        hierarchy = self.graph.source(table).hierarchy
        yield key
        if hierarchy is None:
            return
        children = self.state.indexes[hierarchy.index]
        seen = {key}
        queue = deque((key,))
        while queue:
            current = queue.popleft()
            for child in children.get(current):
                if child not in seen:
                    seen.add(child)
                    queue.append(child)
                    yield child
