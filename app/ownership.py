"""Shard ownership: which shards a batch loop writes, and how it comes to write them.

The batch loop (``app.loop``) writes only the rows of the shards it *holds*; this module
decides which those are, one step at a time, and is the only writer of the sink's shard
rows (``app.shards`` has the rules, ``app.sink`` the table):

* **own** — the lease group (``app.leases``) assigns shards. A shard lost first has its
  positions recorded (its rows in flight are written by then: the loop drains first), so
  its next owner has nothing to redo. Each shard gained is *claimed* in every consumer
  database (its epoch goes up; the previous owner's writes are refused from then on).
* **take over** — once the state has reached the positions a claimed shard was written up
  to, the rows the records in between may have changed are *redone* from the current state;
  a shard never written (no positions), or too far behind (:data:`REDO_MAX`), is *rebuilt*
  once the state has reached the source's end as of the claim: every row the state has is
  written, then the rows it has no source row for are deleted — a view that already has
  rows is never emptied by a worker whose state is still filling.
* **fenced** — a write refused because another worker has claimed one of its shards since
  (:class:`~app.shards.Fenced`: the lease group dropped this worker — a pause longer than
  the lease session, a network cut) writes nothing in that database. Every shard is then
  given up at the end of the step, and nothing is written until the lease group assigns
  shards again; whatever was not written, its positions not recorded, the next owner redoes.
  Only if no assignment comes within ``fenced_grace_s`` does :meth:`after_step` raise
  :class:`Fenced` (the worker stops).

A long takeover stops between two writes when an assignment is waiting
(:meth:`assignment`), so a rebalance is never held up by a rebuild. The loop serializes the
calls (one step at a time) and drains its write in flight before each of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from app.graph import Key
from app.pipeline import Pipeline
from app.positions import Positions, behind, records_to_go
from app.project import ViewBatch
from app.records import RawRecord
from app.retry import retry
from app.shards import Claim, Fenced, Progress
from app.sink import SinkUnavailable, ViewSink
from app.views import ViewDef

log = logging.getLogger("viewsync.pipeline")

#: A shard whose redo would read more records than this is rebuilt instead.
REDO_MAX = 200_000

#: Seconds between two records of the shards' positions in a database the batches did not
#: write to (a new owner redoes less).
FLUSH_EVERY_S = 2.0

#: After a write was fenced, how long the loop waits for the lease group to assign shards
#: again (it always does when it dropped this worker) before it gives up and stops.
FENCED_GRACE_S = 60.0


class SourceLog(Protocol):
    """The source topics, read outside the worker's stream (a shard's takeover)."""

    def read(self, start: Positions, end: Positions) -> Iterable[RawRecord]:
        """The records of every partition of ``end`` from ``start`` (0 where absent)."""
        ...

    def ends(self) -> Positions:
        """The end of every partition of every source topic, as of now."""
        ...


class ShardOwnership:
    """The shards one batch loop holds, and every write of it (see the module)."""

    def __init__(self, pipeline: Pipeline, sink: ViewSink, source: SourceLog, owner: str,
                 fenced_grace_s: float = FENCED_GRACE_S,
                 on_change: Callable[[int], None] | None = None) -> None:
        self.pipeline = pipeline
        self.sink = sink
        self.source = source
        self.owner = owner
        self.fenced_grace_s = fenced_grace_s
        #: Called with the number of shards written whenever it changes (a gauge).
        self._on_change = on_change
        #: Shards given by :meth:`own`; claimed and waiting for the state; taken over.
        self.owned: frozenset[int] = frozenset()
        self.pending: dict[int, Claim] = {}
        self.epochs: dict[int, Mapping[str, int]] = {}
        #: For a claimed shard never written: the source's end when it was claimed.
        self._rebuild_at: dict[int, Positions] = {}
        self._flushed = 0.0
        #: The positions last recorded for every shard held (see :meth:`record_positions`).
        self._recorded: Positions = {}
        #: A write was fenced: the shards are given up at the end of the current step.
        self._lost: Fenced | None = None
        #: When the shards were given up, until the next :meth:`own`.
        self._gave_up_at: float | None = None
        #: Assignments waiting for the loop, or announced: a takeover in progress stops.
        self._owning = 0
        self._announced = 0
        pipeline.active.clear()
        self._changed()

    # ------------------------------------------------------------------ the batch path
    def progress(self, state: Positions) -> Progress:
        """What a batch's write carries: the shards' epochs, and the positions its rows
        reflect (recorded even where the batch has no rows every :data:`FLUSH_EVERY_S`)."""
        now = time.monotonic()
        flush = now - self._flushed >= FLUSH_EVERY_S
        if flush:
            self._flushed = now
            self._recorded = state
        return Progress(epochs=dict(self.epochs), positions=state, flush=flush)

    @property
    def fenced(self) -> bool:
        """A write of this step was refused (nothing of it, nor after it, was written)."""
        return self._lost is not None

    async def write(self, views: Mapping[str, ViewBatch], progress: Progress | None) -> int:
        """Write (waiting out a database that is down); a fenced write is remembered and
        writes nothing, nor does any write after it in this step."""
        if self._lost is not None:
            return 0
        try:
            return await retry(lambda: asyncio.to_thread(self.sink.write, views, progress),
                               SinkUnavailable, "sink write")
        except Fenced as exc:
            self._lost = exc
            return 0

    def after_step(self) -> None:
        """After each step (a batch, idle, a takeover): give the shards up if a write was
        fenced; stop if no assignment came within the grace since."""
        if self._lost is not None:
            self._give_up()
        elif (self._gave_up_at is not None
              and time.monotonic() - self._gave_up_at > self.fenced_grace_s):
            raise Fenced(f"no shard assignment from the lease group within "
                         f"{self.fenced_grace_s:.0f}s after this worker was fenced")

    async def record_positions(self) -> None:
        """Record the state's positions for every shard held, unless recorded already (a
        database the last batches had no rows for would otherwise look behind)."""
        state = self.pipeline.store.positions()
        if self.epochs and state != self._recorded:
            await self.write({}, Progress(epochs=dict(self.epochs), positions=state, flush=True))
            self._recorded = state

    async def resync(self, names: set[str]) -> None:
        """A resync command: every row of the views in the shards held, in place."""
        t0 = time.monotonic()
        await retry(lambda: asyncio.to_thread(self.sink.create_tables), SinkUnavailable,
                    "creating the view tables")
        shards = frozenset(self.pipeline.active)
        only = Progress(epochs={s: self.epochs[s] for s in shards})
        rows = await self._rebuild(shards, only, self._views(names))
        log.info("resync of %s: %d rows of shards %s written in %.1fs", ", ".join(sorted(names)),
                 rows, _ranges(sorted(shards)), time.monotonic() - t0)

    # ------------------------------------------------------------------ assignments
    @contextlib.contextmanager
    def assignment(self) -> Iterator[None]:
        """Around an :meth:`own` call waiting for the loop: a takeover stops for it."""
        self._owning += 1
        try:
            yield
        finally:
            self._owning -= 1
            if self._announced:  # the announced call has come
                self._announced -= 1
                self._owning -= 1

    def announce(self) -> None:
        """An :meth:`own` call is on its way (queued behind the current step)."""
        self._announced += 1
        self._owning += 1

    async def own(self, shards: frozenset[int]) -> None:
        """From now on, write the rows of ``shards`` (and of no other shard). The takeover
        (a redo or a rebuild: seconds) is not done here: this runs inside the lease group's
        rebalance callback, and a member that stays in it too long is dropped from the
        group. :meth:`take_over` (right after, each batch, the idle moments) does it."""
        if self._lost is not None:  # fenced since the last step: claim afresh what is given
            self._give_up()
        self._gave_up_at = None  # the lease group has spoken
        lost = self.owned - shards
        if lost:
            await self._release(lost)
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
            ends = await asyncio.to_thread(self.source.ends)
            for shard in never_written:
                self._rebuild_at[shard] = ends
        if gained:
            log.info("shards %s claimed (%d owned)", _ranges(gained), len(self.owned))

    async def _release(self, lost: frozenset[int]) -> None:
        kept = {s: e for s, e in self.epochs.items() if s in lost}
        if kept:  # what the next owner need not redo
            await self.write({}, Progress(epochs=kept, positions=self.pipeline.store.positions(),
                                          flush=True))
            if self._lost is not None:  # already claimed by their next owner: fine
                log.info("shards %s: %s", _ranges(sorted(lost)), self._lost)
                self._lost = None
        for s in lost:
            self.pipeline.active.discard(s)
            self.epochs.pop(s, None)
            self.pending.pop(s, None)
            self._rebuild_at.pop(s, None)
        self._changed()

    async def _claim(self, shard: int) -> Claim:
        def claim() -> Claim:
            return self.sink.claim(shard, self.pipeline.shards, self.owner)
        return await retry(lambda: asyncio.to_thread(claim), SinkUnavailable,
                           f"claiming shard {shard}")

    # ------------------------------------------------------------------ takeovers
    async def take_over(self) -> None:
        """Take over every claimed shard whose positions the state has reached."""
        if not self.pending:
            return
        state = self.pipeline.store.positions()
        ready = self._ready(state)
        if not ready:
            return
        t0 = time.monotonic()
        # The records to redo, read once for every shard (each redoes from its own start).
        starts = [s for s in ready.values() if s is not None]
        records: list[RawRecord] = []
        if starts:
            lowest = {tp: min(s.get(tp, 0) for s in starts) for tp in state}
            source = self.source
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
                await self._redo(shard, start, records, only)
            await self.write({}, Progress(epochs=only.epochs, positions=state, flush=True))
            self._rebuild_at.pop(shard, None)
            self.epochs[shard] = claims[shard].epochs
            self.pipeline.active.add(shard)
        self._changed()
        log.info("%d shards taken over in %.2fs", len(ready), time.monotonic() - t0)

    def _ready(self, state: Positions) -> dict[int, Positions | None]:
        """The claimed shards the state has caught up with, each with where its redo starts
        (``None``: rebuilt — never written, or a redo longer than a rebuild)."""
        ready: dict[int, Positions | None] = {}
        ours = {*self.pipeline.decoder.topics, self.pipeline.control_topic}
        for shard, claim in sorted(self.pending.items()):
            start = claim.start()
            if start is not None:  # positions in topics this deployment does not read: no
                start = {tp: off for tp, off in start.items() if tp[0] in ours}
            target = self._rebuild_at.get(shard, {}) if start is None else start
            if behind(state, target):
                continue  # the state is behind what the last owner wrote (or the end): not yet
            if start is not None and records_to_go(state, start) > REDO_MAX:
                start = None
            ready[shard] = start
        return ready

    async def _redo(self, shard: int, start: Positions, records: Sequence[RawRecord],
                    only: Progress) -> None:
        """Write the rows of ``shard`` that the records from ``start`` may have changed."""
        mine = [r for r in records if r.offset >= start.get((r.topic, r.partition), 0)]
        redone, resync = self.pipeline.redo_shard(mine, shard)
        rows = await self.write(redone, only)
        if resync:
            rows += await self._rebuild(frozenset((shard,)), only, self._views(resync))
        log.info("shard %d taken over: %d records redone, %d rows", shard, len(mine), rows)

    def _views(self, names: Iterable[str]) -> list[ViewDef]:
        return [v for v in self.pipeline.views if v.name in names]

    async def _rebuild(self, shards: frozenset[int], only: Progress,
                       views: Sequence[ViewDef] | None = None,
                       interruptible: bool = False) -> int:
        """Write every row of ``shards`` (of ``views``, default all) from the state, then
        delete their rows the state has no source row for: shards never written before (or
        too far behind), and resyncs. The view is never emptied on the way. Stops when
        fenced; when ``interruptible``, also when an assignment is waiting (a takeover's
        rebuild, done again later; never a resync, whose command would be lost)."""
        rows = 0
        for part in self.pipeline.rebuild_shards(shards, views):
            rows += await self.write(part, only)
            if self._lost is not None or (interruptible and self._owning):
                return rows
        for view in self.pipeline.views if views is None else views:
            for shard in sorted(shards):
                stale = self.pipeline.without_source_row(view, await self._keys(view, shard))
                if stale:
                    rows += await self.write({view.name: ViewBatch(deletes=stale)}, only)
        return rows

    async def _keys(self, view: ViewDef, shard: int) -> set[Key]:
        def keys() -> set[Key]:
            return self.sink.keys(view, shard, self.pipeline.shards)
        return await retry(lambda: asyncio.to_thread(keys), SinkUnavailable,
                           f"reading {view.name}")

    def _interrupted(self) -> bool:
        """A takeover stops between two writes: fenced, or an assignment is waiting."""
        return self._lost is not None or self._owning > 0

    # ------------------------------------------------------------------ fenced
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
        self._changed()

    def _changed(self) -> None:
        """The shards written now, for the gauge: told where they change (a takeover or a
        loss may come after the last batch, and the gauge must not wait for the next)."""
        if self._on_change is not None:
            self._on_change(len(self.epochs))


def _ranges(shards: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    out: list[str] = []
    for s in sorted(shards):
        if out and out[-1].split("-")[-1] == str(s - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{s}"
        else:
            out.append(str(s))
    return ",".join(out)
