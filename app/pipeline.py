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
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from app import control
from app.changes import Change
from app.control import Command
from app.decode import DecodeFailure, Decoder, SchemaUnavailable
from app.join import Affected, JoinEngine
from app.metrics import Metrics
from app.project import ViewBatch, project_many
from app.retry import calling, retry
from app.shards import Claim, Fenced, Progress, behind, in_shards, shard_of
from app.sink import SinkUnavailable, ViewSink
from app.state import Positions, StateStore
from app.views import VIEWS, Grain, ViewDef

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
    #: Every position of the state store once the batch was applied: what its rows reflect.
    state: Positions = field(default_factory=dict)
    #: Decoded changes per source table; per view, the source commit times (``ts_ms``) of
    #: the changes applied (not redone) that touched it.
    events: dict[str, int] = field(default_factory=dict)
    fresh: dict[str, set[int]] = field(default_factory=dict)
    #: Views a command of the batch asked to resync (``app.control``).
    resync: set[str] = field(default_factory=set)

    @property
    def rows(self) -> int:
        return sum(len(b) for b in self.views.values())


class Pipeline:
    """Accumulates a batch: ``add`` each record in order, then ``take_batch`` and ``commit``.

    Rows are projected once per dirty key when the batch is taken (a key changed many times
    in one batch is written once, with its latest state), and only the rows of the
    ``active`` shards (``app.shards``; all of them when not given: one worker alone).
    """

    def __init__(self, decoder: Decoder, store: StateStore,
                 views: Sequence[ViewDef] = VIEWS, shards: int = 1,
                 active: Iterable[int] | None = None, control_topic: str | None = None
                 ) -> None:
        self.decoder = decoder
        self.store = store
        self.state = store.state
        self.views = tuple(views)
        self.engine = JoinEngine(self.state)
        self.shards = shards
        #: The shards whose rows this pipeline projects.
        self.active: set[int] = set(range(shards) if active is None else active)
        #: Commands to the workers (``app.control``), read in order with the changes.
        self.control_topic = control_topic
        self._resync: set[str] = set()
        #: Where the state store stood when this pipeline started: records below it are
        #: already in the state, and are redone (:meth:`redo`) rather than applied.
        self.replay_until: Positions = store.positions()
        #: Source positions reached since the last commit.
        self.positions: Positions = {}
        self._dirty: dict[str, set[int]] = {v.name: set() for v in self.views}
        self._changes = 0
        self._events: dict[str, int] = {}
        self._fresh: dict[str, set[int]] = {}

    def apply(self, change: Change, prune: bool = True) -> Affected:
        """Join stage: update the state, mark every view key the change may alter (and,
        for freshness, its source commit time in every view it touches)."""
        return self._mark(self.engine.apply(change, prune=prune), change.ts_ms)

    def redo(self, change: Change) -> Affected:
        """A change the state already holds (a replay below the store's position): mark
        every view key that depends on its row in the current state, in every view that
        reads its table; the state is left as it is."""
        return self._mark(self.engine.affected(change.table, change.key))

    def _mark(self, affected: Affected, ts_ms: int = 0) -> Affected:
        self._changes += 1
        for view in self.views:
            keys = affected.keys_for(view)
            if keys:
                self._dirty[view.name].update(keys)
                if ts_ms:
                    self._fresh.setdefault(view.name, set()).add(ts_ms)
        return affected

    def _decode(self, rec: RawRecord) -> Change | Command | DeadLetter:
        tp = (rec.topic, rec.partition)
        # A replayed record does not move the store's position back.
        self.positions[tp] = max(rec.offset + 1, self.replay_until.get(tp, 0))
        if rec.topic == self.control_topic:
            cmd = control.decode(rec.value, {v.name for v in self.views})
            return DeadLetter(rec, cmd) if isinstance(cmd, str) else cmd
        decoded = self.decoder.decode(rec.topic, rec.key, rec.value)
        if isinstance(decoded, DecodeFailure):
            return DeadLetter(rec, decoded.reason)
        return decoded

    def _command(self, cmd: Command, only: frozenset[int] | None = None) -> None:
        """A repair marks its keys (of the active shards, or ``only``); a resync is noted
        for the loop (:attr:`BatchResult.resync`): it rewrites whole shards."""
        if cmd.op == "repair":
            keys = in_shards(cmd.keys, self.shards, only) if only is not None else cmd.keys
            self._dirty[cmd.view].update(keys)
        else:
            self._resync.add(cmd.view)

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
        if isinstance(decoded, Command):
            log.info("command from %s@%d: %s %s%s", rec.topic, rec.offset, decoded.op,
                     decoded.view, f" ({len(decoded.keys)} keys)" if decoded.keys else "")
            self._command(decoded)
            return None
        self._events[decoded.table] = self._events.get(decoded.table, 0) + 1
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
        if isinstance(decoded, Change):  # a command: the views had it carried out
            self.engine.apply(decoded, prune=False)
        return True

    def take_batch(self) -> tuple[dict[str, ViewBatch], int]:
        """Project stage: the rows of the active shards to write for everything applied
        since the last call."""
        active = frozenset(self.active)
        dirty = {name: in_shards(keys, self.shards, active)
                 for name, keys in self._dirty.items()}
        self._dirty = {v.name: set() for v in self.views}
        changes, self._changes = self._changes, 0
        return self._project(dirty), changes

    def _project(self, dirty: Mapping[str, Iterable[int]]) -> dict[str, ViewBatch]:
        out: dict[str, ViewBatch] = {}
        memo: dict[int, str | None] = {}
        for view in self.views:
            keys = dirty.get(view.name)
            if keys:
                out[view.name] = project_many(self.state, view, keys, memo)
        return out

    def redo_shard(self, records: Iterable[RawRecord], shard: int
                   ) -> tuple[dict[str, ViewBatch], set[str]]:
        """The rows of ``shard`` that ``records`` (already in the state) may have changed,
        projected from the current state: what a new owner writes for the records its
        predecessor may not have written (see ``app.shards``); and the views a command
        among them asked to resync."""
        dirty: dict[str, set[int]] = {v.name: set() for v in self.views}
        only = frozenset((shard,))
        resync: set[str] = set()
        for rec in records:
            if rec.topic == self.control_topic:
                cmd = control.decode(rec.value, {v.name for v in self.views})
                if isinstance(cmd, Command) and cmd.op == "repair":
                    dirty[cmd.view] |= in_shards(cmd.keys, self.shards, only)
                elif isinstance(cmd, Command):
                    resync.add(cmd.view)
                continue
            decoded = self.decoder.decode(rec.topic, rec.key, rec.value)
            if isinstance(decoded, DecodeFailure):
                continue  # dead-lettered when it was first read
            affected = self.engine.affected(decoded.table, decoded.key)
            for view in self.views:
                keys = affected.keys_for(view)
                if keys:
                    dirty[view.name] |= in_shards(keys, self.shards, only)
        return self._project(dirty), resync

    def rebuild_shards(self, shards: frozenset[int], views: Sequence[ViewDef] | None = None,
                       chunk: int = 20_000) -> Iterator[dict[str, ViewBatch]]:
        """Every row of ``shards`` (of ``views``, default all) the state has a source row
        for, projected, ``chunk`` keys at a time (one pass over the state per view, whatever
        the number of shards)."""
        for view in self.views if views is None else views:
            table = self.state.store("batches" if view.grain is Grain.BATCH else "products")
            keys: list[int] = []
            for key in table:
                if shard_of(key, self.shards) in shards:
                    keys.append(key)
                    if len(keys) >= chunk:
                        yield self._project({view.name: keys})
                        keys = []
            if keys:
                yield self._project({view.name: keys})

    def without_source_row(self, view: ViewDef, keys: Iterable[int]) -> set[int]:
        """The keys of ``keys`` whose source row (product or batch) the state does not have."""
        table = self.state.store("batches" if view.grain is Grain.BATCH else "products")
        return {k for k in keys if k not in table}

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
        events, self._events = self._events, {}
        fresh, self._fresh = self._fresh, {}
        resync, self._resync = self._resync, set()
        return BatchResult(views=views, dead_letters=dead, changes=changes,
                           records=len(records), positions=positions,
                           state=self.store.positions(), events=events, fresh=fresh,
                           resync=resync)


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


class SourceLog(Protocol):
    """The source topics, read outside the worker's stream (a shard's takeover)."""

    def read(self, start: Positions, end: Positions) -> Iterable[RawRecord]:
        """The records of every partition of ``end`` from ``start`` (0 where absent)."""
        ...

    def ends(self) -> Positions:
        """The end of every partition of every source topic, as of now."""
        ...

#: A shard whose redo would read more records than this is rebuilt instead.
REDO_MAX = 200_000

#: Seconds between two records of the shards' positions in a database the batches did not
#: write to (a new owner redoes less).
FLUSH_EVERY_S = 2.0

#: After a write was fenced, how long the loop waits for the lease group to assign shards
#: again (it always does when it dropped this worker) before it gives up and stops.
FENCED_GRACE_S = 60.0


class BatchLoop:
    """The one batch loop: decode → state → project → commit state → write → ``done``.

    **Shards** (``app.shards``). Without ``source`` the loop writes every row (one worker
    alone, no claims). With it, the loop writes only the shards it was given with
    :meth:`own` and has taken over: each gained shard is *claimed* in every consumer
    database, then — once the state has reached the positions the shard was written up to
    — *taken over* by writing the rows the records in between may have changed. A shard
    never written (no positions) is *rebuilt* once the state has reached the end the source
    topics had when it was claimed: every row the state has is written, then the rows it
    has no source row for are deleted — so a view that already has rows is never emptied
    by a worker whose state is still filling. Every write carries the loop's claims and
    records its shards' positions; a shard lost is first drained (its rows in flight are
    written) and its positions recorded, so that the next owner has nothing to redo.

    A write refused because another worker has claimed one of its shards since
    (:class:`~app.shards.Fenced`: the lease group dropped this worker — a pause longer than
    the lease session, a network cut) writes nothing in that database. The loop then gives
    up *every* shard it held and writes nothing until :meth:`own` assigns shards again:
    whatever it did not write, its positions not recorded, the next owner redoes. Only if
    no assignment comes within ``fenced_grace_s`` does it raise :class:`Fenced` (the
    worker stops). A long takeover stops between two writes when :meth:`own` is waiting,
    so a rebalance is never held up by a rebuild.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        sink: ViewSink,
        send_dead_letter: Callable[[DeadLetter], Awaitable[None]],
        source: SourceLog | None = None,
        owner: str = "viewsync",
        metrics: Metrics | None = None,
        fenced_grace_s: float = FENCED_GRACE_S,
    ) -> None:
        self.pipeline = pipeline
        self.sink = sink
        self.send_dead_letter = send_dead_letter
        self.source = source
        self.owner = owner
        self.metrics = metrics
        self.totals = Totals(state=pipeline.store.positions())
        self._inflight: asyncio.Task[None] | None = None
        #: Shards given by :meth:`own`; claimed and waiting for the state; taken over.
        self.owned: frozenset[int] = frozenset()
        self.pending: dict[int, Claim] = {}
        #: For a claimed shard never written: the source's end when it was claimed.
        self._rebuild_at: dict[int, Positions] = {}
        self.epochs: dict[int, Mapping[str, int]] = {}
        self._flushed = 0.0
        #: The positions last recorded for every shard held (see :meth:`idle`).
        self._recorded: Positions = {}
        #: ``handle``, ``own`` and ``idle`` one at a time (each may wait for a write).
        self._serial = asyncio.Lock()
        #: A write was fenced: the shards are given up at the end of the current step.
        self._lost: Fenced | None = None
        #: When the shards were given up, until the next :meth:`own`.
        self._gave_up_at: float | None = None
        self.fenced_grace_s = fenced_grace_s
        #: :meth:`own` calls waiting for the loop, or announced (:meth:`own_requested`): a
        #: takeover in progress stops for them.
        self._owning = 0
        self._announced = 0
        if source is not None:
            pipeline.active.clear()
        self._shards_changed()

    @property
    def sharded(self) -> bool:
        return self.source is not None

    async def handle(self, records: Sequence[RawRecord], done: Callable[[], None]) -> None:
        """Run one batch; ``done`` is called once its rows are committed in every consumer
        database and its dead letters are sent. Returns while that write may still run."""
        async with self._serial:
            await self._handle(records, done)
            self._after_step()

    async def _handle(self, records: Sequence[RawRecord], done: Callable[[], None]) -> None:
        t0 = time.monotonic()
        try:
            result = self.pipeline.process(records)
        except SchemaUnavailable:  # wait the registry out; the batch is processed again
            result = await retry(calling(self.pipeline.process, records), SchemaUnavailable,
                                 "schema lookup")
        t1 = time.monotonic()
        await self.drain()
        if result.resync:  # before the batch's write records positions past the command
            await self._resync(result.resync)
        self.totals.process_s += t1 - t0
        self.totals.wait_s += time.monotonic() - t1
        self.totals.state = result.state
        if self.metrics is not None:  # read, not yet written
            now = time.time()
            for view, stamps in result.fresh.items():
                if view in result.views:
                    self.metrics.oldest_unapplied(view, now - min(stamps) / 1000)
        self._inflight = asyncio.create_task(self._write(result, done, self._progress(result)))
        if self.pending:
            await self.take_over()

    def _progress(self, result: BatchResult) -> Progress | None:
        if not self.sharded:
            return None
        now = time.monotonic()
        flush = now - self._flushed >= FLUSH_EVERY_S
        if flush:
            self._flushed = now
            self._recorded = result.state
        return Progress(epochs=dict(self.epochs), positions=result.state, flush=flush)

    async def idle(self) -> None:
        """Nothing arrived for a while: record the shards' positions in every database
        (a database the last batches had no rows for would otherwise look behind)."""
        if self.pending:
            await self.settle()
        if not self.sharded:
            return
        async with self._serial:
            await self.drain()
            state = self.pipeline.store.positions()
            if self.epochs and state != self._recorded:
                await self._sink_write({}, Progress(epochs=dict(self.epochs),
                                                    positions=state, flush=True))
                self._recorded = state
            self._after_step()

    async def own(self, shards: frozenset[int]) -> None:
        """From now on, write the rows of ``shards`` (and of no other shard)."""
        self._owning += 1
        try:
            async with self._serial:
                await self._own(shards)
        finally:
            self._owning -= 1
            if self._announced:  # the announced call has come
                self._announced -= 1
                self._owning -= 1

    def own_requested(self) -> None:
        """An :meth:`own` call is on its way (queued behind the current step): a takeover
        in progress stops at its next write instead of holding it up."""
        self._announced += 1
        self._owning += 1

    async def _own(self, shards: frozenset[int]) -> None:
        await self.drain()
        if self._lost is not None:  # fenced since the last step: claim afresh what is given
            self._give_up()
        self._gave_up_at = None  # the lease group has spoken
        lost = self.owned - shards
        if lost:
            kept = {s: e for s, e in self.epochs.items() if s in lost}
            if kept:  # what the next owner need not redo
                await self._sink_write({}, Progress(epochs=kept,
                                                    positions=self.pipeline.store.positions(),
                                                    flush=True))
                if self._lost is not None:  # already claimed by their next owner: fine
                    log.info("shards %s: %s", _ranges(sorted(lost)), self._lost)
                    self._lost = None
            for s in lost:
                self.pipeline.active.discard(s)
                self.epochs.pop(s, None)
                self.pending.pop(s, None)
                self._rebuild_at.pop(s, None)
            self._shards_changed()
        gained = sorted(shards - self.owned)
        self.owned = shards
        never_written = []
        for shard in gained:
            claim = self.pending[shard] = await self._claim(shard)
            if claim.start() is None:
                never_written.append(shard)
        if never_written:
            # The source's end once, after all the claims (so after each one: a rebuild
            # waits for the state to reach it), not once per shard.
            assert self.source is not None
            ends = await asyncio.to_thread(self.source.ends)
            for shard in never_written:
                self._rebuild_at[shard] = ends
        if gained:
            log.info("shards %s claimed (%d owned)", _ranges(gained), len(self.owned))
        # The takeover (a redo or a rebuild: seconds) is not done here: ``own`` runs inside
        # the lease group's rebalance callback, and a member that stays in it too long is
        # dropped from the group. :meth:`settle` (right after), each batch and the idle
        # moments take the claimed shards over.

    async def settle(self) -> None:
        """Take over the claimed shards whose positions the state has reached."""
        if self.pending:
            async with self._serial:
                await self.take_over()
                self._after_step()

    async def _claim(self, shard: int) -> Claim:
        def claim() -> Claim:
            return self.sink.claim(shard, self.pipeline.shards, self.owner)
        return await retry(lambda: asyncio.to_thread(claim), SinkUnavailable,
                           f"claiming shard {shard}")

    async def take_over(self) -> None:
        """Take over every claimed shard whose positions the state has reached."""
        if not self.pending:
            return
        await self.drain()
        state = self.pipeline.store.positions()
        ready: dict[int, Positions | None] = {}
        ours = {*self.pipeline.decoder.topics, self.pipeline.control_topic}
        for shard, claim in sorted(self.pending.items()):
            start = claim.start()
            if start is not None:  # positions in topics this deployment does not read: no
                start = {tp: off for tp, off in start.items() if tp[0] in ours}
            target = self._rebuild_at.get(shard, {}) if start is None else start
            if not behind(state, target):
                ready[shard] = start
            # else the state is behind what the last owner wrote (or, for a rebuild, the
            # source's end): not yet
        if not ready:
            return
        t0 = time.monotonic()
        # A redo longer than a rebuild is not worth reading: rebuild those shards too.
        for shard, start in list(ready.items()):
            if start is not None and sum(
                    max(0, off - start.get(tp, 0)) for tp, off in state.items()) > REDO_MAX:
                ready[shard] = None
        # The records to redo, read once for every shard (each redoes from its own start).
        starts = [s for s in ready.values() if s is not None]
        records: list[RawRecord] = []
        if starts:
            lowest = {tp: min(s.get(tp, 0) for s in starts) for tp in state}
            source = self.source
            assert source is not None
            records = await asyncio.to_thread(lambda: list(source.read(lowest, state)))
        claims = {shard: self.pending.pop(shard) for shard in ready}
        rebuilt = frozenset(s for s, start in ready.items() if start is None)
        if rebuilt:
            rows = await self._rebuild(rebuilt, Progress(
                epochs={s: claims[s].epochs for s in rebuilt}), interruptible=True)
            if self._interrupted():  # claimed still, taken over later (or lost)
                self.pending.update(claims)
                log.info("rebuild of shards %s interrupted after %d rows (%s)",
                         _ranges(sorted(rebuilt)), rows,
                         "fenced" if self._lost else "the lease group is rebalancing")
                return
            log.info("shards %s rebuilt: %d rows", _ranges(sorted(rebuilt)), rows)
        for shard, start in ready.items():
            only = Progress(epochs={shard: claims[shard].epochs})
            if start is not None:
                mine = [r for r in records if r.offset >= start.get((r.topic, r.partition), 0)]
                redone, resync = self.pipeline.redo_shard(mine, shard)
                rows = await self._sink_write(redone, only)
                if resync:
                    rows += await self._rebuild(frozenset((shard,)), only, self._views(resync))
                log.info("shard %d taken over: %d records redone, %d rows", shard, len(mine),
                         rows)
            await self._sink_write({}, Progress(epochs=only.epochs, positions=state,
                                                flush=True))
            self._rebuild_at.pop(shard, None)
            self.epochs[shard] = claims[shard].epochs
            self.pipeline.active.add(shard)
        self._shards_changed()
        log.info("%d shards taken over in %.2fs", len(ready), time.monotonic() - t0)

    def _views(self, names: Iterable[str]) -> list[ViewDef]:
        return [v for v in self.pipeline.views if v.name in names]

    async def _resync(self, names: set[str]) -> None:
        """A resync command: every row of the views in this loop's shards, in place."""
        t0 = time.monotonic()
        await retry(lambda: asyncio.to_thread(self.sink.create_tables), SinkUnavailable,
                    "creating the view tables")
        shards = frozenset(self.pipeline.active)
        only = Progress(epochs={s: self.epochs[s] for s in shards}) if self.sharded else None
        rows = await self._rebuild(shards, only, self._views(names))
        log.info("resync of %s: %d rows of shards %s written in %.1fs", ", ".join(sorted(names)),
                 rows, _ranges(sorted(shards)), time.monotonic() - t0)

    async def _rebuild(self, shards: frozenset[int], only: Progress | None,
                       views: Sequence[ViewDef] | None = None,
                       interruptible: bool = False) -> int:
        """Write every row of ``shards`` (of ``views``, default all) from the state, then
        delete their rows the state has no source row for: shards never written before (or
        too far behind), and resyncs. The view is never emptied on the way. Stops when
        fenced; when ``interruptible``, also when :meth:`own` is waiting (a takeover's
        rebuild, done again later; never a resync, whose command would be lost)."""
        rows = 0
        for part in self.pipeline.rebuild_shards(shards, views):
            rows += await self._sink_write(part, only)
            if self._lost is not None or (interruptible and self._owning):
                return rows
        for view in self.pipeline.views if views is None else views:
            for shard in sorted(shards):
                stale = self.pipeline.without_source_row(view, await self._keys(view, shard))
                if stale:
                    rows += await self._sink_write({view.name: ViewBatch(deletes=stale)}, only)
        return rows

    async def _keys(self, view: ViewDef, shard: int) -> set[int]:
        def keys() -> set[int]:
            return self.sink.keys(view, shard, self.pipeline.shards)
        return await retry(lambda: asyncio.to_thread(keys), SinkUnavailable,
                           f"reading {view.name}")

    async def _sink_write(self, views: Mapping[str, ViewBatch],
                          progress: Progress | None) -> int:
        """Write (waiting out a database that is down); a fenced write is remembered in
        ``_lost`` and writes nothing, nor does any write after it."""
        if self._lost is not None:
            return 0
        try:
            return await retry(lambda: asyncio.to_thread(self.sink.write, views, progress),
                               SinkUnavailable, "sink write")
        except Fenced as exc:
            self._lost = exc
            return 0

    def _interrupted(self) -> bool:
        """A takeover stops between two writes: fenced, or :meth:`own` is waiting."""
        return self._lost is not None or self._owning > 0

    def _after_step(self) -> None:
        """After each step (a batch, idle, a takeover): give the shards up if a write was
        fenced; stop if no assignment came within the grace since."""
        if self._lost is not None:
            self._give_up()
        elif (self._gave_up_at is not None
              and time.monotonic() - self._gave_up_at > self.fenced_grace_s):
            raise Fenced(f"no shard assignment from the lease group within "
                         f"{self.fenced_grace_s:.0f}s after this worker was fenced")

    def _give_up(self) -> None:
        exc, self._lost = self._lost, None
        log.warning("%s. Another worker writes that shard now: this worker's lease was lost "
                    "(a pause longer than the lease session, or a network cut). It gives up "
                    "shards %s until the lease group assigns shards again; what it did not "
                    "write, their next owner redoes.", exc, _ranges(sorted(self.owned)) or "-")
        self.owned = frozenset()
        self.epochs.clear()
        self.pending.clear()
        self._rebuild_at.clear()
        self.pipeline.active.clear()
        self._gave_up_at = time.monotonic()
        self._shards_changed()

    async def close(self) -> None:
        """Finish the write in flight and record the shards' positions."""
        await self.drain()
        if self.sharded and self.epochs:
            await self.own(frozenset())

    def _measure(self, result: BatchResult, seconds: float) -> None:
        m = self.metrics
        assert m is not None
        if result.rows:
            m.sink_write(result.rows, seconds)
        for name, batch in result.views.items():
            m.rows_written(name, len(batch.upserts), len(batch.deletes))
        for table, n in result.events.items():
            m.events(table, n)
        if result.dead_letters:
            m.dead_letters(len(result.dead_letters))
        now = time.time()
        for view, stamps in result.fresh.items():
            if view in result.views:  # rows of this worker's shards: its freshness
                m.freshness(view, stamps, now)
            if self._inflight is None or self._inflight is asyncio.current_task():
                m.oldest_unapplied(view, 0.0)  # nothing newer read and unwritten

    def _shards_changed(self) -> None:
        """The shards written now, for the gauge: set where they change (a takeover or a
        loss may come after the last batch, and the gauge must not wait for the next)."""
        if self.metrics is not None:
            self.metrics.shards(len(self.epochs) if self.sharded else self.pipeline.shards)

    async def drain(self) -> None:
        """Wait for the write in flight (its error, if any, is raised here)."""
        task, self._inflight = self._inflight, None
        if task is not None:
            await task

    async def _write(self, result: BatchResult, done: Callable[[], None],
                     progress: Progress | None) -> None:
        t0 = time.monotonic()
        if result.rows or (progress is not None and progress.flush):
            await self._sink_write(result.views, progress)
        self.totals.write_s += time.monotonic() - t0
        committed = time.time()
        written = self._lost is None  # (fenced: nothing written, the next owner redoes it)
        for view, stamps in result.fresh.items():
            if written and view in result.views:  # rows of this worker's shards were written
                self.totals.freshness[view] = max(0.0, committed - min(stamps) / 1000)
        if written and self.metrics is not None:
            self._measure(result, time.monotonic() - t0)
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


def _ranges(shards: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    out: list[str] = []
    for s in sorted(shards):
        if out and out[-1].split("-")[-1] == str(s - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{s}"
        else:
            out.append(str(s))
    return ",".join(out)
