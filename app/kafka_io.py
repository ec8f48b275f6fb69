"""The pipeline's Kafka edges outside the worker's stream: the source log read by a shard's
takeover, and the producer of dead letters.

:class:`KafkaSource` is the :class:`~app.ownership.SourceLog` over the source and control
topics (read with ``app.topic_range``); :class:`DeadLetterProducer` sends each
:class:`~app.records.DeadLetter` — the original bytes, with the headers of
``app.records`` — and returns once the broker has it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import closing

from app.clients import kafka_config
from app.positions import Positions
from app.records import DeadLetter, RawRecord
from app.settings import Settings
from app.topic_range import ensure_topic, read_batches, topic_ends


class KafkaSource:
    """:class:`~app.ownership.SourceLog` over the source topics (``app.topic_range``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = settings.stream_topics()

    def read(self, start: Positions, end: Positions) -> Iterator[RawRecord]:
        ranges = {tp: (start.get(tp, 0), off) for tp, off in end.items()}
        with closing(read_batches(self.settings, ranges)) as batches:
            for batch in batches:
                for r in batch:
                    yield RawRecord(r.topic, r.partition, r.offset, r.key, r.value)

    def ends(self) -> Positions:
        return topic_ends(self.settings, self.topics)


class DeadLetterProducer:
    """Sends dead letters (original bytes, reason and source position as headers)."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        self.topic = settings.dead_letter_topic
        self._settings = settings
        self._producer = Producer(
            kafka_config(settings, {"acks": "all", "enable.idempotence": True}))

    def ensure_topic(self) -> None:
        """Create the dead-letter topic unless it exists, so that a broker without
        auto-creation does not stop the worker at its first dead letter."""
        ensure_topic(self._settings, self.topic)

    async def send(self, dl: DeadLetter) -> None:
        rec = dl.record
        headers: dict[str, str | bytes | None] = {**dl.headers()}
        self._producer.produce(self.topic, key=rec.key, value=rec.value, headers=headers)
        left = await asyncio.to_thread(self._producer.flush, 30.0)
        if left:
            raise RuntimeError(f"dead letter not delivered to {self.topic} within 30s")
