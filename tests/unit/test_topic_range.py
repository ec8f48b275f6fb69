"""``app.topic_range``'s reader against a stand-in for librdkafka's consumer (the real broker
is exercised by tests/integration): ranges, batches, gaps, errors, and the consumer's
settings."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from app.settings import load_settings
from app.topic_range import read_batches, read_range


class Msg:
    def __init__(self, topic: str, partition: int, offset: int, err: str | None = None) -> None:
        self._t, self._p, self._o, self._err = topic, partition, offset, err

    def error(self) -> str | None:
        return self._err

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes:
        return f"k{self._o}".encode()

    def value(self) -> bytes:
        return f"v{self._o}".encode()

    def headers(self) -> list[tuple[str, bytes | None]]:
        return [("h", b"x"), ("none", None)]

    def timestamp(self) -> tuple[int, int]:
        return 1, 1000 + self._o


class Log:
    """Per partition: the offsets that hold records (gaps: compaction, markers) and its end."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, int], list[int]] = {}
        self.ends: dict[tuple[str, int], int] = {}
        self.errors: set[tuple[str, int, int]] = set()
        self.consumers: list[FakeConsumer] = []


class FakeConsumer:
    def __init__(self, log: Log, conf: dict[str, Any]) -> None:
        self.log, self.conf, self.closed = log, conf, False
        self.pos: dict[tuple[str, int], int] = {}
        log.consumers.append(self)

    def assign(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self.pos[(tp.topic, tp.partition)] = 0 if tp.offset == OFFSET_BEGINNING else tp.offset

    def consume(self, n: int, timeout: float) -> list[Msg]:
        out: list[Msg] = []
        for tp, pos in self.pos.items():
            for off in self.log.records.get(tp, []):
                if off >= pos and len(out) < n:
                    err = "broken" if (*tp, off) in self.log.errors else None
                    out.append(Msg(tp[0], tp[1], off, err))
                    self.pos[tp] = off + 1
            if all(off < self.pos[tp] for off in self.log.records.get(tp, [])):
                self.pos[tp] = max(self.pos[tp], self.log.ends.get(tp, 0))
        return out

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.pos[(tp.topic, tp.partition)])
                for tp in tps]

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> Log:
    import confluent_kafka

    log = Log()
    monkeypatch.setattr(confluent_kafka, "Consumer", lambda conf: FakeConsumer(log, conf))
    return log


def test_read_range_reads_each_partition_from_its_start_to_its_end(log: Log) -> None:
    log.records = {("t", 0): [0, 1, 2, 3, 5], ("t", 1): [0, 2]}  # 4: compacted away
    log.ends = {("t", 0): 7, ("t", 1): 4}
    got = list(read_range(load_settings(), "t", {0: 1, 1: 0}, {0: 6, 1: 4}))
    assert [(r.partition, r.offset) for r in got] == [(0, 1), (0, 2), (0, 3), (0, 5),
                                                       (1, 0), (1, 2)]
    first = got[0]
    assert (first.topic, first.key, first.value, first.timestamp_ms, first.headers) == (
        "t", b"k1", b"v1", 1001, {"h": b"x"})
    (c,) = log.consumers
    assert c.closed and c.conf["group.id"] == "viewsync-reader"
    assert c.conf["enable.auto.commit"] is False


def test_an_empty_range_opens_no_consumer(log: Log) -> None:
    assert list(read_range(load_settings(), "t", {0: 5}, {0: 5})) == []
    assert not log.consumers


def test_a_reader_left_early_closes_its_consumer(log: Log) -> None:
    log.records, log.ends = {("t", 0): list(range(10))}, {("t", 0): 10}
    reader = read_range(load_settings(), "t", {0: 0}, {0: 10})
    assert next(reader).offset == 0
    reader.close()
    assert log.consumers[0].closed


def test_read_batches_reads_several_topics_from_their_beginning_in_batches(log: Log) -> None:
    log.records = {("a", 0): [0, 1, 2], ("b", 0): [4, 5]}
    log.ends = {("a", 0): 3, ("b", 0): 6}
    batches = list(read_batches(load_settings(), {("a", 0): (None, 2), ("b", 0): (None, 6)},
                                consumer={"group.id": "g", "auto.offset.reset": "earliest"}))
    assert all(batches)
    assert [(r.topic, r.offset) for b in batches for r in b] == [
        ("a", 0), ("a", 1), ("b", 4), ("b", 5)]
    (c,) = log.consumers
    assert c.conf["group.id"] == "g" and c.conf["auto.offset.reset"] == "earliest"
    assert c.closed


def test_a_record_with_an_error_is_skipped_or_raised(log: Log) -> None:
    log.records, log.ends = {("t", 0): [0, 1, 2]}, {("t", 0): 3}
    log.errors = {("t", 0, 1)}
    ranges = {("t", 0): (0, 3)}
    skipped = [r.offset for b in read_batches(load_settings(), ranges) for r in b]
    assert skipped == [0, 2]
    with pytest.raises(KafkaException):
        list(read_batches(load_settings(), ranges, errors="raise"))
    assert all(c.closed for c in log.consumers)
