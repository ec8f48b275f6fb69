"""Restore: bring the state store up to where the views are, before the worker starts.

The views in the consumer databases hold every record up to the consumer group's committed
offsets. The state store holds every record up to its own positions. When the store is
behind (a new data directory, a store lost with its disk, the first start after an upgrade
from the changelog-table format), the records in between are read straight from the
compacted source topics and applied to the state only: the views already have them, so
nothing is written to the consumer databases. When the store is level or ahead, there is
nothing to do (records between the committed offsets and the store's positions are replayed
by the worker itself, see ``app.pipeline``).

It reads with ``app.topic_range``'s reader (a plain consumer that assigns partitions itself
and commits nothing), so it never joins or disturbs the worker's consumer group.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass

from app.decode import SchemaUnavailable
from app.pipeline import Pipeline
from app.records import RawRecord
from app.retry import calling, retry
from app.settings import Settings
from app.topic_range import committed_offsets, read_batches

log = logging.getLogger("viewsync.restore")

#: Seconds between two progress lines.
PROGRESS_EVERY = 5.0


@dataclass
class RestorePlan:
    """Per source partition, from where (``None``: the beginning) to which offset."""

    ranges: dict[tuple[str, int], tuple[int | None, int]]

    @property
    def records(self) -> int:
        """At most this many records (fewer where compaction removed some)."""
        return sum(end - (start or 0) for start, end in self.ranges.values())


def plan(committed: dict[tuple[str, int], int], store: dict[tuple[str, int], int]
         ) -> RestorePlan:
    """The ranges to read: where the group has committed past the store's position."""
    ranges: dict[tuple[str, int], tuple[int | None, int]] = {}
    for tp, end in committed.items():
        start = store.get(tp)
        if end > 0 and (start is None or start < end):
            ranges[tp] = (start, end)
    return RestorePlan(ranges)


async def restore(settings: Settings, topics: Sequence[str], pipeline: Pipeline) -> int:
    """Apply the records the views have and the state lacks; return how many were applied."""
    group = settings.data_group()
    todo = plan(committed_offsets(settings, group, topics), pipeline.store.positions())
    if not todo.ranges:
        return 0
    log.info("restoring the state store from the source topics: up to %d records",
             todo.records)
    applied = 0
    t0 = last = time.monotonic()
    with closing(read_batches(settings, todo.ranges,
                              consumer={"group.id": group, "auto.offset.reset": "earliest"},
                              timeout_s=1.0, errors="raise")) as batches:
        for batch in batches:
            for r in batch:
                rec = RawRecord(r.topic, r.partition, r.offset, r.key, r.value)
                try:
                    pipeline.restore(rec)
                except SchemaUnavailable:
                    await retry(calling(pipeline.restore, rec), SchemaUnavailable,
                                "schema lookup")
                applied += 1
            pipeline.commit()
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY:
                last = now
                rate = applied / (now - t0)
                left = max(todo.records - applied, 0)
                log.info("restoring: %d records, %.0f/s, about %d left (~%.0fs)",
                         applied, rate, left, left / rate if rate else 0.0)
    log.info("state store restored: %d records in %.1fs", applied, time.monotonic() - t0)
    return applied
