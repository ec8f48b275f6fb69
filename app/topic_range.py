"""Kafka topics outside any consumer group: read a range of one — the one reader the
operator commands share (``dlq``, ``connectors resnapshot``) — find their ends, and create
one unless it exists. The worker's own reading is Faust's, and its restore
(``app.restore``) feeds the pipeline in batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import cast

from app.clients import kafka_config
from app.settings import Settings


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def ensure_topic(settings: Settings, topic: str, partitions: int = 1) -> tuple[bool, int]:
    """Create ``topic`` with ``partitions`` partitions (the broker's replication factor)
    unless it exists; another process creating it at the same moment is fine. Returns
    whether this call created it, and how many partitions it has."""
    # NewTopic is documented under confluent_kafka.admin; the type stubs do not list it.
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient(kafka_config(settings))
    meta = admin.list_topics(timeout=30).topics.get(topic)
    if meta is None:
        try:
            admin.create_topics([NewTopic(topic, num_partitions=partitions)])[topic].result(30)
            return True, partitions
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
        meta = admin.list_topics(timeout=30).topics.get(topic)
    return False, len(meta.partitions) if meta is not None else 0


def _reader_config(settings: Settings) -> dict[str, object]:
    """A consumer that only assigns partitions (it never joins or commits to its group)."""
    return kafka_config(settings, {"group.id": "viewsync-reader", "enable.auto.commit": False})


def partitions(settings: Settings, topic: str) -> list[int]:
    """The topic's partitions (none when it does not exist)."""
    from confluent_kafka.admin import AdminClient

    md = AdminClient(kafka_config(settings)).list_topics(topic, timeout=30)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return []
    return sorted(t.partitions)


def end_offsets(settings: Settings, topic: str, parts: list[int]) -> dict[int, int]:
    """The next offset of each partition of ``parts``, as of now."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(_reader_config(settings))
    try:
        return {p: max(c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1], 0)
                for p in parts}
    finally:
        c.close()


def topic_ends(settings: Settings, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """The next offset of every partition of every one of ``topics``, as of now."""
    return {(topic, p): off for topic in topics
            for p, off in end_offsets(settings, topic, partitions(settings, topic)).items()}


def read_range(settings: Settings, topic: str, starts: dict[int, int],
               ends: dict[int, int] | None = None) -> Iterator[Record]:
    """Every record of ``topic`` from ``starts`` (per partition) up to ``ends`` (default: the
    end as of the call), in offset order per partition."""
    from confluent_kafka import Consumer, TopicPartition

    if ends is None:
        ends = end_offsets(settings, topic, list(starts))
    todo = {p for p in starts if starts[p] < ends[p]}
    if not todo:
        return
    c = Consumer(_reader_config(settings))
    try:
        c.assign([TopicPartition(topic, p, starts[p]) for p in todo])
        while todo:
            # A short timeout: consume() waits it out unless 5000 records arrive, and a
            # small range must not cost a second per topic.
            msgs = c.consume(5000, timeout=0.1)
            if not msgs:  # offsets may have gaps (compaction, transaction markers)
                for tp in c.position([TopicPartition(topic, p) for p in list(todo)]):
                    if tp.offset >= ends[tp.partition]:
                        todo.discard(tp.partition)
            for m in msgs:
                if m.error():
                    continue
                p, off = m.partition(), m.offset()
                if p not in todo or off is None or off >= ends[p]:
                    continue
                hdrs = cast(list[tuple[str, bytes | None]], m.headers() or [])
                yield Record(p, off, m.timestamp()[1], m.key(), m.value(),
                             {k: v for k, v in hdrs if v is not None})
                if off >= ends[p] - 1:
                    todo.discard(p)
    finally:
        c.close()
