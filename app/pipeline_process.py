"""Where the batch loop runs: in a child process of the worker (default), or in the worker.

The worker process is Faust: it fetches records and delivers them as events, which costs
about as much Python time per record as decoding, joining and projecting it. One Python
process runs one core at a time, so by default the work is split over two processes:

* the **worker** (``app.worker``, Faust) gathers batches of raw records and hands them
  over; it acknowledges a batch's events when told the batch is written;
* the **pipeline process** (this module, started with ``spawn``) owns the state store,
  the decoder, the sink and the dead-letter producer, and runs :class:`app.pipeline.BatchLoop`
  on each batch — the same loop, and the same code, that the unit tests drive in-process.

Both sides talk over a pipe: ``("batch", seq, records)`` in; ``("done", [seq, …], totals)``
when those batches are in the consumer databases (and its dead letters are in Kafka), ``("ready",
totals)`` after start-up (view tables created, state store restored), ``("error", text)`` when
the loop fails; ``("own", seq, shards)`` in and ``("owned", seq)`` back once the loop
writes exactly those shards (``BatchLoop.own``: a shard lost is drained first).
The pipeline process stops when told to, or when the worker dies (its end of
the pipe closes); it ignores SIGINT/SIGTERM so that a stop of the process group does not cut
a write in half: the worker decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from multiprocessing.connection import Connection
from typing import Any, Protocol

from app.changes import SOURCE_TABLES, SourceTable
from app.clients import kafka_config, registry_config
from app.control import Command, ensure_control_topic, send
from app.decode import Decoder, RegistrySchemas
from app.logs import setup_logging
from app.metrics import Metrics
from app.pipeline import (
    FENCED_GRACE_S,
    FLUSH_EVERY_S,
    BatchLoop,
    DeadLetter,
    Pipeline,
    RawRecord,
    Totals,
)
from app.restore import restore
from app.retry import retry
from app.settings import Settings
from app.sink import DatabaseSink, SinkUnavailable, sink_urls
from app.state import MemoryStore, Positions, RocksStore, StateStore
from app.topic_range import ensure_topic, read_range, topic_ends
from app.web import Web

log = logging.getLogger("viewsync.pipeline")

#: Batches handed over and not yet written, at most. While the pipeline is behind, the
#: batches waiting for it are merged into one (up to :data:`MERGE_RECORDS` records), so
#: batches grow with the load and per-batch costs (transactions, commits) shrink.
IN_FLIGHT = 8
MERGE_RECORDS = 20_000


def topic_tables(settings: Settings) -> dict[str, SourceTable]:
    return {settings.topic(t): t for t in SOURCE_TABLES}


def open_store(settings: Settings, wait_s: float = 60.0) -> StateStore:
    """The configured store. A RocksDB directory still locked by the pipeline process of a
    worker that was just killed (it finishes its last write, then exits) is waited for."""
    if settings.worker_store != "rocksdb":
        return MemoryStore()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return RocksStore(settings.worker_dir() / "state")
        except Exception as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            log.warning("state store is still locked by another process; waiting (%s)", exc)
            time.sleep(0.5)


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
        self._producer.produce(self.topic, key=rec.key, value=rec.value, headers={
            "viewsync.reason": dl.reason.encode(),
            "viewsync.source": f"{rec.topic}[{rec.partition}]@{rec.offset}".encode(),
        })
        left = await asyncio.to_thread(self._producer.flush, 30.0)
        if left:
            raise RuntimeError(f"dead letter not delivered to {self.topic} within 30s")


class KafkaSource:
    """:class:`~app.pipeline.SourceLog` over the source topics (``app.topic_range``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = (*topic_tables(settings), settings.control_topic())

    def read(self, start: Positions, end: Positions) -> Iterator[RawRecord]:
        topics: dict[str, dict[int, int]] = {}
        for (topic, part), off in end.items():
            topics.setdefault(topic, {})[part] = off
        for topic, ends in topics.items():
            starts = {p: start.get((topic, p), 0) for p in ends}
            for r in read_range(self.settings, topic, starts, ends):
                yield RawRecord(topic, r.partition, r.offset, r.key, r.value)

    def ends(self) -> Positions:
        return topic_ends(self.settings, self.topics)


class Components:
    """Everything the batch loop needs, built from the settings; closed together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = open_store(settings)
        self.topics = topic_tables(settings)
        views = settings.views()
        self.pipeline = Pipeline(
            Decoder(RegistrySchemas(registry_config(settings)), self.topics), self.store,
            views=views, shards=settings.shards, control_topic=settings.control_topic())
        self.sink = DatabaseSink(sink_urls(settings, views), views,
                                 settings.sink_idle_transaction_timeout_s)
        self.dead_letters = DeadLetterProducer(settings)
        self.metrics = Metrics(worker=settings.member_name())
        self.loop = BatchLoop(self.pipeline, self.sink, self.dead_letters.send,
                              source=KafkaSource(settings),
                              owner=settings.member_name(), metrics=self.metrics,
                              # a rejoin takes a session or two at most
                              fenced_grace_s=max(FENCED_GRACE_S,
                                                 2 * settings.lease_session_timeout_ms / 1000))
        self.web = Web(settings, self.metrics, lambda: self.loop.totals)

    def ends(self, highwaters: Positions) -> None:
        """The source partitions' ends as the worker's consumer sees them: lag metrics."""
        t = self.loop.totals
        lag = {tp: max(0, end - max(t.written.get(tp, 0), t.state.get(tp, 0)))
               for tp, end in highwaters.items()}
        self.metrics.lag(lag)
        self.metrics.caught_up(bool(lag) and not any(lag.values()))

    async def prepare(self) -> None:
        """Create the view tables (waiting while a consumer DB is down); bring the state
        store up to the views."""
        grown = await retry(lambda: asyncio.to_thread(self.sink.create_tables),
                            SinkUnavailable, "creating the view tables")
        await asyncio.to_thread(self.dead_letters.ensure_topic)
        await asyncio.to_thread(ensure_control_topic, self.settings)
        if grown:  # new columns: every owner backfills its shards of those views
            await asyncio.to_thread(send, self.settings, [Command("resync", v) for v in grown])
            log.info("columns added to %s: a resync is on its way", ", ".join(grown))
        if self.settings.metrics_port:
            self.web.serve("0.0.0.0", self.settings.metrics_port)
            log.info("status page on http://%s:%d/, metrics on /metrics", self.settings.host,
                     self.settings.metrics_port)
        await restore(kafka_config(self.settings), self.settings.data_group(),
                      (*self.topics, self.settings.control_topic()), self.pipeline)

    def close(self) -> None:
        self.web.close()
        self.store.close()
        self.sink.close()


class PipelineHost(Protocol):
    """How the worker runs batches: :class:`InProcess` or :class:`ChildProcess`."""

    def start(self) -> None:
        """Prepare (tables, restore); blocks until the loop can take batches."""
        ...

    async def submit(self, records: Sequence[RawRecord], done: Callable[[], None]) -> None:
        """Hand a batch over; ``done`` is called once it is written."""
        ...

    def totals(self) -> Totals: ...

    async def own(self, shards: frozenset[int]) -> None:
        """Write the rows of ``shards`` from now on, and of no other shard; returns once a
        shard lost has no write in flight."""
        ...

    def ends(self, highwaters: Positions) -> None:
        """The source partitions' ends now (for the lag metrics)."""
        ...

    async def close(self) -> None:
        """Finish the batches handed over, then stop."""
        ...

    #: Called (on the event loop) when the host fails outside a ``submit``.
    on_failure: Callable[[BaseException], None] | None


class InProcess:
    """The batch loop in the worker process itself (``pipeline_process = false``)."""

    def __init__(self, settings: Settings) -> None:
        self.parts = Components(settings)
        self.on_failure: Callable[[BaseException], None] | None = None
        self._closed = False
        self._idle: asyncio.Future[None] | None = None
        self._settle: asyncio.Future[None] | None = None

    def start(self) -> None:
        asyncio.get_event_loop().run_until_complete(self.parts.prepare())

    async def submit(self, records: Sequence[RawRecord], done: Callable[[], None]) -> None:
        await self.parts.loop.handle(records, done)

    def totals(self) -> Totals:
        return self.parts.loop.totals

    async def own(self, shards: frozenset[int]) -> None:
        if not self._closed:
            await self.parts.loop.own(shards)
            self._settle = asyncio.ensure_future(self.parts.loop.settle())

    def ends(self, highwaters: Positions) -> None:
        self.parts.ends(highwaters)
        # Called every few seconds by the worker: the in-process loop's idle moment.
        self._idle = asyncio.ensure_future(self.parts.loop.idle())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.parts.loop.close()
        finally:
            self.parts.close()


class PipelineFailed(Exception):
    """The pipeline process reported an error or died."""


class ChildProcess:
    """The batch loop in a child process; see the module's docstring."""

    def __init__(self, settings: Settings) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child_main, args=(settings, child),
                                 name="viewsync-pipeline")
        self._child_end = child
        self._done: dict[int, Callable[[], None]] = {}
        self._seq = 0
        self._slots: asyncio.Semaphore | None = None
        self._reader: asyncio.Task[None] | None = None
        self._totals = Totals()
        self._closed: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None
        self._owning: dict[int, asyncio.Future[None]] = {}
        self.on_failure: Callable[[BaseException], None] | None = None

    def start(self) -> None:
        self._proc.start()
        self._child_end.close()
        msg = self._recv_blocking()
        if msg[0] != "ready":
            raise PipelineFailed(f"pipeline process failed to start: {msg[1]}")
        self._totals = Totals(**msg[1])

    def _recv_blocking(self) -> tuple[Any, ...]:
        try:
            msg: tuple[Any, ...] = self._conn.recv()
        except EOFError:
            code = self._proc.exitcode
            raise PipelineFailed(f"pipeline process exited (code {code})") from None
        return msg

    async def _read(self) -> None:
        try:
            while True:
                msg = await asyncio.to_thread(self._recv_blocking)
                kind = msg[0]
                if kind == "done":
                    _, seqs, totals = msg
                    self._totals = Totals(**totals)
                    for seq in seqs:
                        self._done.pop(seq)()
                        assert self._slots is not None
                        self._slots.release()
                elif kind == "owned":
                    fut = self._owning.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                elif kind == "closed":
                    if self._closed is not None and not self._closed.done():
                        self._closed.set_result(None)
                    return
                elif kind == "error":
                    raise PipelineFailed(f"pipeline process failed: {msg[1]}")
        except Exception as exc:
            self._failure = exc
            for fut in self._owning.values():
                if not fut.done():
                    fut.set_exception(exc)
            if self._closed is not None and not self._closed.done():
                self._closed.set_exception(exc)
            if self._slots is not None:
                self._slots.release()  # wake a submit waiting for a slot: it raises
            if self.on_failure is not None:
                self.on_failure(exc)

    async def submit(self, records: Sequence[RawRecord], done: Callable[[], None]) -> None:
        if self._reader is None:
            self._slots = asyncio.Semaphore(IN_FLIGHT)
            self._reader = asyncio.create_task(self._read())
        assert self._slots is not None
        await self._slots.acquire()
        if self._failure is not None:
            raise PipelineFailed(str(self._failure)) from self._failure
        seq, self._seq = self._seq, self._seq + 1
        self._done[seq] = done
        self._conn.send(("batch", seq, [
            (r.topic, r.partition, r.offset, r.key, r.value) for r in records]))

    def totals(self) -> Totals:
        return self._totals

    async def own(self, shards: frozenset[int]) -> None:
        if self._closed is not None or not self._proc.is_alive():
            return
        if self._failure is not None:
            raise PipelineFailed(str(self._failure)) from self._failure
        if self._reader is None:
            self._slots = asyncio.Semaphore(IN_FLIGHT)
            self._reader = asyncio.create_task(self._read())
        seq, self._seq = self._seq, self._seq + 1
        fut = asyncio.get_running_loop().create_future()
        self._owning[seq] = fut
        self._conn.send(("own", seq, sorted(shards)))
        await fut

    def ends(self, highwaters: Positions) -> None:
        if self._closed is None and self._proc.is_alive():
            self._conn.send(("ends", dict(highwaters)))

    async def close(self) -> None:
        try:
            if self._proc.is_alive() and self._failure is None:
                self._closed = asyncio.get_running_loop().create_future()
                self._conn.send(("close",))
                if self._reader is None:
                    self._reader = asyncio.create_task(self._read())
                await asyncio.wait_for(self._closed, timeout=120)
        finally:
            self._conn.close()
            self._proc.join(30)
            if self._proc.is_alive():
                self._proc.kill()


def host_for(settings: Settings) -> PipelineHost:
    return ChildProcess(settings) if settings.pipeline_process else InProcess(settings)


# --- the child ----------------------------------------------------------------------------------


def _child_main(settings: Settings, conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging(settings.log_level)
    try:
        asyncio.run(_serve(settings, conn))
    except EOFError:
        log.info("the worker is gone; pipeline process exits")
    except BaseException as exc:
        log.error("pipeline process failed: %s", "".join(traceback.format_exception(exc)))
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None


def _read_pipe(conn: Connection, loop: asyncio.AbstractEventLoop,
               inbox: asyncio.Queue[tuple[Any, ...]], on_own: Callable[[], None]) -> None:
    """The pipe from the worker, read in a thread of its own so that a shard assignment is
    seen while a batch or a takeover runs (which then stops for it: the worker's rebalance
    callback waits for it). Messages keep their order in ``inbox``."""
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "own":
                loop.call_soon_threadsafe(on_own)
            loop.call_soon_threadsafe(inbox.put_nowait, msg)
            if msg[0] == "close":
                return
    except (EOFError, OSError):
        loop.call_soon_threadsafe(inbox.put_nowait, ("eof",))


async def _serve(settings: Settings, conn: Connection) -> None:
    parent = os.getppid()
    parts = Components(settings)
    try:
        await parts.prepare()
        conn.send(("ready", asdict(parts.loop.totals)))
        inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        threading.Thread(target=_read_pipe, name="pipe-reader", daemon=True,
                         args=(conn, asyncio.get_running_loop(), inbox,
                               parts.loop.own_requested)).start()
        closing = False
        last_batch = time.monotonic()
        while not closing:
            try:
                msg = await asyncio.wait_for(inbox.get(), FLUSH_EVERY_S)
            except TimeoutError:
                await parts.loop.idle()  # nothing for a while: record the positions
                continue
            seqs: list[int] = []
            records: list[RawRecord] = []
            control: tuple[Any, ...] | None = None
            while True:
                if msg[0] == "batch":
                    _, seq, raw = msg
                    seqs.append(seq)
                    records += [RawRecord(*r) for r in raw]
                elif msg[0] == "close":
                    closing = True
                    break
                elif msg[0] == "eof":
                    raise EOFError
                elif msg[0] == "ends":
                    parts.ends(msg[1])
                else:  # "own": after the batches before it
                    control = msg
                    break
                if len(records) >= MERGE_RECORDS or inbox.empty():
                    break
                msg = inbox.get_nowait()
            if os.getppid() != parent:
                # The worker died: nothing of these batches can be acknowledged any more,
                # its successor replays them. Stop at once instead of draining the pipe.
                log.info("the worker is gone; pipeline process exits")
                return
            if records:
                last_batch = time.monotonic()
                await parts.loop.handle(records, _reporter(conn, seqs, parts.loop))
            elif (control is None and not closing
                  and time.monotonic() - last_batch >= FLUSH_EVERY_S):
                # No batch for a while, only the worker's "ends" (sent every 2 s, so the
                # poll above seldom times out): idle, record the positions. (Not during a
                # burst: idle waits for the write in flight.)
                await parts.loop.idle()
            if control is not None:
                _, seq, shards = control
                await parts.loop.own(frozenset(shards))
                conn.send(("owned", seq))  # the rebalance callback returns now
                await parts.loop.settle()
        await parts.loop.close()
        conn.send(("closed",))
    finally:
        parts.close()


def _reporter(conn: Connection, seqs: list[int], loop: BatchLoop) -> Callable[[], None]:
    def done() -> None:
        conn.send(("done", seqs, asdict(loop.totals)))
    return done
