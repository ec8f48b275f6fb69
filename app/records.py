"""What enters the pipeline and what it rejects: raw Kafka records and dead letters.

A :class:`RawRecord` is one record of a source topic (or of the control topic) as Kafka
delivered it, bytes untouched. A :class:`DeadLetter` is a record the pipeline could not
use, with the reason; on the dead-letter topic it is the original key and value with the
two headers of :func:`dead_letter_headers` — the one place their format is written
(``app.dlq`` reads them back with :func:`parse_source`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Dead-letter headers: why, and where the original record was (``topic[partition]@offset``).
REASON_HEADER = "viewsync.reason"
SOURCE_HEADER = "viewsync.source"
_SOURCE = re.compile(r"^(?P<topic>.+)\[(?P<partition>\d+)\]@(?P<offset>\d+)$")


@dataclass(frozen=True, slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record the pipeline could not use, and why."""

    record: RawRecord
    reason: str

    def headers(self) -> dict[str, bytes]:
        return dead_letter_headers(self.record, self.reason)


def dead_letter_headers(record: RawRecord, reason: str) -> dict[str, bytes]:
    """The headers of a dead letter on the dead-letter topic."""
    return {REASON_HEADER: reason.encode(),
            SOURCE_HEADER: f"{record.topic}[{record.partition}]@{record.offset}".encode()}


def parse_source(text: str) -> tuple[str, int, int] | None:
    """``topic[partition]@offset`` (a :data:`SOURCE_HEADER`) → its parts; ``None`` if not."""
    m = _SOURCE.match(text)
    if m is None:
        return None
    return m["topic"], int(m["partition"]), int(m["offset"])
