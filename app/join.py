"""The pure join engine: keeps a copy of the source tables and says which view rows to redo.

Pure: no Kafka, no Faust, no SQL. :class:`JoinEngine` applies one :class:`~app.changes.Change`
at a time to a :class:`~app.state.SourceState` (four key -> row stores and the reverse
indexes over them; plain dicts in tests, RocksDB in the worker) and returns the
:class:`Affected` view keys: the products and batches whose view rows may differ now, and
which columns of the changed row changed, so that a view that reads none of them (and no
join column) is not rewritten. The projection (``app.project``) then recomputes exactly
those rows from the state.

Change events of different tables arrive in any order, so the state routinely holds
dangling references (a batch whose product has not arrived, a category whose parent was
deleted). The reverse indexes are therefore keyed by the *referenced* id whether or not
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
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from app.changes import Change, SourceTable
from app.state import (
    CATEGORY_PRODUCTS,
    CHILDREN,
    FOREIGN_KEYS,
    PRODUCT_BATCHES,
    WARRANTY_PRODUCTS,
    SourceState,
)
from app.views import Grain, ViewDef

__all__ = [
    "CATEGORY_PRODUCTS",
    "CHILDREN",
    "PRODUCT_BATCHES",
    "WARRANTY_PRODUCTS",
    "Affected",
    "JoinEngine",
    "SourceState",
]


@dataclass(frozen=True, slots=True)
class Affected:
    """The view keys whose rows may have changed because of one change of ``table``.

    ``changed`` names the columns of the changed row that differ from the engine's previous
    copy; ``None`` means "treat every column as changed" (a row that appeared or vanished,
    a duplicate, or a replay).
    """

    table: SourceTable
    product_ids: frozenset[int] = frozenset()
    batch_ids: frozenset[int] = frozenset()
    changed: frozenset[str] | None = None

    def touches(self, view: ViewDef) -> bool:
        """Whether the change can alter any row of ``view``."""
        if self.table not in view.depends_on:
            return False
        return self.changed is None or not self.changed.isdisjoint(view.relevant(self.table))

    def keys_for(self, view: ViewDef) -> frozenset[int]:
        """The keys of ``view`` to recompute: none when the change cannot alter the view."""
        if not self.touches(view):
            return frozenset()
        return self.product_ids if view.grain is Grain.PRODUCT else self.batch_ids


def _ref(row: Mapping[str, Any] | None, column: str) -> int | None:
    """The id ``row`` references through ``column`` (``None`` for no row or a NULL)."""
    if row is None:
        return None
    value: int | None = row.get(column)
    return value


def _changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> frozenset[str] | None:
    diff = frozenset(k for k, v in new.items() if k not in old or old[k] != v)
    diff |= old.keys() - new.keys()
    return diff or None


class JoinEngine:
    """Applies changes to a :class:`SourceState`, maintaining the reverse indexes it holds."""

    def __init__(self, state: SourceState | None = None) -> None:
        self.state: SourceState = state if state is not None else SourceState()

    # --- indexes --------------------------------------------------------------------------

    def rebuild_indexes(self) -> None:
        """Recompute every reverse index from the rows the stores hold now."""
        self.state.rebuild_indexes()

    def indexes(self) -> dict[str, dict[int, frozenset[int]]]:
        """A frozen copy of every reverse index (for tests and diagnostics)."""
        return {name: index.snapshot() for name, index in self.state.indexes.items()}

    def _referrers(self, index: str, ref: int) -> Collection[int]:
        return self.state.indexes[index].get(ref)

    def _reindex(
        self,
        table: SourceTable,
        key: int,
        old: Mapping[str, Any] | None,
        new: Mapping[str, Any] | None,
    ) -> None:
        """Move ``key`` in every index of ``table`` from its old reference to its new one."""
        for fk in FOREIGN_KEYS:
            if fk.table != table:
                continue
            old_ref, new_ref = _ref(old, fk.column), _ref(new, fk.column)
            if old_ref == new_ref:
                continue
            index = self.state.indexes[fk.index]
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

    def affected(
        self, table: SourceTable, key: int, changed: frozenset[str] | None = None
    ) -> Affected:
        """The view keys that depend on row ``key`` of ``table`` in the current state."""
        if table == "categories":
            products = frozenset(self._category_products(key))
        elif table == "warranty_types":
            products = frozenset(self._referrers(WARRANTY_PRODUCTS, key))
        elif table == "products":
            products = frozenset((key,))
        elif table == "batches":
            return Affected(table, batch_ids=frozenset((key,)), changed=changed)
        else:
            raise ValueError(f"unknown source table: {table!r}")
        return Affected(table, product_ids=products, batch_ids=self._batches_of(products),
                        changed=changed)

    def subtree(self, category_id: int) -> Iterator[int]:
        """``category_id`` and every category below it, breadth first; a cycle terminates."""
        seen = {category_id}
        queue = deque((category_id,))
        while queue:
            current = queue.popleft()
            yield current
            for child in self._referrers(CHILDREN, current):
                if child not in seen:
                    seen.add(child)
                    queue.append(child)

    def _category_products(self, category_id: int) -> Iterator[int]:
        for category in self.subtree(category_id):
            yield from self._referrers(CATEGORY_PRODUCTS, category)

    def _batches_of(self, products: Iterable[int]) -> frozenset[int]:
        batches: set[int] = set()
        for product in products:
            batches.update(self._referrers(PRODUCT_BATCHES, product))
        return frozenset(batches)
