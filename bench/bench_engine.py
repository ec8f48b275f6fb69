"""Micro-benchmark of the pure join engine and projection (no Kafka, no Faust, no SQL).

Run from the repository root::

    python bench/bench_engine.py [--out bench/reports/engine.md] [--repeats 5]

Measures, on plain dicts as stores, with every affected row projected for every view of
the bundled views file:

(a) the snapshot load (every row delivered once as ``op='r'``) and a mix of ordinary
    changes, in changes per second;
(b) one rename of the root category, which has every product (and batch) beneath it.

Each measurement is repeated and the median reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.changes import Change
from app.pipeline import Pipeline
from app.settings import load_settings
from app.state import MemoryStore
from app.wiring import build_pipeline

#: Categories per tree level, root first: 1000 categories, 5 levels, one root.
LEVELS = (1, 9, 90, 300, 600)
WARRANTIES = 20

#: The change mix of (a): kind -> weight (per mille).
MIX = {
    "product update": 560,
    "batch update": 425,
    "category rename": 10,
    "category move": 4,
    "warranty change": 1,
}


@dataclass
class Catalog:
    """Generated source rows, plus what the mix needs to pick from."""

    categories: dict[int, dict[str, Any]]
    warranties: dict[int, dict[str, Any]]
    products: dict[int, dict[str, Any]]
    batches: dict[int, dict[str, Any]]
    levels: list[list[int]] = field(default_factory=list)

    def snapshot(self) -> list[Change]:
        tables = (
            ("categories", self.categories),
            ("warranty_types", self.warranties),
            ("products", self.products),
            ("batches", self.batches),
        )
        return [
            Change(table, key, after=row, op="r")  # type: ignore[arg-type]
            for table, rows in tables
            for key, row in rows.items()
        ]


def make_catalog(rng: random.Random, n_products: int, n_batches: int) -> Catalog:
    """A 5-level category tree, warranties, products and batches with ids beyond 2**31."""
    base = 2**33
    levels: list[list[int]] = []
    categories: dict[int, dict[str, Any]] = {}
    next_id = base
    for depth, size in enumerate(LEVELS):
        level = []
        for _ in range(size):
            parent = rng.choice(levels[depth - 1]) if depth else None
            categories[next_id] = {
                "id": next_id,
                "parent_id": parent,
                "code": f"C{next_id}",
                "name": f"Category {next_id - base}",
            }
            level.append(next_id)
            next_id += 1
        levels.append(level)
    warranties = {
        i: {"id": i, "name": f"Warranty {i}", "months": 6 * i} for i in range(1, WARRANTIES + 1)
    }
    category_ids = list(categories)
    products = {
        base + i: {
            "id": base + i,
            "sku": f"SKU-{i:07d}",
            "name": f"Product {i}",
            "category_id": rng.choice(category_ids),
            "warranty_type_id": rng.choice([None, *warranties]),
            "unit": "pcs",
            "price": Decimal(rng.randint(100, 99_999)) / 100,
            "status": "active",
        }
        for i in range(n_products)
    }
    product_ids = list(products)
    day0 = date(2024, 1, 1)
    batches = {
        base + i: {
            "id": base + i,
            "product_id": rng.choice(product_ids),
            "batch_no": f"B-{i:08d}",
            "manufactured_on": day0 + timedelta(days=i % 365),
            "expires_on": None,
        }
        for i in range(n_batches)
    }
    return Catalog(categories, warranties, products, batches, levels)


def make_mix(rng: random.Random, cat: Catalog, n: int) -> list[tuple[str, Change]]:
    """``n`` ordinary changes drawn from :data:`MIX`, each a fresh row (never mutated)."""
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=n)
    product_ids, batch_ids = list(cat.products), list(cat.batches)
    non_root = [c for level in cat.levels[1:] for c in level]
    depth_of = {c: d for d, level in enumerate(cat.levels) for c in level}
    out: list[tuple[str, Change]] = []
    for i, kind in enumerate(kinds):
        if kind == "product update":
            key = rng.choice(product_ids)
            row = dict(cat.products[key], price=Decimal(rng.randint(100, 99_999)) / 100)
            if rng.random() < 0.03:
                row["category_id"] = rng.choice(list(cat.categories))
            out.append((kind, Change("products", key, after=row)))
        elif kind == "batch update":
            key = rng.choice(batch_ids)
            row = dict(cat.batches[key], expires_on=date(2027, 1, 1) + timedelta(days=i % 90))
            if rng.random() < 0.02:
                row["product_id"] = rng.choice(product_ids)
            out.append((kind, Change("batches", key, after=row)))
        elif kind == "category rename":
            key = rng.choice(non_root)
            row = dict(cat.categories[key], name=f"Renamed {i}")
            out.append((kind, Change("categories", key, after=row)))
        elif kind == "category move":  # to another parent one level up: no cycles, same depth
            key = rng.choice(non_root)
            row = dict(cat.categories[key], parent_id=rng.choice(cat.levels[depth_of[key] - 1]))
            out.append((kind, Change("categories", key, after=row)))
        else:
            key = rng.randint(1, WARRANTIES)
            row = dict(cat.warranties[key], months=rng.randint(1, 60))
            out.append((kind, Change("warranty_types", key, after=row)))
    return out


class _NoRegistry:
    """The engine bench feeds decoded changes: no record is decoded, no schema is asked."""

    def schema_text(self, schema_id: int) -> str:
        raise KeyError(schema_id)


def new_pipeline() -> Pipeline:
    """The worker's pipeline over a memory store (no Kafka, no registry, no sink), built by
    the worker's composition root."""
    settings = load_settings(topic_prefix="bench", source_database="engine", shards=1,
                             worker_store="memory")
    return build_pipeline(settings, _NoRegistry(), MemoryStore(settings.graph()))


def apply_and_project(pipeline: Pipeline, change: Change) -> int:
    """The worker's path for one change (apply, project every dirty row, commit the
    state), as if each change were its own batch; rows projected."""
    pipeline.apply(change)
    views, _changes = pipeline.take_batch()
    pipeline.commit()
    return sum(len(b) for b in views.values())


def run(pipeline: Pipeline, changes: Iterable[Change]) -> tuple[float, int, int]:
    """(seconds, changes, rows projected) for applying and projecting ``changes``."""
    n = rows = 0
    start = time.perf_counter()
    for change in changes:
        rows += apply_and_project(pipeline, change)
        n += 1
    return time.perf_counter() - start, n, rows


@dataclass
class Results:
    samples: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.samples.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])


def one_repeat(cat: Catalog, mix: list[tuple[str, Change]], res: Results) -> None:
    """One full measurement: snapshot load, change mix, root rename (apply and project)."""
    engine = new_pipeline()
    secs, n, rows = run(engine, cat.snapshot())
    res.add("snapshot changes/s", n / secs)
    res.add("snapshot seconds", secs)
    res.info["snapshot changes"], res.info["snapshot rows"] = n, rows

    per_kind_secs: dict[str, float] = dict.fromkeys(MIX, 0.0)
    per_kind_rows: Counter[str] = Counter()
    start = time.perf_counter()
    for kind, change in mix:
        t0 = time.perf_counter()
        per_kind_rows[kind] += apply_and_project(engine, change)
        per_kind_secs[kind] += time.perf_counter() - t0
    secs = time.perf_counter() - start
    res.add("mix changes/s", len(mix) / secs)
    res.add("mix seconds", secs)
    res.info["mix rows"] = sum(per_kind_rows.values())
    for kind, kind_secs in per_kind_secs.items():
        if not per_kind_rows[kind] and not kind_secs:
            continue
        res.add(f"mix {kind} seconds", kind_secs)
        res.info[f"mix {kind} rows"] = per_kind_rows[kind]

    root = cat.levels[0][0]
    rename = Change("categories", root, after=dict(cat.categories[root], name="Everything"))
    t0 = time.perf_counter()
    affected = engine.apply(rename)
    t1 = time.perf_counter()
    views, _changes = engine.take_batch()
    t2 = time.perf_counter()
    res.add("rename apply seconds", t1 - t0)
    res.add("rename project seconds", t2 - t1)
    res.add("rename total seconds", t2 - t0)
    res.info["rename products"] = len(affected.of("products"))
    res.info["rename batches"] = len(affected.of("batches"))
    res.info["rename rows"] = sum(len(b) for b in views.values())


def report(res: Results, args: argparse.Namespace, mix: list[tuple[str, Change]]) -> str:
    med = res.median

    def spread(name: str) -> str:
        return f"{min(res.samples[name]):.3g}–{max(res.samples[name]):.3g}"

    counts = Counter(kind for kind, _ in mix)
    info = res.info
    lines = [
        "# Join engine micro-benchmark",
        "",
        f"Pure engine + projection for all {len(load_settings().views())} views, plain dicts "
        "as stores; "
        f"median of {args.repeats} runs (range in brackets).",
        "",
        f"- Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {platform.system()}",
        f"- Data: {sum(LEVELS)} categories in {len(LEVELS)} levels (one root), {WARRANTIES} "
        f"warranty types, {args.products:,} products, {args.batches:,} batches; ids > 2**31",
        "",
        "| measurement | median | range |",
        "|---|---:|---:|",
        f"| (a) snapshot load: {info['snapshot changes']:,} `r` changes, "
        f"{info['snapshot rows']:,} rows projected | "
        f"**{med('snapshot changes/s'):,.0f} changes/s** ({med('snapshot seconds'):.2f} s) | "
        f"{spread('snapshot changes/s')} /s |",
        f"| (a) change mix: {len(mix):,} changes, {info['mix rows']:,} rows projected | "
        f"**{med('mix changes/s'):,.0f} changes/s** ({med('mix seconds'):.2f} s) | "
        f"{spread('mix changes/s')} /s |",
        f"| (b) rename of the root: {info['rename products']:,} products + "
        f"{info['rename batches']:,} batches, {info['rename rows']:,} view rows | "
        f"**{med('rename total seconds'):.3f} s** (apply {med('rename apply seconds'):.3f} s, "
        f"project {med('rename project seconds'):.3f} s) | {spread('rename total seconds')} s |",
        "",
        "Change mix breakdown (median seconds over runs):",
        "",
        "| kind | changes | rows projected | seconds | µs/change |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in MIX:
        if counts[kind]:
            secs = med(f"mix {kind} seconds")
            lines.append(
                f"| {kind} | {counts[kind]:,} | {info[f'mix {kind} rows']:,} | {secs:.3f} | "
                f"{secs / counts[kind] * 1e6:,.0f} |"
            )
    lines += [
        "",
        "Product updates move category 3% of the time and batch updates move product 2%; "
        "category renames and moves pick any non-root category; a warranty change fans out "
        "to every product with that warranty and their batches.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--products", type=int, default=50_000)
    parser.add_argument("--batches", type=int, default=150_000)
    parser.add_argument("--mix", type=int, default=20_000, help="changes in the mix")
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    cat = make_catalog(rng, args.products, args.batches)
    mix = make_mix(rng, cat, args.mix)
    res = Results()
    for i in range(args.repeats):
        one_repeat(cat, mix, res)
        print(f"run {i + 1}/{args.repeats} done", file=sys.stderr)
    text = report(res, args, mix)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
