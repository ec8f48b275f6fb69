"""Client errors that repeat, said once per interval: the Kafka clients' (librdkafka's) log
in Python logging, and the :class:`Repeats` rule any caller can use for its own lines.

librdkafka writes its log to stderr by default: while a broker cannot be reached, every
client prints "Failed to resolve …" or "Connection refused" about every 50 ms, and no line
says which setting is at fault. :func:`kafka_logging` gives every confluent-kafka client
(``app.clients.kafka_config``) a ``logger`` — the ``viewsync.kafka`` logger, each record
tagged with the bootstrap address — and an ``error_cb`` that logs to it too. The filter on
that logger (:class:`KafkaLogFilter`) lets at most one line per kind through per
:data:`INTERVAL_S`, saying what (Kafka), where (the bootstrap address), since when, and how
many similar lines it held back; every way of not reaching a broker (resolution, refused
connection, timeout, "all brokers down") is one kind. A transient warning of a normal start
(an idempotent producer's ``GETPID … Coordinator load in progress``) goes to DEBUG.

confluent-kafka hands a client's log lines over only while that client is polled
(``Consumer.poll``/``consume``, ``Producer.poll``/``flush``): an ``AdminClient``, which is
never polled here, keeps them to itself, and its calls fail with an exception that says why.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

#: At most one line per kind of trouble per this many seconds.
INTERVAL_S = 30.0

#: A kind not seen for this many intervals is over; its next line starts a new spell.
SPELL_GAP_INTERVALS = 2.0

LOGGER_NAME = "viewsync.kafka"

#: How the format confluent-kafka logs with (``"%s [%s] %s"``: facility, client, text).
_ARGS = 3

#: Every way of not reaching a broker: one kind, one line per interval.
_UNREACHABLE = re.compile(
    r"Failed to resolve|Connection refused|Connect to .* failed|brokers are down"
    r"|All broker connections are down|Broker transport failure|timed out|Disconnected"
    r"|No route to host|Network is unreachable|Connection reset|Host is unreachable",
    re.IGNORECASE)
_UNREACHABLE_CODES = frozenset({"_TRANSPORT", "_RESOLVE", "_ALL_BROKERS_DOWN",
                                "_TIMED_OUT", "_DESTROY_BROKER"})

#: Warnings of a normal start or a broker's restart, retried by the client itself: DEBUG.
_TRANSIENT = re.compile(r"Coordinator load in progress|Coordinator not available",
                        re.IGNORECASE)

#: librdkafka's decorations: the thread prefix, the state suffix, its own repeat counter.
_THREAD = re.compile(r"^\[thrd:[^\]]*\]:\s*")
_AFTER = re.compile(r"\s*\(after \d+ms in state \w+(, \d+ identical error\(s\) suppressed)?\)")
_NUMBERS = re.compile(r"\d+")


@dataclass(frozen=True)
class Repeat:
    """What to say about one more occurrence of a kind (see :meth:`Repeats.seen`)."""

    #: The first line of a spell (nothing said about this kind for a while).
    first: bool
    #: When the spell began (epoch seconds).
    since: float
    #: Occurrences held back since the last line said (of the previous spell, if ``first``).
    held_back: int
    #: Now (epoch seconds).
    at: float

    def summary(self, interval_s: float = INTERVAL_S) -> str:
        """The words to add to the line: the first, or how long and how many."""
        if self.first:
            earlier = (f"; {self.held_back} similar lines of the previous spell not shown"
                       if self.held_back else "")
            return f"(one line per {interval_s:.0f}s while it lasts{earlier})"
        since = time.strftime("%H:%M:%S", time.localtime(self.since))
        lasted = max(0.0, self.at - self.since)
        return f"(since {since}, {lasted:.0f}s; {self.held_back} similar lines not shown)"


@dataclass
class _Spell:
    since: float  # epoch
    last_seen: float  # monotonic
    last_said: float  # monotonic
    held_back: int = 0


class Repeats:
    """One line per ``interval_s`` per kind: :meth:`seen` says whether this occurrence is
    the one to log (and what to add to it) or one to hold back. Thread-safe."""

    def __init__(self, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._wall = wall
        self._spells: dict[Hashable, _Spell] = {}
        self._lock = threading.Lock()

    def seen(self, kind: Hashable) -> Repeat | None:
        """One more occurrence of ``kind`` now: a :class:`Repeat` to log, or ``None``."""
        now, wall = self._clock(), self._wall()
        with self._lock:
            spell = self._spells.get(kind)
            if spell is None or now - spell.last_seen > SPELL_GAP_INTERVALS * self.interval_s:
                earlier = spell.held_back if spell is not None else 0
                self._spells[kind] = _Spell(wall, now, now)
                return Repeat(True, wall, earlier, wall)
            spell.last_seen = now
            if now - spell.last_said < self.interval_s:
                spell.held_back += 1
                return None
            out = Repeat(False, spell.since, spell.held_back, wall)
            spell.last_said, spell.held_back = now, 0
            return out

    def over(self, kind: Hashable) -> int | None:
        """``kind`` stopped (the endpoint answers again): forget its spell; return how many
        occurrences were held back since its last line (``None``: there was no spell)."""
        with self._lock:
            spell = self._spells.pop(kind, None)
        return spell.held_back if spell is not None else None


def _clean(text: str) -> str:
    return _AFTER.sub("", _THREAD.sub("", text)).strip()


class KafkaLogFilter(logging.Filter):
    """On the ``viewsync.kafka`` logger: librdkafka's lines, one per kind per interval
    (see the module's docstring). A record not in confluent-kafka's form passes as it is."""

    def __init__(self, repeats: Repeats | None = None) -> None:
        super().__init__()
        self.repeats = repeats or Repeats()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or len(args) != _ARGS:
            return True
        facility, _client, raw = (str(a) for a in args)
        text = _clean(raw)
        where = str(getattr(record, "kafka_bootstrap", "?"))
        if _TRANSIENT.search(text):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.msg, record.args = f"Kafka at {where}: {text} [{facility}]", ()
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        unreachable = facility in _UNREACHABLE_CODES or bool(_UNREACHABLE.search(text))
        kind: Hashable = ((where, "unreachable") if unreachable
                          else (where, facility, _NUMBERS.sub("#", text)))
        repeat = self.repeats.seen(kind)
        if repeat is None:
            return False
        what = "unreachable: " if unreachable else ""
        if unreachable:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = (f"Kafka at {where} {what}{text} [{facility}] "
                      f"{repeat.summary(self.repeats.interval_s)}")
        record.args = ()
        return True


_logger = logging.getLogger(LOGGER_NAME)
_filter = KafkaLogFilter()
_attach = threading.Lock()


def kafka_logging(bootstrap: str) -> dict[str, Any]:
    """The ``logger`` and ``error_cb`` of a confluent-kafka client of ``bootstrap``: its log
    and its errors go to the ``viewsync.kafka`` logger, repeats collapsed (one filter for
    every client of the process, so a hundred short-lived clients still say it once)."""
    with _attach:
        if _filter not in _logger.filters:
            _logger.addFilter(_filter)
    adapter = logging.LoggerAdapter(_logger, {"kafka_bootstrap": bootstrap})

    def error_cb(err: Any) -> None:
        """A client error librdkafka reports besides its log (e.g. ``_ALL_BROKERS_DOWN``)."""
        try:
            fatal = bool(err.fatal())
            adapter.log(logging.ERROR if fatal else logging.WARNING, "%s [%s] %s",
                        err.name(), "error", err.str())
        except Exception:  # an error callback that raises would crash the client
            logging.getLogger(LOGGER_NAME).debug("unreadable Kafka client error: %r", err)

    return {"logger": adapter, "error_cb": error_cb}
