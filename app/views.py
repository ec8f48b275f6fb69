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
from functools import cached_property
from typing import Literal

from app.changes import SOURCE_TABLES, SourceTable

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
        for known in SOURCE_TABLES:
            if table == known:
                return known
        raise ValueError(f"column {self.name!r}: unknown source table in {self.source!r}")

    @property
    def source_column(self) -> str:
        return self.source.split(".", 1)[1] if "." in self.source else self.source


@dataclass(frozen=True)
class ViewDef:
    consumer: str
    table: str
    grain: Grain
    key: str
    columns: tuple[Column, ...]

    @property
    def name(self) -> str:
        return f"{self.consumer}.{self.table}"

    @cached_property
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

    def relevant(self, table: SourceTable) -> frozenset[str]:
        """Columns of ``table`` whose change can alter a row of this view: those it reads,
        the join columns, and what the category path is made of (when it has one)."""
        return self._relevant.get(table, frozenset())

    @cached_property
    def _relevant(self) -> dict[SourceTable, frozenset[str]]:
        cols: dict[SourceTable, set[str]] = {
            "products": {"category_id", "warranty_type_id"},
            "categories": {"parent_id"},
            "warranty_types": set(),
            "batches": {"product_id"} if self.grain is Grain.BATCH else set(),
        }
        for col in self.columns:
            table = col.source_table
            if table is None:
                cols["categories"].add("name")
            else:
                cols[table].add(col.source_column)
        return {t: frozenset(c) for t, c in cols.items() if t in self.depends_on}

    def validate(self) -> None:
        """Reject a definition the projection could not serve; raise ``ValueError``."""
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate column names")
        if self.key not in names:
            raise ValueError(f"{self.name}: key {self.key!r} is not a column")
        for col in self.columns:
            table = col.source_table  # raises for an unknown table
            if table == "batches" and self.grain is Grain.PRODUCT:
                raise ValueError(f"{self.name}.{col.name}: a product view cannot read batches")
            if table is not None and not col.source_column:
                raise ValueError(f"{self.name}.{col.name}: no source column")

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
for _view in VIEWS:
    _view.validate()


def consumers(views: tuple[ViewDef, ...] = VIEWS) -> tuple[str, ...]:
    """The consumer names, in first-seen order."""
    return tuple(dict.fromkeys(v.consumer for v in views))
