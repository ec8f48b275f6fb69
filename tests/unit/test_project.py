"""Tests of the pure projection over the bundled example: hierarchy paths, visibility,
joins, and each view's rows (the second example schema is in test_catalog.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.graph import Hierarchy, Key
from app.join import Affected, SourceState
from app.project import Memo, path_of, project, project_many, visible_row
from app.views import Column, ViewDef, bundled_definitions, view_named

DEFS = bundled_definitions()
GRAPH = DEFS.graph
VIEWS = DEFS.views
CATEGORIES = GRAPH.source("categories").hierarchy
assert CATEGORIES is not None
ORDER_PRODUCT_VIEW = view_named("order.product_view", VIEWS)
PURCHASE_PRODUCT_VIEW = view_named("purchase.product_view", VIEWS)
PURCHASE_BATCH_VIEW = view_named("purchase.batch_view", VIEWS)


def cat(id_: int, parent: int | None, name: str) -> dict[str, Any]:
    return {"id": id_, "parent_id": parent, "code": f"C{id_}", "name": name}


def prod(id_: int, category: int, warranty: int | None = None) -> dict[str, Any]:
    return {
        "id": id_,
        "sku": f"SKU-{id_}",
        "name": f"product {id_}",
        "category_id": category,
        "warranty_type_id": warranty,
        "unit": "kg",
        "price": Decimal("12.50"),
        "status": "active",
    }


def batch(id_: int, product: int) -> dict[str, Any]:
    return {
        "id": id_,
        "product_id": product,
        "batch_no": f"B-{id_}",
        "manufactured_on": date(2024, 3, 1),
        "expires_on": date(2025, 3, 1),
    }


def state(**tables: dict[Key, dict[str, Any]]) -> SourceState:
    return SourceState(GRAPH, tables)


def catalog() -> SourceState:
    """Tools(1) > Saws(2) > Hand saws(3); products 10 (3, warranty 7), 11 (2, none)."""
    return state(
        categories={1: cat(1, None, "Tools"), 2: cat(2, 1, "Saws"), 3: cat(3, 2, "Hand saws")},
        warranty_types={7: {"id": 7, "name": "Two years", "months": 24}},
        products={10: prod(10, 3, 7), 11: prod(11, 2)},
        batches={100: batch(100, 10), 110: batch(110, 11)},
    )


def category_path(s: SourceState, key: Key, memo: Memo | None = None) -> str | None:
    assert CATEGORIES is not None
    return path_of(s, CATEGORIES, "path", key, memo)


def memo_paths(memo: Memo) -> dict[Key, str | None]:
    return memo.paths[("categories", "path")]


def is_visible_product(s: SourceState, key: Key) -> bool:
    return visible_row(s, "products", key) is not None


# --- hierarchy paths -----------------------------------------------------------------------


def test_path_root_and_deep() -> None:
    s = catalog()
    assert category_path(s, 1) == "Tools"
    assert category_path(s, 3) == "Tools > Saws > Hand saws"


def test_path_missing_category_or_ancestor() -> None:
    s = catalog()
    assert category_path(s, 99) is None
    del s.store("categories")[1]
    assert category_path(s, 3) is None
    assert category_path(s, 2) is None


def test_path_cycle_and_self_loop_terminate() -> None:
    s = catalog()
    s.store("categories")[1] = cat(1, 3, "Tools")
    assert [category_path(s, c) for c in (1, 2, 3)] == [None, None, None]
    s.store("categories")[4] = cat(4, 4, "Self")
    assert category_path(s, 4) is None
    s.store("categories")[5] = cat(5, 2, "Below the cycle")
    assert category_path(s, 5) is None


def test_path_deep_chain_is_iterative() -> None:
    s = state(categories={i: cat(i, i - 1 if i else None, f"n{i}") for i in range(5000)})
    path = category_path(s, 4999)
    assert path is not None and path.count(" > ") == 4999


def test_path_memo_fills_the_chain_and_is_reused() -> None:
    s = catalog()
    memo = Memo()
    assert category_path(s, 3, memo) == "Tools > Saws > Hand saws"
    assert memo_paths(memo) == {1: "Tools", 2: "Tools > Saws", 3: "Tools > Saws > Hand saws"}
    s.tables["categories"] = {}  # a memoised answer no longer reads the store
    assert category_path(s, 2, memo) == "Tools > Saws"


def test_path_memo_records_missing_and_cyclic() -> None:
    s = catalog()
    s.store("categories")[1] = cat(1, 3, "Tools")
    memo = Memo()
    assert category_path(s, 99, memo) is None
    assert category_path(s, 2, memo) is None
    assert memo_paths(memo) == {99: None, 1: None, 2: None, 3: None}


def test_path_names_may_contain_the_separator_or_be_empty() -> None:
    s = state(categories={1: cat(1, None, ""), 2: cat(2, 1, "a > b")})
    assert category_path(s, 2) == " > a > b"
    assert category_path(s, 2, Memo()) == " > a > b"


def test_a_null_label_never_shows_as_the_text_none() -> None:
    s = state(categories={1: cat(1, None, "Tools"), 2: cat(2, 1, "Saws")})
    s.store("categories")[1] = dict(s.store("categories")[1], name=None)
    # an empty label (documented), never the text 'None'
    assert category_path(s, 2) == " > Saws"


def test_path_of_another_hierarchy_with_several_paths_and_separator() -> None:
    h = Hierarchy("categories", "parent_id", " / ", {"path": "name", "codes": "code"})
    s = catalog()
    memo = Memo()
    assert path_of(s, h, "codes", 3, memo) == "C1 / C2 / C3"
    assert path_of(s, h, "path", 3, memo) == "Tools / Saws / Hand saws"
    assert memo.paths[("categories", "codes")][2] == "C1 / C2"


TREES = st.dictionaries(
    st.integers(1, 8),
    st.tuples(st.none() | st.integers(1, 9), st.sampled_from(["x", "y", ""])),
    max_size=8,
)


def naive_path(cats: dict[int, tuple[int | None, str]], c: int) -> str | None:
    names: list[str] = []
    seen: set[int] = set()
    cur: int | None = c
    while cur is not None:
        if cur in seen or cur not in cats:
            return None
        seen.add(cur)
        cur, name = cats[cur]
        names.insert(0, name)
    return " > ".join(names)


@settings(max_examples=300, deadline=None)
@given(cats=TREES, order=st.permutations(list(range(1, 10))))
def test_path_matches_naive_walk_with_and_without_memo(
    cats: dict[int, tuple[int | None, str]], order: list[int]
) -> None:
    s = state(categories={k: cat(k, p, n) for k, (p, n) in cats.items()})
    memo = Memo()
    for c in order:  # a shared memo, filled in any order, must not change an answer
        assert category_path(s, c, memo) == naive_path(cats, c)
        assert category_path(s, c) == naive_path(cats, c)


# --- visibility ----------------------------------------------------------------------------


def test_visibility() -> None:
    s = catalog()
    assert is_visible_product(s, 10) and is_visible_product(s, 11)
    assert not is_visible_product(s, 12)  # missing product
    s.store("products")[12] = prod(12, 42)
    assert not is_visible_product(s, 12)  # missing category
    assert visible_row(s, "products", 10) == prod(10, 3, 7)
    assert visible_row(s, "warranty_types", 8) is None
    s.store("products")[13] = prod(13, 2, 8)
    assert is_visible_product(s, 13)  # a dangling optional reference does not hide a row
    del s.store("categories")[2]
    assert visible_row(s, "categories", 3) is None  # an ancestor missing: no path
    assert not is_visible_product(s, 10)  # ancestor missing
    assert not is_visible_product(s, 11)
    assert visible_row(s, "batches", 100) is None  # a required reference to a hidden row


def test_visibility_is_memoised_per_state() -> None:
    s = catalog()
    memo = Memo()
    assert visible_row(s, "batches", 100, memo) is not None
    assert set(memo.visible) == {"batches", "products", "categories"}
    del s.store("products")[10]
    assert visible_row(s, "batches", 100, memo) is not None  # the memo is of the old state
    assert visible_row(s, "batches", 100, Memo()) is None


# --- each view -----------------------------------------------------------------------------


def test_order_product_view_row_and_column_order() -> None:
    row = project(catalog(), ORDER_PRODUCT_VIEW, 10)
    assert row == {
        "product_id": 10,
        "sku": "SKU-10",
        "name": "product 10",
        "category_id": 3,
        "category_name": "Hand saws",
        "category_path": "Tools > Saws > Hand saws",
        "warranty_name": "Two years",
        "warranty_months": 24,
        "price": Decimal("12.50"),
        "status": "active",
    }
    assert list(row) == [c.name for c in ORDER_PRODUCT_VIEW.columns]


def test_purchase_product_view_row() -> None:
    row = project(catalog(), PURCHASE_PRODUCT_VIEW, 11)
    assert row == {
        "product_id": 11,
        "sku": "SKU-11",
        "name": "product 11",
        "unit": "kg",
        "status": "active",
        "category_code": "C2",
    }
    assert list(row) == [c.name for c in PURCHASE_PRODUCT_VIEW.columns]


def test_purchase_batch_view_row() -> None:
    row = project(catalog(), PURCHASE_BATCH_VIEW, 100)
    assert row == {
        "batch_id": 100,
        "batch_no": "B-100",
        "product_id": 10,
        "sku": "SKU-10",
        "product_name": "product 10",
        "category_path": "Tools > Saws > Hand saws",
        "manufactured_on": date(2024, 3, 1),
        "expires_on": date(2025, 3, 1),
        "warranty_months": 24,
    }
    assert list(row) == [c.name for c in PURCHASE_BATCH_VIEW.columns]


def test_left_join_warranty_none_missing_or_present() -> None:
    s = catalog()
    no_warranty = project(s, ORDER_PRODUCT_VIEW, 11)
    assert no_warranty is not None
    assert (no_warranty["warranty_name"], no_warranty["warranty_months"]) == (None, None)
    s.store("products")[11] = prod(11, 2, 8)  # warranty 8 has not arrived yet
    dangling = project(s, ORDER_PRODUCT_VIEW, 11)
    assert dangling is not None and dangling["warranty_months"] is None
    row = project(s, PURCHASE_BATCH_VIEW, 110)
    assert row is not None and row["warranty_months"] is None and "id" not in row


def test_absent_rows() -> None:
    s = catalog()
    assert project(s, ORDER_PRODUCT_VIEW, 99) is None
    assert project(s, PURCHASE_BATCH_VIEW, 999) is None
    s.store("batches")[120] = batch(120, 12)  # batch before its product
    assert project(s, PURCHASE_BATCH_VIEW, 120) is None
    s.store("products")[12] = prod(12, 1)
    assert project(s, PURCHASE_BATCH_VIEW, 120) is not None
    del s.store("categories")[1]  # product no longer visible: neither is its batch
    assert project(s, PURCHASE_BATCH_VIEW, 120) is None
    assert project(s, PURCHASE_PRODUCT_VIEW, 12) is None


def test_a_product_view_reading_batches_is_rejected() -> None:
    bad = ViewDef("x", "bad", "products", "product_id",
                  (Column("product_id", "id", "bigint"), Column("b", "batches.id", "bigint")),
                  graph=GRAPH)
    with pytest.raises(ValueError, match="products has no reference 'batches'"):
        project(catalog(), bad, 10)


def test_a_view_of_any_grain_over_the_same_graph() -> None:
    # a view of the categories themselves, and one of the warranty types
    cats = ViewDef("x", "categories", "categories", "id",
                   (Column("id", "id", "bigint"), Column("path", "path", "text"),
                    Column("parent", "parent_id", "bigint", nullable=True)), graph=GRAPH)
    s = catalog()
    s.store("categories")[9] = cat(9, 8, "orphan")
    out = project_many(s, cats, [1, 3, 9])
    assert out.upserts == {1: {"id": 1, "path": "Tools", "parent": None},
                           3: {"id": 3, "path": "Tools > Saws > Hand saws", "parent": 2}}
    assert out.deletes == {9}


# --- many keys -----------------------------------------------------------------------------


def test_project_many_upserts_and_deletes() -> None:
    s = catalog()
    out = project_many(s, ORDER_PRODUCT_VIEW, [10, 11, 12])
    assert set(out.upserts) == {10, 11} and out.deletes == {12}
    assert out.upserts[10] == project(s, ORDER_PRODUCT_VIEW, 10)


class CountingStore(dict[int, dict[str, Any]]):
    """A dict that counts reads, to show paths are computed once per category."""

    reads = 0

    def get(self, key: int, default: Any = None) -> Any:  # type: ignore[override]
        self.reads += 1
        return super().get(key, default)

    def __getitem__(self, key: int) -> dict[str, Any]:
        self.reads += 1
        return super().__getitem__(key)

    def __iter__(self) -> Iterator[int]:
        raise AssertionError("projection must not scan a store")


def test_project_many_computes_each_path_once() -> None:
    cats = CountingStore({1: cat(1, None, "A"), 2: cat(2, 1, "B"), 3: cat(3, 2, "C")})
    products = {i: prod(i, 3) for i in range(5000)}
    s = state(categories=cats, products=products)  # type: ignore[arg-type]
    out = project_many(s, ORDER_PRODUCT_VIEW, range(5000))
    assert len(out.upserts) == 5000 and not out.deletes
    # the category's visibility and the single path, each read once: not once per product
    reads = cats.reads
    assert reads <= 4
    cats.reads = 0
    project_many(s, ORDER_PRODUCT_VIEW, range(50))
    assert cats.reads == reads


def test_a_memo_shared_by_the_views_of_a_batch() -> None:
    s = catalog()
    memo = Memo()
    project_many(s, ORDER_PRODUCT_VIEW, [10], memo)
    cats = CountingStore(s.store("categories"))
    s.tables["categories"] = cats
    row = project_many(s, PURCHASE_BATCH_VIEW, [100], memo).upserts[100]
    assert row["category_path"] == "Tools > Saws > Hand saws" and cats.reads == 0


def test_affected_skips_views_not_reading_the_table() -> None:
    affected = Affected("warranty_types", {"warranty_types": frozenset({7}),
                                           "products": frozenset({10}),
                                           "batches": frozenset({100})})
    assert {v.name for v in VIEWS if affected.keys_for(v)} == {
        "order.product_view", "purchase.batch_view"}
    assert affected.keys_for(ORDER_PRODUCT_VIEW) == {10}
    assert affected.keys_for(PURCHASE_BATCH_VIEW) == {100}
    affected = Affected("batches", {"batches": frozenset({100, 999})})
    assert {v.name for v in VIEWS if affected.keys_for(v)} == {"purchase.batch_view"}
    out = project_many(catalog(), PURCHASE_BATCH_VIEW, affected.keys_for(PURCHASE_BATCH_VIEW))
    assert set(out.upserts) == {100} and out.deletes == {999}
