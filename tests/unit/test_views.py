"""View definitions: the contract's columns, and definitions that are rejected."""

from __future__ import annotations

import pytest

from app.views import (
    CATEGORY_PATH,
    ORDER_PRODUCT_VIEW,
    PURCHASE_BATCH_VIEW,
    PURCHASE_PRODUCT_VIEW,
    Column,
    Grain,
    ViewDef,
)


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
