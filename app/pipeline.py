"""The record's path through viewsync, without any I/O: decode → join → project.

:class:`Pipeline` takes raw Kafka records (topic, key bytes, value bytes), decodes each one
(``app.decode``), applies it to the join state (``app.join``), and projects every view row
that may have changed (``app.project``) into one :class:`ViewBatch` per view. The worker
(``app.worker``) hands those batches to the sink (``app.sink``) and only then acknowledges
the records. Records that cannot be decoded come back as dead letters with their reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.changes import Change
from app.decode import DecodeFailure, Decoder
from app.join import JoinEngine, SourceState
from app.project import project_many
from app.views import VIEWS, ViewDef

log = logging.getLogger("viewsync.pipeline")


@dataclass
class ViewBatch:
    """What one view needs written: rows to upsert by key, keys to delete."""

    upserts: dict[int, dict[str, Any]] = field(default_factory=dict)
    deletes: set[int] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.upserts) + len(self.deletes)


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

    @property
    def rows(self) -> int:
        return sum(len(b) for b in self.views.values())


class Pipeline:
    """Accumulates a batch: ``add`` each record in order, then ``take_batch``.

    Rows are projected once per dirty key when the batch is taken (a key changed many times
    in one batch is written once, with its latest state).
    """

    def __init__(self, decoder: Decoder, state: SourceState,
                 views: Sequence[ViewDef] = VIEWS) -> None:
        self.decoder = decoder
        self.state = state
        self.views = tuple(views)
        self.engine = JoinEngine(state)
        self._dirty: dict[str, set[int]] = {v.name: set() for v in self.views}
        self._changes = 0

    def rebuild(self) -> None:
        """Rebuild the join indexes from the state (after the state was recovered)."""
        self.engine = JoinEngine(self.state)

    def apply(self, change: Change) -> None:
        """Join stage: update the state, mark every view key the change may alter."""
        affected = self.engine.apply(change)
        self._changes += 1
        for view in self.views:
            self._dirty[view.name].update(affected.keys_for(view))

    def add(self, rec: RawRecord) -> DeadLetter | None:
        """Decode one record and apply it; a record that cannot be decoded is returned."""
        decoded = self.decoder.decode(rec.topic, rec.key, rec.value)
        if isinstance(decoded, DecodeFailure):
            log.warning("dead letter %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset,
                        decoded.reason)
            return DeadLetter(rec, decoded.reason)
        self.apply(decoded)
        return None

    def take_batch(self) -> tuple[dict[str, ViewBatch], int]:
        """Project stage: the rows to write for everything applied since the last call."""
        out: dict[str, ViewBatch] = {}
        for view in self.views:
            keys = self._dirty[view.name]
            if keys:
                upserts, deletes = project_many(self.state, view, keys)
                out[view.name] = ViewBatch(upserts=upserts, deletes=deletes)
            self._dirty[view.name] = set()
        changes, self._changes = self._changes, 0
        return out, changes

    def process(self, records: Iterable[RawRecord]) -> BatchResult:
        """``add`` every record, then ``take_batch``."""
        dead = [dl for rec in records if (dl := self.add(rec)) is not None]
        views, changes = self.take_batch()
        return BatchResult(views=views, dead_letters=dead, changes=changes)
