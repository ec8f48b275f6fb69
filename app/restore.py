"""Restore: bring the state store up to where the views are, before the worker starts.

The views in the consumer databases hold every record up to the consumer group's committed
offsets. The state store holds every record up to its own positions. When the store is
behind (a new data directory, a store lost with its disk, the first start after an upgrade
from the changelog-table format), the records in between are read straight from the
compacted source topics and applied to the state only: the views already have them, so
nothing is written to the consumer databases. When the store is level or ahead, there is
nothing to do (records between the committed offsets and the store's positions are replayed
by the worker itself, see ``app.pipeline``).

It reads with a plain consumer (librdkafka) that assigns partitions itself and commits
nothing, so it never joins or disturbs the worker's consumer group.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.decode import SchemaUnavailable
from app.pipeline import Pipeline, RawRecord
from app.retry import calling, retry

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


async def restore(kafka: Mapping[str, Any], group: str, topics: Sequence[str],
                  pipeline: Pipeline) -> int:
    """Apply the records the views have and the state lacks; return how many were applied.
    ``kafka``: the consumer configuration (``app.clients.kafka_config``)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

    consumer = Consumer({
        **kafka, "group.id": group, "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    try:
        meta = consumer.list_topics(timeout=30)
        tps = [TopicPartition(t, p) for t in topics if t in meta.topics
               for p in meta.topics[t].partitions]
        committed = {(tp.topic, tp.partition): tp.offset
                     for tp in consumer.committed(tps, timeout=30) if tp.offset >= 0}
        todo = plan(committed, pipeline.store.positions())
        if not todo.ranges:
            return 0
        log.info("restoring the state store from the source topics: up to %d records",
                 todo.records)
        consumer.assign([
            TopicPartition(t, p, OFFSET_BEGINNING if start is None else start)
            for (t, p), (start, _end) in todo.ranges.items()])
        remaining = dict(todo.ranges)
        applied = 0
        t0 = last = time.monotonic()
        while remaining:
            msgs = consumer.consume(num_messages=5000, timeout=1.0)
            if not msgs:
                positions = consumer.position([TopicPartition(t, p) for t, p in remaining])
                for tp in positions:
                    if tp.offset >= remaining[(tp.topic, tp.partition)][1]:
                        del remaining[(tp.topic, tp.partition)]
                continue
            for m in msgs:
                if m.error():
                    raise KafkaException(m.error())
                key = (str(m.topic()), int(m.partition() or 0))
                offset = int(m.offset() or 0)
                span = remaining.get(key)
                if span is None or offset >= span[1]:
                    remaining.pop(key, None)
                    continue
                rec = RawRecord(key[0], key[1], offset, _bytes(m.key()), _bytes(m.value()))
                try:
                    pipeline.restore(rec)
                except SchemaUnavailable:
                    await retry(calling(pipeline.restore, rec), SchemaUnavailable,
                                "schema lookup")
                applied += 1
                if offset + 1 >= span[1]:
                    del remaining[key]
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
    finally:
        consumer.close()


def _bytes(b: str | bytes | None) -> bytes | None:
    return b.encode() if isinstance(b, str) else b
