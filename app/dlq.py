"""``viewsync dlq list | show | replay``: the dead-letter topic, for people.

Every dead letter is the original record (key and value bytes, untouched) with two headers
written by the worker (``app.records``, where their format is written): ``viewsync.reason``
and ``viewsync.source`` (``topic[partition]@offset`` of the original). ``replay`` puts dead
letters back on their source topic, once their cause is fixed (a schema registered again, a
contract updated, a worker upgraded):

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

from dataclasses import dataclass, field

from app.clients import kafka_config
from app.records import REASON_HEADER, SOURCE_HEADER, parse_source
from app.settings import Settings
from app.topic_range import end_offsets, partitions, read_range


@dataclass(frozen=True)
class StoredDeadLetter:
    """A dead letter as read back from the dead-letter topic."""

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
        return parse_source(self.source)


@dataclass
class ReplayResult:
    replayed: list[StoredDeadLetter] = field(default_factory=list)
    superseded: list[StoredDeadLetter] = field(default_factory=list)
    skipped: list[tuple[StoredDeadLetter, str]] = field(default_factory=list)


def dead_letters(settings: Settings, since: dict[int, int] | None = None
                 ) -> list[StoredDeadLetter]:
    """Every dead letter (from ``since`` per partition), oldest first."""
    return _dead_letters(settings, since, None)


def _dead_letters(settings: Settings, since: dict[int, int] | None,
                  ends: dict[int, int] | None) -> list[StoredDeadLetter]:
    topic = settings.dead_letter_topic
    starts = {p: (since or {}).get(p, 0) for p in partitions(settings, topic)}
    return [StoredDeadLetter(
        partition=r.partition, offset=r.offset, timestamp_ms=r.timestamp_ms,
        reason=r.headers.get(REASON_HEADER, b"").decode(errors="replace"),
        source=r.headers.get(SOURCE_HEADER, b"").decode(errors="replace"),
        key=r.key, value=r.value) for r in read_range(settings, topic, starts, ends)]


def replay(settings: Settings, dry_run: bool = False) -> ReplayResult:
    from confluent_kafka import Consumer, Producer, TopicPartition

    topic = settings.dead_letter_topic
    group = f"{settings.worker_id}-dlq-replay"
    result = ReplayResult()
    c = Consumer(kafka_config(settings, {"group.id": group, "enable.auto.commit": False}))
    try:
        parts = partitions(settings, topic)
        committed = c.committed([TopicPartition(topic, p) for p in parts], timeout=30)
        since = {tp.partition: max(tp.offset, 0) for tp in committed}
        # The same ends for reading and for the commit: a dead letter that arrives meanwhile
        # is left for the next replay.
        ends = end_offsets(settings, topic, parts)
        todo = _dead_letters(settings, since, ends)
        sources = set(settings.source_topics())
        candidates: list[tuple[StoredDeadLetter, tuple[str, int, int]]] = []
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
        producer = Producer(kafka_config(settings, {"acks": "all", "enable.idempotence": True}))
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


def _latest_offsets(settings: Settings,
                    candidates: list[tuple[StoredDeadLetter, tuple[str, int, int]]]
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
        for r in read_range(settings, src, {part: start[(src, part)]}):
            if r.key in keys:
                out[(src, r.partition, r.key)] = r.offset
    return out
