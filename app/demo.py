"""`viewsync demo seed --products N`: a realistic catalogue in the Product database.

A category tree several levels deep, a handful of warranty types, N products spread over
the leaf categories (some without warranty), and one to five batches per product. New ids
start above the current maximum, so seeding twice adds a second catalogue beside the first.
"""

from __future__ import annotations

import datetime as dt
import random
import sys
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from app.settings import Settings

CHUNK = 2000
TOP = ["Tools", "Electrical", "Plumbing", "Fasteners", "Safety", "Garden", "Lighting", "Paint"]
SUB = ["Hand", "Power", "Precision", "Heavy Duty", "Compact", "Industrial", "Outdoor", "Pro"]
LEAF = ["Kits", "Spares", "Accessories", "Sets", "Singles", "Bulk"]
NOUNS = ["Hammer", "Drill", "Wrench", "Cable", "Valve", "Screw", "Glove", "Hose", "Lamp", "Brush"]
WARRANTIES = [("None extended", 0), ("Standard", 12), ("Extended", 24), ("Pro", 36),
              ("Lifetime-limited", 120)]
UNITS = ["pcs", "box", "m", "kg", "set"]
STATUSES = ["active"] * 8 + ["discontinued", "draft"]


class Progress:
    """A progress bar on stderr (rich, on a terminal) or plain lines every 10% (a log)."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, total, 0
        self.t0 = time.monotonic()
        self.tty = sys.stderr.isatty()
        self._last = -1
        self._bar: Any = None
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(TextColumn(f"  {label:<14}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True),
                            transient=True)
            self._task = self._bar.add_task(label, total=total)
            self._bar.start()

    def add(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
            return
        pct = int(100 * self.done / max(self.total, 1))
        if pct // 10 != self._last // 10 or self.done >= self.total:
            print(f"  {self.label}: {self.done}/{self.total} ({pct}%)", file=sys.stderr,
                  flush=True)
        self._last = pct

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        secs = time.monotonic() - self.t0
        rate = self.done / secs if secs > 0 else 0.0
        print(f"  ✓ {self.label}: {self.done} rows in {secs:.1f}s ({rate:,.0f} rows/s)",
              file=sys.stderr, flush=True)


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterator[Sequence[dict[str, Any]]]:
    for i in range(0, len(rows), CHUNK):
        yield rows[i : i + CHUNK]


def _next_id(conn: sa.Connection, table: str) -> int:
    return int(conn.execute(sa.text(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}")).scalar_one())


def build_catalogue(
    products: int, rng: random.Random, start: dict[str, int]
) -> dict[str, list[dict[str, Any]]]:
    """The rows to insert, with ids from ``start``; categories parents-first."""
    cats: list[dict[str, Any]] = []
    cid = start["categories"]
    leaves: list[int] = []
    for top in TOP:
        root = cid
        cats.append({"id": cid, "parent_id": None, "code": f"c{cid}", "name": top})
        cid += 1
        for sub in rng.sample(SUB, 4):
            mid = cid
            cats.append({"id": cid, "parent_id": root, "code": f"c{cid}", "name": f"{sub} {top}"})
            cid += 1
            for leaf in rng.sample(LEAF, 3):
                grp = cid
                cats.append({"id": cid, "parent_id": mid, "code": f"c{cid}", "name": leaf})
                cid += 1
                for size in ("Small", "Large"):
                    cats.append({"id": cid, "parent_id": grp, "code": f"c{cid}", "name": size})
                    leaves.append(cid)
                    cid += 1
    wid = start["warranty_types"]
    warranties = [{"id": wid + i, "name": n, "months": m} for i, (n, m) in enumerate(WARRANTIES)]
    prods: list[dict[str, Any]] = []
    batches: list[dict[str, Any]] = []
    pid, bid = start["products"], start["batches"]
    base = dt.date(2025, 1, 1)
    for _ in range(products):
        noun = rng.choice(NOUNS)
        prods.append({
            "id": pid, "sku": f"SKU-{pid:09d}", "name": f"{noun} {rng.randint(100, 999)}",
            "category_id": rng.choice(leaves),
            "warranty_type_id": rng.choice([None, *[w["id"] for w in warranties]]),
            "unit": rng.choice(UNITS), "price": Decimal(rng.randint(99, 99999)) / 100,
            "status": rng.choice(STATUSES),
        })
        for _ in range(rng.randint(1, 5)):
            made = base + dt.timedelta(days=rng.randint(0, 600))
            batches.append({
                "id": bid, "product_id": pid, "batch_no": f"B{bid:010d}",
                "manufactured_on": made,
                "expires_on": made + dt.timedelta(days=rng.randint(90, 1500))
                if rng.random() < 0.7 else None,
            })
            bid += 1
        pid += 1
    return {"categories": cats, "warranty_types": warranties, "products": prods,
            "batches": batches}


def seed(settings: Settings, products: int, seed: int = 1) -> dict[str, int]:
    """Insert a catalogue; return rows inserted per table."""
    if products < 0:
        raise ValueError("--products must be >= 0")
    rng = random.Random(seed)
    engine = sa.create_engine(settings.product_url())
    counts: dict[str, int] = {}
    try:
        with engine.connect() as conn:
            start = {t: _next_id(conn, t)
                     for t in ("categories", "warranty_types", "products", "batches")}
        rows = build_catalogue(products, rng, start)
        meta = sa.MetaData()
        for table, data in rows.items():
            t = sa.Table(table, meta, autoload_with=engine)
            bar = Progress(table, len(data))
            for chunk in _chunks(data):
                with engine.begin() as conn:
                    conn.execute(sa.insert(t), list(chunk))
                bar.add(len(chunk))
            bar.finish()
            counts[table] = len(data)
    finally:
        engine.dispose()
    return counts
