"""``viewsync connectors resnapshot``: recover from a binlog gap, exactly.

When the binlog the connector needs was purged (it was stopped for longer than the binlog's
retention), Debezium refuses to start (its task FAILS: "no longer available on the server")
rather than skip changes silently. The changes inside the gap are lost from the binlog, so
the only exact way back is a fresh snapshot of the Product database — plus the one thing a
snapshot cannot say: which rows were *deleted* inside the gap. This command does both:

1. stop the connector and reset its offsets (so that its next start snapshots);
2. note the end of every source topic, resume the connector and wait for the snapshot to
   finish (the record marked ``snapshot = last``, or offsets that say so);
3. stop the connector again (everything it produced is in Kafka, nothing new comes) and
   write a tombstone for every key whose latest record predates the snapshot and is not a
   delete: those rows were not in the snapshot, so they no longer exist;
4. resume the connector: streaming continues from the snapshot's binlog position.

The workers need nothing special: the snapshot's records are ordinary upserts and the
tombstones ordinary deletes, so every view converges to the source, and the compacted topics
(from which a new worker restores) hold exactly the source's rows again. Idempotent: a second
run takes another snapshot and finds nothing to delete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.changes import SOURCE_TABLES
from app.connectors import ConnectClient, ConnectError
from app.decode import DecodeFailure, Decoder, RegistrySchemas
from app.settings import Settings

log = logging.getLogger("viewsync.resnapshot")

_DONE_MARKERS = {"last"}


@dataclass
class ResnapshotResult:
    snapshot_records: dict[str, int] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _end_offsets(settings: Settings, topics: list[str]) -> dict[str, int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": settings.bootstrap(), "group.id": "viewsync-resnapshot",
                  "enable.auto.commit": False})
    try:
        return {t: max(c.get_watermark_offsets(TopicPartition(t, 0), timeout=30)[1], 0)
                for t in topics}
    finally:
        c.close()


def _scan(settings: Settings, topic: str, start: int, end: int,
          on_record: Callable[[int, bytes | None, bytes | None], None]) -> None:
    """Call ``on_record(offset, key, value)`` for every record of ``topic`` in [start, end)."""
    from confluent_kafka import Consumer, TopicPartition

    if start >= end:
        return
    c = Consumer({"bootstrap.servers": settings.bootstrap(), "group.id": "viewsync-resnapshot",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        c.assign([TopicPartition(topic, 0, start)])
        while True:
            msgs = c.consume(5000, timeout=1.0)
            for m in msgs:
                if m.error():
                    continue
                off = m.offset()
                if off is not None and off < end:
                    on_record(off, m.key(), m.value())
                if off is not None and off >= end - 1:
                    return
            lo_hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
            pos = c.position([TopicPartition(topic, 0)])[0].offset
            if pos >= min(end, lo_hi[1]):
                return
    finally:
        c.close()


def resnapshot(settings: Settings, timeout: float = 3600.0,
               say: Callable[[str], None] = print) -> ResnapshotResult:
    from confluent_kafka import Producer

    t0 = time.monotonic()
    result = ResnapshotResult()
    client = ConnectClient(settings)
    topics = [settings.topic(t) for t in SOURCE_TABLES]
    decoder = Decoder(RegistrySchemas(settings.registry_url()),
                      dict(zip(topics, SOURCE_TABLES, strict=True)))

    say(f"stopping connector {client.name} and resetting its offsets")
    client.stop()
    client.reset_offsets()
    before = _end_offsets(settings, topics)
    say("resuming it: a fresh snapshot of the Product database")
    client.resume()

    # Finished when the connector's committed offset no longer says "snapshot": Connect
    # commits a source offset only once every record before it is acknowledged, so by then
    # the whole snapshot is in Kafka. (Its last record, marked ``snapshot=last``, says the
    # same a moment earlier when it is still the newest record of its topic.)
    deadline = time.monotonic() + timeout
    done = False
    while not done:
        if time.monotonic() > deadline:
            raise ConnectError(f"the snapshot did not finish within {timeout:.0f}s")
        time.sleep(1.0)
        status = client.status()
        failed = [t.get("trace", "")[:1000] for t in status.get("tasks", [])
                  if t["state"] == "FAILED"]
        if failed:
            raise ConnectError(f"connector {client.name} FAILED during the snapshot: {failed[0]}")
        ends = _end_offsets(settings, topics)
        for topic in topics:
            def check(_off: int, _key: bytes | None, value: bytes | None, topic: str = topic
                      ) -> None:
                nonlocal done
                if value is not None and decoder.snapshot_marker(topic, value) in _DONE_MARKERS:
                    done = True
            _scan(settings, topic, max(before[topic], ends[topic] - 1), ends[topic], check)
        done = done or _offsets_say_streaming(client)
        say("  snapshot: " + ", ".join(
            f"{t.rsplit('.', 1)[1]} {ends[t] - before[t]:,}" for t in topics))

    say("snapshot finished; stopping the connector to find the rows it no longer has")
    client.stop()
    ends = _end_offsets(settings, topics)
    producer = Producer({"bootstrap.servers": settings.bootstrap(), "acks": "all",
                         "enable.idempotence": True})
    for topic, table in zip(topics, SOURCE_TABLES, strict=True):
        latest: dict[bytes, tuple[int, bool]] = {}

        def remember(off: int, key: bytes | None, value: bytes | None,
                     latest: dict[bytes, tuple[int, bool]] = latest) -> None:
            if key is not None:
                latest[key] = (off, value is None)

        _scan(settings, topic, 0, ends[topic], remember)
        # Keys that are not a row's key (poison records, already dead-lettered) are left
        # alone: a tombstone for them would only be dead-lettered again.
        gone = [k for k, (off, deleted) in latest.items()
                if off < before[topic] and not deleted
                and not isinstance(decoder.decode(topic, k, None), DecodeFailure)]
        for key in gone:
            producer.produce(topic, key=key, value=None)
            producer.poll(0)
        result.snapshot_records[table] = ends[topic] - before[topic]
        result.tombstones[table] = len(gone)
        say(f"  {table}: {ends[topic] - before[topic]:,} snapshot records, "
            f"{len(gone):,} rows gone (tombstoned)")
    if producer.flush(120) != 0:
        raise ConnectError("could not write every tombstone to Kafka within 120 s")
    say("resuming the connector (streaming from the snapshot's binlog position)")
    client.resume()
    client.wait_running(timeout=120)
    result.seconds = time.monotonic() - t0
    say(f"done in {result.seconds:.1f}s")
    return result


def _offsets_say_streaming(client: ConnectClient) -> bool:
    """Whether the connector's committed offset is past its snapshot (empty tables give no
    ``last`` record to wait for)."""
    try:
        offsets = client.offsets()
    except ConnectError:
        return False
    return bool(offsets) and all(
        not o.get("offset", {}).get("snapshot") for o in offsets)
