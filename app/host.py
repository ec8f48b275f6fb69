"""Where the batch loop runs: in a child process of the worker (default), or in the worker.

The worker process is Faust: it fetches records and delivers them as events, which costs
about as much Python time per record as decoding, joining and projecting it. One Python
process runs one core at a time, so by default the work is split over two processes:

* the **worker** (``app.worker``, Faust) gathers batches of raw records and hands them to
  its host's :class:`HostClient`; it acknowledges a batch's events when told the batch is
  written;
* the **pipeline side** runs :func:`serve` — the one host loop — over the loop built by
  ``app.wiring`` (state store, decoder, sink, dead-letter producer).

Both talk in the typed messages of ``app.messages``. :class:`ChildProcess` carries them over
a pipe to a child process started with ``spawn``; :class:`InProcess` over a queue to a task
of the worker's own event loop (``pipeline_process = false``). The client, the host loop and
the messages are the same for both, so the two cannot drift.

The pipeline process stops when told to, or when the worker dies (its end of the pipe
closes); it ignores SIGINT/SIGTERM so that a stop of the process group does not cut a write
in half: the worker decides.
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
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Protocol

from app.logs import setup_logging
from app.loop import BatchLoop, Totals
from app.messages import (
    Batch,
    Close,
    Closed,
    ConnectorHealth,
    Done,
    Ends,
    Failed,
    Own,
    Owned,
    Ready,
    ToPipeline,
    ToWorker,
)
from app.ownership import FLUSH_EVERY_S
from app.positions import Positions
from app.records import RawRecord
from app.settings import Settings
from app.wiring import Components

log = logging.getLogger("viewsync.pipeline")

#: Batches handed over and not yet written, at most. While the pipeline is behind, the
#: batches waiting for it are merged into one (up to :data:`MERGE_RECORDS` records), so
#: batches grow with the load and per-batch costs (transactions, commits) shrink.
IN_FLIGHT = 8
MERGE_RECORDS = 20_000


class PipelineFailed(Exception):
    """The pipeline side reported an error or died."""


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

    def connector(self, health: ConnectorHealth) -> None:
        """The source connector's health, from the worker's supervisor (for the metrics)."""
        ...

    async def close(self) -> None:
        """Finish the batches handed over, then stop."""
        ...

    #: Called (on the event loop) when the host fails outside a ``submit``.
    on_failure: Callable[[BaseException], None] | None


# --- the worker's side ---------------------------------------------------------------------------


class HostClient:
    """The worker's end of the protocol, whatever carries the messages: ``send`` hands a
    message to the pipeline side, :meth:`receive` takes each answer (on the event loop)."""

    def __init__(self, send: Callable[[ToPipeline], None]) -> None:
        self._send = send
        self._done: dict[int, Callable[[], None]] = {}
        self._seq = 0
        self._slots: asyncio.Semaphore | None = None
        self._totals = Totals()
        self._owning: dict[int, asyncio.Future[None]] = {}
        self._closed: asyncio.Future[None] | None = None
        self.failure: BaseException | None = None
        self.on_failure: Callable[[BaseException], None] | None = None

    @property
    def closing(self) -> bool:
        return self._closed is not None

    def receive(self, msg: ToWorker) -> None:
        match msg:
            case Ready(totals):
                self._totals = totals
            case Done(seqs, totals):
                self._totals = totals
                for seq in seqs:
                    self._done.pop(seq)()
                    self._slot().release()
            case Owned(seq):
                fut = self._owning.pop(seq, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            case Closed():
                if self._closed is not None and not self._closed.done():
                    self._closed.set_result(None)
            case Failed(error):
                self.fail(PipelineFailed(f"pipeline process failed: {error}"))

    def fail(self, exc: BaseException) -> None:
        """The pipeline side is gone: wake everything that waits for it."""
        if self.failure is not None:
            return
        self.failure = exc
        for fut in self._owning.values():
            if not fut.done():
                fut.set_exception(exc)
        if self._closed is not None and not self._closed.done():
            self._closed.set_exception(exc)
        if self._slots is not None:
            self._slots.release()  # wake a submit waiting for a slot: it raises
        if self.on_failure is not None:
            self.on_failure(exc)

    def _slot(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(IN_FLIGHT)
        return self._slots

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise PipelineFailed(str(self.failure)) from self.failure

    def _next_seq(self) -> int:
        seq, self._seq = self._seq, self._seq + 1
        return seq

    async def submit(self, records: Sequence[RawRecord], done: Callable[[], None]) -> None:
        await self._slot().acquire()
        self._raise_failure()
        seq = self._next_seq()
        self._done[seq] = done
        self._send(Batch.of(seq, list(records)))

    def totals(self) -> Totals:
        return self._totals

    async def own(self, shards: frozenset[int]) -> None:
        if self.closing:
            return
        self._raise_failure()
        seq = self._next_seq()
        fut = asyncio.get_running_loop().create_future()
        self._owning[seq] = fut
        self._send(Own(seq, frozenset(shards)))
        await fut

    def ends(self, highwaters: Positions) -> None:
        if not self.closing and self.failure is None:
            self._send(Ends(dict(highwaters)))

    def connector(self, health: ConnectorHealth) -> None:
        if not self.closing and self.failure is None:
            self._send(health)

    async def close(self, timeout: float = 120.0) -> None:
        """Ask the pipeline side to finish and wait until it has."""
        if self.failure is not None or self.closing:
            return
        self._closed = asyncio.get_running_loop().create_future()
        self._send(Close())
        await asyncio.wait_for(self._closed, timeout=timeout)


# --- the pipeline's side: the one host loop ------------------------------------------------------


class Inbox:
    """The messages from the worker, in order. An assignment is announced to the loop the
    moment it arrives (a takeover in progress stops for it: the worker's rebalance callback
    waits), though it is carried out after the batches before it."""

    def __init__(self, loop: BatchLoop) -> None:
        self._loop = loop
        self.queue: asyncio.Queue[ToPipeline | None] = asyncio.Queue()

    def put(self, msg: ToPipeline | None) -> None:
        """``None``: the worker is gone (its end of the pipe closed)."""
        if isinstance(msg, Own):
            self._loop.own_requested()
        self.queue.put_nowait(msg)


async def serve(loop: BatchLoop, inbox: Inbox, reply: Callable[[ToWorker], None],
                on_ends: Callable[[Positions], None] = lambda ends: None,
                worker_alive: Callable[[], bool] = lambda: True,
                on_connector: Callable[[ConnectorHealth], None] = lambda health: None) -> None:
    """Run the batch loop on the worker's messages until :class:`Close` (or the worker is
    gone: ``EOFError``). Batches waiting are merged (up to :data:`MERGE_RECORDS`); with
    no batch for :data:`FLUSH_EVERY_S`, the loop idles (records the shards' positions).
    ``on_ends`` takes the source partitions' ends the worker sends (the lag metrics),
    ``on_connector`` the source connector's health."""
    queue = inbox.queue
    closing = False
    last_batch = time.monotonic()
    while not closing:
        try:
            msg = await asyncio.wait_for(queue.get(), FLUSH_EVERY_S)
        except TimeoutError:
            await loop.idle()  # nothing for a while: record the positions
            continue
        seqs: list[int] = []
        records: list[RawRecord] = []
        assignment: Own | None = None
        while True:
            match msg:
                case Batch():
                    seqs.append(msg.seq)
                    records += msg.raw()
                case Close():
                    closing = True
                    break
                case None:
                    raise EOFError
                case Ends(positions):
                    on_ends(positions)
                case ConnectorHealth():
                    on_connector(msg)
                case Own():  # after the batches before it
                    assignment = msg
                    break
            if len(records) >= MERGE_RECORDS or queue.empty():
                break
            msg = queue.get_nowait()
        if not worker_alive():
            # The worker died: nothing of these batches can be acknowledged any more, its
            # successor replays them. Stop at once instead of draining the messages.
            log.info("the worker is gone; pipeline process exits")
            return
        if records:
            last_batch = time.monotonic()
            await loop.handle(records, _reporter(reply, seqs, loop))
        elif (assignment is None and not closing
              and time.monotonic() - last_batch >= FLUSH_EVERY_S):
            # No batch for a while, only the worker's ends (sent every 2 s, so the wait
            # above seldom times out): idle. (Not during a burst: idle waits for the write
            # in flight.)
            await loop.idle()
        if assignment is not None:
            await loop.own(assignment.shards)
            reply(Owned(assignment.seq))  # the rebalance callback returns now
            await loop.settle()
    await loop.close()
    reply(Closed())


def _reporter(reply: Callable[[ToWorker], None], seqs: list[int], loop: BatchLoop
              ) -> Callable[[], None]:
    def done() -> None:
        reply(Done(seqs, loop.totals.snapshot()))
    return done


# --- the two hosts -------------------------------------------------------------------------------


class LoopParts(Protocol):
    """A batch loop with what it runs on (``app.wiring.Components`` for the worker)."""

    loop: BatchLoop

    async def prepare(self) -> None:
        """Create the view tables; bring the state store up to the views."""
        ...

    def ends(self, highwaters: Positions) -> None:
        """The source partitions' ends as the worker's consumer sees them."""
        ...

    def connector(self, health: ConnectorHealth) -> None:
        """The source connector's health as the worker's supervisor saw it."""
        ...

    def close(self) -> None: ...


class _ClientHost:
    """What both hosts do the same way: through their :class:`HostClient`."""

    _client: HostClient

    def _alive(self) -> bool:
        """Whether the pipeline side still runs."""
        return True

    @property
    def on_failure(self) -> Callable[[BaseException], None] | None:
        return self._client.on_failure

    @on_failure.setter
    def on_failure(self, f: Callable[[BaseException], None] | None) -> None:
        self._client.on_failure = f

    async def submit(self, records: Sequence[RawRecord], done: Callable[[], None]) -> None:
        await self._client.submit(records, done)

    def totals(self) -> Totals:
        return self._client.totals()

    async def own(self, shards: frozenset[int]) -> None:
        if self._alive():
            await self._client.own(shards)

    def ends(self, highwaters: Positions) -> None:
        if self._alive():
            self._client.ends(highwaters)

    def connector(self, health: ConnectorHealth) -> None:
        if self._alive():
            self._client.connector(health)


class InProcess(_ClientHost):
    """The host loop as a task of the worker's own event loop (``pipeline_process =
    false``); messages go through a queue."""

    def __init__(self, parts: LoopParts) -> None:
        self.parts = parts
        self._inbox = Inbox(self.parts.loop)
        self._client = HostClient(self._inbox.put)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Prepare on the worker's event loop (set, not yet running); the host loop starts
        with it."""
        loop = asyncio.get_event_loop()
        loop.run_until_complete(self.parts.prepare())
        self._client.receive(Ready(self.parts.loop.totals.snapshot()))
        self._task = loop.create_task(self._serve())

    async def _serve(self) -> None:
        try:
            await serve(self.parts.loop, self._inbox, self._client.receive, self.parts.ends,
                        on_connector=self.parts.connector)
        except BaseException as exc:
            log.error("pipeline failed: %s", "".join(traceback.format_exception(exc)))
            self._client.receive(Failed(f"{type(exc).__name__}: {exc}"))
            raise

    async def close(self) -> None:
        try:
            await self._client.close()
            if self._task is not None:
                with contextlib.suppress(Exception):
                    await self._task
        finally:
            self.parts.close()


class ChildProcess(_ClientHost):
    """The host loop in a child process; see the module's docstring."""

    def __init__(self, settings: Settings) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child_main, args=(settings, child),
                                 name="viewsync-pipeline")
        self._child_end = child
        self._client = HostClient(self._send)
        self._reader: asyncio.Task[None] | None = None

    def _alive(self) -> bool:
        return self._proc.is_alive()

    def start(self) -> None:
        self._proc.start()
        self._child_end.close()
        msg = self._recv()
        if not isinstance(msg, Ready):
            error = msg.error if isinstance(msg, Failed) else repr(msg)
            raise PipelineFailed(f"pipeline process failed to start: {error}")
        self._client.receive(msg)

    def _send(self, msg: ToPipeline) -> None:
        if self._reader is None:  # the first message: its answers are read from now on
            self._reader = asyncio.get_running_loop().create_task(self._read())
        self._conn.send(msg)

    def _recv(self) -> ToWorker:
        try:
            msg: ToWorker = self._conn.recv()
        except EOFError:
            code = self._proc.exitcode
            raise PipelineFailed(f"pipeline process exited (code {code})") from None
        return msg

    async def _read(self) -> None:
        try:
            while True:
                msg = await asyncio.to_thread(self._recv)
                self._client.receive(msg)
                if isinstance(msg, Closed | Failed):
                    return
        except Exception as exc:
            self._client.fail(exc)

    async def close(self) -> None:
        try:
            if self._proc.is_alive():
                await self._client.close()
        finally:
            self._conn.close()
            self._proc.join(30)
            if self._proc.is_alive():
                self._proc.kill()


def host_for(settings: Settings) -> PipelineHost:
    if settings.pipeline_process:
        return ChildProcess(settings)
    return InProcess(Components(settings))


# --- the child -----------------------------------------------------------------------------------


def _child_main(settings: Settings, conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging(settings.log_level)
    try:
        asyncio.run(_child(settings, conn))
    except EOFError:
        log.info("the worker is gone; pipeline process exits")
    except BaseException as exc:
        log.error("pipeline process failed: %s", "".join(traceback.format_exception(exc)))
        with contextlib.suppress(OSError):
            conn.send(Failed(f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None


async def _child(settings: Settings, conn: Connection) -> None:
    parent = os.getppid()
    parts = Components(settings)
    try:
        await parts.prepare()
        conn.send(Ready(parts.loop.totals.snapshot()))
        inbox = Inbox(parts.loop)
        threading.Thread(target=_read_pipe, name="pipe-reader", daemon=True,
                         args=(conn, asyncio.get_running_loop(), inbox)).start()
        await serve(parts.loop, inbox, conn.send, parts.ends,
                    worker_alive=lambda: os.getppid() == parent, on_connector=parts.connector)
    finally:
        parts.close()


def _read_pipe(conn: Connection, loop: asyncio.AbstractEventLoop, inbox: Inbox) -> None:
    """The pipe from the worker, read in a thread of its own so that a shard assignment is
    seen while a batch or a takeover runs. Messages keep their order in the inbox."""
    try:
        while True:
            msg: ToPipeline = conn.recv()
            loop.call_soon_threadsafe(inbox.put, msg)
            if isinstance(msg, Close):
                return
    except (EOFError, OSError):
        loop.call_soon_threadsafe(inbox.put, None)
