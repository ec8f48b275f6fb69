"""``app.client_logs`` without a server: librdkafka's log records, as confluent-kafka hands
them to the ``logger`` of ``kafka_config``, collapsed to one line per kind per interval that
says what, where, since when and how many were held back; start-up transients at DEBUG."""

from __future__ import annotations

import logging
import re
import time

import pytest

from app.client_logs import INTERVAL_S, KafkaLogFilter, Repeats, kafka_logging
from app.clients import kafka_config
from app.settings import load_settings

WHERE = "kafka.example:9092"
RESOLVE = ("[thrd:kafka.example:9092/bootstrap]: kafka.example:9092/bootstrap: Failed to "
           "resolve 'kafka.example:9092': Name or service not known (after 0ms in state "
           "CONNECT)")
REFUSED = ("[thrd:kafka.example:9092/1]: kafka.example:9092/1: Connect to ipv4#10.0.0.7:9092 "
           "failed: Connection refused (after 0ms in state CONNECT, 3 identical error(s) "
           "suppressed)")
GETPID = ("[thrd:main]: Failed to acquire idempotence PID from broker TxnCoordinator/1: "
          "Broker: Coordinator load in progress: retrying")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def record(text: str, level: int = logging.ERROR, facility: str = "FAIL",
           where: str = WHERE) -> logging.LogRecord:
    """A record as confluent-kafka's log callback makes it: ``logger.log(level, "%s [%s] %s",
    facility, client name, text)`` on the LoggerAdapter of ``kafka_logging``."""
    return logging.getLogger("viewsync.kafka").makeRecord(
        "viewsync.kafka", level, __file__, 0, "%s [%s] %s", (facility, "rdkafka#consumer-1", text),
        None, extra={"kafka_bootstrap": where})


def shown(f: KafkaLogFilter, records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if f.filter(r)]


def test_a_flood_of_unreachable_lines_is_one_line_per_interval(clock: Clock) -> None:
    wall = Clock()
    wall.now = time.mktime((2026, 1, 2, 12, 0, 0, 0, 0, -1))
    f = KafkaLogFilter(Repeats(clock=clock, wall=wall))
    out: list[logging.LogRecord] = []
    for i in range(1200):  # 60 s of librdkafka's 50 ms retries, two kinds of failure
        clock.now += 0.05
        wall.now += 0.05
        out += shown(f, [record(RESOLVE if i % 2 else REFUSED)])
    assert len(out) == 2, [r.getMessage() for r in out]  # the first, then one per 30 s
    first, second = (r.getMessage() for r in out)
    assert first.startswith(f"Kafka at {WHERE} unreachable: ")
    assert "[thrd:" not in first and "after 0ms" not in first  # librdkafka's decorations
    assert f"one line per {INTERVAL_S:.0f}s" in first
    assert f"Kafka at {WHERE} unreachable: " in second
    assert "since 12:00:00, 30s" in second
    held = re.search(r"(\d+) similar lines not shown", second)
    assert held and int(held.group(1)) in (599, 600), second  # 30 s of 50 ms, give or take one
    assert all(r.levelno == logging.WARNING for r in out)


def test_other_kinds_and_other_addresses_each_get_their_own_line(clock: Clock) -> None:
    f = KafkaLogFilter(Repeats(clock=clock))
    sasl = "[thrd:sasl_ssl://b:9093/1]: sasl_ssl://b:9093/1: SASL authentication error: " \
           "Authentication failed during authentication due to invalid credentials with " \
           "SASL mechanism SCRAM-SHA-512 (after 312ms in state AUTH_REQ)"
    out = shown(f, [record(RESOLVE), record(sasl), record(RESOLVE, where="other:9092"),
                    record(sasl.replace("312ms", "290ms")), record(REFUSED)])
    assert [r.getMessage().split(" [")[0][:40] for r in out] == [
        f"Kafka at {WHERE} unreachable: {WHERE}/b"[:40],
        f"Kafka at {WHERE} sasl_ssl://b:9093/1: SASL a"[:40],
        "Kafka at other:9092 unreachable: kafka.ex"[:40]]


def test_a_spell_that_ended_starts_again_with_a_first_line(clock: Clock) -> None:
    f = KafkaLogFilter(Repeats(clock=clock))
    assert len(shown(f, [record(RESOLVE), record(RESOLVE), record(RESOLVE)])) == 1
    clock.now += 3 * INTERVAL_S  # Kafka was back meanwhile
    (again,) = shown(f, [record(RESOLVE)])
    assert "one line per" in again.getMessage()
    assert "2 similar lines of the previous spell not shown" in again.getMessage()


def test_start_up_transients_go_to_debug(clock: Clock) -> None:
    f = KafkaLogFilter(Repeats(clock=clock))
    logger = logging.getLogger("viewsync.kafka")
    before = logger.level
    try:
        logger.setLevel(logging.INFO)
        assert not shown(f, [record(GETPID, logging.WARNING, "GETPID")])
        logger.setLevel(logging.DEBUG)
        (r,) = shown(f, [record(GETPID, logging.WARNING, "GETPID")])
        assert r.levelno == logging.DEBUG and "Coordinator load in progress" in r.getMessage()
    finally:
        logger.setLevel(before)


def test_a_record_not_from_librdkafka_passes_unchanged(clock: Clock) -> None:
    f = KafkaLogFilter(Repeats(clock=clock))
    r = logging.getLogger("viewsync.kafka").makeRecord(
        "viewsync.kafka", logging.INFO, __file__, 0, "plain %s", ("line",), None)
    assert f.filter(r) and r.getMessage() == "plain line"


def test_the_error_callback_logs_to_the_same_collapsed_stream(
        caplog: pytest.LogCaptureFixture) -> None:
    class Err:
        def __init__(self, name: str, text: str) -> None:
            self._name, self._text = name, text

        def name(self) -> str:
            return self._name

        def str(self) -> str:
            return self._text

        def fatal(self) -> bool:
            return False

    where = f"unique-{time.monotonic_ns()}:9092"  # a spell of its own in the shared filter
    error_cb = kafka_logging(where)["error_cb"]
    with caplog.at_level(logging.INFO, logger="viewsync.kafka"):
        for _ in range(50):
            error_cb(Err("_ALL_BROKERS_DOWN", "1/1 brokers are down"))
        error_cb(object())  # never raises (it would crash the client)
    lines = [r.getMessage() for r in caplog.records if where in r.getMessage()]
    assert lines == [f"Kafka at {where} unreachable: 1/1 brokers are down [_ALL_BROKERS_DOWN] "
                     f"(one line per {INTERVAL_S:.0f}s while it lasts)"]


def test_a_real_client_logs_through_python_logging_not_stderr(
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    """confluent-kafka itself, against an address that does not resolve (no server): its
    50 ms retries come out as one line through the ``viewsync.kafka`` logger."""
    from confluent_kafka import Consumer

    where = f"viewsync-{time.monotonic_ns()}.invalid:9092"
    s = load_settings(kafka_bootstrap=where)
    c = Consumer(kafka_config(s, {"group.id": "client-logs-test"}))
    try:
        with caplog.at_level(logging.INFO, logger="viewsync.kafka"):
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                c.poll(0.2)
    finally:
        c.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "viewsync.kafka"]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"Kafka at {where} unreachable: ") and "resolve" in lines[0]
    assert "Failed to resolve" not in capfd.readouterr().err
