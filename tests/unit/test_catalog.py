"""A second, different schema, declared in the test: an e-commerce catalogue with string
primary keys (countries by ISO code, brands by code, items by item number), a hierarchy
under other names with another separator and two paths (item groups), a three-hop chain
(variants -> items -> brands -> countries), a child table as a grain (variants), optional
references (an item's supplier and origin, a supplier's country), two references to one
table told apart by their names, and a hierarchy table with a required reference of its own.

Nothing of the demo is special: the join engine, the projection and the state stores must
keep every view equal to the generic reference join (``tests.unit.reference``) whatever
the order of the changes, replays, restarts and crashes, on both stores.
"""

from __future__ import annotations

import tempfile
import tomllib
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.changes import Change
from app.join import Affected
from app.project import project
from app.state import RocksStore, StateStore
from app.views import ViewFileError, load_definitions, parse_definitions, view_named
from tests.unit.harness import (
    Harness,
    History,
    Space,
    assert_indexes_rebuildable,
    converge,
    generic_space,
    histories,
)
from tests.unit.test_join import FEWER, PROPERTY

CATALOG_TOML = """
[sources.countries]
key = "iso"
key_type = "string"
columns = ["name", "region"]

[sources.brands]
key = "code"
key_type = "string"
columns = ["name", "country_iso"]
references.country = { column = "country_iso", to = "countries" }

[sources.suppliers]
key = "sid"
columns = ["name", "country_iso"]
references.country = { column = "country_iso", to = "countries", required = false }

[sources.item_groups]
key = "gid"
columns = ["parent_gid", "label", "slug", "market_iso"]
references.market = { column = "market_iso", to = "countries" }

[sources.item_groups.hierarchy]
parent = "parent_gid"
separator = " / "
paths = { trail = "label", slugs = "slug" }

[sources.items]
key = "item_no"
key_type = "string"
columns = ["title", "brand_code", "group_gid", "supplier_sid", "made_in", "launched"]
references.brand = { column = "brand_code", to = "brands" }
references.group = { column = "group_gid", to = "item_groups" }
references.supplier = { column = "supplier_sid", to = "suppliers", required = false }
references.origin = { column = "made_in", to = "countries", required = false }

[sources.variants]
key = "vid"
columns = ["item_no", "color", "price", "in_stock"]
references.item = { column = "item_no", to = "items" }

[views.shop.variant_view]
grain = "variants"
key = "vid"
columns = [
  { name = "vid", source = "vid", type = "bigint" },
  { name = "item_no", source = "item_no", type = "varchar(32)" },
  { name = "color", source = "color", type = "varchar(16)" },
  { name = "price", source = "price", type = "numeric(10,2)" },
  { name = "in_stock", source = "in_stock", type = "boolean" },
  { name = "title", source = "item.title", type = "text" },
  { name = "brand", source = "item.brand.name", type = "text" },
  { name = "brand_country", source = "item.brand.country.name", type = "text" },
  { name = "trail", source = "item.group.trail", type = "text" },
  { name = "supplier", source = "item.supplier.name", type = "text", nullable = true },
  { name = "supplier_country", source = "item.supplier.country.name", type = "text", nullable = true },
  { name = "origin_region", source = "item.origin.region", type = "text", nullable = true },
]

[views.shop.item_view]
grain = "items"
key = "item_no"
columns = [
  { name = "item_no", source = "item_no", type = "varchar(32)" },
  { name = "title", source = "title", type = "text" },
  { name = "brand_code", source = "brand_code", type = "varchar(32)" },
  { name = "brand", source = "brand.name", type = "text" },
  { name = "slugs", source = "group.slugs", type = "text" },
  { name = "market", source = "group.market.name", type = "text" },
  { name = "supplier", source = "supplier.name", type = "text", nullable = true },
  { name = "launched", source = "launched", type = "date", nullable = true },
]

[views.catalog.brand_view]
grain = "brands"
key = "code"
columns = [
  { name = "code", source = "code", type = "varchar(32)" },
  { name = "name", source = "name", type = "text" },
  { name = "country", source = "country.name", type = "text" },
  { name = "region", source = "country.region", type = "text" },
]

[views.catalog.brand_codes]
grain = "brands"
key = "code"
columns = [{ name = "code", source = "code", type = "varchar(32)" }]

[views.catalog.group_view]
grain = "item_groups"
key = "gid"
columns = [
  { name = "gid", source = "gid", type = "bigint" },
  { name = "label", source = "label", type = "text" },
  { name = "trail", source = "trail", type = "text" },
  { name = "slugs", source = "slugs", type = "text" },
  { name = "market", source = "market.name", type = "text" },
]

[views.catalog.supplier_view]
grain = "suppliers"
key = "sid"
columns = [
  { name = "sid", source = "sid", type = "bigint" },
  { name = "name", source = "name", type = "text" },
  { name = "country", source = "country.name", type = "text", nullable = true },
]
"""  # noqa: E501

CATALOG = parse_definitions(tomllib.loads(CATALOG_TOML), "catalog.toml")
GRAPH = CATALOG.graph
VARIANTS, ITEMS = "shop.variant_view", "shop.item_view"
BRANDS, CODES, GROUPS, SUPPLIERS = ("catalog.brand_view", "catalog.brand_codes",
                                    "catalog.group_view", "catalog.supplier_view")


def view(name: str) -> Any:
    return view_named(name, CATALOG.views)


# --- rows ----------------------------------------------------------------------------------


def country(iso: str, name: str, region: str = "EU") -> dict[str, Any]:
    return {"iso": iso, "name": name, "region": region}


def brand(code: str, name: str, iso: str | None) -> dict[str, Any]:
    return {"code": code, "name": name, "country_iso": iso}


def supplier(sid: int, name: str, iso: str | None = None) -> dict[str, Any]:
    return {"sid": sid, "name": name, "country_iso": iso}


def group(gid: int, parent: int | None, label: str, market: str | None = "de",
          slug: str | None = None) -> dict[str, Any]:
    return {"gid": gid, "parent_gid": parent, "label": label, "slug": slug or label.lower(),
            "market_iso": market}


def item(no: str, brand_code: str | None, gid: int | None, sid: int | None = None,
         made_in: str | None = None, title: str | None = None) -> dict[str, Any]:
    return {"item_no": no, "title": title or f"title {no}", "brand_code": brand_code,
            "group_gid": gid, "supplier_sid": sid, "made_in": made_in,
            "launched": date(2025, 3, 1)}


def variant(vid: int, no: str | None, color: str = "red") -> dict[str, Any]:
    return {"vid": vid, "item_no": no, "color": color, "price": Decimal("19.90"),
            "in_stock": True}


def harness(store: StateStore | None = None) -> Harness:
    return Harness(CATALOG, store=store)


def shop(h: Harness) -> None:
    """Countries de, DE (another key), fr; brands acme (de) and ACME (fr); groups
    Home(1) / Kitchen(2) / Knives(3), Garden(4); items I-1 (acme, Knives, supplier 1),
    i-1 (ACME, Garden), I-2 (acme, Kitchen, made in fr); variants 10, 11 of I-1, 20 of
    i-1, 30 of I-2."""
    for row in (country("de", "Germany"), country("DE", "Deutschland"),
                country("fr", "France")):
        h.put("countries", row, op="r")
    h.put("brands", brand("acme", "Acme", "de"), op="r")
    h.put("brands", brand("ACME", "ACME Corp", "fr"), op="r")
    h.put("suppliers", supplier(1, "Forge", "DE"), op="r")
    for row in (group(1, None, "Home"), group(2, 1, "Kitchen"), group(3, 2, "Knives"),
                group(4, None, "Garden", market="fr")):
        h.put("item_groups", row, op="r")
    h.put("items", item("I-1", "acme", 3, sid=1), op="r")
    h.put("items", item("i-1", "ACME", 4), op="r")
    h.put("items", item("I-2", "acme", 2, made_in="fr"), op="r")
    for row in (variant(10, "I-1"), variant(11, "I-1", "blue"), variant(20, "i-1"),
                variant(30, "I-2")):
        h.put("variants", row, op="r")
    h.check()


# --- the declared graph and the views over it ----------------------------------------------


def test_the_graph_as_declared() -> None:
    assert GRAPH.names == ("countries", "brands", "suppliers", "item_groups", "items",
                           "variants")
    assert {s.name: s.key_type for s in GRAPH.sources} == {
        "countries": "string", "brands": "string", "suppliers": "int", "item_groups": "int",
        "items": "string", "variants": "int"}
    assert set(GRAPH.index_columns) == {
        "brands.country", "suppliers.country", "item_groups.market", "item_groups^children",
        "items.brand", "items.group", "items.supplier", "items.origin", "variants.item"}
    assert [r.index for r in GRAPH.referrers("countries")] == [
        "brands.country", "suppliers.country", "item_groups.market", "items.origin"]
    assert {v.name: v.key_type for v in CATALOG.views} == {
        VARIANTS: "int", ITEMS: "string", BRANDS: "string", CODES: "string", GROUPS: "int",
        SUPPLIERS: "int"}


def test_what_each_view_depends_on() -> None:
    assert view(VARIANTS).depends_on == set(GRAPH.names)
    # the supplier's country is optional and unread; the origin is unread
    assert view(ITEMS).depends_on == {"items", "brands", "countries", "item_groups",
                                      "suppliers"}
    assert view(ITEMS).relevant("suppliers") == {"name"}
    assert view(VARIANTS).relevant("suppliers") == {"name", "country_iso"}
    assert view(ITEMS).relevant("items") == {"item_no", "title", "brand_code", "group_gid",
                                             "supplier_sid", "launched"}
    assert view(ITEMS).relevant("item_groups") == {"parent_gid", "slug", "market_iso"}
    assert view(VARIANTS).relevant("countries") == {"name", "region"}
    assert view(BRANDS).depends_on == {"brands", "countries"}
    # brand_codes reads nothing of a country, but a brand is visible only with its country
    assert view(CODES).depends_on == {"brands", "countries"}
    assert view(CODES).relevant("countries") == frozenset()
    assert view(GROUPS).depends_on == {"item_groups", "countries"}
    assert view(GROUPS).relevant("item_groups") == {"gid", "parent_gid", "label", "slug",
                                                    "market_iso"}
    assert view(SUPPLIERS).depends_on == {"suppliers", "countries"}


@pytest.mark.parametrize(("edit", "message"), [
    (('source = "item.brand.country.name"', 'source = "item.brand.nation.name"'),
     "shop.variant_view.brand_country: source 'item.brand.nation.name': brands has no "
     "reference 'nation' (references: country)"),
    (('source = "item.group.trail"', 'source = "item.group.path"'),
     "shop.variant_view.trail: source 'item.group.path': item_groups has no column or path "
     "'path'"),
    (('source = "item.supplier.country.name", type = "text", nullable = true',
      'source = "item.supplier.country.name", type = "text"'),
     "shop.variant_view.supplier_country: source 'item.supplier.country.name' follows an "
     "optional reference: the column must be nullable = true"),
    (('{ name = "vid", source = "vid"', '{ name = "vid", source = "item_no"'),
     "shop.variant_view.vid: the key column must read the grain's key ('vid')"),
    (('grain = "variants"', 'grain = "variant"'),
     "views.shop.variant_view.grain: a source table (one of countries, brands, suppliers, "
     "item_groups, items, variants), not 'variant'"),
    (('key = "item_no"\nkey_type = "string"', 'key = ["item_no", "brand_code"]'),
     "sources.items.key: a composite key (item_no, brand_code) is not supported"),
    (('references.market = { column = "market_iso", to = "countries" }',
      'references.market = { column = "market_iso", to = "countries" }\n'
      'references.up = { column = "parent_gid", to = "item_groups" }'),
     "sources.item_groups.references.up: a reference to its own table is a hierarchy"),
    (('columns = ["name", "region"]',
      'columns = ["name", "region", "top"]\n'
      'references.top = { column = "top", to = "variants", required = false }'),
     "references form a cycle: countries -> variants -> items -> brands -> countries"),
])
def test_an_invalid_catalogue_is_refused_naming_the_view_the_column_and_the_link(
        edit: tuple[str, str], message: str) -> None:
    text = CATALOG_TOML.replace(*edit)
    assert text != CATALOG_TOML
    with pytest.raises(ViewFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_definitions(tomllib.loads(text), "catalog.toml")


# --- named cases -----------------------------------------------------------------------------


def test_the_rows_of_every_view() -> None:
    h = harness()
    shop(h)
    assert h.view(VARIANTS)[10] == {
        "vid": 10, "item_no": "I-1", "color": "red", "price": Decimal("19.90"),
        "in_stock": True, "title": "title I-1", "brand": "Acme", "brand_country": "Germany",
        "trail": "Home / Kitchen / Knives", "supplier": "Forge",
        "supplier_country": "Deutschland", "origin_region": None}
    assert h.view(VARIANTS)[30]["origin_region"] == "EU"
    assert h.view(VARIANTS)[30]["supplier"] is None
    assert h.view(ITEMS)["I-2"] == {
        "item_no": "I-2", "title": "title I-2", "brand_code": "acme", "brand": "Acme",
        "slugs": "home / kitchen", "market": "Germany", "supplier": None,
        "launched": date(2025, 3, 1)}
    assert h.view(GROUPS)[3] == {"gid": 3, "label": "Knives", "trail": "Home / Kitchen / Knives",
                                 "slugs": "home / kitchen / knives", "market": "Germany"}
    assert h.view(SUPPLIERS) == {1: {"sid": 1, "name": "Forge", "country": "Deutschland"}}
    assert list(h.view(ITEMS)["I-2"]) == [c.name for c in view(ITEMS).columns]


def test_string_keys_that_differ_only_by_case_are_two_rows() -> None:
    h = harness()
    shop(h)
    assert h.view(BRANDS)["acme"]["name"] == "Acme"
    assert h.view(BRANDS)["ACME"]["name"] == "ACME Corp"
    assert set(h.view(ITEMS)) == {"I-1", "i-1", "I-2"}
    assert h.view(VARIANTS)[20]["brand"] == "ACME Corp"
    assert h.engine.indexes()["items.brand"] == {"acme": {"I-1", "I-2"}, "ACME": {"i-1"}}
    affected = h.delete("brands", "acme")
    assert affected.keys == {"brands": {"acme"}, "items": {"I-1", "I-2"},
                             "variants": {10, 11, 30}}
    assert set(h.view(BRANDS)) == {"ACME"} and set(h.view(VARIANTS)) == {20}
    h.put("countries", country("DE", "Allemagne"))  # not the country of brand acme
    assert h.view(SUPPLIERS)[1]["country"] == "Allemagne"
    h.check()


def test_a_rename_three_hops_away_reaches_every_row_through_every_link() -> None:
    h = harness()
    shop(h)
    affected = h.put("countries", country("de", "Deutschland (de)"))
    assert affected == Affected("countries", {
        "countries": frozenset({"de"}), "brands": frozenset({"acme"}),
        "item_groups": frozenset({1, 2, 3}), "items": frozenset({"I-1", "I-2"}),
        "variants": frozenset({10, 11, 30})}, frozenset({"name"}))
    assert {h.view(VARIANTS)[v]["brand_country"] for v in (10, 11, 30)} == {"Deutschland (de)"}
    assert h.view(ITEMS)["I-1"]["market"] == "Deutschland (de)"
    assert h.view(BRANDS)["acme"]["country"] == "Deutschland (de)"
    # a region is read by the brand view and (through the optional origin) the variant view
    affected = h.put("countries", country("fr", "France", "Europe"))
    written = [v.name for v in CATALOG.views if affected.keys_for(v)]
    assert written == [VARIANTS, BRANDS]
    assert h.view(VARIANTS)[30]["origin_region"] == "Europe"
    assert h.view(BRANDS)["ACME"]["region"] == "Europe"
    h.check()


def test_a_view_of_existence_only_is_not_rewritten_by_a_rename() -> None:
    h = harness()
    shop(h)
    assert h.view(CODES) == {"acme": {"code": "acme"}, "ACME": {"code": "ACME"}}
    affected = h.put("countries", country("de", "Renamed"))
    assert not affected.keys_for(view(CODES))
    affected = h.delete("countries", "de")  # acme has no country now: it is not visible
    assert affected.keys_for(view(CODES)) == {"acme"}
    assert h.view(CODES) == {"ACME": {"code": "ACME"}}
    h.put("countries", country("de", "Germany"), op="c")
    assert set(h.view(CODES)) == {"acme", "ACME"}
    h.check()


def test_a_hierarchy_under_other_names_moves_and_renames_its_subtree() -> None:
    h = harness()
    shop(h)
    affected = h.put("item_groups", group(2, 4, "Kitchen", market="de"))  # under Garden
    assert affected.of("item_groups") == {2, 3}
    assert affected.of("variants") == {10, 11, 30}
    assert h.view(GROUPS)[3]["trail"] == "Garden / Kitchen / Knives"
    assert h.view(VARIANTS)[10]["trail"] == "Garden / Kitchen / Knives"
    assert h.view(ITEMS)["I-2"]["slugs"] == "garden / kitchen"
    h.put("item_groups", group(4, None, "Outdoor", market="fr", slug="out"))
    assert h.view(ITEMS)["I-1"]["slugs"] == "out / kitchen / knives"
    assert h.view(ITEMS)["i-1"]["slugs"] == "out"
    h.put("item_groups", group(4, 3, "Outdoor", market="fr", slug="out"))  # 4 -> 3 -> 2 -> 4
    assert set(h.view(GROUPS)) == {1} and set(h.view(VARIANTS)) == set()
    h.put("item_groups", group(2, 1, "Kitchen"))  # the cycle broken: 4 is below Knives now
    assert h.view(VARIANTS)[20]["trail"] == "Home / Kitchen / Knives / Outdoor"
    h.check()


def test_a_hierarchy_row_hidden_by_its_own_reference_keeps_its_children_visible() -> None:
    """Visibility in a hierarchy asks the ancestors to exist (a path), not to be visible:
    a group without its market is hidden, its subgroups (with theirs) are not."""
    h = harness()
    shop(h)
    h.put("item_groups", group(2, 1, "Kitchen", market="jp"))  # no country jp
    assert 2 not in h.view(GROUPS)
    assert h.view(GROUPS)[3]["trail"] == "Home / Kitchen / Knives"
    assert "I-2" not in h.view(ITEMS) and 30 not in h.view(VARIANTS)  # in group 2
    assert h.view(ITEMS)["I-1"]["slugs"] == "home / kitchen / knives"  # in group 3
    h.put("countries", country("jp", "Japan", "AS"), op="c")  # resolves later
    assert h.view(GROUPS)[2]["market"] == "Japan" and h.view(ITEMS)["I-2"]["market"] == "Japan"
    h.check()


def test_an_optional_reference_null_dangling_invisible_or_present() -> None:
    h = harness()
    shop(h)
    v = h.view(VARIANTS)
    assert (v[20]["supplier"], v[20]["supplier_country"]) == (None, None)  # NULL
    h.put("items", item("i-1", "ACME", 4, sid=7))  # dangling: supplier 7 not there yet
    assert h.view(VARIANTS)[20]["supplier"] is None and 20 in h.view(VARIANTS)
    h.put("suppliers", supplier(7, "Late", "xx"), op="c")  # resolves; its country dangles
    assert h.view(VARIANTS)[20]["supplier"] == "Late"
    assert h.view(VARIANTS)[20]["supplier_country"] is None
    assert h.view(SUPPLIERS)[7]["country"] is None
    h.put("countries", country("xx", "Nowhere"), op="c")
    assert h.view(VARIANTS)[20]["supplier_country"] == "Nowhere"
    assert h.view(ITEMS)["i-1"]["supplier"] == "Late"
    h.delete("suppliers", 7)
    assert (h.view(VARIANTS)[20]["supplier"], h.view(VARIANTS)[20]["supplier_country"]) == (
        None, None)
    assert h.view(ITEMS)["i-1"]["supplier"] is None
    h.check()


def test_a_required_reference_null_or_dangling_hides_the_row_until_it_resolves() -> None:
    h = harness()
    shop(h)
    h.put("items", item("I-3", None, 3))
    h.put("variants", variant(40, "I-3"))
    assert "I-3" not in h.view(ITEMS) and 40 not in h.view(VARIANTS)
    h.put("items", item("I-3", "nova", 3))
    h.put("brands", brand("nova", "Nova", "se"), op="c")  # its country not there yet
    assert "nova" not in h.view(BRANDS) and 40 not in h.view(VARIANTS)
    h.put("countries", country("se", "Sweden"), op="c")
    assert h.view(VARIANTS)[40]["brand_country"] == "Sweden"
    h.put("variants", variant(41, None))
    assert 41 not in h.view(VARIANTS)
    h.check()


def test_a_key_change_is_delete_plus_insert_for_string_and_int_keys() -> None:
    h = harness()
    shop(h)
    # items.item_no I-1 -> I-9: its variants hide until they follow
    h.delete("items", "I-1", tombstone=True)
    h.put("items", item("I-9", "acme", 3, sid=1), op="c")
    assert "I-1" not in h.view(ITEMS) and "I-9" in h.view(ITEMS)
    assert {10, 11} & set(h.view(VARIANTS)) == set()
    h.put("variants", variant(10, "I-9"))
    assert h.view(VARIANTS)[10]["item_no"] == "I-9"
    # brands.code acme -> Acme (only the case differs: another key)
    h.delete("brands", "acme")
    h.put("brands", brand("Acme", "Acme", "de"), op="c")
    assert set(h.view(BRANDS)) == {"ACME", "Acme"} and set(h.view(VARIANTS)) == {20}
    for no, gid in (("I-9", 3), ("I-2", 2)):
        h.put("items", dict(item(no, "Acme", gid, sid=1 if no == "I-9" else None,
                                 made_in=None if no == "I-9" else "fr")))
    assert set(h.view(VARIANTS)) == {10, 20, 30}
    # item_groups.gid 2 -> 5: its child 3 is an orphan until repointed
    h.delete("item_groups", 2)
    h.put("item_groups", group(5, 1, "Kitchen"), op="c")
    assert 3 not in h.view(GROUPS) and "I-9" not in h.view(ITEMS)
    h.put("item_groups", group(3, 5, "Knives"))
    h.put("items", item("I-2", "Acme", 5, made_in="fr"))
    assert h.view(ITEMS)["I-9"]["slugs"] == "home / kitchen / knives"
    assert h.view(ITEMS)["I-2"]["slugs"] == "home / kitchen"
    h.check()


def test_keys_beyond_32_bits_and_beyond_ascii() -> None:
    h = harness()
    h.put("variants", variant(2**62, "Ünï-1"))
    h.put("items", item("Ünï-1", "Ünï", 2**40))
    h.put("brands", brand("Ünï", "Uni", "ñ"))
    h.put("countries", country("ñ", "Eñe"))
    h.put("item_groups", group(2**40, None, "Root", market="ñ"))
    assert h.view(VARIANTS)[2**62]["brand_country"] == "Eñe"
    assert h.view(ITEMS)["Ünï-1"]["market"] == "Eñe"
    h.check()


def test_a_projection_reads_only_the_rows_it_reaches() -> None:
    h = harness()
    shop(h)
    row = project(h.state, view(VARIANTS), 11)
    assert row is not None and row["color"] == "blue"
    assert project(h.state, view(VARIANTS), 99) is None
    assert project(h.state, view(ITEMS), "i-1") is not None
    assert project(h.state, view(ITEMS), "I-1".lower()) == project(h.state, view(ITEMS), "i-1")
    assert project(h.state, view(ITEMS), 1) is None  # an int is never a string key


def test_the_rocksdb_store_keeps_string_keys_and_mixed_indexes(tmp_path: Path) -> None:
    store = RocksStore(tmp_path, GRAPH)
    h = harness(store)
    shop(h)
    h.put("variants", variant(50, "I-404"))  # keyed by a missing string key
    h.put("items", item("I-5", "acme", 3, sid=2**40))  # an int reference of a string row
    sinks = {k: dict(v) for k, v in h.sinks.items()}
    indexes = h.engine.indexes()
    assert indexes["variants.item"]["I-404"] == {50}
    assert indexes["items.supplier"] == {1: {"I-1"}, 2**40: {"I-5"}}
    store.close()
    h = harness(RocksStore(tmp_path, GRAPH))
    h.sinks = sinks
    try:
        assert h.engine.indexes() == indexes
        assert dict(h.state.store("brands")) == {"acme": brand("acme", "Acme", "de"),
                                                  "ACME": brand("ACME", "ACME Corp", "fr")}
        h.put("items", item("I-404", "ACME", 4), op="c")
        assert h.view(VARIANTS)[50]["brand"] == "ACME Corp"
        h.put("countries", country("fr", "Frankreich"))
        assert h.view(VARIANTS)[20]["brand_country"] == "Frankreich"
        h.check()
        assert_indexes_rebuildable(h.engine)
    finally:
        assert h.store is not None
        h.store.close()


def test_a_replayed_change_of_a_string_key_redoes_the_same_rows() -> None:
    h = harness()
    shop(h)
    change = Change("brands", "ACME", after=brand("ACME", "ACME 2", "fr"))
    first = h.apply(change)
    again = h.apply(change)
    assert first.keys == again.keys == {"brands": {"ACME"}, "items": {"i-1"},
                                        "variants": {20}}
    assert again.changed is None
    h.restart()
    h.redo(change)
    h.check()


# --- property: random histories of the catalogue -------------------------------------------

NAMES = st.sampled_from(["a", "b", "c"])

SPACE = Space(
    GRAPH,
    # few keys, so that references mostly resolve and the views hold rows
    keys={
        "countries": ["de", "DE", "fr"],
        "brands": ["acme", "ACME", "Ünï"],
        "suppliers": [1, 2**40],
        "item_groups": [1, 2, 3, 2**33],
        "items": ["I-1", "i-1", "I-2", "I-3"],
        "variants": [*range(1, 6), 2**45],
    },
    dangling={"countries": "xx", "brands": "none", "suppliers": 99, "item_groups": 77,
              "items": "I-404", "variants": 999},
    values={
        "countries": {"name": NAMES, "region": st.sampled_from(["EU", "AS"])},
        "brands": {"name": NAMES},
        "suppliers": {"name": NAMES},
        "item_groups": {"label": NAMES, "slug": st.sampled_from(["x", "y"])},
        "items": {"title": NAMES, "launched": st.none() | st.just(date(2025, 1, 1))},
        "variants": {"color": st.sampled_from(["red", "blue"]),
                     "price": st.sampled_from([Decimal("1.00"), Decimal("9.90")]),
                     "in_stock": st.booleans()},
    },
    min_keys={"countries": 3, "brands": 2, "item_groups": 3, "items": 3, "variants": 3},
    null_required=True,
)


@PROPERTY
@given(history=histories(SPACE), data=st.data())
def test_the_catalogue_converges_under_any_interleaving_replay_and_restart(
        history: History, data: st.DataObject) -> None:
    converge(harness(), history, data)


@FEWER
@given(history=histories(SPACE), data=st.data())
def test_the_catalogue_converges_on_the_rocksdb_store(history: History,
                                                      data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = RocksStore(Path(tmp), GRAPH)
        try:
            converge(harness(store), history, data)
        finally:
            store.close()


#: The catalogue the project ships (schemas/examples/catalog), which CI runs end to end.
SHIPPED = load_definitions(Path(__file__).resolve().parents[2] / "schemas" / "examples" /
                           "catalog" / "views.toml")


@FEWER
@given(history=histories(generic_space(SHIPPED.graph)), data=st.data())
def test_the_shipped_catalogue_example_converges(history: History,
                                                 data: st.DataObject) -> None:
    converge(Harness(SHIPPED), history, data)
