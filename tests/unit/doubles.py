"""Doubles of the batch loop's I/O, in memory, and the loop built around them with the
worker's own composition root (``app.wiring.build_loop``): what the unit tests drive is the
loop the worker runs, with one owner (or several) of the shards."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from app.graph import Key, shard_of
from app.loop import BatchLoop
from app.metrics import Metrics
from app.pipeline import Pipeline
from app.positions import Positions
from app.project import ViewBatch
from app.records import DeadLetter, RawRecord
from app.settings import Settings, load_settings
from app.shards import Claim, Fenced, Progress
from app.sink import SinkUnavailable
from app.state import MemoryStore, StateStore
from app.views import ViewDef
from app.wiring import build_loop, build_pipeline
from tests.unit.debezium import DictSchemas

#: The tests' deployment: topics ``p.product.<table>``, commands on ``deployment.control``.
CONTROL = "deployment.control"


def deployment_settings(**overrides: Any) -> Settings:
    """Settings of the tests' deployment (``overrides`` as in ``load_settings``)."""
    values: dict[str, Any] = {"topic_prefix": "p", "source_database": "product",
                              "worker_id": "deployment", "worker_name": "w1", "shards": 1,
                              "worker_store": "memory"}
    values.update(overrides)
    return load_settings(**values)


class LogSource:
    """:class:`~app.ownership.SourceLog` over records in memory, per partition in order."""

    def __init__(self) -> None:
        self.log: dict[tuple[str, int], list[RawRecord]] = {}

    def read(self, start: Positions, end: Positions) -> Iterator[RawRecord]:
        for tp, stop in end.items():
            yield from (r for r in self.log.get(tp, []) if start.get(tp, 0) <= r.offset < stop)

    def ends(self) -> Positions:
        return {tp: len(recs) for tp, recs in self.log.items()}


async def no_dead_letters(dl: DeadLetter) -> None:
    raise AssertionError(dl.reason)


def memory_pipeline(schemas: Any = None, store: StateStore | None = None,
                    **settings: Any) -> Pipeline:
    """The worker's decode → state → project core (``build_pipeline``), every shard active."""
    s = deployment_settings(**settings)
    return build_pipeline(s, schemas if schemas is not None else DictSchemas(),
                          store if store is not None else MemoryStore(s.graph()))


def memory_loop(sink: MemorySink, *, store: StateStore | None = None,
                schemas: Any = None, source: Any = None,
                send_dead_letter: Callable[[DeadLetter], Awaitable[None]] = no_dead_letters,
                metrics: Metrics | None = None, **settings: Any) -> BatchLoop:
    """The worker's batch loop (``build_loop``) over doubles in memory."""
    s = deployment_settings(**settings)
    return build_loop(s, schemas=schemas if schemas is not None else DictSchemas(),
                      store=store if store is not None else MemoryStore(s.graph()), sink=sink,
                      source=source if source is not None else LogSource(),
                      send_dead_letter=send_dead_letter, metrics=metrics)


class MemorySink:
    """A :class:`~app.sink.ViewSink` in memory that can be told to be unreachable; one
    consumer database ("db") with the shard table's claims and positions."""

    def __init__(self, unavailable: int = 0) -> None:
        self.rows: dict[str, dict[int, dict[str, Any]]] = {}
        self.unavailable = unavailable
        self.writes = 0
        #: shard -> (epoch, positions)
        self.shards: dict[int, tuple[int, Positions | None]] = {}
        #: Claims and writes are atomic, as the database's row locks make them.
        self._lock = threading.Lock()

    def create_tables(self) -> None:
        pass

    def claim(self, shard: int, shards: int, owner: str) -> Claim:
        with self._lock:
            return self._claim(shard)

    def _claim(self, shard: int) -> Claim:
        epoch, positions = self.shards.get(shard, (0, None))
        self.shards[shard] = (epoch + 1, positions)
        return Claim(shard, {"db": epoch + 1}, {"db": positions})

    def keys(self, view: ViewDef, shard: int, shards: int) -> set[Key]:
        return {k for k in self.rows.get(view.name, {}) if shard_of(k, shards) == shard}

    def write(self, batches: Mapping[str, ViewBatch], progress: Progress | None = None) -> int:
        with self._lock:
            return self._write(batches, progress)

    def _write(self, batches: Mapping[str, ViewBatch], progress: Progress | None) -> int:
        if self.unavailable:
            self.unavailable -= 1
            raise SinkUnavailable("down")
        if progress is not None:
            for shard, epoch in progress.for_consumer("db").items():
                if self.shards[shard][0] != epoch:
                    raise Fenced(f"shard {shard}")
            if progress.positions is not None:
                for shard in progress.epochs:
                    self.shards[shard] = (self.shards[shard][0], dict(progress.positions))
        self.writes += 1
        for name, b in batches.items():
            view = self.rows.setdefault(name, {})
            view.update(b.upserts)
            for k in b.deletes:
                view.pop(k, None)
        return sum(len(b) for b in batches.values())

    def close(self) -> None:
        pass
