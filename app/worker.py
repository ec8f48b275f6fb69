"""`viewsync worker`: the Faust edge of the pipeline.

Everything a record goes through is :class:`app.loop.BatchLoop`, run by an
:mod:`app.host` host (by default in a child process, so that Faust and the pipeline use two
cores); this module only adapts Faust to it. One agent (concurrency 1)
reads the four source topics in batches (``take_events(sink_batch_size,
within=sink_max_wait_ms)``) and hands each batch over. Faust acknowledges (and later
commits) a batch's offsets only when the host says the batch's rows are committed in every
consumer database: each event's message gets one more reference (``Message.incref``) before
the batch is handed over, and the host's ``done`` releases it (``Event.ack``). The next
batches are gathered meanwhile.

The join state is not a Faust table: it lives in the pipeline's own state store
(``app.state``; RocksDB by default), materialized straight from the compacted source
topics, so nothing is written back to Kafka per record. Before Faust starts, the host
creates the view tables and brings the store up to the consumer group's committed offsets
(``app.restore``) when it is behind.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

import faust
from mode.supervisors import CrashingSupervisor

from app.clients import aiokafka_config
from app.host import PipelineHost, host_for
from app.kafka_io import KafkaSource
from app.leases import ShardLeases
from app.positions import reached, records_to_go
from app.records import RawRecord
from app.settings import Settings
from app.supervisor import Supervisor

log = logging.getLogger("viewsync.worker")


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """Faust's form of the Kafka security settings (``app.clients``)."""
    auth = aiokafka_config(settings)
    if settings.kafka_security_protocol.startswith("SASL_"):
        return faust.SASLCredentials(
            username=auth["sasl_plain_username"], password=auth["sasl_plain_password"],
            ssl_context=auth.get("ssl_context"), mechanism=auth["sasl_mechanism"])
    if "ssl_context" in auth:
        return faust.SSLCredentials(auth["ssl_context"])
    return None


def build_app(settings: Settings) -> faust.App:
    return faust.App(
        # Every worker reads every partition (its join state is whole; ``app.shards``
        # decides which rows it writes), so each reads in a consumer group of its own.
        settings.data_group(),
        broker=f"kafka://{settings.bootstrap()}",
        broker_credentials=broker_credentials(settings),
        # Faust's own files live with the worker's state, not in the current directory.
        datadir=str(settings.worker_dir() / "faust"),
        topic_partitions=1,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        # Static group membership: a worker restarted within the session timeout takes its
        # partitions back at once, without waiting for its old self to time out.
        consumer_group_instance_id=settings.instance_id(),
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


class Worker:
    """The Faust app and the pipeline host of one worker process."""

    def __init__(self, settings: Settings, host: PipelineHost) -> None:
        self.settings = settings
        self.host = host
        self.app = build_app(settings)
        host.on_failure = self._crash
        # The source topics, and the deployment's commands in order with them.
        self.topics = settings.stream_topics()
        self.source = self.app.topic(
            *self.topics, key_serializer="raw", value_serializer="raw", acks=True)
        self.app.agent(self.source, name="viewsync-views", concurrency=1)(self._agent)
        self.app.timer(settings.progress_interval_s)(self._report)
        self.app.timer(2.0)(self._ends)
        self.supervisor = Supervisor(settings)  # restarts a FAILED source connector
        self.app.timer(settings.connector_check_interval_s)(self._supervise)
        self.leases = ShardLeases(settings, host.own)
        self.app.task(self._leases)
        self._last = (time.monotonic(), 0)
        self._gather_s = 0.0
        self._crashing: asyncio.Future[None] | None = None

    def _crash(self, exc: BaseException) -> None:
        log.critical("%s; the worker stops (unwritten batches were not acknowledged)", exc)
        self._crashing = asyncio.ensure_future(self.app.crash(exc))

    async def _leases(self) -> None:
        try:
            await self._catch_up()
            await self.leases.run()
        except asyncio.CancelledError:
            # Expected when the worker stops; otherwise the worker is out of the lease
            # group and writes nothing more: say which it is.
            log.info("shard-lease membership ended (%s; owned: %s)",
                     "the worker is stopping" if self.app.should_stop else "cancelled",
                     ",".join(map(str, sorted(self.leases.owned))) or "none")
            raise
        except BaseException as exc:
            self._crash(exc)

    async def _catch_up(self) -> None:
        """Join the lease group only once the state holds every record the source topics
        had when this worker started: a worker added to a running deployment (or one that
        was down a long time) does not take shards it could not write for minutes — their
        owners go on writing them meanwhile."""
        target = await asyncio.to_thread(KafkaSource(self.settings).ends)
        t0 = last = time.monotonic()
        while True:
            left = records_to_go(target, self.host.totals().state)
            if not left:
                break
            if time.monotonic() - last >= self.settings.progress_interval_s:
                last = time.monotonic()
                log.info("catching up before taking shards: %d records to go", left)
            await asyncio.sleep(0.2)
        log.info("state caught up with the source topics in %.1fs; joining the deployment",
                 time.monotonic() - t0)

    async def _agent(self, stream: faust.StreamT[bytes]) -> None:
        within = self.settings.sink_max_wait_ms / 1000.0
        batches = stream.take_events(  # type: ignore[attr-defined]
            self.settings.sink_batch_size, within=within)
        try:
            t0 = time.monotonic()
            async for events in batches:
                self._gather_s += time.monotonic() - t0
                await self.handle(events)
                t0 = time.monotonic()
        finally:
            await self.host.close()

    async def handle(self, events: Sequence[faust.EventT[bytes]]) -> None:
        await hand_over(self.host.submit, events)

    def highwaters(self) -> dict[tuple[str, int], int] | None:
        """The end of every assigned source partition, as the consumer last saw it."""
        out: dict[tuple[str, int], int] = {}
        try:
            for tp in self.app.consumer.assignment():
                if tp.topic in self.topics:
                    high = self.app.consumer.highwater(tp)
                    if high is None:
                        if tp.topic == self.settings.control_topic():
                            continue  # an empty control topic may never have been fetched
                        return None
                    out[(tp.topic, tp.partition)] = high
        except Exception:  # consumer not started or rebalancing
            return None
        return out

    def lag(self) -> int | None:
        """Records of the source partitions this worker has not processed yet (written, or
        already in the state store it started with)."""
        t = self.host.totals()
        ends = self.highwaters()
        if ends is None:
            return None
        self.host.ends(ends)
        return records_to_go(ends, reached(t.written, t.state))

    async def _ends(self) -> None:
        self.lag()  # hands the partitions' ends to the host (lag metrics)

    async def _supervise(self) -> None:
        """``app.supervisor``'s check (unless ``connector_supervise`` is off); the
        connector's health goes to the host (connector metrics)."""
        if self.settings.connector_supervise:
            self.host.connector(await self.supervisor.check())

    async def _report(self) -> None:
        """One line per interval: caught up or not, rows/s, lag, freshness per view, shards
        (the per-stage timings at DEBUG)."""
        t = self.host.totals()
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
            state = f"catching up: lag {lag:,} records{eta}"
        fresh = ", ".join(f"{v} {s:.2f}s" for v, s in sorted(t.freshness.items())) or "-"
        owned = ",".join(map(str, sorted(self.leases.owned))) or "none"
        log.info("%s | %.0f rows/s | freshness %s | shards %s of %d | %d records, %d rows "
                 "written, %d dead letters", state, rate, fresh, owned, self.settings.shards,
                 t.records, t.rows, t.dead)
        log.debug("%d batches; seconds gathering %.1f, processing %.1f, waiting for writes "
                  "%.1f, writing %.1f", t.batches, self._gather_s, t.process_s, t.wait_s,
                  t.write_s)


async def hand_over(submit: Callable[[Sequence[RawRecord], Callable[[], None]], Awaitable[None]],
                    events: Sequence[faust.EventT[bytes]]) -> None:
    """The ack path: each event's message gets one more reference before the batch is
    handed over, released (``Event.ack``) only once the host says the batch is written —
    so Faust commits no offset past a record whose rows are not in every database."""
    records = []
    for e in events:
        m = e.message
        m.incref()  # released by _acked once the batch is written
        records.append(RawRecord(m.topic, m.partition, m.offset, m.key, m.value))
    await submit(records, lambda: _acked(events))


def _acked(events: Sequence[faust.EventT[bytes]]) -> None:
    for e in events:
        e.ack()


def run_worker(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM; Faust shuts down cleanly (flushes, commits)."""
    settings.worker_dir().mkdir(parents=True, exist_ok=True)
    # Faust runs on the loop that prepared the worker.
    asyncio.set_event_loop(asyncio.new_event_loop())
    host = host_for(settings)
    host.start()
    worker = Worker(settings, host)
    log.info("viewsync worker: %s → %s (state store: %s, pipeline in %s)",
             ", ".join(worker.topics), "the three views", settings.worker_store,
             "a child process" if settings.pipeline_process else "the worker process")
    fw = faust.Worker(worker.app, loglevel=settings.log_level.lower(), quiet=True,
                      override_logging=False)
    if not sys.stdout.isatty():
        fw.spinner = None  # no terminal control codes in logs (systemd, Docker, files)
    fw.execute_from_commandline()
    return 0
