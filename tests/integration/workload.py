"""A seeded random workload on the real Product database.

It keeps a small model of the rows it created so that every statement is valid under the
source's foreign keys (the database enforces them anyway). Ids start above 2^32 in a range
of their own per run. Operations cover every table: inserts, updates of plain columns and
of foreign keys (moves), primary-key changes, deletes in every order the source allows,
statements that touch many rows, and transactions of several statements.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa


@dataclass
class Model:
    categories: dict[int, int | None] = field(default_factory=dict)  # id -> parent
    warranties: set[int] = field(default_factory=set)
    products: dict[int, tuple[int, int | None]] = field(default_factory=dict)  # cat, warranty
    batches: dict[int, int] = field(default_factory=dict)  # id -> product


class Workload:
    def __init__(self, engine: sa.Engine, seed: int) -> None:
        self.engine = engine
        self.rng = random.Random(seed)
        self.m = Model()
        self.next_id = (1 << 32) + self.rng.randrange(1 << 40)
        self.counts: dict[str, int] = {}

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def _x(self, conn: sa.Connection, sql: str, **params: Any) -> None:
        conn.execute(sa.text(sql), params)

    def _word(self) -> str:
        return self.rng.choice(["Alpha", "Beta", "Gamma", "Delta", "Omega", "Nova", "Terra"]) + str(
            self.rng.randint(1, 999)
        )

    # ------------------------------------------------------------------ operations
    def add_category(self, conn: sa.Connection) -> None:
        cid = self._id()
        parent = self.rng.choice([None, *self.m.categories]) if self.m.categories else None
        self._x(conn, "INSERT INTO categories VALUES (:i, :p, :c, :n)", i=cid, p=parent,
                c=f"c{cid}", n=self._word())
        self.m.categories[cid] = parent

    def rename_category(self, conn: sa.Connection) -> None:
        cid = self.rng.choice(list(self.m.categories))
        self._x(conn, "UPDATE categories SET name = :n, code = :c WHERE id = :i", i=cid,
                n=self._word(), c=f"c{cid}-{self.rng.randint(0, 99)}")

    def move_category(self, conn: sa.Connection) -> None:
        """A new parent, possibly inside its own subtree (a cycle the source allows)."""
        cid = self.rng.choice(list(self.m.categories))
        parent = self.rng.choice([None, *[c for c in self.m.categories if c != cid]])
        self._x(conn, "UPDATE categories SET parent_id = :p WHERE id = :i", i=cid, p=parent)
        self.m.categories[cid] = parent

    def delete_category(self, conn: sa.Connection) -> None:
        """Move its products and children away first, then delete (one transaction)."""
        cid = self.rng.choice(list(self.m.categories))
        others = [c for c in self.m.categories if c != cid]
        if not others:
            return
        target = self.rng.choice(others)
        self._x(conn, "UPDATE products SET category_id = :t WHERE category_id = :c",
                t=target, c=cid)
        for pid, (cat, w) in list(self.m.products.items()):
            if cat == cid:
                self.m.products[pid] = (target, w)
        self._x(conn, "UPDATE categories SET parent_id = NULL WHERE parent_id = :c", c=cid)
        for child, parent in list(self.m.categories.items()):
            if parent == cid:
                self.m.categories[child] = None
        self._x(conn, "DELETE FROM categories WHERE id = :c", c=cid)
        del self.m.categories[cid]

    def add_warranty(self, conn: sa.Connection) -> None:
        wid = self._id()
        self._x(conn, "INSERT INTO warranty_types VALUES (:i, :n, :m)", i=wid, n=self._word(),
                m=self.rng.choice([6, 12, 24, 36]))
        self.m.warranties.add(wid)

    def change_warranty(self, conn: sa.Connection) -> None:
        wid = self.rng.choice(sorted(self.m.warranties))
        self._x(conn, "UPDATE warranty_types SET months = :m, name = :n WHERE id = :i", i=wid,
                m=self.rng.randint(1, 60), n=self._word())

    def delete_warranty(self, conn: sa.Connection) -> None:
        wid = self.rng.choice(sorted(self.m.warranties))
        self._x(conn, "UPDATE products SET warranty_type_id = NULL WHERE warranty_type_id = :w",
                w=wid)
        for pid, (cat, w) in list(self.m.products.items()):
            if w == wid:
                self.m.products[pid] = (cat, None)
        self._x(conn, "DELETE FROM warranty_types WHERE id = :w", w=wid)
        self.m.warranties.discard(wid)

    def add_product(self, conn: sa.Connection) -> None:
        pid = self._id()
        cat = self.rng.choice(list(self.m.categories))
        w = self.rng.choice([None, *sorted(self.m.warranties)])
        self._x(conn, "INSERT INTO products (id, sku, name, category_id, warranty_type_id, "
                "unit, price, status) VALUES (:i, :s, :n, :c, :w, :u, :pr, :st)", i=pid,
                s=f"S{pid}", n=self._word(), c=cat, w=w, u="pcs",
                pr=Decimal(self.rng.randint(1, 10**9)) / 100, st="active")
        self.m.products[pid] = (cat, w)

    def update_product(self, conn: sa.Connection) -> None:
        pid = self.rng.choice(list(self.m.products))
        cat, w = self.m.products[pid]
        what = self.rng.random()
        if what < 0.4:
            cat = self.rng.choice(list(self.m.categories))
        elif what < 0.6:
            w = self.rng.choice([None, *sorted(self.m.warranties)])
        self._x(conn, "UPDATE products SET name = :n, category_id = :c, warranty_type_id = :w, "
                "price = :pr, status = :st, unit = :u WHERE id = :i", i=pid, n=self._word(),
                c=cat, w=w, pr=Decimal(self.rng.randint(1, 10**6)) / 100,
                st=self.rng.choice(["active", "draft", "discontinued"]),
                u=self.rng.choice(["pcs", "box"]))
        self.m.products[pid] = (cat, w)

    def reprice_category(self, conn: sa.Connection) -> None:
        """One statement, many rows."""
        cid = self.rng.choice(list(self.m.categories))
        self._x(conn, "UPDATE products SET price = price + 1 WHERE category_id = :c", c=cid)

    def delete_product(self, conn: sa.Connection) -> None:
        """Its batches first (the foreign key demands it), in the same transaction."""
        pid = self.rng.choice(list(self.m.products))
        self._x(conn, "DELETE FROM batches WHERE product_id = :p", p=pid)
        for bid, p in list(self.m.batches.items()):
            if p == pid:
                del self.m.batches[bid]
        self._x(conn, "DELETE FROM products WHERE id = :p", p=pid)
        del self.m.products[pid]

    def add_batch(self, conn: sa.Connection) -> None:
        bid = self._id()
        pid = self.rng.choice(list(self.m.products))
        made = dt.date(2024, 1, 1) + dt.timedelta(days=self.rng.randint(0, 900))
        self._x(conn, "INSERT INTO batches VALUES (:i, :p, :b, :m, :e)", i=bid, p=pid,
                b=f"B{bid}", m=made if self.rng.random() < 0.8 else None,
                e=made + dt.timedelta(days=365) if self.rng.random() < 0.5 else None)
        self.m.batches[bid] = pid

    def update_batch(self, conn: sa.Connection) -> None:
        bid = self.rng.choice(list(self.m.batches))
        pid = self.m.batches[bid]
        if self.rng.random() < 0.5:
            pid = self.rng.choice(list(self.m.products))
        self._x(conn, "UPDATE batches SET product_id = :p, batch_no = :b WHERE id = :i", i=bid,
                p=pid, b=f"B{bid}-{self.rng.randint(0, 99)}")
        self.m.batches[bid] = pid

    def rekey_batch(self, conn: sa.Connection) -> None:
        """A primary-key change: Debezium emits a delete of the old key and a create."""
        bid = self.rng.choice(list(self.m.batches))
        new = self._id()
        self._x(conn, "UPDATE batches SET id = :n WHERE id = :o", n=new, o=bid)
        self.m.batches[new] = self.m.batches.pop(bid)

    def delete_batch(self, conn: sa.Connection) -> None:
        bid = self.rng.choice(list(self.m.batches))
        self._x(conn, "DELETE FROM batches WHERE id = :i", i=bid)
        del self.m.batches[bid]

    # ------------------------------------------------------------------ driver
    def _choices(self) -> list[tuple[str, float]]:
        m = self.m
        ops: list[tuple[str, float]] = [("add_category", 3 if len(m.categories) < 12 else 0.5),
                                        ("add_warranty", 1 if len(m.warranties) < 4 else 0.1)]
        if m.categories:
            ops += [("rename_category", 2), ("move_category", 2), ("add_product", 5),
                    ("reprice_category", 1)]
            if len(m.categories) > 3:
                ops.append(("delete_category", 0.7))
        if m.warranties:
            ops += [("change_warranty", 1.5), ("delete_warranty", 0.3)]
        if m.products:
            ops += [("update_product", 5), ("delete_product", 1), ("add_batch", 5)]
        if m.batches:
            ops += [("update_batch", 3), ("delete_batch", 1.5), ("rekey_batch", 0.5)]
        return ops

    def step(self) -> None:
        """One transaction of one to three operations."""
        with self.engine.begin() as conn:
            for _ in range(self.rng.choice([1, 1, 1, 2, 3])):
                ops = self._choices()
                name = self.rng.choices([o for o, _ in ops], [w for _, w in ops])[0]
                getattr(self, name)(conn)
                self.counts[name] = self.counts.get(name, 0) + 1

    def run(self, n: int) -> None:
        for _ in range(n):
            self.step()
