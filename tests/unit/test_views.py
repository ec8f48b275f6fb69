"""View definitions: the contract's columns over the bundled graph, what each view depends
on, definitions that are rejected (naming the view, the column and the link), and the
earlier file format (no [sources]) still read."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from app.graph import Reference
from app.views import (
    Column,
    Step,
    ViewDef,
    ViewFileError,
    bundled_definitions,
    bundled_views,
    load_definitions,
    load_views,
    parse_definitions,
    view_named,
)

DEFS = bundled_definitions()
GRAPH = DEFS.graph
ORDER_PRODUCT_VIEW = view_named("order.product_view", bundled_views())
PURCHASE_PRODUCT_VIEW = view_named("purchase.product_view", bundled_views())
PURCHASE_BATCH_VIEW = view_named("purchase.batch_view", bundled_views())
CATEGORY = Reference("products", "category", "category_id", "categories", required=True)
WARRANTY = Reference("products", "warranty", "warranty_type_id", "warranty_types",
                     required=False)
PRODUCT = Reference("batches", "product", "product_id", "products", required=True)


def test_contract_columns() -> None:
    assert [c.name for c in ORDER_PRODUCT_VIEW.columns] == [
        "product_id", "sku", "name", "category_id", "category_name", "category_path",
        "warranty_name", "warranty_months", "price", "status"]
    assert [c.name for c in PURCHASE_PRODUCT_VIEW.columns] == [
        "product_id", "sku", "name", "unit", "status", "category_code"]
    assert [c.name for c in PURCHASE_BATCH_VIEW.columns] == [
        "batch_id", "batch_no", "product_id", "sku", "product_name", "category_path",
        "manufactured_on", "expires_on", "warranty_months"]


def test_grains_and_key_types() -> None:
    assert ORDER_PRODUCT_VIEW.grain == PURCHASE_PRODUCT_VIEW.grain == "products"
    assert PURCHASE_BATCH_VIEW.grain == "batches"
    assert ORDER_PRODUCT_VIEW.grain_table == "products"
    assert {v.key_type for v in bundled_views()} == {"int"}


def test_dependencies() -> None:
    assert ORDER_PRODUCT_VIEW.depends_on == {"products", "categories", "warranty_types"}
    # warranty_types is optional for products and purchase.product_view reads nothing of it
    assert PURCHASE_PRODUCT_VIEW.depends_on == {"products", "categories"}
    assert PURCHASE_BATCH_VIEW.depends_on == {"products", "categories", "warranty_types",
                                              "batches"}


def test_relevant_columns_are_what_is_read_followed_or_visibility_rests_on() -> None:
    v = ORDER_PRODUCT_VIEW
    assert v.relevant("products") == {"id", "sku", "name", "category_id", "warranty_type_id",
                                      "price", "status"}
    assert v.relevant("categories") == {"parent_id", "name"}
    assert v.relevant("warranty_types") == {"name", "months"}
    assert v.relevant("batches") == frozenset()
    v = PURCHASE_PRODUCT_VIEW
    assert v.relevant("products") == {"id", "sku", "name", "unit", "status", "category_id"}
    assert v.relevant("categories") == {"parent_id", "code"}
    assert v.relevant("warranty_types") == frozenset()
    v = PURCHASE_BATCH_VIEW
    assert v.relevant("batches") == {"id", "batch_no", "product_id", "manufactured_on",
                                     "expires_on"}
    # the product's visibility (its category) and what the batch view reads of it
    assert v.relevant("products") == {"sku", "name", "category_id", "warranty_type_id"}
    assert v.relevant("categories") == {"parent_id", "name"}
    assert v.relevant("warranty_types") == {"months"}


def test_steps_follow_the_named_references() -> None:
    steps = {s.name: s for s in PURCHASE_BATCH_VIEW.steps}
    assert steps["batch_id"] == Step("batch_id", (), "batches", "id", None)
    assert steps["sku"] == Step("sku", (PRODUCT,), "products", "sku", None)
    assert steps["category_path"] == Step("category_path", (PRODUCT, CATEGORY), "categories",
                                          None, "path")
    assert steps["warranty_months"] == Step("warranty_months", (PRODUCT, WARRANTY),
                                            "warranty_types", "months", None)
    steps = {s.name: s for s in ORDER_PRODUCT_VIEW.steps}
    assert steps["category_name"] == Step("category_name", (CATEGORY,), "categories", "name",
                                          None)


def view(*columns: Column, key: str = "id", grain: str = "products") -> ViewDef:
    return ViewDef(consumer="c", table="t", grain=grain, key=key, columns=columns, graph=GRAPH)


ID = Column("id", "id", "bigint")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (view(ID, Column("b", "batches.id", "bigint")),
         "c.t.b: source 'batches.id': products has no reference 'batches' (references: "
         "category, warranty)"),
        (view(ID, Column("x", "category.nope.name", "text")),
         "c.t.x: source 'category.nope.name': categories has no reference 'nope' "
         "(references: none)"),
        (view(ID, Column("x", "category.nope", "text")),
         "c.t.x: source 'category.nope': categories has no column or path 'nope'"),
        (view(ID, Column("x", "colour", "text")),
         "c.t.x: source 'colour': products has no column or path 'colour'"),
        (view(ID, Column("m", "warranty.months", "int")),
         "c.t.m: source 'warranty.months' follows an optional reference: the column must be "
         "nullable = true"),
        (view(Column("id", "id", "bigint"), key="other"), "c.t: key 'other' is not a column"),
        (view(ID, Column("id", "category.path", "text")), "c.t: duplicate column names"),
        (view(Column("id", "sku", "varchar(64)")),
         "c.t.id: the key column must read the grain's key ('id'), not 'sku'"),
        (view(Column("id", "category.id", "bigint")),
         "c.t.id: the key column must read the grain's key ('id'), not 'category.id'"),
        (view(ID, grain="brands"), "c.t.grain: 'brands' is not a source table (sources: "
         "categories, warranty_types, products, batches)"),
    ],
)
def test_bad_definitions_are_rejected(bad: ViewDef, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        bad.validate()


def test_a_path_is_read_only_of_a_hierarchy() -> None:
    bad = view(ID, Column("p", "path", "text"))  # products are no hierarchy
    with pytest.raises(ValueError, match="products has no column or path 'path'"):
        bad.validate()
    view(ID, Column("p", "category.path", "text")).validate()
    view(ID, Column("w", "warranty.name", "text", nullable=True)).validate()


# --- the views file ---------------------------------------------------------------------

#: The Inventory view of CONTRACT.md in the earlier format (no [sources]).
LEGACY_INVENTORY = (Path(__file__).parent / "fixtures" / "inventory.legacy.views.toml").read_text()

#: The same view in the file format with [sources] (appended to the bundled file).
INVENTORY = """
[views.inventory.product_view]
grain = "products"
key = "product_id"
columns = [
  { name = "product_id", source = "id", type = "bigint" },
  { name = "sku", source = "sku", type = "varchar(64)" },
  { name = "unit", source = "unit", type = "varchar(16)" },
  { name = "status", source = "status", type = "varchar(16)" },
  { name = "category_code", source = "category.code", type = "varchar(64)" },
  { name = "warranty_months", source = "warranty.months", type = "int", nullable = true },
]
"""


def bundled_text() -> str:
    from app.resources import bundled

    return (bundled("schemas") / "views.toml").read_text()


def test_the_bundled_file_holds_the_three_views_of_the_contract() -> None:
    from app.resources import bundled

    assert [v.name for v in bundled_views()] == [
        "order.product_view", "purchase.product_view", "purchase.batch_view"]
    assert load_views() == bundled_views() == load_views(bundled("schemas") / "views.toml")
    assert load_definitions() is bundled_definitions()
    assert GRAPH.names == ("categories", "warranty_types", "products", "batches")


def test_a_fourth_view_by_file_alone(tmp_path: Path) -> None:
    f = tmp_path / "views.toml"
    f.write_text(bundled_text() + INVENTORY)
    views = load_views(f)
    inventory = views[-1]
    assert inventory.name == "inventory.product_view"
    assert inventory.depends_on == {"products", "categories", "warranty_types"}
    assert views[:3] == bundled_views()


def test_the_inventory_view_in_the_earlier_format_is_the_same_view(tmp_path: Path) -> None:
    f = tmp_path / "views.toml"
    f.write_text(LEGACY_INVENTORY)
    (legacy,) = load_views(f)
    f.write_text(bundled_text() + INVENTORY)
    assert legacy == load_views(f)[-1]
    assert legacy.steps == load_views(f)[-1].steps


@pytest.mark.parametrize(("edit", "message"), [
    (('type = "int"', 'type = "integer"'), "views.inventory.product_view.columns[5].type"),
    (('"category.code"', '"categories.code"'),
     "inventory.product_view.category_code: source 'categories.code': products has no "
     "reference 'categories' (references: category, warranty)"),
    (('"category.code"', '"category.kode"'),
     "inventory.product_view.category_code: source 'category.kode': categories has no column "
     "or path 'kode'"),
    (('"warranty.months", type = "int", nullable = true', '"warranty.months", type = "int"'),
     "inventory.product_view.warranty_months: source 'warranty.months' follows an optional "
     "reference"),
    (('key = "product_id"', 'key = "id"'), "key 'id' is not a column"),
    (('grain = "products"', 'grain = "items"'),
     "views.inventory.product_view.grain: a source table (one of categories, warranty_types, "
     "products, batches), not 'items'"),
    (('{ name = "unit"', '{ name = "sku"'), "duplicate column names"),
    (('source = "id"', 'source = "sku"'),
     "inventory.product_view.product_id: the key column must read the grain's key ('id')"),
])
def test_an_invalid_view_is_rejected_naming_the_view_the_column_and_the_link(
        tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    f = tmp_path / "views.toml"
    text = INVENTORY.replace(*edit)
    assert text != INVENTORY
    f.write_text(bundled_text() + text)
    with pytest.raises(ViewFileError, match=re.escape(message)):
        load_views(f)


@pytest.mark.parametrize(("edit", "message"), [
    (('type = "int", nullable = true', 'type = "int"'),
     "inventory.product_view.warranty_months: source 'warranty.months' follows an optional "
     "reference"),  # the earlier source warranty_types.months, as the file now reads it
    (('"products.unit"', '"batches.unit"'),
     "inventory.product_view.unit: source 'batches.unit': products has no reference "
     "'batches'"),
    (('grain = "product"', 'grain = "item"'), "views.inventory.product_view.grain"),
])
def test_an_invalid_view_of_the_earlier_format_is_rejected(
        tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    f = tmp_path / "views.toml"
    f.write_text(LEGACY_INVENTORY.replace(*edit))
    with pytest.raises(ViewFileError, match=re.escape(message)):
        load_views(f)


def test_a_views_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    f = tmp_path / "views.toml"
    f.write_text(bundled_text())
    first = load_definitions(f)
    assert load_definitions(f) is first
    f.write_text(bundled_text() + INVENTORY)
    assert len(load_definitions(f).views) == 4
    with pytest.raises(ViewFileError, match="does not exist"):
        load_definitions(tmp_path / "none.toml")
    f.write_text("[views\n")
    with pytest.raises(ViewFileError, match="is not valid TOML"):
        load_definitions(f)


# --- the earlier format of the three views -------------------------------------------------

#: The bundled views file as it was before [sources] (grains "product" and "batch", columns
#: "<table>.<column>" and "category_path"): still read, over the bundled file's sources.
LEGACY_BUNDLED = """
[consumers.order]
stack_server = "postgresql"

[consumers.purchase]
stack_server = "mariadb"

[views.order.product_view]
grain = "product"
key = "product_id"
columns = [
  { name = "product_id", source = "products.id", type = "bigint" },
  { name = "sku", source = "products.sku", type = "varchar(64)" },
  { name = "name", source = "products.name", type = "varchar(255)" },
  { name = "category_id", source = "products.category_id", type = "bigint" },
  { name = "category_name", source = "categories.name", type = "varchar(255)" },
  { name = "category_path", source = "category_path", type = "text" },
  { name = "warranty_name", source = "warranty_types.name", type = "varchar(255)", nullable = true },
  { name = "warranty_months", source = "warranty_types.months", type = "int", nullable = true },
  { name = "price", source = "products.price", type = "numeric(12,2)" },
  { name = "status", source = "products.status", type = "varchar(16)" },
]

[views.purchase.product_view]
grain = "product"
key = "product_id"
columns = [
  { name = "product_id", source = "products.id", type = "bigint" },
  { name = "sku", source = "products.sku", type = "varchar(64)" },
  { name = "name", source = "products.name", type = "varchar(255)" },
  { name = "unit", source = "products.unit", type = "varchar(16)" },
  { name = "status", source = "products.status", type = "varchar(16)" },
  { name = "category_code", source = "categories.code", type = "varchar(64)" },
]

[views.purchase.batch_view]
grain = "batch"
key = "batch_id"
columns = [
  { name = "batch_id", source = "batches.id", type = "bigint" },
  { name = "batch_no", source = "batches.batch_no", type = "varchar(64)" },
  { name = "product_id", source = "batches.product_id", type = "bigint" },
  { name = "sku", source = "products.sku", type = "varchar(64)" },
  { name = "product_name", source = "products.name", type = "varchar(255)" },
  { name = "category_path", source = "category_path", type = "text" },
  { name = "manufactured_on", source = "batches.manufactured_on", type = "date", nullable = true },
  { name = "expires_on", source = "batches.expires_on", type = "date", nullable = true },
  { name = "warranty_months", source = "warranty_types.months", type = "int", nullable = true },
]
"""  # noqa: E501


def test_the_earlier_format_loads_to_the_same_views_as_the_bundled_file(
        tmp_path: Path) -> None:
    f = tmp_path / "views.toml"
    f.write_text(LEGACY_BUNDLED)
    legacy = load_definitions(f)
    assert legacy.graph == GRAPH
    assert [v.name for v in legacy.views] == [v.name for v in DEFS.views]
    for old, new in zip(legacy.views, DEFS.views, strict=True):
        assert (old.grain, old.key) == (new.grain, new.key)
        assert [(c.name, c.source, c.type, c.nullable) for c in old.columns] == [
            (c.name, c.source, c.type, c.nullable) for c in new.columns]
        assert old.steps == new.steps
        assert old.depends_on == new.depends_on
        assert {t: old.relevant(t) for t in GRAPH.names} == {
            t: new.relevant(t) for t in GRAPH.names}
        assert old == new


# --- settings and consumers ---------------------------------------------------------------


def test_a_bad_views_file_stops_the_settings_before_anything_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import ConfigError, load_settings

    f = tmp_path / "views.toml"
    f.write_text("[views.inventory.product_view]\ngrain = 'product'\n")
    monkeypatch.setenv("VIEWSYNC_VIEWS_FILE", str(f))
    with pytest.raises(ConfigError, match=r"VIEWSYNC_VIEWS_FILE.*views\.inventory\.product_view"):
        load_settings()
    f.write_text(bundled_text().replace('to = "categories"', 'to = "category"'))
    with pytest.raises(ConfigError, match=r"sources\.products\.references\.category\.to"):
        load_settings()
    monkeypatch.setenv("VIEWSYNC_VIEWS_FILE", str(tmp_path / "none.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()


def test_the_settings_give_the_files_graph_and_views(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import load_settings

    assert load_settings().graph() == GRAPH
    f = tmp_path / "views.toml"
    f.write_text(bundled_text() + INVENTORY)
    monkeypatch.setenv("VIEWSYNC_VIEWS_FILE", str(f))
    s = load_settings()
    assert [v.name for v in s.views()][-1] == "inventory.product_view"
    assert set(s.topic_tables().values()) == set(GRAPH.names)


def test_a_consumer_database_url_comes_from_its_own_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import load_settings

    monkeypatch.setenv("VIEWSYNC_INVENTORY_DB_URL", "postgresql+psycopg://u:p@h/inv")
    assert load_settings().consumer_url("inventory") == "postgresql+psycopg://u:p@h/inv"
    monkeypatch.delenv("VIEWSYNC_INVENTORY_DB_URL")
    assert load_settings().consumer_url("inventory").endswith("/inventory")


def test_the_stack_servers_of_the_consumers(tmp_path: Path) -> None:
    from app.views import stack_servers

    assert stack_servers() == {"order": "postgresql", "purchase": "mariadb"}
    f = tmp_path / "views.toml"
    f.write_text(LEGACY_INVENTORY + '\n[consumers.inventory]\nstack_server = "oracle"\n')
    with pytest.raises(ViewFileError, match=re.escape("consumers.inventory.stack_server")):
        load_views(f)
    f.write_text(LEGACY_INVENTORY + '\n[consumers.inventory]\nstack_server = "mariadb"\n')
    assert stack_servers(f) == {"inventory": "mariadb"}
    f.write_text(LEGACY_INVENTORY)
    assert stack_servers(f) == stack_servers()


def test_parse_definitions_reads_a_parsed_document() -> None:
    defs = parse_definitions(tomllib.loads(bundled_text()))
    assert defs.graph == GRAPH and defs.views == DEFS.views
