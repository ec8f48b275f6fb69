"""Sink: the SQL each dialect gets, compiled without a server (the real servers are
exercised by tests/integration)."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.schema import CreateTable

from app.sink import delete_statement, dialect_for, upsert_statement, view_table
from app.views import ViewDef, bundled_views, view_named
from tests.unit.test_catalog import CATALOG

VIEWS = bundled_views()
ORDER_PRODUCT_VIEW = view_named("order.product_view", VIEWS)
PURCHASE_BATCH_VIEW = view_named("purchase.batch_view", VIEWS)


def _sql(stmt: sa.Executable, dialect: sa.engine.Dialect) -> str:
    return str(stmt.compile(dialect=dialect))  # type: ignore[attr-defined]


@pytest.mark.parametrize("views", [VIEWS, CATALOG.views], ids=["bundled", "catalogue"])
def test_view_tables_follow_the_definitions(views: tuple[ViewDef, ...]) -> None:
    for view in views:
        t = view_table(view, sa.MetaData())
        assert [c.name for c in t.columns] == [c.name for c in view.columns]
        assert [c.name for c in t.primary_key.columns] == [view.key]
        for col in view.columns:
            assert t.c[col.name].nullable == (col.nullable and col.name != view.key)


def test_postgres_upsert_is_one_unnest_statement_with_on_conflict_update() -> None:
    t = view_table(ORDER_PRODUCT_VIEW, sa.MetaData())
    sql = _sql(upsert_statement(t, "product_id", "postgresql"), postgresql.dialect())
    assert 'ON CONFLICT ("product_id") DO UPDATE SET' in sql
    assert "CAST(%(price)s AS NUMERIC(12, 2)[])" in sql and "SELECT * FROM unnest(" in sql
    for col in ORDER_PRODUCT_VIEW.columns:
        if col.name != "product_id":
            assert f'"{col.name}" = EXCLUDED."{col.name}"' in sql
    rows = [{c.name: i for c in ORDER_PRODUCT_VIEW.columns} for i in range(3)]
    params = dialect_for("postgresql").upsert_params(t, rows)
    assert params == {c.name: [0, 1, 2] for c in ORDER_PRODUCT_VIEW.columns}


def test_unknown_dialect_is_named() -> None:
    with pytest.raises(ValueError, match=r"'oracle'.*mariadb, mysql, postgresql"):
        dialect_for("oracle")


def test_mariadb_upsert_is_on_duplicate_key_update() -> None:
    t = view_table(PURCHASE_BATCH_VIEW, sa.MetaData())
    sql = _sql(upsert_statement(t, "batch_id", "mariadb"), mysql.dialect())
    assert "ON DUPLICATE KEY UPDATE" in sql
    assert "category_path = VALUES(category_path)" in sql
    assert "batch_id = VALUES(batch_id)" not in sql


def test_delete_is_batched_by_key() -> None:
    t = view_table(PURCHASE_BATCH_VIEW, sa.MetaData())
    sql = _sql(delete_statement(t, "batch_id"), mysql.dialect())
    assert sql.startswith("DELETE FROM batch_view WHERE batch_view.batch_id IN")
    assert "__[POSTCOMPILE_keys]" in sql  # one list parameter, expanded at execution


def test_a_string_key_compares_byte_for_byte_on_mariadb() -> None:
    """MariaDB's default collations equate ``acme`` and ``ACME``: a string key column gets
    a binary collation (two keys that differ only by case are two rows)."""
    items = view_table(view_named("shop.item_view", CATALOG.views), sa.MetaData())
    ddl = str(CreateTable(items).compile(dialect=mysql.dialect()))
    assert re.search(r"item_no VARCHAR\(32\) COLLATE utf8mb4_\w*bin NOT NULL", ddl), ddl
    assert re.search(r"brand_code VARCHAR\(32\) NOT NULL", ddl), ddl  # not a key: as typed
    assert "VARCHAR(32)" in str(CreateTable(items).compile(dialect=postgresql.dialect()))
    variants = view_table(view_named("shop.variant_view", CATALOG.views), sa.MetaData())
    assert "COLLATE" not in str(CreateTable(variants).compile(dialect=mysql.dialect()))


def test_statements_of_a_string_keyed_view() -> None:
    t = view_table(view_named("catalog.brand_view", CATALOG.views), sa.MetaData())
    assert 'ON CONFLICT ("code") DO UPDATE SET' in _sql(
        upsert_statement(t, "code", "postgresql"), postgresql.dialect())
    assert _sql(delete_statement(t, "code"), mysql.dialect()).startswith(
        "DELETE FROM brand_view WHERE brand_view.code IN")
