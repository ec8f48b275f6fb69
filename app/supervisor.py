"""The source connector's supervisor: a FAILED connector or task is restarted, with backoff.

Kafka Connect never restarts a FAILED task by itself. Its error retries
(``errors.retry.timeout``, KIP-298; set in ``connectors/product-source.json``) retry a
converter or a transformation only when it throws Connect's ``RetriableException``, and the
Apicurio converter's registry errors are not one: a registry outage while the converters'
schema caches are cold (just after a Connect restart) fails the task at its first record, and
it stays FAILED after the registry is back. Every worker runs this supervisor (``app.worker``,
every ``connector_check_interval_s``; ``connector_supervise = false`` turns it off): it reads
the connector's status and restarts what is FAILED (``POST
/connectors/{name}/restart?includeTasks=true&onlyFailed=true``, KIP-745) — never a connector an
operator stopped or paused.

:func:`decide` is the whole policy, pure (a status, the time and the attempts so far → restart
now, or wait): the first restart at once, then waits of 10 s doubling up to 5 min between
attempts, started over once the connector has run for 5 min. :class:`Supervisor` asks Connect
in a thread, logs each restart at WARNING with the failure's first trace line (and its root
cause), says "no status from Kafka Connect" (unreachable, or no such connector) once per
interval (``app.client_logs.Repeats``), never raises, and returns the connector's health for
the metrics (:class:`app.messages.ConnectorHealth`). Several workers may restart the same
failure at about the same time: ``onlyFailed`` makes the later request a no-op once the first
took effect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from app.client_logs import INTERVAL_S, Repeats
from app.connectors import ConnectClient, trace_line
from app.messages import ConnectorHealth
from app.settings import Settings

log = logging.getLogger("viewsync.supervisor")

#: The wait after the first restart before a second one; it doubles up to MAX_DELAY_S.
FIRST_DELAY_S = 10.0
MAX_DELAY_S = 300.0
#: Running this long, the connector's next failure starts the backoff over.
RESET_AFTER_S = 300.0


@dataclass(frozen=True)
class Failure:
    """A FAILED connector or task: ``what`` (``connector product-source``, ``task 0``) and
    its trace's first line (with the root cause's, when there is one)."""

    what: str
    trace: str


@dataclass(frozen=True)
class Attempts:
    """What the supervisor remembers between two checks."""

    #: Restarts since the connector last ran for RESET_AFTER_S.
    count: int = 0
    #: When the last restart was asked for (the supervisor's clock).
    last: float | None = None
    #: Since when the connector and every task have been seen RUNNING (None: not now).
    running_since: float | None = None


@dataclass(frozen=True)
class Healthy:
    """Nothing FAILED: nothing to do (the connector may still be starting)."""


@dataclass(frozen=True)
class Wait:
    """Something is FAILED, but the last restart was too recent: the next one at ``at``."""

    failures: list[Failure]
    at: float


@dataclass(frozen=True)
class Restart:
    """Restart the FAILED connector and tasks now: attempt ``attempt`` of this series; the
    next no sooner than ``next_delay_s`` after it."""

    failures: list[Failure]
    attempt: int
    next_delay_s: float


Decision = Healthy | Wait | Restart


@dataclass(frozen=True)
class Backoff:
    first_s: float = FIRST_DELAY_S
    max_s: float = MAX_DELAY_S
    reset_after_s: float = RESET_AFTER_S

    def delay(self, attempts: int) -> float:
        """The wait after ``attempts`` restarts before the next one (0: none yet)."""
        if attempts <= 0:
            return 0.0
        return float(min(self.first_s * 2 ** (attempts - 1), self.max_s))


def failures(status: Mapping[str, Any]) -> list[Failure]:
    """The FAILED connector and tasks of a Connect status document."""
    out: list[Failure] = []
    connector = status.get("connector") or {}
    if connector.get("state") == "FAILED":
        out.append(Failure(f"connector {status.get('name', '?')}",
                           trace_line(str(connector.get("trace", "")))))
    for task in status.get("tasks") or []:
        if task.get("state") == "FAILED":
            out.append(Failure(f"task {task.get('id', '?')}",
                               trace_line(str(task.get("trace", "")))))
    return out


def all_running(status: Mapping[str, Any]) -> bool:
    """The connector and its tasks (at least one) are RUNNING."""
    tasks = status.get("tasks") or []
    return ((status.get("connector") or {}).get("state") == "RUNNING" and bool(tasks)
            and all(t.get("state") == "RUNNING" for t in tasks))


def decide(status: Mapping[str, Any], now: float, attempts: Attempts,
           backoff: Backoff = Backoff()) -> tuple[Decision, Attempts]:
    """What to do about the connector's ``status`` at ``now``, and what to remember."""
    failed = failures(status)
    if not failed:
        if not all_running(status):
            return Healthy(), replace(attempts, running_since=None)
        since = attempts.running_since if attempts.running_since is not None else now
        if attempts.count and now - since >= backoff.reset_after_s:
            return Healthy(), Attempts(running_since=since)
        return Healthy(), replace(attempts, running_since=since)
    wait = backoff.delay(attempts.count)
    if attempts.last is not None and now - attempts.last < wait:
        return Wait(failed, attempts.last + wait), replace(attempts, running_since=None)
    count = attempts.count + 1
    return (Restart(failed, count, backoff.delay(count)),
            Attempts(count=count, last=now, running_since=None))


class ConnectorApi(Protocol):
    """What the supervisor needs of ``app.connectors.ConnectClient``."""

    def status(self) -> dict[str, Any]: ...

    def restart(self, only_failed: bool = False) -> None: ...


@dataclass
class Supervisor:
    """Checks the source connector and restarts what is FAILED (see the module's docstring)."""

    settings: Settings
    client: ConnectorApi | None = None
    backoff: Backoff = field(default_factory=Backoff)
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    attempts: Attempts = field(default_factory=Attempts)
    #: Restarts this supervisor asked for, and when the last was (epoch seconds).
    restarts: int = 0
    last_restart: float | None = None

    def __post_init__(self) -> None:
        self._repeats = Repeats(max(INTERVAL_S, self.settings.connector_check_interval_s),
                                clock=self.clock, wall=self.wall)

    def _connect(self) -> ConnectorApi:
        if self.client is None:
            self.client = ConnectClient(self.settings)
        return self.client

    def health(self, running: bool | None) -> ConnectorHealth:
        return ConnectorHealth(running, self.restarts, self.last_restart)

    async def check(self) -> ConnectorHealth:
        """One check: read the status, restart what is FAILED when the backoff allows.
        Never raises (a worker does not stop because Connect is away)."""
        name = self.settings.connector_name
        try:
            client = self._connect()
            status = await asyncio.to_thread(client.status)
        except Exception as exc:
            self._unanswered(exc)
            return self.health(None)
        if self._repeats.over("no status") is not None:
            log.info("connector %s: Kafka Connect at %s answers again", name,
                     self.settings.connect())
        decision, self.attempts = decide(status, self.clock(), self.attempts, self.backoff)
        if isinstance(decision, Restart):
            what = "; ".join(f"{f.what} FAILED: {f.trace}" for f in decision.failures)
            log.warning("connector %s: %s — restarting it (restart %d; the next no sooner than "
                        "%.0fs after this one)", name, what, decision.attempt,
                        decision.next_delay_s)
            try:
                await asyncio.to_thread(client.restart, True)
            except Exception as exc:
                log.warning("connector %s: the restart was refused: %s", name,
                            _first_line(exc))
            else:
                self.restarts += 1
                self.last_restart = self.wall()
        return self.health(all_running(status))

    def _unanswered(self, exc: BaseException) -> None:
        repeat = self._repeats.seen("no status")
        if repeat is not None:
            log.warning("connector %s: no status from Kafka Connect at %s: %s %s",
                        self.settings.connector_name, self.settings.connect(),
                        _first_line(exc), repeat.summary(self._repeats.interval_s))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
