"""An independent reference for the three views: the contract's join, in SQL, in the source.

Written against shared/CONTRACT.md only (it does not use app.join or app.project): the
category path is a recursive CTE from the roots down, so a category whose chain is broken or
cyclic has no path, and a product is visible only when its category has one.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

Row = tuple[Any, ...]
Views = dict[str, dict[int, Row]]

_TREE = """
WITH RECURSIVE tree (id, path, depth) AS (
  SELECT id, CAST(name AS CHAR(10000)), 0 FROM categories WHERE parent_id IS NULL
  UNION ALL
  SELECT c.id, CONCAT(t.path, ' > ', c.name), t.depth + 1
  FROM categories c JOIN tree t ON c.parent_id = t.id
  WHERE t.depth < 1000
)
"""

EXPECTED_SQL = {
    "order.product_view": _TREE + """
SELECT p.id, p.sku, p.name, p.category_id, c.name, tree.path, w.name, w.months, p.price, p.status
FROM products p JOIN categories c ON c.id = p.category_id JOIN tree ON tree.id = c.id
LEFT JOIN warranty_types w ON w.id = p.warranty_type_id""",
    "purchase.product_view": _TREE + """
SELECT p.id, p.sku, p.name, p.unit, p.status, c.code
FROM products p JOIN categories c ON c.id = p.category_id JOIN tree ON tree.id = c.id""",
    "purchase.batch_view": _TREE + """
SELECT b.id, b.batch_no, b.product_id, p.sku, p.name, tree.path, b.manufactured_on,
       b.expires_on, w.months
FROM batches b JOIN products p ON p.id = b.product_id
JOIN categories c ON c.id = p.category_id JOIN tree ON tree.id = c.id
LEFT JOIN warranty_types w ON w.id = p.warranty_type_id""",
}

ACTUAL_SQL = {
    "order.product_view": "SELECT product_id, sku, name, category_id, category_name, "
    "category_path, warranty_name, warranty_months, price, status FROM product_view",
    "purchase.product_view": "SELECT product_id, sku, name, unit, status, category_code "
    "FROM product_view",
    "purchase.batch_view": "SELECT batch_id, batch_no, product_id, sku, product_name, "
    "category_path, manufactured_on, expires_on, warranty_months FROM batch_view",
}


def _rows(conn: sa.Connection, sql: str) -> dict[int, Row]:
    return {int(r[0]): tuple(r) for r in conn.execute(sa.text(sql))}


def expected_views(product_db: sa.Engine) -> Views:
    # One consistent snapshot of the source for all three views.
    with product_db.connect() as conn:
        conn.execute(sa.text("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        conn.execute(sa.text("START TRANSACTION WITH CONSISTENT SNAPSHOT"))
        out = {name: _rows(conn, sql) for name, sql in EXPECTED_SQL.items()}
        conn.execute(sa.text("COMMIT"))
    return out


def actual_views(consumer_dbs: dict[str, sa.Engine]) -> Views:
    out: Views = {}
    for name, sql in ACTUAL_SQL.items():
        consumer = name.split(".", 1)[0]
        with consumer_dbs[consumer].connect() as conn:
            out[name] = _rows(conn, sql)
    return out


def diff_views(expected: Views, actual: Views) -> list[str]:
    """Every missing, extra or different row, one line each."""
    problems: list[str] = []
    for name in EXPECTED_SQL:
        exp, act = expected[name], actual[name]
        for key in sorted(exp.keys() - act.keys()):
            problems.append(f"{name}: missing {key}: expected {exp[key]}")
        for key in sorted(act.keys() - exp.keys()):
            problems.append(f"{name}: extra {key}: {act[key]}")
        for key in sorted(exp.keys() & act.keys()):
            if exp[key] != act[key]:
                problems.append(f"{name}: row {key} differs: expected {exp[key]}, got {act[key]}")
    return problems
