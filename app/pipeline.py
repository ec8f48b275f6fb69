"""The synchronous core of a batch: decode → state/join → project, then commit the state.

:class:`Pipeline` decodes raw Kafka records (``app.decode``), applies them to the join
state (``app.join`` over ``app.state``), projects every view row that may have changed
(``app.project``) into one :class:`~app.project.ViewBatch` per view, and commits the state
with the source positions it reached. It does no I/O of its own beyond the state store: the
batch loop (``app.loop``) writes what it returns, and shard ownership (``app.ownership``)
asks it for the rows a takeover redoes or rebuilds.

A record below the position the store had already reached when the pipeline started is
*redone*, not applied: the state already holds it (and newer rows), so every view row that
depends on its row *now* is re-projected from the current state — no column pruning, and no
stepping back through older versions (the views never show an older value during a
catch-up). The store's positions never move back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from app import control
from app.changes import Change
from app.control import Command
from app.decode import DecodeFailure, Decoder
from app.graph import Key
from app.join import Affected, JoinEngine
from app.positions import Positions
from app.project import Memo, ViewBatch, project_many
from app.records import DeadLetter, RawRecord
from app.shards import in_shards, shard_of
from app.state import StateStore
from app.views import ViewDef

log = logging.getLogger("viewsync.pipeline")


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

    def __init__(self, decoder: Decoder, store: StateStore, views: Sequence[ViewDef],
                 shards: int = 1,
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
        self._dirty: dict[str, set[Key]] = {v.name: set() for v in self.views}
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
        """The record as a change or a command; a dead letter if it is neither."""
        if rec.topic == self.control_topic:
            cmd = control.decode(rec.value, {v.name for v in self.views})
            return DeadLetter(rec, cmd) if isinstance(cmd, str) else cmd
        decoded = self.decoder.decode(rec.topic, rec.key, rec.value)
        if isinstance(decoded, DecodeFailure):
            return DeadLetter(rec, decoded.reason)
        return decoded

    def _reach(self, rec: RawRecord) -> None:
        """The store's position moves past ``rec`` (never back: a replay is below it)."""
        tp = (rec.topic, rec.partition)
        self.positions[tp] = max(rec.offset + 1, self.replay_until.get(tp, 0))

    def _command(self, cmd: Command, dirty: dict[str, set[Key]], resync: set[str],
                 only: frozenset[int] | None = None) -> None:
        """A repair marks its keys (of the active shards, or ``only``) in ``dirty``; a
        resync is noted in ``resync`` for the loop: it rewrites whole shards."""
        if cmd.op == "repair":
            keys = in_shards(cmd.keys, self.shards, only) if only is not None else cmd.keys
            dirty[cmd.view].update(keys)
        else:
            resync.add(cmd.view)

    def add(self, rec: RawRecord) -> DeadLetter | None:
        """Decode one record and apply it; a record that cannot be decoded is returned.

        Raises :class:`~app.decode.SchemaUnavailable` (nothing applied) while the registry
        cannot be asked.
        """
        self._reach(rec)
        decoded = self._decode(rec)
        if isinstance(decoded, DeadLetter):
            log.warning("dead letter %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset,
                        decoded.reason)
            return decoded
        if isinstance(decoded, Command):
            log.info("command from %s@%d: %s %s%s", rec.topic, rec.offset, decoded.op,
                     decoded.view, f" ({len(decoded.keys)} keys)" if decoded.keys else "")
            self._command(decoded, self._dirty, self._resync)
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
        self._reach(rec)
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

    def _project(self, dirty: Mapping[str, Iterable[Key]]) -> dict[str, ViewBatch]:
        out: dict[str, ViewBatch] = {}
        memo = Memo()
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
        dirty: dict[str, set[Key]] = {v.name: set() for v in self.views}
        only = frozenset((shard,))
        resync: set[str] = set()
        for rec in records:
            decoded = self._decode(rec)
            if isinstance(decoded, DeadLetter):
                continue  # dead-lettered when it was first read
            if isinstance(decoded, Command):
                self._command(decoded, dirty, resync, only)
                continue
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
            table = self.state.store(view.grain_table)
            keys: list[Key] = []
            for key in table:
                if shard_of(key, self.shards) in shards:
                    keys.append(key)
                    if len(keys) >= chunk:
                        yield self._project({view.name: keys})
                        keys = []
            if keys:
                yield self._project({view.name: keys})

    def without_source_row(self, view: ViewDef, keys: Iterable[Key]) -> set[Key]:
        """The keys of ``keys`` whose source row (of the view's grain) the state does not
        have."""
        table = self.state.store(view.grain_table)
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
