"""`viewsync worker`: the Faust edge of the pipeline.

One agent (concurrency 1) reads the four source topics in batches
(``take_events(sink_batch_size, within=sink_max_wait_ms)``), runs them through
:class:`app.pipeline.Pipeline` (decode → join → project), writes the view rows with
:class:`app.sink.Sink` in a thread (one transaction per consumer database), sends dead
letters, and only then returns, so Faust acknowledges (and later commits) the batch's
offsets after the sink has committed. A crash before that replays the batch; the sink
rewrites the same rows.

The join state lives in four Faust tables, backed by compacted changelog topics, so a
restarted or new worker recovers it without re-reading the source topics. The join
indexes are rebuilt from those tables after every rebalance.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
import weakref
from collections.abc import MutableMapping, Sequence
from decimal import Decimal
from typing import Any, cast

import faust
from faust.serializers import codecs
from faust.streams import _current_event
from mode.supervisors import CrashingSupervisor
from sqlalchemy import exc as sa_exc

from app.changes import SOURCE_TABLES, SourceTable
from app.decode import Decoder, RegistrySchemas, SchemaUnavailable
from app.join import SourceState
from app.pipeline import BatchResult, DeadLetter, Pipeline, RawRecord
from app.settings import Settings
from app.sink import Sink

log = logging.getLogger("viewsync.worker")

STATE_CODEC = "viewsync-row"


def _default(o: Any) -> Any:
    if isinstance(o, Decimal):
        return {"$dec": str(o)}
    if isinstance(o, dt.date):
        return {"$date": o.isoformat()}
    raise TypeError(f"cannot store {type(o).__name__} in table state")


def _hook(d: dict[str, Any]) -> Any:
    if len(d) == 1:
        if "$dec" in d:
            return Decimal(d["$dec"])
        if "$date" in d:
            return dt.date.fromisoformat(d["$date"])
    return d


class RowCodec(codecs.Codec):
    """JSON for table rows, keeping ``Decimal`` and ``date`` exact."""

    def _dumps(self, obj: Any) -> bytes:
        return json.dumps(obj, default=_default, separators=(",", ":")).encode()

    def _loads(self, s: bytes) -> Any:
        return json.loads(s, object_hook=_hook)


codecs.register(STATE_CODEC, RowCodec())


def build_app(settings: Settings) -> faust.App:
    app = faust.App(
        settings.worker_id,
        broker=f"kafka://{settings.bootstrap()}",
        store=f"{settings.worker_store}://",
        datadir=str(settings.worker_dir()),
        topic_partitions=1,
        topic_replication_factor=1,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        web_enabled=False,
        stream_wait_empty=True,
        producer_acks=-1,
        logging_config=None,
        # An agent that raises stops the worker (exit non-zero) instead of being restarted
        # past the records it failed on: its batch was not acknowledged, so the next start
        # replays it.
        agent_supervisor=CrashingSupervisor,
    )
    return app


class Worker:
    """Holds the Faust app, the pipeline and the sink for one worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = build_app(settings)
        topic_tables: dict[str, SourceTable] = {settings.topic(t): t for t in SOURCE_TABLES}
        self.source = self.app.topic(
            *topic_tables, key_serializer="raw", value_serializer="raw", acks=True
        )
        self.dead_letters = self.app.topic(
            settings.dead_letter_topic, key_serializer="raw", value_serializer="raw",
            partitions=1, internal=True,
        )
        tables = {
            t: self.app.Table(
                f"state-{t}", default=None, partitions=1,
                schema=faust.Schema(key_serializer="json", value_serializer=STATE_CODEC),
                on_recover=self._on_recover,
            )
            for t in SOURCE_TABLES
        }
        state = SourceState(
            categories=cast(MutableMapping[int, dict[str, Any]], tables["categories"]),
            warranty_types=cast(MutableMapping[int, dict[str, Any]], tables["warranty_types"]),
            products=cast(MutableMapping[int, dict[str, Any]], tables["products"]),
            batches=cast(MutableMapping[int, dict[str, Any]], tables["batches"]),
        )
        decoder = Decoder(RegistrySchemas(settings.registry_url()), topic_tables)
        self.pipeline = Pipeline(decoder, state)
        self.sink = Sink(settings)
        self._needs_rebuild = True
        # mode's Signal stubs do not accept a bound async method; it is what mode expects.
        self.app.on_rebalance_complete.connect(self._on_rebalance)  # type: ignore[arg-type]
        self.app.agent(self.source, name="viewsync-views", concurrency=1)(self._agent)
        self.app.timer(30.0)(self._report)
        self._totals = {"batches": 0, "changes": 0, "rows": 0, "dead": 0}

    async def _on_rebalance(self, sender: Any, **kwargs: Any) -> None:
        self._needs_rebuild = True

    async def _on_recover(self) -> None:
        self._needs_rebuild = True

    async def _report(self) -> None:
        t = self._totals
        log.info("progress: %d batches, %d changes, %d view rows written, %d dead letters",
                 t["batches"], t["changes"], t["rows"], t["dead"])

    async def _agent(self, stream: faust.StreamT[bytes]) -> None:
        within = self.settings.sink_max_wait_ms / 1000.0
        batches = stream.take_events(  # type: ignore[attr-defined]
            self.settings.sink_batch_size, within=within
        )
        async for events in batches:
            await self.handle(events)

    async def handle(self, events: Sequence[faust.EventT[bytes]]) -> None:
        if self._needs_rebuild:
            t0 = time.monotonic()
            self.pipeline.rebuild()
            self._needs_rebuild = False
            log.info("join indexes rebuilt from table state in %.2fs", time.monotonic() - t0)
        t0 = time.monotonic()
        records = [
            RawRecord(e.message.topic, e.message.partition, e.message.offset,
                      e.message.key, e.message.value)
            for e in events
        ]
        dead = []
        for event, rec in zip(events, records, strict=True):
            # Faust tables send each change to the changelog partition of the event being
            # processed; take_events() does not set it for the batch body, so set it here.
            token = _current_event.set(weakref.ref(event))
            try:
                if (dl := await self._add(rec)) is not None:
                    dead.append(dl)
            finally:
                _current_event.reset(token)
        views, changes = self.pipeline.take_batch()
        result = BatchResult(views=views, dead_letters=dead, changes=changes)
        if result.rows:
            await self._write(result)
        await self._send_dead_letters(result)
        self._account(result, len(records), time.monotonic() - t0)

    async def _add(self, rec: RawRecord) -> DeadLetter | None:
        """Decode and apply one record; wait out a registry outage instead of failing."""
        delay = 0.5
        while True:
            try:
                return self.pipeline.add(rec)
            except SchemaUnavailable as exc:
                log.warning("%s; retrying %s[%d]@%d in %.1fs", exc, rec.topic, rec.partition,
                            rec.offset, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _write(self, result: BatchResult) -> None:
        """Write the batch; retry while a consumer database is unreachable.

        Nothing is acknowledged until this returns, so a worker stopped while retrying
        replays the batch on its next start.
        """
        delay = 0.5
        while True:
            try:
                await asyncio.to_thread(self.sink.write, result.views)
                return
            except sa_exc.OperationalError as exc:
                log.warning("sink write failed (%s); retrying in %.1fs",
                            str(exc.orig).splitlines()[0] if exc.orig else exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _send_dead_letters(self, result: BatchResult) -> None:
        for dl in result.dead_letters:
            rec = dl.record
            await self.dead_letters.send(
                key=rec.key, value=rec.value,
                headers={
                    "viewsync.reason": dl.reason.encode(),
                    "viewsync.source": f"{rec.topic}[{rec.partition}]@{rec.offset}".encode(),
                },
            )

    def _account(self, result: BatchResult, n: int, seconds: float) -> None:
        t = self._totals
        t["batches"] += 1
        t["changes"] += result.changes
        t["rows"] += result.rows
        t["dead"] += len(result.dead_letters)
        log.debug("batch: %d records, %d changes, %d rows, %d dead, %.1f ms",
                  n, result.changes, result.rows, len(result.dead_letters), seconds * 1000)


def _create_tables_when_reachable(sink: Sink) -> None:
    """Create missing view tables; wait (with backoff) while a consumer DB is unreachable."""
    delay = 0.5
    while True:
        try:
            sink.create_tables()
            return
        except sa_exc.OperationalError as exc:
            log.warning("consumer database unreachable (%s); retrying in %.1fs",
                        str(exc.orig).splitlines()[0] if exc.orig else exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def run_worker(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM; Faust shuts down cleanly (flushes, commits)."""
    from app.stack.manager import say

    settings.worker_dir().mkdir(parents=True, exist_ok=True)
    worker = Worker(settings)
    _create_tables_when_reachable(worker.sink)
    say(f"viewsync worker: {', '.join(worker.pipeline.decoder.topics)} → "
        + ", ".join(v.name for v in worker.pipeline.views))
    fw = faust.Worker(worker.app, loglevel=settings.log_level.lower(), quiet=True,
                      override_logging=False)
    fw.execute_from_commandline()
    return 0
