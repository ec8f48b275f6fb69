"""`viewsync worker`: the Faust edge of the pipeline.

Everything a record goes through is :class:`app.pipeline.BatchLoop`; this module only adapts
Faust to it. One agent (concurrency 1) reads the four source topics in batches
(``take_events(sink_batch_size, within=sink_max_wait_ms)``) and hands each batch to the
loop. Faust acknowledges (and later commits) a batch's offsets only when the loop says the
batch's rows are committed in every consumer database: each event's message gets one more
reference (``Message.incref``) before the batch is handed over, and the loop's ``done``
releases it (``Event.ack``). The next batch is decoded and projected meanwhile.

The join state is not a Faust table: it lives in the worker's own state store
(``app.state``; RocksDB by default), materialized straight from the compacted source
topics, so nothing is written back to Kafka per record. Before Faust starts,
``app.restore`` brings the store up to the consumer group's committed offsets when it is
behind (a new or lost data directory).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import faust
from mode.supervisors import CrashingSupervisor

from app.changes import SOURCE_TABLES, SourceTable
from app.decode import Decoder, RegistrySchemas
from app.pipeline import BatchLoop, DeadLetter, Pipeline, RawRecord
from app.restore import restore
from app.retry import retry
from app.settings import Settings
from app.sink import DatabaseSink, ProcessSink, SinkUnavailable, ViewSink, sink_urls
from app.state import MemoryStore, RocksStore, StateStore

log = logging.getLogger("viewsync.worker")


def build_app(settings: Settings) -> faust.App:
    return faust.App(
        settings.worker_id,
        broker=f"kafka://{settings.bootstrap()}",
        topic_partitions=1,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        web_enabled=False,
        stream_wait_empty=True,
        producer_acks=-1,
        # Deep buffers: a burst is fetched in large chunks and never stalls on a full
        # stream buffer while a batch is being written.
        stream_buffer_maxsize=max(4 * settings.sink_batch_size, 16_384),
        broker_max_poll_records=max(2 * settings.sink_batch_size, 5_000),
        consumer_max_fetch_size=8 * 1024**2,
        logging_config=None,
        # An agent that raises stops the worker (exit non-zero) instead of being restarted
        # past the records it failed on: its batch was not acknowledged, so the next start
        # replays it.
        agent_supervisor=CrashingSupervisor,
    )


def open_store(settings: Settings) -> StateStore:
    if settings.worker_store == "rocksdb":
        return RocksStore(settings.worker_dir() / "state")
    return MemoryStore()


class Worker:
    """Holds the Faust app, the pipeline, the sink and the batch loop of one worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = build_app(settings)
        self.topic_tables: dict[str, SourceTable] = {
            settings.topic(t): t for t in SOURCE_TABLES}
        self.source = self.app.topic(
            *self.topic_tables, key_serializer="raw", value_serializer="raw", acks=True)
        self.dead_letters = self.app.topic(
            settings.dead_letter_topic, key_serializer="raw", value_serializer="raw",
            partitions=1, internal=True)
        self.store = open_store(settings)
        decoder = Decoder(RegistrySchemas(settings.registry_url()), self.topic_tables)
        self.pipeline = Pipeline(decoder, self.store)
        self.sink: ViewSink = (ProcessSink if settings.sink_process else DatabaseSink)(
            sink_urls(settings))
        self.loop = BatchLoop(self.pipeline, self.sink, self._send_dead_letter)
        self.app.agent(self.source, name="viewsync-views", concurrency=1)(self._agent)
        self.app.timer(settings.progress_interval_s)(self._report)
        self._last = (time.monotonic(), 0)

    async def _agent(self, stream: faust.StreamT[bytes]) -> None:
        within = self.settings.sink_max_wait_ms / 1000.0
        batches = stream.take_events(  # type: ignore[attr-defined]
            self.settings.sink_batch_size, within=within)
        t = self.loop.totals
        try:
            t0 = time.monotonic()
            async for events in batches:
                t.gather_s += time.monotonic() - t0
                await self.handle(events)
                t0 = time.monotonic()
        finally:
            await self.loop.drain()

    async def handle(self, events: Sequence[faust.EventT[bytes]]) -> None:
        records = []
        for e in events:
            m = e.message
            m.incref()  # released by _acked once the batch is written
            records.append(RawRecord(m.topic, m.partition, m.offset, m.key, m.value))
        await self.loop.handle(records, done=lambda: _acked(events))

    async def _send_dead_letter(self, dl: DeadLetter) -> None:
        rec = dl.record
        fut = await self.dead_letters.send(
            key=rec.key, value=rec.value,
            headers={
                "viewsync.reason": dl.reason.encode(),
                "viewsync.source": f"{rec.topic}[{rec.partition}]@{rec.offset}".encode(),
            },
        )
        await fut

    def lag(self) -> int | None:
        """Records in the assigned source partitions not yet written to the views."""
        written = self.loop.totals.written
        total = 0
        try:
            for tp in self.app.consumer.assignment():
                if tp.topic in self.topic_tables:
                    high = self.app.consumer.highwater(tp)
                    done = written.get((tp.topic, tp.partition))
                    if high is None:
                        return None
                    total += max(0, high - (done if done is not None else 0))
        except Exception:  # consumer not started or rebalancing
            return None
        return total

    async def _report(self) -> None:
        t = self.loop.totals
        now = time.monotonic()
        since, rows_then = self._last
        self._last = (now, t.rows)
        rate = (t.rows - rows_then) / max(now - since, 1e-9)
        lag = self.lag()
        if lag is None:
            state = "lag unknown"
        elif lag == 0:
            state = "caught up"
        else:
            per_record = t.records / max(now - t.started, 1e-9)
            eta = f", ~{lag / per_record:.0f}s to catch up" if per_record else ""
            state = f"catching up: lag {lag} records{eta}"
        log.info("%s | %d records, %d changes, %d view rows written (%.0f rows/s now), "
                 "%d dead letters | %d batches; seconds gathering %.1f, processing %.1f, "
                 "waiting for writes %.1f, writing %.1f",
                 state, t.records, t.changes, t.rows, rate, t.dead, t.batches, t.gather_s,
                 t.process_s, t.wait_s, t.write_s)


def _acked(events: Sequence[faust.EventT[bytes]]) -> None:
    for e in events:
        e.ack()


async def prepare(worker: Worker) -> None:
    """Before Faust starts: create the view tables (waiting while a consumer DB is down) and
    bring the state store up to the views."""
    await retry(lambda: asyncio.to_thread(worker.sink.create_tables), SinkUnavailable,
                "creating the view tables")
    await restore(worker.settings.bootstrap(), worker.settings.worker_id,
                  tuple(worker.topic_tables), worker.pipeline)


def run_worker(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM; Faust shuts down cleanly (flushes, commits)."""
    settings.worker_dir().mkdir(parents=True, exist_ok=True)
    worker = Worker(settings)
    try:
        # Faust runs on the loop that prepared the worker (not asyncio.run's, which closes).
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(prepare(worker))
        log.info("viewsync worker: %s → %s (state store: %s)",
                 ", ".join(worker.topic_tables),
                 ", ".join(v.name for v in worker.pipeline.views), settings.worker_store)
        fw = faust.Worker(worker.app, loglevel=settings.log_level.lower(), quiet=True,
                          override_logging=False)
        fw.execute_from_commandline()
    finally:
        worker.store.close()
        worker.sink.close()
    return 0
