"""Tests of the join engine over the bundled example (the demo's four tables): fan-out,
indexes, and convergence of incrementally kept views.

The views are checked against two oracles, neither of which uses ``app.project``:
:func:`reference_views`, a deliberately naive join of the demo's three views written here
from the contract, and the generic reference join over the declared graph
(``tests.unit.reference``). The second example schema is in test_catalog.py.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.changes import Change
from app.join import Affected, JoinEngine, SourceState
from app.state import RocksStore, StateStore
from app.views import bundled_definitions
from tests.unit import harness
from tests.unit.harness import PROPERTY_EXAMPLES, History, Space, converge, histories

Rows = dict[int, dict[str, Any]]
BIG = 2**40 + 7
DEFS = bundled_definitions()
GRAPH = DEFS.graph
VIEWS = DEFS.views
#: The reverse indexes of the bundled graph: "<table>.<reference>", "<table>.children".
CHILDREN, CATEGORY_PRODUCTS = "categories^children", "products.category"
WARRANTY_PRODUCTS, PRODUCT_BATCHES = "products.warranty", "batches.product"

# --- rows ----------------------------------------------------------------------------------


def cat(id_: int, parent: int | None, name: str, code: str | None = None) -> dict[str, Any]:
    return {"id": id_, "parent_id": parent, "code": code or f"C{id_}", "name": name}


def wt(id_: int, name: str, months: int) -> dict[str, Any]:
    return {"id": id_, "name": name, "months": months}


def prod(
    id_: int, category: int, warranty: int | None = None, name: str | None = None, **kw: Any
) -> dict[str, Any]:
    row = {
        "id": id_,
        "sku": f"SKU-{id_}",
        "name": name or f"product {id_}",
        "category_id": category,
        "warranty_type_id": warranty,
        "unit": "pcs",
        "price": Decimal("9.99"),
        "status": "active",
    }
    row.update(kw)
    return row


def batch(id_: int, product: int, no: str | None = None) -> dict[str, Any]:
    return {
        "id": id_,
        "product_id": product,
        "batch_no": no or f"B-{id_}",
        "manufactured_on": date(2024, 1, 2),
        "expires_on": None,
    }


# --- the naive reference join of the demo --------------------------------------------------


def ref_path(categories: Rows, category_id: int) -> str | None:
    """Walk the parents; None when one is missing or the chain loops."""
    names: list[str] = []
    seen: set[int] = set()
    current: int | None = category_id
    while current is not None:
        if current in seen or current not in categories:
            return None
        seen.add(current)
        names.append(categories[current]["name"])
        current = categories[current]["parent_id"]
    return " > ".join(reversed(names))


def reference_views(
    categories: Rows, warranty_types: Rows, products: Rows, batches: Rows
) -> dict[str, Rows]:
    """Every view, computed from scratch from the tables, as the contract states it."""
    order: Rows = {}
    purchase_products: Rows = {}
    purchase_batches: Rows = {}
    for pid, p in products.items():
        category = categories.get(p["category_id"])
        path = ref_path(categories, p["category_id"])
        if category is None or path is None:
            continue
        wid = p["warranty_type_id"]
        w = None if wid is None else warranty_types.get(wid)
        order[pid] = {
            "product_id": p["id"],
            "sku": p["sku"],
            "name": p["name"],
            "category_id": p["category_id"],
            "category_name": category["name"],
            "category_path": path,
            "warranty_name": w["name"] if w else None,
            "warranty_months": w["months"] if w else None,
            "price": p["price"],
            "status": p["status"],
        }
        purchase_products[pid] = {
            "product_id": p["id"],
            "sku": p["sku"],
            "name": p["name"],
            "unit": p["unit"],
            "status": p["status"],
            "category_code": category["code"],
        }
    for bid, b in batches.items():
        if b["product_id"] not in order:
            continue
        p = products[b["product_id"]]
        purchase_batches[bid] = {
            "batch_id": b["id"],
            "batch_no": b["batch_no"],
            "product_id": b["product_id"],
            "sku": p["sku"],
            "product_name": p["name"],
            "category_path": order[p["id"]]["category_path"],
            "manufactured_on": b["manufactured_on"],
            "expires_on": b["expires_on"],
            "warranty_months": order[p["id"]]["warranty_months"],
        }
    return {
        "order.product_view": order,
        "purchase.product_view": purchase_products,
        "purchase.batch_view": purchase_batches,
    }


def demo_oracle(tables: Mapping[str, Rows]) -> dict[str, Rows]:
    return reference_views(
        dict(tables["categories"]),
        dict(tables["warranty_types"]),
        dict(tables["products"]),
        dict(tables["batches"]),
    )


def test_reference_covers_every_view() -> None:
    assert set(reference_views({}, {}, {}, {})) == {v.name for v in VIEWS}


# --- a worker without Kafka over the bundled example ---------------------------------------


def Harness(store: StateStore | None = None) -> harness.Harness:
    """The harness over the bundled example, checked against both oracles."""
    return harness.Harness(DEFS, store=store, oracles=(demo_oracle,))


def assert_indexes_rebuildable(engine: JoinEngine) -> None:
    harness.assert_indexes_rebuildable(engine)


ORDER, PPROD, PBATCH = "order.product_view", "purchase.product_view", "purchase.batch_view"


def small_catalog(h: harness.Harness) -> None:
    """root(1) > mid(2) > leaf(3); other root(4); products 10 (leaf), 11 (mid), 12 (other)."""
    for row in (cat(1, None, "Root"), cat(2, 1, "Mid"), cat(3, 2, "Leaf"), cat(4, None, "Other")):
        h.put("categories", row, op="r")
    h.put("warranty_types", wt(1, "Basic", 12), op="r")
    h.put("warranty_types", wt(2, "Long", 36), op="r")
    for row in (prod(10, 3, 1), prod(11, 2, None), prod(12, 4, 2)):
        h.put("products", row, op="r")
    for row in (batch(100, 10), batch(101, 10), batch(110, 11), batch(120, 12)):
        h.put("batches", row, op="r")
    h.check()


def paths(h: harness.Harness) -> dict[int, str]:
    return {k: v["category_path"] for k, v in h.view(ORDER).items()}


def written_to(affected: Affected) -> list[str]:
    return [v.name for v in VIEWS if affected.keys_for(v)]


# --- fan-out -------------------------------------------------------------------------------


def test_affected_keys_per_table() -> None:
    h = Harness()
    small_catalog(h)
    # a hierarchy row reaches its subtree, then every row referencing one of them
    assert h.put("categories", cat(2, 1, "Mid2")) == Affected(
        "categories",
        {"categories": frozenset({2, 3}), "products": frozenset({10, 11}),
         "batches": frozenset({100, 101, 110})},
        frozenset({"name"}),
    )
    assert h.put("warranty_types", wt(1, "Basic", 6)) == Affected(
        "warranty_types",
        {"warranty_types": frozenset({1}), "products": frozenset({10}),
         "batches": frozenset({100, 101})},
        frozenset({"months"}),
    )
    assert h.put("products", prod(11, 2, name="x")) == Affected(
        "products", {"products": frozenset({11}), "batches": frozenset({110})},
        frozenset({"name"})
    )
    assert h.put("batches", batch(120, 12, "z")) == Affected(
        "batches", {"batches": frozenset({120})}, frozenset({"batch_no"})
    )


def test_keys_for_a_view_are_the_affected_keys_of_its_grain() -> None:
    h = Harness()
    small_catalog(h)
    affected = h.put("categories", cat(1, None, "Top"))
    by_view = {v.name: affected.keys_for(v) for v in VIEWS}
    assert by_view == {ORDER: {10, 11}, PPROD: set(), PBATCH: {100, 101, 110}}  # PPROD: code
    assert affected.of("categories") == {1, 2, 3} and affected.of("warranty_types") == set()


def test_a_change_is_written_only_to_the_views_that_read_its_columns() -> None:
    h = Harness()
    small_catalog(h)
    p = h.state.store("products")[10]
    affected = h.put("products", dict(p, price=Decimal("1.50")))
    assert affected.changed == {"price"}
    assert written_to(affected) == [ORDER]
    # a category code is read by purchase.product_view only; its name by both paths
    affected = h.put("categories", cat(3, 2, "Leaf", code="NEW"))
    assert written_to(affected) == [PPROD]
    affected = h.put("categories", cat(3, 2, "Leaf2", code="NEW"))
    assert written_to(affected) == [ORDER, PBATCH]
    # a join column reaches every view that joins through it
    affected = h.put("products", dict(p, price=Decimal("1.50"), category_id=2))
    assert written_to(affected) == [ORDER, PPROD, PBATCH]
    # an optional reference nobody reads through: only the views that follow it
    affected = h.put("products", dict(p, price=Decimal("1.50"), category_id=2, warranty_type_id=2))
    assert written_to(affected) == [ORDER, PBATCH]
    # the same row again (a duplicate) is never pruned
    affected = h.put("products", dict(p, price=Decimal("1.50"), category_id=2, warranty_type_id=2))
    assert affected.changed is None
    assert written_to(affected) == [ORDER, PPROD, PBATCH]
    # a warranty is not read by purchase.product_view at all
    affected = h.put("warranty_types", wt(2, "Long", 37))
    assert written_to(affected) == [ORDER, PBATCH]
    h.check()


def test_a_replay_over_a_state_ahead_of_the_views_redoes_every_view() -> None:
    h = Harness()
    small_catalog(h)
    p = h.state.store("products")[10]
    v2 = Change("products", 10, after=dict(p, name="renamed"))
    v3 = Change("products", 10, after=dict(p, name="renamed", price=Decimal("2.00")))
    # the state holds v2 and v3, the views hold neither (crash before the sink write)
    h.pipeline.apply(v2)
    h.pipeline.apply(v3)
    h.pipeline.take_batch()
    h.pipeline.commit()
    h.restart()
    # applied again with pruning, v2 over v3 would flip only "price" and miss the rename
    h.redo(v2)
    assert h.view(PPROD)[10]["name"] == "renamed"  # the current state, not v2's step back
    h.redo(v3)
    h.check()


def test_a_replay_applied_without_pruning_redoes_every_view() -> None:
    h = Harness()
    small_catalog(h)
    p = h.state.store("products")[10]
    h.pipeline.apply(Change("products", 10, after=dict(p, name="renamed")))
    h.pipeline.take_batch()  # lost
    affected = h.apply(Change("products", 10, after=dict(p, name="renamed", price=Decimal(2))),
                       prune=False)
    assert affected.changed is None and written_to(affected) == [ORDER, PPROD, PBATCH]
    h.check()


def test_affected_ignores_before_image_and_replays_recompute_same_keys() -> None:
    h = Harness()
    small_catalog(h)
    bogus = prod(11, 4, 2)
    change = Change("products", 11, after=prod(11, 3, None), before=bogus, op="u")
    first = h.apply(change)
    again = h.apply(change)
    assert first.keys == {"products": {11}, "batches": {110}}
    assert again.keys == first.keys
    assert again.changed is None  # nothing changed: a duplicate is never pruned
    assert h.engine.indexes()[CATEGORY_PRODUCTS][3] == {10, 11}
    assert 11 not in h.engine.indexes()[CATEGORY_PRODUCTS].get(4, frozenset())
    h.check()


def test_indexes_keyed_by_missing_referenced_rows() -> None:
    h = Harness()
    h.put("batches", batch(1, 7))
    h.put("products", prod(8, 99, 5))
    h.put("categories", cat(3, 42, "c"))
    idx = h.engine.indexes()
    assert set(idx) == {CHILDREN, CATEGORY_PRODUCTS, WARRANTY_PRODUCTS, PRODUCT_BATCHES}
    assert idx[PRODUCT_BATCHES] == {7: {1}}
    assert idx[CATEGORY_PRODUCTS] == {99: {8}}
    assert idx[WARRANTY_PRODUCTS] == {5: {8}}
    assert idx[CHILDREN] == {42: {3}}
    h.check()


def test_a_null_optional_reference_is_in_no_index() -> None:
    h = Harness()
    h.put("products", prod(8, 1, None))
    assert h.engine.indexes()[WARRANTY_PRODUCTS] == {}
    h.put("products", prod(8, 1, 3))
    h.put("products", prod(8, 1, None))
    assert h.engine.indexes()[WARRANTY_PRODUCTS] == {}


def test_delete_of_missing_row_is_a_noop() -> None:
    h = Harness()
    for table in ("categories", "warranty_types", "products", "batches"):
        h.delete(table, 5, tombstone=True)
    assert h.state == SourceState(GRAPH)
    h.check()


def test_rows_are_stored_as_fresh_dicts_never_mutated() -> None:
    h = Harness()
    row = cat(1, None, "A")
    h.put("categories", row)
    stored = h.state.store("categories")[1]
    assert stored == row and stored is not row
    h.put("categories", cat(1, None, "B"))
    assert stored["name"] == "A"  # the old dict was replaced, not edited
    assert h.state.store("categories")[1]["name"] == "B"


def test_fan_out_does_not_scan_unrelated_products() -> None:
    h = Harness()
    h.put("categories", cat(1, None, "A"))
    h.put("categories", cat(2, None, "B"))
    for i in range(1000):
        h.put("products", prod(i, 2))
    affected = h.put("categories", cat(1, None, "A2"))
    assert affected.of("products") == frozenset()
    assert affected.keys == {"categories": {1}}


# --- named hard cases ----------------------------------------------------------------------


def test_subtree_rename_rewrites_every_path_below() -> None:
    h = Harness()
    small_catalog(h)
    h.put("categories", cat(1, None, "Top"))
    assert paths(h) == {10: "Top > Mid > Leaf", 11: "Top > Mid", 12: "Other"}
    assert h.view(PBATCH)[101]["category_path"] == "Top > Mid > Leaf"
    assert h.view(PBATCH)[110]["category_path"] == "Top > Mid"
    h.check()


def test_subtree_move_rewrites_paths_and_code_unchanged() -> None:
    h = Harness()
    small_catalog(h)
    h.put("categories", cat(2, 4, "Mid"))
    assert paths(h) == {10: "Other > Mid > Leaf", 11: "Other > Mid", 12: "Other"}
    assert h.view(PBATCH)[100]["category_path"] == "Other > Mid > Leaf"
    assert h.view(PPROD)[10]["category_code"] == "C3"
    h.check()


def test_batch_before_product_before_category() -> None:
    h = Harness()
    h.put("batches", batch(1, 10))
    h.put("products", prod(10, 3))
    assert h.view(PBATCH) == {} and h.view(ORDER) == {}
    h.put("categories", cat(3, 2, "Leaf"))
    assert h.view(ORDER) == {}  # parent 2 still missing
    h.put("categories", cat(2, None, "Root"))
    assert h.view(PBATCH)[1]["category_path"] == "Root > Leaf"
    assert set(h.view(ORDER)) == set(h.view(PPROD)) == {10}
    h.check()


def test_product_moving_category() -> None:
    h = Harness()
    small_catalog(h)
    h.put("products", prod(10, 4, 1))
    assert h.view(ORDER)[10]["category_path"] == "Other"
    assert h.view(ORDER)[10]["category_name"] == "Other"
    assert h.view(PPROD)[10]["category_code"] == "C4"
    assert h.view(PBATCH)[100]["category_path"] == "Other"
    h.put("categories", cat(3, 2, "Leaf!"))  # its old category no longer reaches it
    assert h.view(ORDER)[10]["category_path"] == "Other"
    h.put("products", prod(10, 77, 1))  # to a category that does not exist (yet)
    assert 10 not in h.view(ORDER) and 100 not in h.view(PBATCH)
    h.put("categories", cat(77, 4, "New"))
    assert h.view(PBATCH)[100]["category_path"] == "Other > New"
    h.check()


def test_warranty_change_fans_out_to_batches() -> None:
    h = Harness()
    small_catalog(h)
    h.put("warranty_types", wt(1, "Basic+", 24))
    assert h.view(ORDER)[10]["warranty_name"] == "Basic+"
    assert {h.view(PBATCH)[b]["warranty_months"] for b in (100, 101)} == {24}
    h.delete("warranty_types", 1, tombstone=True)
    assert h.view(ORDER)[10]["warranty_name"] is None
    assert h.view(PBATCH)[100]["warranty_months"] is None
    h.put("warranty_types", wt(1, "Back", 3))
    assert h.view(PBATCH)[101]["warranty_months"] == 3
    h.put("products", prod(10, 3, 2))  # switch warranty
    assert h.view(PBATCH)[101]["warranty_months"] == 36
    h.put("warranty_types", wt(1, "Back", 4))
    assert h.view(PBATCH)[101]["warranty_months"] == 36
    h.check()


@pytest.mark.parametrize(
    "order", list(itertools.permutations(["batches", "products", "categories"]))
)
def test_deletes_in_every_order(order: tuple[str, ...]) -> None:
    h = Harness()
    small_catalog(h)
    keys: dict[str, list[int]] = {
        "batches": [100, 101, 110, 120],
        "products": [10, 11, 12],
        "categories": [3, 1, 2, 4],
    }
    for table in order:
        for key in keys[table]:
            h.delete(table, key, tombstone=key % 2 == 0)
            h.check()
    assert h.sinks == {ORDER: {}, PPROD: {}, PBATCH: {}}
    for table in ("products", "batches", "categories"):
        assert not dict(h.state.store(table))


def test_deleting_middle_category_hides_subtree_and_reinsert_restores() -> None:
    h = Harness()
    small_catalog(h)
    h.delete("categories", 2)
    assert set(h.view(ORDER)) == {12} and set(h.view(PBATCH)) == {120}
    h.put("categories", cat(2, 1, "Mid"), op="c")
    assert paths(h) == {10: "Root > Mid > Leaf", 11: "Root > Mid", 12: "Other"}
    h.check()


def test_tombstones_are_harmless_in_any_position() -> None:
    h = Harness()
    small_catalog(h)
    h.delete("products", 10, tombstone=True)
    h.apply(Change("products", 10, after=None, op="t"))  # replayed tombstone
    h.apply(Change("products", 999, after=None, op="t"))  # tombstone of a never-seen key
    assert 10 not in h.view(ORDER) and {100, 101} & set(h.view(PBATCH)) == set()
    h.put("products", prod(10, 3, 1), op="c")  # the id comes back
    assert {100, 101} <= set(h.view(PBATCH))
    h.check()


def test_snapshot_reads_again_after_restart_are_harmless() -> None:
    h = Harness()
    small_catalog(h)
    h.put("categories", cat(1, None, "Renamed"))
    before = {k: dict(v) for k, v in h.sinks.items()}
    h.restart()
    # a re-snapshot delivers every current row again as 'r'
    for table in ("batches", "products", "categories", "warranty_types"):
        for row in list(h.state.store(table).values()):
            h.put(table, dict(row), op="r")
    assert h.sinks == before
    h.check()


def test_category_cycle_terminates_hides_then_recovers() -> None:
    h = Harness()
    small_catalog(h)
    h.put("categories", cat(1, 3, "Root"))  # 1 -> 3 -> 2 -> 1
    assert set(h.view(ORDER)) == {12}
    assert set(h.view(PBATCH)) == {120}
    h.check()
    h.put("categories", cat(3, 2, "Leaf2"))  # rename inside the cycle: still hidden
    assert set(h.view(ORDER)) == {12}
    h.put("categories", cat(1, None, "Root"))  # break the cycle
    assert paths(h) == {10: "Root > Mid > Leaf2", 11: "Root > Mid", 12: "Other"}
    h.check()


def test_self_parent_category() -> None:
    h = Harness()
    h.put("categories", cat(1, 1, "Self"))
    h.put("products", prod(5, 1))
    affected = h.put("categories", cat(1, 1, "Self2"))
    assert affected.of("products") == {5} and affected.of("categories") == {1}
    assert h.view(ORDER) == {}
    h.put("categories", cat(1, None, "Self"))
    assert paths(h) == {5: "Self"}
    h.check()


def test_primary_key_change_is_delete_plus_insert() -> None:
    h = Harness()
    small_catalog(h)
    # products.id 12 -> 13 (Debezium: delete 12 + tombstone, create 13), batch 120 follows
    h.delete("products", 12, tombstone=True)
    h.put("products", prod(13, 4, 2), op="c")
    assert 12 not in h.view(ORDER) and 13 in h.view(ORDER)
    assert 120 not in h.view(PBATCH)
    h.put("batches", batch(120, 13))
    assert h.view(PBATCH)[120]["sku"] == "SKU-13"
    # categories.id 4 -> 5 with the product repointed
    h.delete("categories", 4)
    h.put("categories", cat(5, None, "Other"), op="c")
    h.put("products", prod(13, 5, 2))
    assert h.view(ORDER)[13]["category_path"] == "Other"
    assert h.view(PPROD)[13]["category_code"] == "C5"
    # a parent's key change: its children are orphans until repointed
    h.delete("categories", 2)
    h.put("categories", cat(6, 1, "Mid"), op="c")
    assert 10 not in h.view(ORDER)
    h.put("categories", cat(3, 6, "Leaf"))
    assert h.view(ORDER)[10]["category_path"] == "Root > Mid > Leaf"
    h.check()


def test_ids_beyond_32_bits() -> None:
    h = Harness()
    c, w, p, b = 2**31 + 1, 2**40, 2**53 + 5, 2**62
    h.put("batches", batch(b, p))
    h.put("products", prod(p, c, w))
    h.put("warranty_types", wt(w, "W", 1))
    h.put("categories", cat(c, None, "Big"))
    assert h.view(PBATCH)[b]["product_id"] == p
    assert h.view(ORDER)[p]["category_id"] == c
    assert h.view(ORDER)[p]["warranty_months"] == 1
    h.check()


def test_restart_rebuilds_equal_indexes_and_continues() -> None:
    h = Harness()
    small_catalog(h)
    h.put("categories", cat(2, 4, "Mid"))
    old = h.engine.indexes()
    h.restart()
    assert h.engine.indexes() == old
    h.put("categories", cat(4, None, "Other2"))
    assert paths(h)[10] == "Other2 > Mid > Leaf"
    h.check()


def test_restart_on_rocksdb_rebuilds_equal_indexes_and_continues(tmp_path: Path) -> None:
    store = RocksStore(tmp_path, GRAPH)
    h = Harness(store=store)
    small_catalog(h)
    h.put("categories", cat(2, 4, "Mid"))
    h.put("batches", batch(130, 99))  # an index entry keyed by a missing row
    old = h.engine.indexes()
    sinks = {k: dict(v) for k, v in h.sinks.items()}
    store.close()
    h = Harness(store=RocksStore(tmp_path, GRAPH))
    h.sinks = sinks
    try:
        assert h.engine.indexes() == old
        h.engine.rebuild_indexes()
        assert h.engine.indexes() == old
        h.put("categories", cat(4, None, "Other2"))
        assert paths(h)[10] == "Other2 > Mid > Leaf"
        h.put("products", prod(99, 1))
        assert h.view(PBATCH)[130]["category_path"] == "Root"
        h.check()
    finally:
        assert h.store is not None
        h.store.close()


# --- property: random histories, any interleaving, replays, restarts -----------------------

CAT_IDS = [1, 2, 3, 4, 5, 6, BIG]
WT_IDS = [1, 2, 3]
PROD_IDS = [1, 2, 3, 4, 5, 6, 7, 8, BIG + 1]
BATCH_IDS = [*range(1, 11), 2**41]
NAMES = st.sampled_from(["a", "b", "c"])

SPACE = Space(
    GRAPH,
    keys={"categories": CAT_IDS, "warranty_types": WT_IDS, "products": PROD_IDS,
          "batches": BATCH_IDS},
    # references lean towards the low ids, which the key lists favour too
    dangling={"categories": 99, "warranty_types": 4, "products": 98, "batches": 97},
    values={
        "categories": {"code": st.sampled_from(["x", "y"]), "name": NAMES},
        "warranty_types": {"name": NAMES, "months": st.sampled_from([0, 12, 24])},
        "products": {
            "sku": st.sampled_from(["s1", "s2"]),
            "name": NAMES,
            "unit": st.sampled_from(["pcs", "kg"]),
            "price": st.sampled_from([Decimal("1.00"), Decimal("2.50")]),
            "status": st.sampled_from(["active", "retired"]),
        },
        "batches": {
            "batch_no": NAMES,
            "manufactured_on": st.none() | st.just(date(2024, 5, 1)),
            "expires_on": st.none() | st.just(date(2026, 1, 31)),
        },
    },
    min_keys={"categories": 3, "warranty_types": 1, "products": 2, "batches": 2},
)

PROPERTY = settings(
    max_examples=PROPERTY_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEWER = settings(PROPERTY, max_examples=max(10, PROPERTY_EXAMPLES // 4))


@PROPERTY
@given(history=histories(SPACE), data=st.data())
def test_views_converge_under_any_interleaving_replay_and_restart(
    history: History, data: st.DataObject
) -> None:
    converge(Harness(), history, data)


@FEWER
@given(history=histories(SPACE), data=st.data())
def test_views_converge_on_the_rocksdb_store(history: History, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = RocksStore(Path(tmp), GRAPH)
        try:
            converge(Harness(store=store), history, data)
        finally:
            store.close()
