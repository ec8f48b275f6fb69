"""Declarative view definitions: what every consumer gets, in one place.

Each :class:`ViewDef` names a consumer database, a target table, its key and its columns,
and for each column where its value comes from. Adding a view or a column is an edit
of :data:`VIEWS`; the join engine, the projection and the sink read these definitions and
the sink creates missing target tables from them.

Column sources:

* ``"<table>.<column>"`` with ``<table>`` one of ``products``, ``categories``,
  ``warranty_types`` and, for batch views, ``batches``;
* ``"category_path"``: the names from the root down to the product's category, joined by
  ``" > "`` (see ``app.project.category_path``).

Joins are fixed by the contract: a product joins its category (inner, and the category
must have a path) and its warranty type (left); a batch joins its product (inner, the
product must be visible).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from app.changes import SourceTable

ColumnType = Literal[
    "bigint", "int", "text", "varchar(16)", "varchar(64)", "varchar(255)", "numeric(12,2)", "date"
]


class Grain(StrEnum):
    """What one view row stands for."""

    PRODUCT = "product"
    BATCH = "batch"


CATEGORY_PATH = "category_path"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    source: str
    type: ColumnType
    nullable: bool = False

    @property
    def source_table(self) -> SourceTable | None:
        """The source table this column reads, or ``None`` for ``category_path``."""
        if self.source == CATEGORY_PATH:
            return None
        table = self.source.split(".", 1)[0]
        assert table in ("categories", "warranty_types", "products", "batches"), table
        return table  # type: ignore[return-value]

    @property
    def source_column(self) -> str:
        return self.source.split(".", 1)[1] if "." in self.source else self.source


@dataclass(frozen=True, slots=True)
class ViewDef:
    consumer: str
    table: str
    grain: Grain
    key: str
    columns: tuple[Column, ...]

    @property
    def name(self) -> str:
        return f"{self.consumer}.{self.table}"

    @property
    def depends_on(self) -> frozenset[SourceTable]:
        """Source tables whose changes can alter this view's rows.

        Visibility always depends on products and categories (the category path), and a
        batch view on batches too, whatever columns are listed.
        """
        tables: set[SourceTable] = {"products", "categories"}
        if self.grain is Grain.BATCH:
            tables.add("batches")
        for col in self.columns:
            t = col.source_table
            if t is not None:
                tables.add(t)
        return frozenset(tables)

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)


def _c(name: str, source: str, type_: ColumnType, nullable: bool = False) -> Column:
    return Column(name=name, source=source, type=type_, nullable=nullable)


ORDER_PRODUCT_VIEW = ViewDef(
    consumer="order",
    table="product_view",
    grain=Grain.PRODUCT,
    key="product_id",
    columns=(
        _c("product_id", "products.id", "bigint"),
        _c("sku", "products.sku", "varchar(64)"),
        _c("name", "products.name", "varchar(255)"),
        _c("category_id", "products.category_id", "bigint"),
        _c("category_name", "categories.name", "varchar(255)"),
        _c("category_path", CATEGORY_PATH, "text"),
        _c("warranty_name", "warranty_types.name", "varchar(255)", nullable=True),
        _c("warranty_months", "warranty_types.months", "int", nullable=True),
        _c("price", "products.price", "numeric(12,2)"),
        _c("status", "products.status", "varchar(16)"),
    ),
)

PURCHASE_PRODUCT_VIEW = ViewDef(
    consumer="purchase",
    table="product_view",
    grain=Grain.PRODUCT,
    key="product_id",
    columns=(
        _c("product_id", "products.id", "bigint"),
        _c("sku", "products.sku", "varchar(64)"),
        _c("name", "products.name", "varchar(255)"),
        _c("unit", "products.unit", "varchar(16)"),
        _c("status", "products.status", "varchar(16)"),
        _c("category_code", "categories.code", "varchar(64)"),
    ),
)

PURCHASE_BATCH_VIEW = ViewDef(
    consumer="purchase",
    table="batch_view",
    grain=Grain.BATCH,
    key="batch_id",
    columns=(
        _c("batch_id", "batches.id", "bigint"),
        _c("batch_no", "batches.batch_no", "varchar(64)"),
        _c("product_id", "batches.product_id", "bigint"),
        _c("sku", "products.sku", "varchar(64)"),
        _c("product_name", "products.name", "varchar(255)"),
        _c("category_path", CATEGORY_PATH, "text"),
        _c("manufactured_on", "batches.manufactured_on", "date", nullable=True),
        _c("expires_on", "batches.expires_on", "date", nullable=True),
        _c("warranty_months", "warranty_types.months", "int", nullable=True),
    ),
)

#: Every view viewsync maintains. The single place to add a view or a column.
VIEWS: tuple[ViewDef, ...] = (ORDER_PRODUCT_VIEW, PURCHASE_PRODUCT_VIEW, PURCHASE_BATCH_VIEW)


def consumers(views: tuple[ViewDef, ...] = VIEWS) -> tuple[str, ...]:
    """The consumer names, in first-seen order."""
    return tuple(dict.fromkeys(v.consumer for v in views))
