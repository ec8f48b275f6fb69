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
from app.views import VIEWS, Grain, ViewDef

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
    def __init__(self, decoder: Decoder, state: SourceState,
                 views: Sequence[ViewDef] = VIEWS) -> None:
        self.decoder = decoder
        self.state = state
        self.views = tuple(views)
        self.engine = JoinEngine(state)

    def rebuild(self) -> None:
        """Rebuild the join indexes from the state (after the state was recovered)."""
        self.engine = JoinEngine(self.state)

    def apply_changes(self, changes: Iterable[Change]) -> dict[str, ViewBatch]:
        """Apply changes in order; project once per dirty key at the end (coalescing)."""
        dirty: dict[str, set[int]] = {v.name: set() for v in self.views}
        for change in changes:
            affected = self.engine.apply(change)
            for view in self.views:
                if change.table not in view.depends_on:
                    continue
                keys = affected.product_ids if view.grain is Grain.PRODUCT else affected.batch_ids
                dirty[view.name].update(keys)
        out: dict[str, ViewBatch] = {}
        for view in self.views:
            if dirty[view.name]:
                upserts, deletes = project_many(self.state, view, dirty[view.name])
                out[view.name] = ViewBatch(upserts=upserts, deletes=deletes)
        return out

    def process(self, records: Sequence[RawRecord]) -> BatchResult:
        changes: list[Change] = []
        dead: list[DeadLetter] = []
        for rec in records:
            decoded = self.decoder.decode(rec.topic, rec.key, rec.value)
            if isinstance(decoded, DecodeFailure):
                log.warning("dead letter %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset,
                            decoded.reason)
                dead.append(DeadLetter(rec, decoded.reason))
            else:
                changes.append(decoded)
        return BatchResult(views=self.apply_changes(changes), dead_letters=dead,
                           changes=len(changes))
