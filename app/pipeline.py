"""The record's path through viewsync: decode → state/join → project → sink, in one loop.

:class:`Pipeline` is the synchronous core of a batch: it decodes raw Kafka records
(``app.decode``), applies them to the join state (``app.join`` over ``app.state``), projects
every view row that may have changed (``app.project``) into one
:class:`~app.project.ViewBatch` per view, and commits the state with the source positions it
reached. :class:`BatchLoop` owns the order of the whole batch and is what the worker
(``app.worker``, the Faust edge) and the tests drive:

1. decode + apply every record (a registry outage is waited out, never dead-lettered: the
   batch is processed again once the registry answers);
2. project the dirty keys; commit the state store with the batch's source positions;
3. wait until the previous batch's write is done (one write in flight);
4. write this batch in a thread (one transaction per consumer database; an unreachable
   database is retried), send its dead letters, then call ``done`` — the worker
   acknowledges the batch's Kafka offsets only then.

So batch N+1 is decoded and projected while batch N is written, and no offset is committed
before the rows of every record up to it are in the consumer databases.

**Why a crash cannot lose a change.** The state store may be ahead of the consumer
databases (committed in step 2, before the write). A restarted worker resumes from the
committed Kafka offsets, which are never ahead of the databases, so it replays what the
databases may lack. A record below the position the store had already reached is *redone*,
not applied: the state already holds it (and newer rows), so every view row that depends on
its row *now* is re-projected from the current state — no column pruning, and no stepping
back through older versions (the views never show an older value during the catch-up). The
store's positions never move back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from app.changes import Change
from app.decode import DecodeFailure, Decoder, SchemaUnavailable
from app.join import Affected, JoinEngine
from app.project import ViewBatch, project_many
from app.retry import calling, retry
from app.sink import SinkUnavailable, ViewSink
from app.state import Positions, StateStore
from app.views import VIEWS, ViewDef

log = logging.getLogger("viewsync.pipeline")


@dataclass(frozen=True, slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: RawRecord
    reason: str


@dataclass
class BatchResult:
    views: dict[str, ViewBatch]
    dead_letters: list[DeadLetter]
    changes: int
    #: Records in the batch, and the source positions the batch reached.
    records: int = 0
    positions: Positions = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(len(b) for b in self.views.values())


class Pipeline:
    """Accumulates a batch: ``add`` each record in order, then ``take_batch`` and ``commit``.

    Rows are projected once per dirty key when the batch is taken (a key changed many times
    in one batch is written once, with its latest state).
    """

    def __init__(self, decoder: Decoder, store: StateStore,
                 views: Sequence[ViewDef] = VIEWS) -> None:
        self.decoder = decoder
        self.store = store
        self.state = store.state
        self.views = tuple(views)
        self.engine = JoinEngine(self.state)
        #: Where the state store stood when this pipeline started: records below it are
        #: already in the state, and are redone (:meth:`redo`) rather than applied.
        self.replay_until: Positions = store.positions()
        #: Source positions reached since the last commit.
        self.positions: Positions = {}
        self._dirty: dict[str, set[int]] = {v.name: set() for v in self.views}
        self._changes = 0

    def apply(self, change: Change, prune: bool = True) -> Affected:
        """Join stage: update the state, mark every view key the change may alter."""
        return self._mark(self.engine.apply(change, prune=prune))

    def redo(self, change: Change) -> Affected:
        """A change the state already holds (a replay below the store's position): mark
        every view key that depends on its row in the current state, in every view that
        reads its table; the state is left as it is."""
        return self._mark(self.engine.affected(change.table, change.key))

    def _mark(self, affected: Affected) -> Affected:
        self._changes += 1
        for view in self.views:
            keys = affected.keys_for(view)
            if keys:
                self._dirty[view.name].update(keys)
        return affected

    def _decode(self, rec: RawRecord) -> Change | DeadLetter:
        decoded = self.decoder.decode(rec.topic, rec.key, rec.value)
        tp = (rec.topic, rec.partition)
        # A replayed record does not move the store's position back.
        self.positions[tp] = max(rec.offset + 1, self.replay_until.get(tp, 0))
        if isinstance(decoded, DecodeFailure):
            return DeadLetter(rec, decoded.reason)
        return decoded

    def add(self, rec: RawRecord) -> DeadLetter | None:
        """Decode one record and apply it; a record that cannot be decoded is returned.

        Raises :class:`~app.decode.SchemaUnavailable` (nothing applied) while the registry
        cannot be asked.
        """
        decoded = self._decode(rec)
        if isinstance(decoded, DeadLetter):
            log.warning("dead letter %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset,
                        decoded.reason)
            return decoded
        if rec.offset < self.replay_until.get((rec.topic, rec.partition), 0):
            self.redo(decoded)
        else:
            self.apply(decoded)
        return None

    def restore(self, rec: RawRecord) -> bool:
        """Apply one record to the state only (the views already hold it); ``False`` for a
        record that cannot be decoded (it was dead-lettered when first processed)."""
        decoded = self._decode(rec)
        if isinstance(decoded, DeadLetter):
            return False
        self.engine.apply(decoded, prune=False)
        return True

    def take_batch(self) -> tuple[dict[str, ViewBatch], int]:
        """Project stage: the rows to write for everything applied since the last call."""
        out: dict[str, ViewBatch] = {}
        memo: dict[int, str | None] = {}
        for view in self.views:
            keys = self._dirty[view.name]
            if keys:
                out[view.name] = project_many(self.state, view, keys, memo)
            self._dirty[view.name] = set()
        changes, self._changes = self._changes, 0
        return out, changes

    def commit(self) -> Positions:
        """Make the state applied so far durable, with the source positions it reached
        (returned)."""
        positions, self.positions = self.positions, {}
        self.store.commit(positions)
        return positions

    def process(self, records: Sequence[RawRecord]) -> BatchResult:
        """``add`` every record, ``take_batch``, ``commit``.

        Raises :class:`~app.decode.SchemaUnavailable` while the registry cannot be asked;
        processing the same records again is then correct (a record applied twice is a
        duplicate, and duplicates redo every view).
        """
        dead = [dl for rec in records if (dl := self.add(rec)) is not None]
        views, changes = self.take_batch()
        positions = self.commit()
        return BatchResult(views=views, dead_letters=dead, changes=changes,
                           records=len(records), positions=positions)


@dataclass
class Totals:
    """What a :class:`BatchLoop` has done since it started."""

    batches: int = 0
    records: int = 0
    changes: int = 0
    rows: int = 0
    dead: int = 0
    #: Seconds spent decoding/applying/projecting, waiting for the previous write, writing
    #: (in the writer thread, overlapping the rest).
    process_s: float = 0.0
    wait_s: float = 0.0
    write_s: float = 0.0
    started: float = field(default_factory=time.monotonic)
    #: (topic, partition) -> next offset whose batch has been written.
    written: Positions = field(default_factory=dict)


class BatchLoop:
    """The one batch loop: decode → state → project → commit state → write → ``done``."""

    def __init__(
        self,
        pipeline: Pipeline,
        sink: ViewSink,
        send_dead_letter: Callable[[DeadLetter], Awaitable[None]],
    ) -> None:
        self.pipeline = pipeline
        self.sink = sink
        self.send_dead_letter = send_dead_letter
        self.totals = Totals()
        self._inflight: asyncio.Task[None] | None = None

    async def handle(self, records: Sequence[RawRecord], done: Callable[[], None]) -> None:
        """Run one batch; ``done`` is called once its rows are committed in every consumer
        database and its dead letters are sent. Returns while that write may still run."""
        t0 = time.monotonic()
        try:
            result = self.pipeline.process(records)
        except SchemaUnavailable:  # wait the registry out; the batch is processed again
            result = await retry(calling(self.pipeline.process, records), SchemaUnavailable,
                                 "schema lookup")
        t1 = time.monotonic()
        await self.drain()
        self.totals.process_s += t1 - t0
        self.totals.wait_s += time.monotonic() - t1
        self._inflight = asyncio.create_task(self._write(result, done))

    async def drain(self) -> None:
        """Wait for the write in flight (its error, if any, is raised here)."""
        task, self._inflight = self._inflight, None
        if task is not None:
            await task

    async def _write(self, result: BatchResult, done: Callable[[], None]) -> None:
        t0 = time.monotonic()
        if result.rows:
            await retry(lambda: asyncio.to_thread(self.sink.write, result.views),
                        SinkUnavailable, "sink write")
        self.totals.write_s += time.monotonic() - t0
        for dl in result.dead_letters:
            await self.send_dead_letter(dl)
        t = self.totals
        t.batches += 1
        t.records += result.records
        t.changes += result.changes
        t.rows += result.rows
        t.dead += len(result.dead_letters)
        t.written.update(result.positions)
        done()
