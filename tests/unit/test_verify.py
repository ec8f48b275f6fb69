"""Tests of verify's pure parts: key ranges (integer and string keys, per database), the rows
a chunk of grain rows reaches (read through a fake ``fetch``), and the exact key filter. The
SQL itself runs against real databases only (integration tests)."""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from datetime import date
from decimal import Decimal
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.graph import Key
from app.project import project_many
from app.state import SourceState
from app.verify import (
    Bound,
    Row,
    Verifier,
    _Range,
    _show,
    _where,
    exact,
    exact_rows,
    follows,
    pages,
    reached,
)
from app.views import ViewDef, bundled_definitions, parse_definitions, view_named

# ------------------------------------------------------------------ key ranges


def test_an_integer_key_range_is_plain_sql() -> None:
    assert _where("product_id", _Range(None, None)) == ("", {})
    assert _where("product_id", _Range(None, 9)) == (" WHERE product_id <= :hi", {"hi": 9})
    assert _where("product_id", _Range(5, 9), "int", "postgresql") == (
        " WHERE product_id > :lo AND product_id <= :hi", {"lo": 5, "hi": 9})


def test_a_string_key_range_compares_bytes_on_each_database() -> None:
    assert _where("sku", _Range("a", "b"), "string", "postgresql") == (
        ' WHERE sku COLLATE "C" > :lo COLLATE "C" AND sku COLLATE "C" <= :hi COLLATE "C"',
        {"lo": "a", "hi": "b"})
    binary = "CAST(CONVERT({} USING utf8mb4) AS BINARY)"
    for dialect in ("mariadb", "mysql"):
        assert _where("sku", _Range("a", None), "string", dialect) == (
            f" WHERE {binary.format('sku')} > {binary.format(':lo')}", {"lo": "a"})
    assert exact("`order`", "string", "mysql") == "CAST(CONVERT(`order` USING utf8mb4) AS BINARY)"
    assert exact("id", "int", "sqlite") == "id"
    with pytest.raises(ValueError, match="sqlite"):
        exact("sku", "string", "sqlite")


_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)  # encodable


@given(st.lists(_TEXT, min_size=2, max_size=30))
def test_python_orders_strings_as_their_utf8_bytes(keys: list[str]) -> None:
    """What the ranges rest on: the databases order by UTF-8 bytes, Python by code points,
    and the two agree (so a bound read from one side means the same on the other)."""
    assert sorted(keys) == sorted(keys, key=lambda k: k.encode("utf-8"))


def _fake_pages(keys: list[Key], chunk: int) -> list[tuple[_Range, list[Row]]]:
    """:func:`pages` over a table of ``keys``, read as the SQL does (key order, above the
    last key, at most ``chunk`` rows)."""
    table = sorted(keys)

    def page(last: Bound) -> list[Row]:
        above = [k for k in table if last is None or k > last]  # type: ignore[operator]
        return [{"k": k} for k in above[:chunk]]

    return list(pages(page, "k", chunk))


def _holds(r: _Range, key: Key) -> bool:
    """``lo < key <= hi``, as :func:`_where` asks the database."""
    return ((r.lo is None or key > r.lo)  # type: ignore[operator]
            and (r.hi is None or key <= r.hi))  # type: ignore[operator]


@given(st.one_of(
    st.tuples(st.sets(st.integers(-50, 50), max_size=40), st.lists(st.integers(-60, 60))),
    st.tuples(st.sets(_TEXT, max_size=40), st.lists(_TEXT))),
    st.integers(1, 12))
def test_the_ranges_cover_every_key_of_either_side_once(
        sides: tuple[set[Any], list[Any]], chunk: int) -> None:
    source, consumer = sides
    ranges = _fake_pages(list(source), chunk)
    assert ranges[0][0].lo is None and ranges[-1][0].hi is None
    for (before, _), (after, _) in pairwise(ranges):
        assert before.hi is not None and after.lo == before.hi
    assert sorted(r["k"] for _, rows in ranges for r in rows) == sorted(source)
    for r, rows in ranges:
        assert all(_holds(r, row["k"]) for row in rows)
    for key in [*source, *consumer]:  # a view row, extra or not: in exactly one range
        assert sum(_holds(r, key) for r, _ in ranges) == 1


def test_pages_of_an_empty_table_are_one_unbounded_range() -> None:
    assert _fake_pages([], 5) == [(_Range(None, None), [])]


def test_rows_read_by_keys_are_kept_only_for_the_exact_keys() -> None:
    # what a case-insensitive, space-padding ``IN ('acme', 'b')`` returns
    rows = [{"k": "ACME"}, {"k": "acme"}, {"k": "b "}, {"k": "b"}]
    assert exact_rows(rows, "k", ["acme", "b"]) == {"acme": {"k": "acme"}, "b": {"k": "b"}}
    assert exact_rows([{"k": 1}, {"k": 2}], "k", [2, 3]) == {2: {"k": 2}}


def test_a_string_key_shows_quoted_in_messages() -> None:
    assert _show(17) == "17"
    assert _show("acme ") == "'acme '"


# ------------------------------------------------------------------ reached rows


class FakeSource:
    """The Product DB as dicts: ``fetch`` and ``whole`` as verify reads it, with a log."""

    def __init__(self, tables: dict[str, dict[Key, Row]], keys: dict[str, str],
                 lookalikes: bool = False) -> None:
        self.tables, self.keys, self.lookalikes = tables, keys, lookalikes
        self.fetched: list[tuple[str, list[Key]]] = []
        self.wholes: list[str] = []

    def fetch(self, table: str, keys: list[Key]) -> Iterable[Row]:
        self.fetched.append((table, list(keys)))
        want = {str(k).casefold() if self.lookalikes else k for k in keys}
        return [r for k, r in self.tables[table].items()
                if (str(k).casefold() if self.lookalikes else k) in want]

    def whole(self, table: str) -> MutableMapping[Key, Row]:
        self.wholes.append(table)
        return self.tables[table]

    def reach(self, view: ViewDef, grain: dict[Key, Row]) -> dict[str, MutableMapping[Key, Row]]:
        return reached(view, grain, self.fetch, self.whole)


def _demo() -> FakeSource:
    cats: dict[Key, Row] = {1: {"id": 1, "parent_id": None, "code": "T", "name": "Tools"},
            2: {"id": 2, "parent_id": 1, "code": "S", "name": "Saws"},
            3: {"id": 3, "parent_id": 9, "code": "O", "name": "Orphan"}}
    wts: dict[Key, Row] = {7: {"id": 7, "name": "2y", "months": 24},
                           8: {"id": 8, "name": "5y", "months": 60}}

    def prod(i: int, cat: int, wt: int | None) -> Row:
        return {"id": i, "sku": f"S{i}", "name": f"p{i}", "category_id": cat,
                "warranty_type_id": wt, "unit": "pcs", "price": Decimal("1.50"),
                "status": "active"}

    prods: dict[Key, Row] = {10: prod(10, 2, 7), 11: prod(11, 3, None), 12: prod(12, 1, 8)}
    return FakeSource({"categories": cats, "warranty_types": wts, "products": prods,
                       "batches": {}}, {t: "id" for t in ("categories", "warranty_types",
                                                         "products", "batches")})


def _batch(i: int, product: int) -> Row:
    return {"id": i, "product_id": product, "batch_no": f"B{i}",
            "manufactured_on": date(2024, 1, 1), "expires_on": None}


def test_a_batch_chunk_reads_its_products_their_warranties_and_the_categories_whole() -> None:
    defs = bundled_definitions()
    view = view_named("purchase.batch_view", defs.views)
    db = _demo()
    grain: dict[Key, Row] = {1: _batch(1, 10), 2: _batch(2, 11), 3: _batch(3, 99), 4: _batch(4, 10)}
    tables = db.reach(view, grain)
    assert db.fetched == [("products", [10, 11, 99]), ("warranty_types", [7])]
    assert db.wholes == ["categories"]
    assert set(tables) == {"batches", "products", "categories", "warranty_types"}
    rows = project_many(SourceState(defs.graph, tables), view, grain).upserts
    assert sorted(rows) == [1, 4]  # 2: its category has no path; 3: no such product
    assert rows[1]["category_path"] == "Tools > Saws" and rows[1]["warranty_months"] == 24


def test_a_product_chunk_reads_only_the_tables_its_view_reads() -> None:
    defs = bundled_definitions()
    db = _demo()
    grain = dict(db.tables["products"])
    db.reach(view_named("purchase.product_view", defs.views), grain)
    assert db.fetched == [] and db.wholes == ["categories"]  # no warranty column
    db.reach(view_named("order.product_view", defs.views), grain)
    assert db.fetched == [("warranty_types", [7, 8])]


_SHOP: dict[str, Any] = {
    "sources": {
        "countries": {"key": "iso", "key_type": "string", "columns": ["cname"]},
        "makers": {"key": "mk", "key_type": "string", "columns": ["mname"]},
        "notes": {"key": "nid", "columns": ["text"]},
        "brands": {"key": "code", "key_type": "string", "columns": ["label", "cc", "mk"],
                   "references": {
                       "country": {"column": "cc", "to": "countries", "required": False},
                       "maker": {"column": "mk", "to": "makers"}}},
        "nodes": {"key": "slug", "key_type": "string", "columns": ["up", "title"],
                  "hierarchy": {"parent": "up", "separator": "/",
                                "paths": {"trail": "title"}}},
        "items": {"key": "sku", "key_type": "string",
                  "columns": ["brand_code", "node", "note"],
                  "references": {"brand": {"column": "brand_code", "to": "brands"},
                                 "node": {"column": "node", "to": "nodes", "required": False},
                                 "note": {"column": "note", "to": "notes", "required": False}}},
        "variants": {"key": "vid", "columns": ["item_sku", "size"],
                     "references": {"item": {"column": "item_sku", "to": "items"}}},
    },
    "views": {"shop": {
        "variant_view": {"grain": "variants", "key": "vid", "columns": [
            {"name": "vid", "source": "vid", "type": "bigint"},
            {"name": "size", "source": "size", "type": "varchar(8)"},
            {"name": "country", "source": "item.brand.country.cname", "type": "text",
             "nullable": True},
            {"name": "trail", "source": "item.node.trail", "type": "text", "nullable": True}]},
        "node_view": {"grain": "nodes", "key": "slug", "columns": [
            {"name": "slug", "source": "slug", "type": "varchar(64)"},
            {"name": "trail", "source": "trail", "type": "text"}]}}},
}


def _shop(lookalikes: bool = False) -> FakeSource:
    t: dict[str, dict[Key, Row]] = {
        "countries": {"de": {"iso": "de", "cname": "Germany"}},
        "makers": {"m1": {"mk": "m1", "mname": "M"}, "M2": {"mk": "M2", "mname": "N"}},
        "notes": {5: {"nid": 5, "text": "n"}},
        "brands": {"acme": {"code": "acme", "label": "Acme", "cc": "de", "mk": "m1"},
                   "ACME": {"code": "ACME", "label": "Loud", "cc": "fr", "mk": "m1"},
                   "zed": {"code": "zed", "label": "Zed", "cc": None, "mk": "m2"}},
        "nodes": {"r": {"slug": "r", "up": None, "title": "root"},
                  "k": {"slug": "k", "up": "r", "title": "kids"}},
        "items": {"i1": {"sku": "i1", "brand_code": "acme", "node": "k", "note": 5},
                  "i2": {"sku": "i2", "brand_code": "zed", "node": None, "note": None},
                  "i3": {"sku": "i3", "brand_code": "ACME", "node": "gone", "note": 5}},
        "variants": {},
    }
    keys = {name: spec["key"] for name, spec in _SHOP["sources"].items()}
    return FakeSource(t, keys, lookalikes)


def test_a_chain_is_read_hop_by_hop_with_every_required_reference() -> None:
    defs = parse_definitions(_SHOP)
    view = view_named("shop.variant_view", defs.views)
    assert {t: [r.name for r in refs] for t, refs in follows(view).items()} == {
        "brands": ["country", "maker"], "items": ["brand", "node"], "variants": ["item"]}
    db = _shop()
    grain: dict[Key, Row] = {v: {"vid": v, "item_sku": s, "size": "M"}
                             for v, s in [(1, "i1"), (2, "i2"), (3, "i3"), (4, "nope")]}
    tables = db.reach(view, grain)
    # the maker (required: visibility) is read though no column reads it; the note is not
    assert sorted(db.fetched) == [("brands", ["ACME", "acme", "zed"]),
                                  ("countries", ["de", "fr"]),
                                  ("items", ["i1", "i2", "i3", "nope"]),
                                  ("makers", ["m1", "m2"])]
    assert db.wholes == ["nodes"]
    assert [t for t, _ in db.fetched].index("items") < [t for t, _ in db.fetched].index("brands")
    rows = project_many(SourceState(defs.graph, tables), view, grain).upserts
    assert rows == {
        1: {"vid": 1, "size": "M", "country": "Germany", "trail": "root/kids"},
        3: {"vid": 3, "size": "M", "country": None, "trail": None},  # dangling optionals
    }  # 2: its brand's maker "m2" is not "M2"; 4: no such item


def test_lookalike_keys_a_collation_returns_resolve_nothing() -> None:
    """A case-insensitive ``IN`` returns ``M2`` for ``m2`` and ``ACME`` for ``acme``: kept
    out, so a reference resolves only to its exact key."""
    defs = parse_definitions(_SHOP)
    view = view_named("shop.variant_view", defs.views)
    db = _shop(lookalikes=True)
    grain: dict[Key, Row] = {1: {"vid": 1, "item_sku": "i1", "size": "S"},
                             2: {"vid": 2, "item_sku": "i2", "size": "S"}}
    tables = db.reach(view, grain)
    assert set(tables["brands"]) == {"acme", "zed"} and set(tables["makers"]) == {"m1"}
    assert sorted(project_many(SourceState(defs.graph, tables), view, grain).upserts) == [1]


def test_a_hierarchy_grain_projects_the_chunk_over_its_whole_table() -> None:
    defs = parse_definitions(_SHOP)
    view = view_named("shop.node_view", defs.views)
    db = _shop()
    chunk: dict[Key, Row] = {"k": {"slug": "k", "up": "r", "title": "KIDS"},  # newer
                             "x": {"slug": "x", "up": "k", "title": "new"}}
    tables = db.reach(view, chunk)
    assert db.fetched == [] and db.wholes == ["nodes"]
    rows = project_many(SourceState(defs.graph, tables), view, chunk).upserts
    assert rows == {"k": {"slug": "k", "trail": "root/KIDS"},
                    "x": {"slug": "x", "trail": "root/KIDS/new"}}
    assert db.tables["nodes"]["k"]["title"] == "kids"  # the whole table is not written


def test_differing_rows_are_missing_extra_or_different() -> None:
    view = view_named("purchase.product_view", bundled_definitions().views)
    want: dict[Key, Row] = {"a": {"product_id": 1, "sku": "x"}, "b": {"product_id": 2, "sku": "y"},
            "c": {"product_id": 3, "sku": "z"}}
    got: dict[Key, Row] = {"b": {"product_id": 2, "sku": "y"}, "c": {"product_id": 3, "sku": "Z"},
           "d": {"product_id": 4, "sku": "w"}}
    assert Verifier._differing(view, want, got) == {
        "a": (want["a"], None), "c": (want["c"], got["c"]), "d": (None, got["d"])}
