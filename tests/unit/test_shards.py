"""Shards (no server): the ownership rules, and several batch loops — each with its own
state, reading one shared log at its own pace — writing one shared sink while shards move
between them, workers are killed and restarted and a zombie keeps writing; the sink ends
equal to the reference join of the source, whatever the interleaving."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from app.control import Command, encode
from app.metrics import Metrics
from app.positions import Positions, behind
from app.records import RawRecord
from app.shards import (
    Claim,
    Fenced,
    Progress,
    decode_positions,
    encode_positions,
    in_shards,
    merged_minimum,
    shard_of,
)
from app.state import MemoryStore
from app.views import bundled_definitions
from tests.unit.debezium import DictSchemas, key, value
from tests.unit.doubles import CONTROL, MemorySink, memory_loop, no_dead_letters
from tests.unit.test_join import reference_views

SHARDS = 4
EPOCH = dt.date(1970, 1, 1)
VIEW_NAMES = ("order.product_view", "purchase.product_view", "purchase.batch_view")
PARTS = {"categories": 1, "warranty_types": 1, "products": 2, "batches": 2}


def test_rows_belong_to_the_shard_of_their_own_key() -> None:
    assert shard_of(10, 4) == 2
    assert in_shards({1, 2, 3, 4, 5}, 4, frozenset({1})) == {1, 5}
    assert in_shards({1, 2}, 2, frozenset({0, 1})) == {1, 2}


def test_positions_round_trip_and_merge_to_what_every_database_has() -> None:
    p = {("a.b", 0): 5, ("a.b", 1): 7, ("c", 0): 0}
    assert decode_positions(encode_positions(p)) == p
    assert decode_positions(None) is None
    assert merged_minimum([{("t", 0): 5, ("t", 1): 9}, {("t", 0): 7}]) == {
        ("t", 0): 5, ("t", 1): 0}
    assert merged_minimum([{("t", 0): 5}, None]) is None
    assert Claim(0, {"a": 1, "b": 1}, {"a": {("t", 0): 3}, "b": {("t", 0): 2}}).start() == {
        ("t", 0): 2}
    assert behind({("t", 0): 2}, {("t", 0): 3})
    assert not behind({("t", 0): 3, ("u", 0): 1}, {("t", 0): 3})


class Source:
    """The source topics in memory, and the rows they describe."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.schemas = DictSchemas()
        self.log: dict[tuple[str, int], list[RawRecord]] = {
            (f"p.product.{t}", p): [] for t, n in PARTS.items() for p in range(n)}
        self.log[(CONTROL, 0)] = []
        self.rows: dict[str, dict[int, dict[str, Any]]] = {t: {} for t in PARTS}
        self.next_id = 1

    def _emit(self, table: str, id_: int, after: dict[str, Any] | None) -> None:
        before = self.rows[table].get(id_)
        tp = (f"p.product.{table}", id_ % PARTS[table])
        part = self.log[tp]
        k = key(self.schemas, table, id_)
        op = "d" if after is None else ("u" if before else "c")
        part.append(RawRecord(tp[0], tp[1], len(part), k,
                              value(self.schemas, table, op, before, after)))
        if after is None:
            self.rows[table].pop(id_, None)
            part.append(RawRecord(tp[0], tp[1], len(part), k, None))  # tombstone
        else:
            self.rows[table][id_] = after

    def command(self, cmd: Command) -> None:
        part = self.log[(CONTROL, 0)]
        part.append(RawRecord(CONTROL, 0, len(part), None, encode(cmd)))

    def _pick(self, table: str) -> int | None:
        ids = list(self.rows[table])
        return self.rng.choice(ids) if ids else None

    def step(self) -> None:
        r = self.rng
        table = r.choice(list(PARTS))
        existing = self._pick(table)
        if existing is not None and r.random() < 0.15:
            self._emit(table, existing, None)
            return
        id_ = existing if existing is not None and r.random() < 0.6 else self._new_id()
        if table == "categories":
            parent = self._pick("categories") if r.random() < 0.7 else None
            row = {"id": id_, "parent_id": parent, "code": f"c{r.randint(0, 9)}",
                   "name": f"n{r.randint(0, 99)}"}
        elif table == "warranty_types":
            row = {"id": id_, "name": f"w{r.randint(0, 9)}", "months": r.randint(1, 36)}
        elif table == "products":
            row = {"id": id_, "sku": f"S{id_}", "name": f"p{r.randint(0, 99)}",
                   "category_id": self._pick("categories") or 999_999,
                   "warranty_type_id": self._pick("warranty_types"), "unit": "pcs",
                   "price": Decimal(r.randint(1, 999)) / 100, "status": "active"}
        else:
            row = {"id": id_, "product_id": self._pick("products") or 999_999,
                   "batch_no": f"B{r.randint(0, 99)}", "manufactured_on": 19723,
                   "expires_on": None}
        self._emit(table, id_, row)

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    # SourceLog
    def read(self, start: Positions, end: Positions) -> Iterator[RawRecord]:
        for tp, stop in end.items():
            yield from self.log[tp][start.get(tp, 0):stop]

    def ends(self) -> Positions:
        return {tp: len(recs) for tp, recs in self.log.items()}


class Worker:
    """One worker process: a state store that survives its restarts, a batch loop, the
    offsets its group committed (where a restart resumes)."""

    def __init__(self, name: str, source: Source, sink: MemorySink,
                 metrics: Metrics | None = None) -> None:
        self.name = name
        self.source = source
        self.sink = sink
        self.metrics = metrics
        self.store = MemoryStore(bundled_definitions().graph)
        self.committed: Positions = {}
        self.alive = False
        self.start()

    def start(self) -> None:
        self.loop = memory_loop(self.sink, store=self.store, schemas=self.source.schemas,
                                source=self.source, send_dead_letter=no_dead_letters,
                                metrics=self.metrics, shards=SHARDS, worker_name=self.name)
        self.read = dict(self.committed)
        self.alive = True
        #: Out of the lease group without knowing it (a long pause): it goes on writing.
        self.dropped = False

    def kill(self) -> None:
        """SIGKILL: the write in flight may or may not have happened; nothing else runs."""
        task = self.loop._inflight  # the test plays the crash
        if task is not None and self.source.rng.random() < 0.5:
            task.cancel()
        self.alive = False

    async def step(self, rng: random.Random) -> None:
        """One batch: a few records of some partitions, in each partition's order."""
        batch: list[RawRecord] = []
        for tp in rng.sample(list(self.source.log), rng.randint(1, len(self.source.log))):
            at = self.read.get(tp, 0)
            take = self.source.log[tp][at:at + rng.randint(0, 6)]
            batch += take
            self.read[tp] = at + len(take)
        if not batch:
            return
        ends = {}
        for r in batch:
            ends[(r.topic, r.partition)] = r.offset + 1

        def done() -> None:
            self.committed.update(ends)

        await self.loop.handle(batch, done)

    def behind(self) -> bool:
        return any(self.read.get(tp, 0) < len(recs) for tp, recs in self.source.log.items())


async def rebalance(workers: list[Worker], rng: random.Random) -> None:
    """Eager: every live member gives its shards up, then gets its share (a dropped worker
    is not a member: it hears nothing)."""
    live = [w for w in workers if w.alive and not w.dropped]
    for w in live:
        await w.loop.own(frozenset())
    rng.shuffle(live)
    for i, w in enumerate(live):
        await w.loop.own(frozenset(s for s in range(SHARDS) if s % len(live) == i))
    for w in live:  # after the callbacks, as the pipeline process does
        await w.loop.settle()


def view_rows(sink: MemorySink) -> dict[str, dict[int, dict[str, Any]]]:
    return {name: sink.rows.get(name, {}) for name in
            ("order.product_view", "purchase.product_view", "purchase.batch_view")}


@pytest.mark.parametrize("redo_max", [200_000, 5], ids=["redo", "rebuild-when-far-behind"])
@pytest.mark.parametrize("seed", range(12))
def test_views_equal_the_join_whatever_moves_between_workers(
        seed: int, redo_max: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.ownership.REDO_MAX", redo_max)
    rng = random.Random(seed)
    source = Source(rng)
    sink = MemorySink()
    workers = [Worker(f"w{i}", source, sink) for i in range(3)]

    async def run() -> None:
        await rebalance(workers, rng)
        for _ in range(300):
            for _ in range(rng.randint(0, 3)):
                source.step()
            if rng.random() < 0.03:  # commands mid-run: a repair, a resync
                view = rng.choice(VIEW_NAMES)
                source.command(Command("repair", view, tuple(rng.sample(range(200), 5)))
                               if rng.random() < 0.5 else Command("resync", view))
            w = rng.choice(workers)
            roll = rng.random()
            members = sum(x.alive and not x.dropped for x in workers)
            if not w.alive:
                if roll < 0.2:
                    w.start()
                    await rebalance(workers, rng)
            elif w.dropped and roll < 0.15:  # back in the group
                w.dropped = False
                await rebalance(workers, rng)
            elif roll < 0.02 and not w.dropped and members > 1:
                # paused past its session: the group moves on, the worker goes on writing
                # (fenced: it must step back, and the views stay exact)
                w.dropped = True
                await rebalance(workers, rng)
            elif roll < 0.04 and members > 1:
                w.kill()  # its shards are unwritten until the group notices
                if rng.random() < 0.5:
                    await rebalance(workers, rng)
            elif roll < 0.09:
                await rebalance(workers, rng)
            else:
                await w.step(rng)
        live = [w for w in workers if w.alive]
        if not live:
            workers[0].start()
        for w in workers:
            w.dropped = False
        await rebalance(workers, rng)
        # drift made by hand, then a resync of every view: it must end exact anyway
        for w in workers:
            if w.alive:
                await w.loop.drain()
        for name in VIEW_NAMES:
            rows = sink.rows.setdefault(name, {})
            for k in list(rows)[:3]:
                rows[k] = dict(rows[k], sku="DRIFT") if "sku" in rows[k] else rows[k]
            rows[10**9 + len(rows)] = {"bogus": True}
            source.command(Command("resync", name))
        while any(w.alive and (w.behind() or w.loop.shards.pending) for w in workers):
            for w in workers:
                if w.alive:
                    await w.step(rng)
        for w in workers:
            if w.alive:
                await w.loop.drain()
                assert not w.loop.shards.pending

    asyncio.run(run())
    assert_views_equal_the_join(source, sink)


def assert_views_equal_the_join(source: Source, sink: MemorySink) -> None:
    batches = {k: dict(b, manufactured_on=EPOCH + dt.timedelta(days=b["manufactured_on"]))
               for k, b in source.rows["batches"].items()}
    expected = reference_views(dict(source.rows["categories"]),
                               dict(source.rows["warranty_types"]),
                               dict(source.rows["products"]), batches)
    got = view_rows(sink)
    diffs = [f"{name}[{k}]: {got[name].get(k)} != {rows.get(k)}"
             for name, rows in expected.items()
             for k in sorted(set(rows) | set(got[name])) if got[name].get(k) != rows.get(k)]
    assert not diffs, "\n".join(diffs[:10])


def test_a_worker_that_lost_its_shards_without_knowing_is_fenced_and_steps_back() -> None:
    rng = random.Random(7)
    source = Source(rng)
    sink = MemorySink()
    zombie, other = Worker("zombie", source, sink), Worker("other", source, sink)

    async def run() -> None:
        await zombie.loop.own(frozenset(range(SHARDS)))
        await zombie.loop.settle()
        # the group gave the shards to another worker; the zombie never heard of it
        await other.loop.own(frozenset(range(SHARDS)))
        for _ in range(30):
            source.step()
        while zombie.behind():  # its writes are refused: it gives every shard up
            await zombie.step(rng)
        await zombie.loop.drain()
        await zombie.loop.idle()
        assert not zombie.loop.shards.owned and not zombie.loop.shards.epochs
        assert not zombie.loop.pipeline.active
        while other.behind() or other.loop.shards.pending:
            await other.step(rng)
            await other.loop.settle()
        await other.loop.drain()
        # the group hears of it again and gives it shards: it claims them afresh
        await other.loop.own(frozenset({0, 1}))
        await zombie.loop.own(frozenset({2, 3}))
        await zombie.loop.settle()
        assert set(zombie.loop.shards.epochs) == {2, 3}
        for _ in range(30):
            source.step()
        for w in (zombie, other):
            while w.behind():
                await w.step(rng)
            await w.loop.drain()
        # fenced again, and this time no assignment comes within the grace: it stops
        await other.loop.own(frozenset(range(SHARDS)))
        zombie.loop.shards.fenced_grace_s = 0.0
        with pytest.raises(Fenced):
            for _ in range(10):  # a write (fenced), then the next step finds no assignment
                source.step()
                await zombie.step(rng)
                await zombie.loop.drain()
                await zombie.loop.idle()
        while other.behind():
            await other.step(rng)
        await other.loop.drain()

    asyncio.run(run())
    assert_views_equal_the_join(source, sink)


def test_a_takeover_stops_for_a_rebalance_and_is_done_again_after_it() -> None:
    """A rebuild takes minutes at a million rows; the lease group's callback must not wait
    for it (the member would be dropped and fenced). Announced, the next ``own`` stops it
    at its next write; the shard stays claimed and is rebuilt after the rebalance."""
    rng = random.Random(11)
    source = Source(rng)
    for _ in range(40):
        source.step()
    sink = MemorySink()
    w = Worker("w", source, sink)
    writes = -1  # counted from the takeover on
    real_write = sink.write

    def write(views: Any, progress: Any = None) -> int:
        nonlocal writes
        if writes >= 0:
            writes += 1
            if writes == 1:
                w.loop.own_requested()  # the group rebalances during the first write
        return real_write(views, progress)

    sink.write = write  # type: ignore[method-assign]

    async def run() -> None:
        nonlocal writes
        while w.behind():
            await w.step(rng)
        await w.loop.drain()
        await w.loop.own(frozenset(range(SHARDS)))
        writes = 0
        await w.loop.settle()
        assert writes == 1 and set(w.loop.shards.pending) == set(range(SHARDS))
        assert not w.loop.shards.epochs  # nothing taken over: no positions recorded
        await w.loop.own(frozenset(range(SHARDS)))  # the announced call
        await w.loop.settle()
        assert not w.loop.shards.pending and set(w.loop.shards.epochs) == set(range(SHARDS))

    asyncio.run(run())
    assert_views_equal_the_join(source, sink)


def test_the_shards_gauge_follows_takeovers_and_losses_without_a_batch() -> None:
    """A rebalance after the last batch (a member dropped and back, a worker added) must
    show in ``viewsync_shards_owned`` at once, not at the next batch."""
    rng = random.Random(3)
    source = Source(rng)
    for _ in range(20):
        source.step()
    metrics = Metrics(worker="w")
    w = Worker("w", source, MemorySink(), metrics)

    def owned() -> float | None:
        return metrics.registry.get_sample_value("viewsync_shards_owned")

    async def run() -> None:
        assert owned() == 0
        while w.behind():
            await w.step(rng)
        await w.loop.drain()
        await w.loop.own(frozenset(range(SHARDS)))
        assert owned() == 0  # claimed, not yet taken over
        await w.loop.settle()
        assert owned() == SHARDS
        await w.loop.own(frozenset({1}))
        assert owned() == 1

    asyncio.run(run())


def test_progress_is_recorded_only_for_the_shards_a_write_holds() -> None:
    sink = MemorySink()
    c = sink.claim(1, SHARDS, "w")
    sink.write({}, Progress(epochs={1: c.epochs}, positions={("t", 0): 4}, flush=True))
    assert sink.shards[1] == (1, {("t", 0): 4})
    assert 0 not in sink.shards
