"""The batch loop: decode/apply → project → commit state → write → ``done``, one batch a step.

What the worker (through its host, ``app.host``) and the tests drive. Each batch:

1. :meth:`~app.pipeline.Pipeline.process` decodes and applies every record, projects the
   view rows that may have changed and commits the state store with the batch's source
   positions (``app.pipeline``; a registry outage is waited out, never dead-lettered: the
   batch is processed again once the registry answers);
2. the previous batch's write is awaited (one write in flight);
3. the batch's rows are written in a thread (one transaction per consumer database; an
   unreachable database is retried), carrying the shards' epochs and positions
   (``app.ownership``); then its dead letters are sent; then ``done`` is called — the
   worker acknowledges the batch's Kafka offsets only then.

So batch N+1 is decoded and projected while batch N is written, and no offset is committed
before the rows of every record up to it are in the consumer databases. Which rows the loop
writes — its shards, their claims, takeovers and fencing — is :class:`~app.ownership.
ShardOwnership`'s, called between the steps.

**Why a crash cannot lose a change.** The state store may be ahead of the consumer
databases (committed in step 1, before the write). A restarted worker resumes from the
committed Kafka offsets, which are never ahead of the databases, so it replays what the
databases may lack: records below the position the store had reached are *redone* from the
current state (``app.pipeline``). The store's positions never move back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from app.decode import SchemaUnavailable
from app.metrics import Metrics
from app.ownership import FENCED_GRACE_S, ShardOwnership, SourceLog
from app.pipeline import BatchResult, Pipeline
from app.positions import Positions
from app.records import DeadLetter, RawRecord
from app.retry import calling, retry
from app.shards import Progress
from app.sink import ViewSink


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
    #: Per view: seconds from the source commit of the oldest change of the last batch
    #: written to it to that write's commit.
    freshness: dict[str, float] = field(default_factory=dict)
    #: The state store's positions (what the join state holds, written or not).
    state: Positions = field(default_factory=dict)

    def snapshot(self) -> Totals:
        """A copy that later batches do not change (what a :class:`~app.messages.Done`
        carries)."""
        return replace(self, written=dict(self.written), freshness=dict(self.freshness),
                       state=dict(self.state))


class BatchLoop:
    """The one batch loop (see the module). Writes the rows of the shards it was given with
    :meth:`own` and has taken over, and no others."""

    def __init__(
        self,
        pipeline: Pipeline,
        sink: ViewSink,
        send_dead_letter: Callable[[DeadLetter], Awaitable[None]],
        source: SourceLog,
        owner: str,
        metrics: Metrics | None = None,
        fenced_grace_s: float = FENCED_GRACE_S,
    ) -> None:
        self.pipeline = pipeline
        self.send_dead_letter = send_dead_letter
        self.metrics = metrics
        self.shards = ShardOwnership(
            pipeline, sink, source, owner, fenced_grace_s,
            on_change=None if metrics is None else metrics.shards)
        self.totals = Totals(state=pipeline.store.positions())
        self._inflight: asyncio.Task[None] | None = None
        #: ``handle``, ``own``, ``idle`` and ``settle`` one at a time (each may wait for a
        #: write).
        self._serial = asyncio.Lock()

    async def handle(self, records: Sequence[RawRecord], done: Callable[[], None]) -> None:
        """Run one batch; ``done`` is called once its rows are committed in every consumer
        database and its dead letters are sent. Returns while that write may still run."""
        async with self._serial:
            t0 = time.monotonic()
            result = await self._process(records)
            t1 = time.monotonic()
            await self.drain()
            if result.resync:  # before the batch's write records positions past the command
                await self.shards.resync(result.resync)
            self.totals.process_s += t1 - t0
            self.totals.wait_s += time.monotonic() - t1
            self.totals.state = result.state
            self._read_not_written(result)
            progress = self.shards.progress(result.state)
            self._inflight = asyncio.create_task(self._write(result, done, progress))
            if self.shards.pending:
                await self.drain()
                await self.shards.take_over()
            self.shards.after_step()

    async def _process(self, records: Sequence[RawRecord]) -> BatchResult:
        """Decode/apply → project → commit state; a registry outage is waited out."""
        try:
            return self.pipeline.process(records)
        except SchemaUnavailable:  # the batch is processed again once the registry answers
            return await retry(calling(self.pipeline.process, records), SchemaUnavailable,
                               "schema lookup")

    async def _write(self, result: BatchResult, done: Callable[[], None],
                     progress: Progress) -> None:
        """Write the batch's rows, send its dead letters, count it, then ``done``."""
        t0 = time.monotonic()
        if result.rows or progress.flush:
            await self.shards.write(result.views, progress)
        self.totals.write_s += time.monotonic() - t0
        if not self.shards.fenced:  # (fenced: nothing written, the next owner redoes it)
            self._written(result, time.monotonic() - t0)
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

    async def own(self, shards: frozenset[int]) -> None:
        """From now on, write the rows of ``shards`` (and of no other shard); a shard lost
        has no write in flight when this returns."""
        with self.shards.assignment():
            async with self._serial:
                await self.drain()
                await self.shards.own(shards)

    def own_requested(self) -> None:
        """An :meth:`own` call is on its way (queued behind the current step): a takeover
        in progress stops at its next write instead of holding it up."""
        self.shards.announce()

    async def settle(self) -> None:
        """Take over the claimed shards whose positions the state has reached."""
        if self.shards.pending:
            async with self._serial:
                await self.drain()
                await self.shards.take_over()
                self.shards.after_step()

    async def idle(self) -> None:
        """Nothing arrived for a while: take over what is ready, and record the shards'
        positions in every database."""
        await self.settle()
        async with self._serial:
            await self.drain()
            await self.shards.record_positions()
            self.shards.after_step()

    async def close(self) -> None:
        """Finish the write in flight and record the shards' positions."""
        await self.drain()
        if self.shards.epochs:
            await self.own(frozenset())

    async def drain(self) -> None:
        """Wait for the write in flight (its error, if any, is raised here)."""
        task, self._inflight = self._inflight, None
        if task is not None:
            await task

    # ------------------------------------------------------------------ measuring
    def _read_not_written(self, result: BatchResult) -> None:
        if self.metrics is not None:
            now = time.time()
            for view, stamps in result.fresh.items():
                if view in result.views:
                    self.metrics.oldest_unapplied(view, now - min(stamps) / 1000)

    def _written(self, result: BatchResult, seconds: float) -> None:
        committed = time.time()
        for view, stamps in result.fresh.items():
            if view in result.views:  # rows of this worker's shards were written
                self.totals.freshness[view] = max(0.0, committed - min(stamps) / 1000)
        m = self.metrics
        if m is None:
            return
        if result.rows:
            m.sink_write(result.rows, seconds)
        for name, batch in result.views.items():
            m.rows_written(name, len(batch.upserts), len(batch.deletes))
        for table, n in result.events.items():
            m.events(table, n)
        if result.dead_letters:
            m.dead_letters(len(result.dead_letters))
        for view, stamps in result.fresh.items():
            if view in result.views:  # rows of this worker's shards: its freshness
                m.freshness(view, stamps, committed)
            if self._inflight is None or self._inflight is asyncio.current_task():
                m.oldest_unapplied(view, 0.0)  # nothing newer read and unwritten
