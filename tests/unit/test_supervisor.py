"""``app.supervisor`` without a server: the restart policy (restart at once, then back off
10 s doubling to 5 min, start over after 5 min RUNNING; never touch a stopped or paused
connector), and the supervisor's check against a scripted Connect — what it asks, what it
logs, the health it reports, and that Connect being away is one line per interval, never an
exception."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import pytest

from app.connectors import ConnectError, trace_line
from app.settings import load_settings
from app.supervisor import (
    Attempts,
    Backoff,
    Failure,
    Healthy,
    Restart,
    Supervisor,
    Wait,
    all_running,
    decide,
    failures,
)

TRACE = "\n".join([
    "org.apache.kafka.connect.errors.ConnectException: Tolerance exceeded in error handler",
    "\tat org.apache.kafka.connect.runtime.errors.RetryWithToleranceOperator"
    ".execAndHandleError(RetryWithToleranceOperator.java:260)",
    "\tat org.apache.kafka.connect.runtime.WorkerSourceTask.convertTransformedRecord"
    "(WorkerSourceTask.java:60)",
    "Caused by: org.apache.kafka.connect.errors.DataException: Failed to serialize",
    "\tat io.apicurio.registry.utils.converter.SerdeBasedConverter.fromConnectData"
    "(SerdeBasedConverter.java:111)",
    "Caused by: io.apicurio.registry.rest.client.exception.RestClientException: "
    "Connection refused",
    "\t... 12 more", ""])


def status(connector: str = "RUNNING", *tasks: str, trace: str = TRACE) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "product-source",
        "connector": {"state": connector, "worker_id": "127.0.0.1:8083"},
        "tasks": [{"id": i, "state": s, "worker_id": "127.0.0.1:8083",
                   **({"trace": trace} if s == "FAILED" else {})} for i, s in enumerate(tasks)],
    }
    if connector == "FAILED":
        doc["connector"]["trace"] = trace
    return doc


RUNNING = status("RUNNING", "RUNNING")
TASK_FAILED = status("RUNNING", "FAILED")


def test_a_trace_in_one_line_is_its_first_line_and_its_root_cause() -> None:
    assert trace_line(TRACE) == (
        "org.apache.kafka.connect.errors.ConnectException: Tolerance exceeded in error handler"
        " … Caused by: io.apicurio.registry.rest.client.exception.RestClientException: "
        "Connection refused")
    assert trace_line("java.lang.IllegalStateException: boom\n\tat x.y(Z.java:1)") == (
        "java.lang.IllegalStateException: boom")
    assert trace_line("") == "no trace"
    assert len(trace_line("x" * 5000)) == 300


def test_what_is_failed_and_what_runs() -> None:
    assert failures(RUNNING) == [] and all_running(RUNNING)
    assert [f.what for f in failures(TASK_FAILED)] == ["task 0"]
    assert not all_running(TASK_FAILED)
    both = status("FAILED", "RUNNING", "FAILED")
    assert [f.what for f in failures(both)] == ["connector product-source", "task 1"]
    assert "Tolerance exceeded" in failures(both)[0].trace
    assert not all_running(status("RUNNING"))  # no task yet: not running


def test_the_first_restart_is_at_once_then_the_waits_double_up_to_five_minutes() -> None:
    attempts, now, restarts = Attempts(), 0.0, []
    while now < 3600:
        decision, attempts = decide(TASK_FAILED, now, attempts)
        if isinstance(decision, Restart):
            restarts.append((now, decision.attempt, decision.next_delay_s))
            assert decision.failures == [Failure("task 0", trace_line(TRACE))]
        else:
            assert isinstance(decision, Wait) and decision.at > now
        now += 1.0
    times = [t for t, _, _ in restarts]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 0.0
    assert gaps[:6] == [10.0, 20.0, 40.0, 80.0, 160.0, 300.0]
    assert set(gaps[6:]) == {300.0}
    assert [a for _, a, _ in restarts] == list(range(1, len(restarts) + 1))
    assert restarts[0][2] == 10.0 and restarts[-1][2] == 300.0


def test_the_backoff_starts_over_only_after_five_minutes_running() -> None:
    attempts = Attempts()
    for now in (0.0, 10.0, 30.0):  # three restarts
        decision, attempts = decide(TASK_FAILED, now, attempts)
        assert isinstance(decision, Restart)
    # it runs for a minute, fails again: the backoff goes on (40 s after the last restart)
    for now in range(31, 91, 10):
        decision, attempts = decide(RUNNING, float(now), attempts)
        assert isinstance(decision, Healthy)
    decision, attempts = decide(TASK_FAILED, 91.0, attempts)
    assert isinstance(decision, Restart) and decision.attempt == 4
    # now it runs for five minutes: the next failure is restarted at once, attempt 1
    for now in range(100, 420, 10):
        decision, attempts = decide(RUNNING, float(now), attempts)
    assert attempts == Attempts(running_since=100.0)
    decision, attempts = decide(TASK_FAILED, 421.0, attempts)
    assert isinstance(decision, Restart) and decision.attempt == 1


def test_a_stopped_paused_or_starting_connector_is_left_alone() -> None:
    for doc in (status("STOPPED"), status("PAUSED", "PAUSED"), status("RUNNING", "UNASSIGNED"),
                status("RESTARTING", "RESTARTING"), status("UNASSIGNED")):
        decision, attempts = decide(doc, 0.0, Attempts())
        assert isinstance(decision, Healthy), doc
        assert attempts.running_since is None


def test_a_failed_connector_without_tasks_is_restarted() -> None:
    decision, _ = decide(status("FAILED"), 0.0, Attempts())
    assert isinstance(decision, Restart)
    assert [f.what for f in decision.failures] == ["connector product-source"]


def test_backoff_delays_are_configurable() -> None:
    b = Backoff(first_s=1.0, max_s=5.0)
    assert [b.delay(n) for n in range(6)] == [0.0, 1.0, 2.0, 4.0, 5.0, 5.0]


# --- the supervisor against a scripted Connect ----------------------------------------------

class FakeConnect:
    def __init__(self, *answers: dict[str, Any] | Exception) -> None:
        self.answers = list(answers)
        self.restarts: list[bool] = []

    def status(self) -> dict[str, Any]:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def restart(self, only_failed: bool = False) -> None:
        self.restarts.append(only_failed)


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def supervisor(client: FakeConnect, clock: Clock) -> Supervisor:
    return Supervisor(load_settings(), client, clock=clock, wall=lambda: 1.7e9 + clock.now)


def test_a_failed_task_is_restarted_only_failed_and_logged_with_its_trace(
        caplog: pytest.LogCaptureFixture) -> None:
    connect, clock = FakeConnect(TASK_FAILED, TASK_FAILED, RUNNING), Clock()
    sup = supervisor(connect, clock)
    with caplog.at_level(logging.INFO, logger="viewsync.supervisor"):
        first = asyncio.run(sup.check())
        clock.now += 5  # too soon for a second restart
        second = asyncio.run(sup.check())
        clock.now += 5
        third = asyncio.run(sup.check())
    assert connect.restarts == [True]  # onlyFailed=true: never a running task
    assert (first.running, first.restarts, first.last_restart) == (False, 1, 1.7e9 + 5000.0)
    assert (second.running, second.restarts) == (False, 1)
    assert (third.running, third.restarts) == (True, 1)
    (line,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = line.getMessage()
    assert text.startswith("connector product-source: task 0 FAILED: org.apache.kafka.connect."
                           "errors.ConnectException: Tolerance exceeded in error handler")
    assert "RestClientException: Connection refused" in text
    assert "restart 1; the next no sooner than 10s" in text


def test_connect_away_is_one_line_per_interval_and_never_an_exception(
        caplog: pytest.LogCaptureFixture) -> None:
    away = ConnectError("Kafka Connect at http://127.0.0.1:8083 is unreachable: "
                        "[Errno 111] Connection refused")
    connect, clock = FakeConnect(*[away] * 40, RUNNING), Clock()
    sup = supervisor(connect, clock)
    healths = []
    with caplog.at_level(logging.INFO, logger="viewsync.supervisor"):
        for _ in range(40):  # 400 s of checks every 10 s
            healths.append(asyncio.run(sup.check()))
            clock.now += 10
        healths.append(asyncio.run(sup.check()))
    assert all(h.running is None for h in healths[:40]) and healths[40].running is True
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert 13 <= len(warnings) <= 14, warnings  # 400 s / 30 s
    assert warnings[0].startswith("connector product-source: no status from Kafka Connect at "
                                  "http://127.0.0.1:8083: Kafka Connect at ")
    assert "similar lines not shown" in warnings[1]
    assert caplog.records[-1].getMessage().endswith("answers again")
    assert connect.restarts == []


def test_any_error_of_a_check_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FakeConnect):
        def restart(self, only_failed: bool = False) -> None:
            raise ConnectError("restart of product-source: 409 rebalance in progress")

    sup = supervisor(Broken(TASK_FAILED), Clock())
    with caplog.at_level(logging.WARNING, logger="viewsync.supervisor"):
        health = asyncio.run(sup.check())
    assert health.restarts == 0  # not made
    assert "the restart was refused: restart of product-source: 409" in caplog.text
    sup = supervisor(FakeConnect(KeyError("connector")), Clock())
    assert asyncio.run(sup.check()).running is None
