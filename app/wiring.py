"""The composition root: the batch loop and everything around it, built from the settings.

:func:`build_loop` is the one place a :class:`~app.loop.BatchLoop` is put together — the
decoder over the settings' source topics, the pipeline over the settings' views and shard
count, shard ownership under the worker's name — from the I/O it is given. The worker
(:class:`Components`, with the real state store, registry, sink, Kafka and metrics), the
benches and the unit tests (with doubles in memory) all build their loop with it, so the
loop they drive is the loop the worker runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from app.clients import registry_config
from app.control import Command, ensure_control_topic, send
from app.decode import Decoder, RegistrySchemas, SchemaSource
from app.kafka_io import DeadLetterProducer, KafkaSource
from app.loop import BatchLoop
from app.messages import ConnectorHealth
from app.metrics import Metrics
from app.ownership import FENCED_GRACE_S, SourceLog
from app.pipeline import Pipeline
from app.positions import Positions, lag, reached
from app.records import DeadLetter
from app.restore import restore
from app.retry import retry
from app.settings import Settings
from app.sink import DatabaseSink, SinkUnavailable, ViewSink, sink_urls
from app.state import MemoryStore, RocksStore, StateStore
from app.web import Web

log = logging.getLogger("viewsync.pipeline")


def build_loop(settings: Settings, *, schemas: SchemaSource, store: StateStore,
               sink: ViewSink, source: SourceLog,
               send_dead_letter: Callable[[DeadLetter], Awaitable[None]],
               metrics: Metrics | None = None) -> BatchLoop:
    """The batch loop of ``settings`` over the given I/O."""
    return BatchLoop(build_pipeline(settings, schemas, store), sink, send_dead_letter,
                     source=source, owner=settings.member_name(), metrics=metrics,
                     # a rejoin takes a session or two at most
                     fenced_grace_s=max(FENCED_GRACE_S,
                                        2 * settings.lease_session_timeout_ms / 1000))


def build_pipeline(settings: Settings, schemas: SchemaSource, store: StateStore) -> Pipeline:
    """The decode → state → project core of ``settings`` (every shard active until a batch
    loop takes the shards over)."""
    definitions = settings.definitions()
    return Pipeline(Decoder(schemas, settings.topic_tables(), definitions.graph), store,
                    views=definitions.views, shards=settings.shards,
                    control_topic=settings.control_topic())


def open_store(settings: Settings, wait_s: float = 60.0) -> StateStore:
    """The configured store. A RocksDB directory still locked by the pipeline process of a
    worker that was just killed (it finishes its last write, then exits) is waited for."""
    graph = settings.graph()
    if settings.worker_store != "rocksdb":
        return MemoryStore(graph)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return RocksStore(settings.worker_dir() / "state", graph)
        except Exception as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            log.warning("state store is still locked by another process; waiting (%s)", exc)
            time.sleep(0.5)


class Components:
    """The worker's batch loop with its real I/O, built from the settings; closed together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = open_store(settings)
        views = settings.views()
        self.sink = DatabaseSink(sink_urls(settings, views), views,
                                 settings.sink_idle_transaction_timeout_s)
        self.dead_letters = DeadLetterProducer(settings)
        self.metrics = Metrics(worker=settings.member_name(), tables=settings.graph().names)
        self.loop = build_loop(settings, schemas=RegistrySchemas(registry_config(settings)),
                               store=self.store, sink=self.sink, source=KafkaSource(settings),
                               send_dead_letter=self.dead_letters.send, metrics=self.metrics)
        self.web = Web(settings, self.metrics, lambda: self.loop.totals)

    def ends(self, highwaters: Positions) -> None:
        """The source partitions' ends as the worker's consumer sees them: lag metrics."""
        t = self.loop.totals
        behind = lag(highwaters, reached(t.written, t.state))
        self.metrics.lag(behind)
        self.metrics.caught_up(bool(behind) and not any(behind.values()))

    def connector(self, health: ConnectorHealth) -> None:
        """The source connector as the worker's supervisor saw it: connector metrics."""
        self.metrics.connector(health.running, health.restarts, health.last_restart)

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
        await restore(self.settings, self.settings.stream_topics(), self.loop.pipeline)

    def close(self) -> None:
        self.web.close()
        self.store.close()
        self.sink.close()
