"""The hosts (no server): the one host loop over the worker's loop with doubles in memory,
driven through the worker's ack path — events are acknowledged only once their batch's
rows are written — and a failure of the pipeline side reaches the worker."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.host import HostClient, Inbox, InProcess, PipelineFailed, serve
from app.loop import BatchLoop
from app.messages import ConnectorHealth
from app.positions import Positions
from app.records import RawRecord
from app.worker import hand_over
from tests.unit.debezium import DictSchemas, key, value
from tests.unit.doubles import MemorySink, memory_loop
from tests.unit.test_pipeline import CAT, PROD


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    refs: int = 1

    def incref(self) -> None:
        self.refs += 1


@dataclass
class Event:
    """What the ack path uses of a Faust event: its message, and ``ack``."""

    message: Message
    sink: MemorySink
    #: The view rows in the sink when the event was acknowledged.
    rows_at_ack: list[int] = field(default_factory=list)

    def ack(self) -> None:
        self.message.refs -= 1
        self.rows_at_ack.append(len(self.sink.rows.get("order.product_view", {})))


def events(sink: MemorySink, records: list[RawRecord]) -> list[Any]:
    return [Event(Message(r.topic, r.partition, r.offset, r.key, r.value), sink)
            for r in records]


def catalogue(s: DictSchemas) -> list[RawRecord]:
    return [RawRecord("p.product.categories", 0, 0, key(s, "categories", 1),
                      value(s, "categories", "c", None, CAT)),
            RawRecord("p.product.products", 0, 0, key(s, "products", 10),
                      value(s, "products", "c", None, PROD))]


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_the_host_loop_acknowledges_events_only_once_their_rows_are_written() -> None:
    s = DictSchemas()
    sink = MemorySink()
    loop: BatchLoop = memory_loop(sink, schemas=s)
    ends: list[Positions] = []

    async def run() -> None:
        inbox = Inbox(loop)
        client = HostClient(inbox.put)
        served = asyncio.create_task(serve(loop, inbox, client.receive, ends.append))
        await client.own(frozenset({0}))
        first, second = catalogue(s)
        batch1, batch2 = events(sink, [first]), events(sink, [second])
        await hand_over(client.submit, batch1)
        assert batch1[0].message.refs == 2  # held until its batch is written
        await until(lambda: batch1[0].message.refs == 1)
        await hand_over(client.submit, batch2)
        client.ends({("p.product.products", 0): 1})
        await until(lambda: batch2[0].message.refs == 1)
        # acknowledged once each (the reference taken before the hand-over released) …
        assert [e.rows_at_ack for e in batch1 + batch2] == [[0], [1]]
        # … and the product's event only once its row was in the sink
        assert sink.rows["order.product_view"][10]["category_path"] == "Tools"
        assert client.totals().records == 2
        assert sink.shards[0][0] == 1  # claimed once, by this loop
        await client.close()
        await served

    asyncio.run(run())
    assert ends == [{("p.product.products", 0): 1}]


class BrokenSink(MemorySink):
    def _write(self, batches: Any, progress: Any) -> int:
        if batches:
            raise RuntimeError("disk on fire")
        return super()._write(batches, progress)


def test_a_failure_of_the_in_process_host_reaches_the_worker_and_nothing_is_acked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.host.FLUSH_EVERY_S", 0.05)
    s = DictSchemas()
    sink = BrokenSink()

    class Parts:
        loop = memory_loop(sink, schemas=s)

        async def prepare(self) -> None:
            pass

        def ends(self, highwaters: Positions) -> None:
            pass

        def connector(self, health: ConnectorHealth) -> None:
            pass

        def close(self) -> None:
            self.closed = True

    parts = Parts()
    host = InProcess(parts)
    failures: list[BaseException] = []
    host.on_failure = failures.append
    asyncio.set_event_loop(asyncio.new_event_loop())
    aio = asyncio.get_event_loop()
    host.start()
    batch = events(sink, catalogue(s))

    async def run() -> None:
        await host.own(frozenset({0}))
        await hand_over(host.submit, batch)
        await until(lambda: failures)
        with pytest.raises(PipelineFailed, match="disk on fire"):
            await hand_over(host.submit, events(sink, catalogue(s)))
        await host.close()

    try:
        aio.run_until_complete(run())
    finally:
        aio.close()
        asyncio.set_event_loop(None)
    assert "disk on fire" in str(failures[0])
    assert all(e.message.refs == 2 for e in batch)  # never acknowledged
    assert parts.closed
