"""View definitions: the contract's columns, and definitions that are rejected."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.views import CATEGORY_PATH, Column, Grain, ViewDef, bundled_views, view_named

ORDER_PRODUCT_VIEW = view_named("order.product_view", bundled_views())
PURCHASE_PRODUCT_VIEW = view_named("purchase.product_view", bundled_views())
PURCHASE_BATCH_VIEW = view_named("purchase.batch_view", bundled_views())


def test_contract_columns() -> None:
    assert [c.name for c in ORDER_PRODUCT_VIEW.columns] == [
        "product_id", "sku", "name", "category_id", "category_name", "category_path",
        "warranty_name", "warranty_months", "price", "status"]
    assert [c.name for c in PURCHASE_PRODUCT_VIEW.columns] == [
        "product_id", "sku", "name", "unit", "status", "category_code"]
    assert [c.name for c in PURCHASE_BATCH_VIEW.columns] == [
        "batch_id", "batch_no", "product_id", "sku", "product_name", "category_path",
        "manufactured_on", "expires_on", "warranty_months"]


def test_dependencies() -> None:
    assert PURCHASE_PRODUCT_VIEW.depends_on == {"products", "categories"}
    assert ORDER_PRODUCT_VIEW.depends_on == {"products", "categories", "warranty_types"}
    assert PURCHASE_BATCH_VIEW.depends_on == {"products", "categories", "warranty_types",
                                              "batches"}


@pytest.mark.parametrize(
    ("columns", "key", "message"),
    [
        ((Column("id", "products.id", "bigint"), Column("b", "batches.id", "bigint")), "id",
         "cannot read batches"),
        ((Column("id", "products.id", "bigint"), Column("x", "nope.x", "text")), "id",
         "unknown source table"),
        ((Column("id", "products.id", "bigint"),), "other", "is not a column"),
        ((Column("id", "products.id", "bigint"), Column("id", CATEGORY_PATH, "text")), "id",
         "duplicate"),
    ],
)
def test_bad_definitions_are_rejected(columns: tuple[Column, ...], key: str, message: str) -> None:
    view = ViewDef(consumer="c", table="t", grain=Grain.PRODUCT, key=key, columns=columns)
    with pytest.raises(ValueError, match=message):
        view.validate()


# --- the views file ---------------------------------------------------------------------

INVENTORY = (Path(__file__).parent / "fixtures" / "inventory.views.toml").read_text()


def test_the_bundled_file_holds_the_three_views_of_the_contract() -> None:
    from app.resources import bundled
    from app.views import load_views

    assert [v.name for v in bundled_views()] == [
        "order.product_view", "purchase.product_view", "purchase.batch_view"]
    assert load_views() == bundled_views() == load_views(bundled("schemas") / "views.toml")


def test_a_fourth_view_by_file_alone(tmp_path: Path) -> None:
    from app.resources import bundled
    from app.views import load_views

    f = tmp_path / "views.toml"
    f.write_text((bundled("schemas") / "views.toml").read_text() + INVENTORY)
    views = load_views(f)
    inventory = views[-1]
    assert inventory.name == "inventory.product_view"
    assert inventory.depends_on == {"products", "categories", "warranty_types"}


@pytest.mark.parametrize(("edit", "message"), [
    (('type = "int"', 'type = "integer"'), "views.inventory.product_view.columns[5].type"),
    (('"categories.code"', '"category.code"'), "unknown source table"),
    (('key = "product_id"', 'key = "id"'), "key 'id' is not a column"),
    (('grain = "product"', 'grain = "item"'), "views.inventory.product_view.grain"),
    (('{ name = "unit"', '{ name = "sku"'), "duplicate column names"),
    (('"products.unit"', '"batches.unit"'), "a product view cannot read batches"),
])
def test_an_invalid_view_is_rejected_naming_the_view_and_the_field(
        tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    from app.views import ViewFileError, load_views

    f = tmp_path / "views.toml"
    f.write_text(INVENTORY.replace(*edit))
    with pytest.raises(ViewFileError, match=re.escape(message)):
        load_views(f)


def test_a_bad_views_file_stops_the_settings_before_anything_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import ConfigError, load_settings

    f = tmp_path / "views.toml"
    f.write_text("[views.inventory.product_view]\ngrain = 'product'\n")
    monkeypatch.setenv("VIEWSYNC_VIEWS_FILE", str(f))
    with pytest.raises(ConfigError, match=r"VIEWSYNC_VIEWS_FILE.*views\.inventory\.product_view"):
        load_settings()
    monkeypatch.setenv("VIEWSYNC_VIEWS_FILE", str(tmp_path / "none.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()


def test_a_consumer_database_url_comes_from_its_own_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import load_settings

    monkeypatch.setenv("VIEWSYNC_INVENTORY_DB_URL", "postgresql+psycopg://u:p@h/inv")
    assert load_settings().consumer_url("inventory") == "postgresql+psycopg://u:p@h/inv"
    monkeypatch.delenv("VIEWSYNC_INVENTORY_DB_URL")
    assert load_settings().consumer_url("inventory").endswith("/inventory")


def test_the_table_a_row_stands_for() -> None:
    assert ORDER_PRODUCT_VIEW.grain_table == PURCHASE_PRODUCT_VIEW.grain_table == "products"
    assert PURCHASE_BATCH_VIEW.grain_table == "batches"


def test_the_stack_servers_of_the_consumers(tmp_path: Path) -> None:
    from app.views import ViewFileError, load_views, stack_servers

    assert stack_servers() == {"order": "postgresql", "purchase": "mariadb"}
    f = tmp_path / "views.toml"
    f.write_text(INVENTORY + '\n[consumers.inventory]\nstack_server = "oracle"\n')
    with pytest.raises(ViewFileError, match=re.escape("consumers.inventory.stack_server")):
        load_views(f)
    f.write_text(INVENTORY + '\n[consumers.inventory]\nstack_server = "mariadb"\n')
    assert stack_servers(f) == {"inventory": "mariadb"}
    f.write_text(INVENTORY)
    assert stack_servers(f) == stack_servers()
