"""The pure join engine: keeps a copy of the source tables and says which view rows to redo.

Pure: no Kafka, no Faust, no SQL. :class:`JoinEngine` applies one :class:`~app.changes.Change`
at a time to a :class:`SourceState` (four key -> row stores; plain dicts in tests, Faust
Tables in production) and returns the :class:`Affected` view keys: the products and batches
whose view rows may differ now. The projection (``app.project``) then recomputes exactly
those rows from the state.

Change events of different tables arrive in any order, so the state routinely holds
dangling references (a batch whose product has not arrived, a category whose parent was
deleted). The reverse indexes are therefore keyed by the *referenced* id whether or not
that row exists; when it arrives later, its dependants are found through the index.

Rules that keep this correct under replays and restarts:

* a stored row is never mutated in place: the engine assigns a fresh ``dict``, so a Faust
  Table sees every write and logs it to its changelog;
* indexes are maintained from the engine's own old copy of the row, never from the
  event's before-image;
* the affected keys depend only on the changed key and the state *after* the change, so a
  replayed event yields the same keys as its first delivery.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

from app.changes import Change, SourceTable
from app.views import Grain, ViewDef

#: One key -> row store of the state.
Store = MutableMapping[int, dict[str, Any]]

#: Reverse index: referenced id -> ids of the rows that reference it.
Index = dict[int, set[int]]

#: Index names, for :meth:`JoinEngine.indexes`.
CHILDREN: Final = "category_children"
CATEGORY_PRODUCTS: Final = "category_products"
WARRANTY_PRODUCTS: Final = "warranty_products"
PRODUCT_BATCHES: Final = "product_batches"


@dataclass(frozen=True, slots=True)
class _ForeignKey:
    """A reference ``table.column -> <referenced table>.id`` kept as the reverse index ``index``."""

    table: SourceTable
    column: str
    index: str


#: Every reference the views follow, one reverse index each.
FOREIGN_KEYS: Final[tuple[_ForeignKey, ...]] = (
    _ForeignKey("categories", "parent_id", CHILDREN),
    _ForeignKey("products", "category_id", CATEGORY_PRODUCTS),
    _ForeignKey("products", "warranty_type_id", WARRANTY_PRODUCTS),
    _ForeignKey("batches", "product_id", PRODUCT_BATCHES),
)


def _empty_store() -> Store:
    return {}


@dataclass
class SourceState:
    """The worker's copy of the four source tables, each a key -> row store."""

    categories: Store = field(default_factory=_empty_store)
    warranty_types: Store = field(default_factory=_empty_store)
    products: Store = field(default_factory=_empty_store)
    batches: Store = field(default_factory=_empty_store)

    def store(self, table: SourceTable) -> Store:
        """The store of ``table``."""
        if table == "categories":
            return self.categories
        if table == "warranty_types":
            return self.warranty_types
        if table == "products":
            return self.products
        if table == "batches":
            return self.batches
        raise ValueError(f"unknown source table: {table!r}")


@dataclass(frozen=True, slots=True)
class Affected:
    """The view keys whose rows may have changed because of one change of ``table``."""

    table: SourceTable
    product_ids: frozenset[int] = frozenset()
    batch_ids: frozenset[int] = frozenset()

    def keys_for(self, view: ViewDef) -> frozenset[int]:
        """The keys of ``view`` to recompute: none when the view does not read ``table``."""
        keys = self.product_ids if view.grain is Grain.PRODUCT else self.batch_ids
        if keys and self.table not in view.depends_on:
            return frozenset()
        return keys


def _ref(row: Mapping[str, Any] | None, column: str) -> int | None:
    """The id ``row`` references through ``column`` (``None`` for no row or a NULL)."""
    if row is None:
        return None
    value: int | None = row.get(column)
    return value


class JoinEngine:
    """Applies changes to a :class:`SourceState`, maintaining reverse indexes over it.

    The indexes live in memory only: a new engine over a recovered state rebuilds them from
    the stores (:meth:`rebuild_indexes`), which gives the same indexes as the engine that
    wrote the state.
    """

    def __init__(self, state: SourceState | None = None) -> None:
        self.state: SourceState = state if state is not None else SourceState()
        self._indexes: dict[str, Index] = {}
        self.rebuild_indexes()

    # --- indexes --------------------------------------------------------------------------

    def rebuild_indexes(self) -> None:
        """Recompute every reverse index from the rows the stores hold now."""
        self._indexes = {fk.index: {} for fk in FOREIGN_KEYS}
        for fk in FOREIGN_KEYS:
            index = self._indexes[fk.index]
            for key, row in self.state.store(fk.table).items():
                ref = _ref(row, fk.column)
                if ref is not None:
                    index.setdefault(ref, set()).add(key)

    def indexes(self) -> dict[str, dict[int, frozenset[int]]]:
        """A frozen copy of every reverse index (for tests and diagnostics)."""
        return {
            name: {ref: frozenset(keys) for ref, keys in index.items()}
            for name, index in self._indexes.items()
        }

    def _referrers(self, index: str, ref: int) -> Iterable[int]:
        return self._indexes[index].get(ref, ())

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
            index = self._indexes[fk.index]
            if old_ref is not None:
                keys = index.get(old_ref)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[old_ref]
            if new_ref is not None:
                index.setdefault(new_ref, set()).add(key)

    # --- applying changes -----------------------------------------------------------------

    def apply(self, change: Change) -> Affected:
        """Apply ``change`` to the state and return the view keys it may have changed.

        ``after=None`` deletes the row (a no-op when it is absent). Applying the same change
        twice, or an older change again followed by the newer ones (a replay), is harmless.
        """
        store = self.state.store(change.table)
        old = store.get(change.key)
        new = None if change.after is None else dict(change.after)
        if old != new:
            self._reindex(change.table, change.key, old, new)
            if new is None:
                del store[change.key]
            else:
                store[change.key] = new
        return self.affected(change.table, change.key)

    def affected(self, table: SourceTable, key: int) -> Affected:
        """The view keys that depend on row ``key`` of ``table`` in the current state."""
        if table == "categories":
            products = frozenset(self._category_products(key))
        elif table == "warranty_types":
            products = frozenset(self._referrers(WARRANTY_PRODUCTS, key))
        elif table == "products":
            products = frozenset((key,))
        elif table == "batches":
            return Affected(table, batch_ids=frozenset((key,)))
        else:
            raise ValueError(f"unknown source table: {table!r}")
        return Affected(table, product_ids=products, batch_ids=self._batches_of(products))

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
