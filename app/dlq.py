"""``viewsync dlq list | show | replay``: the dead-letter topic, for people.

Every dead letter is the original record (key and value bytes, untouched) with two headers
written by the worker: ``viewsync.reason`` and ``viewsync.source`` (``topic[partition]@offset``
of the original). ``replay`` puts dead letters back on their source topic, once their cause
is fixed (a schema registered again, a contract updated, a worker upgraded):

- only dead letters not replayed before (the replay's own consumer group remembers how far
  it got), so running it twice replays nothing twice;
- never one whose row has changed since: if the source topic holds a newer record for the
  same key (or an earlier replay of it), the dead letter is *superseded* and skipped —
  putting an old change back after a newer one would turn a row back in time;
- a record without a key, or from a topic that is not a source topic, is skipped and said.

A dead letter that still cannot be decoded goes to the dead-letter topic again, with its
reason, as a new entry.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

from app.changes import SOURCE_TABLES
from app.settings import Settings

_SOURCE = re.compile(r"^(?P<topic>.+)\[(?P<partition>\d+)\]@(?P<offset>\d+)$")


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp_ms: int
    reason: str
    source: str
    key: bytes | None
    value: bytes | None

    @property
    def origin(self) -> tuple[str, int, int] | None:
        """(topic, partition, offset) of the original record, when the header says."""
        m = _SOURCE.match(self.source)
        if m is None:
            return None
        return m["topic"], int(m["partition"]), int(m["offset"])


@dataclass
class ReplayResult:
    replayed: list[DeadLetter] = field(default_factory=list)
    superseded: list[DeadLetter] = field(default_factory=list)
    skipped: list[tuple[DeadLetter, str]] = field(default_factory=list)


def _partitions(settings: Settings, topic: str) -> list[int]:
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": settings.bootstrap()}).list_topics(topic, timeout=30)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return []
    return sorted(t.partitions)


def _read(settings: Settings, topic: str, starts: dict[int, int]) -> Iterator[
        tuple[int, int, int, bytes | None, bytes | None, dict[str, bytes]]]:
    """(partition, offset, timestamp ms, key, value, headers) of every record of ``topic``
    from ``starts`` to the end as of now."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": settings.bootstrap(), "group.id": "viewsync-dlq-reader",
                  "enable.auto.commit": False})
    try:
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                for p in starts}
        todo = {p for p in starts if starts[p] < ends[p]}
        if not todo:
            return
        c.assign([TopicPartition(topic, p, starts[p]) for p in todo])
        while todo:
            msgs = c.consume(1000, timeout=1.0)
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
                yield (p, off, m.timestamp()[1], m.key(), m.value(),
                       {k: v for k, v in hdrs if v is not None})
                if off >= ends[p] - 1:
                    todo.discard(p)
    finally:
        c.close()


def dead_letters(settings: Settings, since: dict[int, int] | None = None) -> list[DeadLetter]:
    """Every dead letter (from ``since`` per partition), oldest first."""
    topic = settings.dead_letter_topic
    starts = {p: (since or {}).get(p, 0) for p in _partitions(settings, topic)}
    out = []
    for p, off, ts, key, value, headers in _read(settings, topic, starts):
        out.append(DeadLetter(
            partition=p, offset=off, timestamp_ms=ts,
            reason=headers.get("viewsync.reason", b"").decode(errors="replace"),
            source=headers.get("viewsync.source", b"").decode(errors="replace"),
            key=key, value=value))
    return out


def replay(settings: Settings, dry_run: bool = False) -> ReplayResult:
    from confluent_kafka import Consumer, Producer, TopicPartition

    topic = settings.dead_letter_topic
    group = f"{settings.worker_id}-dlq-replay"
    result = ReplayResult()
    c = Consumer({"bootstrap.servers": settings.bootstrap(), "group.id": group,
                  "enable.auto.commit": False})
    try:
        parts = _partitions(settings, topic)
        committed = c.committed([TopicPartition(topic, p) for p in parts], timeout=30)
        since = {tp.partition: max(tp.offset, 0) for tp in committed}
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                for p in parts}
        todo = dead_letters(settings, since)
        sources = {settings.topic(t) for t in SOURCE_TABLES}
        candidates: list[tuple[DeadLetter, tuple[str, int, int]]] = []
        origins: set[tuple[str, int, int]] = set()
        for dl in todo:
            origin = dl.origin
            if origin in origins:
                result.skipped.append((dl, "the same record was dead-lettered twice"))
            elif origin is None or origin[0] not in sources:
                result.skipped.append((dl, "not from a source topic"))
            elif dl.key is None:
                result.skipped.append((dl, "no key"))
            else:
                candidates.append((dl, origin))
                origins.add(origin)
        latest = _latest_offsets(settings, candidates)
        producer = Producer({"bootstrap.servers": settings.bootstrap(), "acks": "all",
                             "enable.idempotence": True})
        for dl, (src, part, off) in candidates:
            if latest.get((src, part, dl.key or b""), -1) > off:
                result.superseded.append(dl)
                continue
            result.replayed.append(dl)
            if not dry_run:
                producer.produce(src, key=dl.key, value=dl.value, partition=part, headers={
                    "viewsync.replay-of": f"{topic}[{dl.partition}]@{dl.offset}".encode()})
        if not dry_run:
            if producer.flush(60) != 0:
                raise RuntimeError("could not write every replayed record within 60 s")
            c.commit(offsets=[TopicPartition(topic, p, ends[p]) for p in parts],
                     asynchronous=False)
    finally:
        c.close()
    return result


def _latest_offsets(settings: Settings, candidates: list[tuple[DeadLetter, tuple[str, int, int]]]
                    ) -> dict[tuple[str, int, bytes], int]:
    """For every (topic, partition, key) of the candidates: the offset of its newest record
    at or after the oldest candidate of that partition."""
    wanted: dict[tuple[str, int], set[bytes]] = {}
    start: dict[tuple[str, int], int] = {}
    for dl, (src, part, off) in candidates:
        wanted.setdefault((src, part), set()).add(dl.key or b"")
        start[(src, part)] = min(start.get((src, part), off), off)
    out: dict[tuple[str, int, bytes], int] = {}
    for (src, part), keys in wanted.items():
        for p, off, _ts, key, _v, _h in _read(settings, src, {part: start[(src, part)]}):
            if key in keys:
                out[(src, p, key)] = off
    return out
