"""Pure projection: the row a view should hold for one key, computed from the source state.

Pure: no Kafka, no Faust, no SQL. Given a :class:`~app.join.SourceState` and a
:class:`~app.views.ViewDef`, :func:`project` returns the view row for a key (or ``None`` when
the view must not hold that key), reading each column from the source the ViewDef names.
The joins are those of the contract:

* product grain: product -> its category (inner; the category must have a path) and its
  warranty type (left: the warranty columns are ``None`` when the product has none, or when
  its warranty row has not arrived yet);
* batch grain: batch -> its product (inner; the product must be visible) -> the same joins.

Rows in the state are complete decoded source rows; a column missing from a stored row is
a bug upstream and raises ``KeyError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from app.changes import SourceTable
from app.state import SourceState
from app.views import Grain, ViewDef

PATH_SEPARATOR: Final = " > "

#: Category id -> its path (``None``: it has none). Valid while the state does not change.
PathMemo = dict[int, str | None]

#: One view row: column name -> value, in the view's column order.
ViewRow = dict[str, Any]


@dataclass
class ViewBatch:
    """What one view needs written: rows to upsert by key, keys to delete."""

    upserts: dict[int, ViewRow] = field(default_factory=dict)
    deletes: set[int] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.upserts) + len(self.deletes)


# --- category paths and visibility ---------------------------------------------------------


def category_path(state: SourceState, category_id: int, memo: PathMemo | None = None) -> str | None:
    """The names from the root down to ``category_id`` joined by ``" > "``, or ``None``.

    ``None`` when the category or any ancestor is missing, or the parent chain has a cycle.
    Iterative, so deep chains and cycles are safe. With ``memo``, every category on the walked
    chain is memoised and a walk stops at the first memoised ancestor.
    """
    if memo is None:
        memo = {}
    elif category_id in memo:
        return memo[category_id]
    chain: list[tuple[int, str]] = []  # (id, name), from category_id upwards
    on_chain: set[int] = set()
    current: int | None = category_id
    prefix: str | None  # path of the topmost chain entry's parent plus separator; "" at a root
    while True:
        if current is None:
            prefix = ""
            break
        if current in memo:
            known = memo[current]
            prefix = None if known is None else known + PATH_SEPARATOR
            break
        row = None if current in on_chain else state.categories.get(current)
        if row is None:  # missing, or a cycle
            prefix = None
            break
        chain.append((current, row["name"]))
        on_chain.add(current)
        current = row["parent_id"]
    for cid, name in reversed(chain):
        if prefix is None:
            memo[cid] = None
        else:
            path = prefix + name
            memo[cid] = path
            prefix = path + PATH_SEPARATOR
    return memo.setdefault(category_id, None)  # unset only when category_id itself is missing


def is_visible_product(state: SourceState, product_id: int, memo: PathMemo | None = None) -> bool:
    """Whether the product exists, its category exists and that category has a path."""
    product = state.products.get(product_id)
    return product is not None and category_path(state, product["category_id"], memo) is not None


# --- projection ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """A view compiled for projection: its grain and, per column, (name, table, column).

    ``table`` is ``None`` for the category path.
    """

    grain: Grain
    columns: tuple[tuple[str, SourceTable | None, str], ...]


def _compile(view: ViewDef) -> _Plan:
    columns = tuple((c.name, c.source_table, c.source_column) for c in view.columns)
    if view.grain is Grain.PRODUCT and any(table == "batches" for _, table, _ in columns):
        raise ValueError(f"{view.name}: a product-grain view cannot read batches")
    return _Plan(view.grain, columns)


def _joined(
    state: SourceState, grain: Grain, key: int, memo: PathMemo
) -> tuple[dict[SourceTable, Mapping[str, Any] | None], str] | None:
    """The source rows one view row reads and its category path; ``None`` if no row is due."""
    rows: dict[SourceTable, Mapping[str, Any] | None] = {}
    if grain is Grain.BATCH:
        batch = state.batches.get(key)
        if batch is None:
            return None
        rows["batches"] = batch
        product = state.products.get(batch["product_id"])
    else:
        product = state.products.get(key)
    if product is None:
        return None
    category_id = product["category_id"]
    path = category_path(state, category_id, memo)
    if path is None:  # also covers a missing category
        return None
    warranty_id = product["warranty_type_id"]
    rows["products"] = product
    rows["categories"] = state.categories[category_id]
    rows["warranty_types"] = None if warranty_id is None else state.warranty_types.get(warranty_id)
    return rows, path


def project(
    state: SourceState, view: ViewDef, key: int, memo: PathMemo | None = None
) -> ViewRow | None:
    """The row ``view`` should hold for ``key`` now (columns in view order), or ``None``.

    ``memo`` caches category paths across calls while the state does not change.
    """
    return _project(state, _compile(view), key, {} if memo is None else memo)


def _project(state: SourceState, plan: _Plan, key: int, memo: PathMemo) -> ViewRow | None:
    joined = _joined(state, plan.grain, key, memo)
    if joined is None:
        return None
    rows, path = joined
    out: ViewRow = {}
    for name, table, column in plan.columns:
        if table is None:
            out[name] = path
        else:
            row = rows[table]
            out[name] = None if row is None else row[column]
    return out


def project_many(
    state: SourceState, view: ViewDef, keys: Iterable[int], memo: PathMemo | None = None
) -> ViewBatch:
    """Project every key of ``keys`` into the rows to upsert and the keys to delete.

    Each category path is computed once per call (or once per shared ``memo``), so renaming
    a category with many products beneath it costs one path per category, not per product.
    """
    plan = _compile(view)
    memo = {} if memo is None else memo
    out = ViewBatch()
    for key in keys:
        row = _project(state, plan, key, memo)
        if row is None:
            out.deletes.add(key)
        else:
            out.upserts[key] = row
    return out
