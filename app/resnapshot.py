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

from app.clients import kafka_config, registry_config
from app.connectors import ConnectClient, ConnectError
from app.decode import DecodeFailure, Decoder, RegistrySchemas
from app.settings import Settings
from app.topic_range import end_offsets, partitions, read_range

log = logging.getLogger("viewsync.resnapshot")

_DONE_MARKERS = {"last"}


@dataclass
class ResnapshotResult:
    snapshot_records: dict[str, int] = field(default_factory=dict)
    tombstones: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _end_offsets(settings: Settings, topics: list[str]) -> dict[str, dict[int, int]]:
    """Every partition's end, per topic."""
    return {t: end_offsets(settings, t, partitions(settings, t)) for t in topics}


def _grown(before: dict[int, int], ends: dict[int, int]) -> int:
    return sum(ends[p] - before.get(p, 0) for p in ends)


def resnapshot(settings: Settings, timeout: float = 3600.0,
               say: Callable[[str], None] = print) -> ResnapshotResult:
    from confluent_kafka import Producer

    t0 = time.monotonic()
    result = ResnapshotResult()
    client = ConnectClient(settings)
    topics = list(settings.source_topics())
    decoder = Decoder(RegistrySchemas(registry_config(settings)), settings.topic_tables(),
                      settings.graph())

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
            newest = {p: max(before[topic].get(p, 0), end - 1)
                      for p, end in ends[topic].items()}
            for r in read_range(settings, topic, newest, ends[topic]):
                if r.value is not None and (
                        decoder.snapshot_marker(topic, r.value) in _DONE_MARKERS):
                    done = True
        done = done or _offsets_say_streaming(client)
        say("  snapshot: " + ", ".join(
            f"{t.rsplit('.', 1)[1]} {_grown(before[t], ends[t]):,}" for t in topics))

    say("snapshot finished; stopping the connector to find the rows it no longer has")
    client.stop()
    ends = _end_offsets(settings, topics)
    producer = Producer(kafka_config(settings, {"acks": "all", "enable.idempotence": True}))
    for topic, table in settings.topic_tables().items():
        # Per partition: a tombstone goes to the partition its key's records are in (the
        # producer here does not hash keys as Connect's does).
        latest: dict[tuple[int, bytes], tuple[int, bool]] = {}
        for r in read_range(settings, topic, dict.fromkeys(ends[topic], 0), ends[topic]):
            if r.key is not None:
                latest[(r.partition, r.key)] = (r.offset, r.value is None)
        # Keys that are not a row's key (poison records, already dead-lettered) are left
        # alone: a tombstone for them would only be dead-lettered again.
        gone = [(p, k) for (p, k), (off, deleted) in latest.items()
                if off < before[topic].get(p, 0) and not deleted
                and not isinstance(decoder.decode(topic, k, None), DecodeFailure)]
        for part, key in gone:
            producer.produce(topic, key=key, value=None, partition=part)
            producer.poll(0)
        grown = _grown(before[topic], ends[topic])
        result.snapshot_records[table] = grown
        result.tombstones[table] = len(gone)
        say(f"  {table}: {grown:,} snapshot records, {len(gone):,} rows gone (tombstoned)")
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
