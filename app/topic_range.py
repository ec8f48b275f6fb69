"""Kafka topics outside any consumer group: read ranges of them — the one reader the
operator commands and the worker's restore and takeovers share (:func:`read_range`, one
topic; :func:`read_batches`, several, batch by batch) — find their ends and a group's
committed offsets, and create one unless it exists. The worker's own stream is Faust's."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from typing import Literal, cast

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
    topic: str = ""


#: A range to read per (topic, partition): from ``start`` (``None``: the partition's
#: beginning) up to ``end`` (exclusive).
Ranges = Mapping[tuple[str, int], tuple[int | None, int]]


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


def committed_offsets(settings: Settings, group: str, topics: Iterable[str]
                      ) -> dict[tuple[str, int], int]:
    """The offsets ``group`` has committed in every partition of ``topics`` (a topic that
    does not exist has none; a partition without a commit is left out)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(kafka_config(settings, {"group.id": group, "enable.auto.commit": False}))
    try:
        meta = c.list_topics(timeout=30)
        tps = [TopicPartition(t, p) for t in topics if t in meta.topics
               for p in meta.topics[t].partitions]
        return {(tp.topic, tp.partition): tp.offset
                for tp in c.committed(tps, timeout=30) if tp.offset >= 0}
    finally:
        c.close()


def read_range(settings: Settings, topic: str, starts: dict[int, int],
               ends: dict[int, int] | None = None) -> Iterator[Record]:
    """Every record of ``topic`` from ``starts`` (per partition) up to ``ends`` (default: the
    end as of the call), in offset order per partition."""
    if ends is None:
        ends = end_offsets(settings, topic, list(starts))
    ranges: dict[tuple[str, int], tuple[int | None, int]] = {
        (topic, p): (starts[p], ends[p]) for p in starts}
    with closing(read_batches(settings, ranges)) as batches:
        for batch in batches:
            yield from batch


def read_batches(settings: Settings, ranges: Ranges, *,
                 consumer: Mapping[str, object] | None = None, timeout_s: float = 0.1,
                 errors: Literal["skip", "raise"] = "skip"
                 ) -> Generator[list[Record], None, None]:
    """Every record of ``ranges``, one consumer for all of them, in the batches it consumes
    (up to 5000 records; offset order per partition; no batch is empty).

    The consumer assigns the partitions itself: it never joins its group nor commits.
    ``consumer``: settings of its own over the reader's (a ``group.id``, an
    ``auto.offset.reset``); ``timeout_s``: how long one poll waits for records (a short one:
    a small range must not cost a second); ``errors``: what a record with an error does,
    skipped or raised (``KafkaException``)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

    todo = {tp: end for tp, (start, end) in ranges.items() if start is None or start < end}
    if not todo:
        return
    c = Consumer({**_reader_config(settings), **(consumer or {})})
    try:
        c.assign([TopicPartition(t, p, OFFSET_BEGINNING if start is None else start)
                  for (t, p), (start, _end) in ranges.items() if (t, p) in todo])
        while todo:
            # consume() waits out its timeout unless 5000 records arrive.
            msgs = c.consume(5000, timeout=timeout_s)
            if not msgs:  # offsets may have gaps (compaction, transaction markers)
                for tp in c.position([TopicPartition(t, p) for t, p in todo]):
                    if tp.offset >= todo[(tp.topic, tp.partition)]:
                        del todo[(tp.topic, tp.partition)]
            batch: list[Record] = []
            for m in msgs:
                if m.error():
                    if errors == "raise":
                        raise KafkaException(m.error())
                    continue
                where, off = (str(m.topic()), int(m.partition() or 0)), m.offset()
                end = todo.get(where)
                if end is None or off is None:
                    continue
                if off >= end:  # in offset order: everything before it has come
                    del todo[where]
                    continue
                hdrs = cast(list[tuple[str, bytes | None]], m.headers() or [])
                batch.append(Record(where[1], off, m.timestamp()[1], _bytes(m.key()),
                                    _bytes(m.value()), {k: v for k, v in hdrs if v is not None},
                                    where[0]))
                if off >= end - 1:
                    del todo[where]
            if batch:
                yield batch
    finally:
        c.close()


def _bytes(b: str | bytes | None) -> bytes | None:
    return b.encode() if isinstance(b, str) else b
