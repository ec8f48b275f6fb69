"""An independent reference for the three views: the contract's join over the source tables.

Written against schemas/CONTRACT.md only (it does not use app.join or app.project): the four
tables are read in one consistent snapshot, category paths are built top-down from the roots
(app.project walks bottom-up), and a product is visible only when its category has a path.

(A first version computed this with a recursive CTE in MariaDB 10.11; joined with products,
that query silently dropped a few visible rows on larger catalogues, while the same CTE
alone returned them. Plain SELECTs and a plain-Python join avoid depending on it.)
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

Row = tuple[Any, ...]
Views = dict[str, dict[int, Row]]

def _paths(categories: dict[int, Row]) -> dict[int, str]:
    """Category paths computed top-down: breadth-first from the roots, so a category whose
    chain is broken or cyclic is never reached and has no path."""
    children: dict[int | None, list[int]] = {}
    for cid, (_id, parent, _code, _name) in categories.items():
        children.setdefault(parent, []).append(cid)
    paths: dict[int, str] = {}
    frontier = [(cid, categories[cid][3]) for cid in children.get(None, [])]
    while frontier:
        nxt = []
        for cid, path in frontier:
            paths[cid] = path
            nxt += [(k, f"{path} > {categories[k][3]}") for k in children.get(cid, [])]
        frontier = nxt
    return paths


def _join(tables: dict[str, dict[int, Row]]) -> Views:
    cats, wars = tables["categories"], tables["warranty_types"]
    prods, batches = tables["products"], tables["batches"]
    paths = _paths(cats)
    order: dict[int, Row] = {}
    purchase: dict[int, Row] = {}
    for pid, (_i, sku, name, cat, war, unit, price, status) in prods.items():
        if cat not in paths:
            continue
        w = wars.get(war) if war is not None else None
        order[pid] = (pid, sku, name, cat, cats[cat][3], paths[cat],
                      w[1] if w else None, w[2] if w else None, price, status)
        purchase[pid] = (pid, sku, name, unit, status, cats[cat][2])
    batch_view: dict[int, Row] = {}
    for bid, (_i, pid, batch_no, made, expires) in batches.items():
        if pid not in order:
            continue
        o = order[pid]
        batch_view[bid] = (bid, batch_no, pid, o[1], o[2], o[5], made, expires, o[7])
    return {"order.product_view": order, "purchase.product_view": purchase,
            "purchase.batch_view": batch_view}


SOURCE_SQL = {
    "categories": "SELECT id, parent_id, code, name FROM categories",
    "warranty_types": "SELECT id, name, months FROM warranty_types",
    "products": "SELECT id, sku, name, category_id, warranty_type_id, unit, price, status "
    "FROM products",
    "batches": "SELECT id, product_id, batch_no, manufactured_on, expires_on FROM batches",
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
    # One consistent snapshot of the four source tables.
    with product_db.connect() as conn:
        conn.execute(sa.text("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        conn.execute(sa.text("START TRANSACTION WITH CONSISTENT SNAPSHOT"))
        tables = {name: _rows(conn, sql) for name, sql in SOURCE_SQL.items()}
        conn.execute(sa.text("COMMIT"))
    return _join(tables)


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
    for name in ACTUAL_SQL:
        exp, act = expected[name], actual[name]
        for key in sorted(exp.keys() - act.keys()):
            problems.append(f"{name}: missing {key}: expected {exp[key]}")
        for key in sorted(act.keys() - exp.keys()):
            problems.append(f"{name}: extra {key}: {act[key]}")
        for key in sorted(exp.keys() & act.keys()):
            if exp[key] != act[key]:
                problems.append(f"{name}: row {key} differs: expected {exp[key]}, got {act[key]}")
    return problems
