"""The worker ↔ pipeline-process protocol: typed messages, one class per kind.

The worker (``app.worker``, through its host's client, ``app.host``) sends
:data:`ToPipeline` messages; the pipeline side (``app.host.serve``) answers with
:data:`ToWorker` messages. The same messages go through a pipe to a child process
(pickled) or through a queue in the worker's own process, so both hosts speak one protocol:

* :class:`Batch` in → :class:`Done` back (with the batches' ``seq``) once those batches'
  rows are in every consumer database and their dead letters are in Kafka;
* :class:`Own` in → :class:`Owned` back once the loop writes exactly those shards (a shard
  lost has no write in flight any more);
* :class:`Ends` in: the source partitions' ends as the worker's consumer sees them (lag);
* :class:`ConnectorHealth` in: the source connector as the worker's supervisor
  (``app.supervisor``) last saw it, and the restarts it made (metrics);
* :class:`Close` in → :class:`Closed` back once the loop has finished its writes;
* :class:`Ready` after start-up (view tables created, state store restored), and
  :class:`Failed` when the loop fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.loop import Totals
from app.positions import Positions
from app.records import RawRecord

#: A record as it crosses the pipe: ``RawRecord``'s fields (a tuple pickles fastest).
WireRecord = tuple[str, int, int, bytes | None, bytes | None]


@dataclass(frozen=True, slots=True)
class Batch:
    seq: int
    records: list[WireRecord]

    @classmethod
    def of(cls, seq: int, records: list[RawRecord]) -> Batch:
        return cls(seq, [(r.topic, r.partition, r.offset, r.key, r.value) for r in records])

    def raw(self) -> list[RawRecord]:
        return [RawRecord(*r) for r in self.records]


@dataclass(frozen=True, slots=True)
class Own:
    seq: int
    shards: frozenset[int]


@dataclass(frozen=True, slots=True)
class Ends:
    positions: Positions


@dataclass(frozen=True, slots=True)
class ConnectorHealth:
    #: The connector and every task RUNNING (None: Connect did not answer).
    running: bool | None
    #: Restarts the worker's supervisor has made since the worker started, and the last's
    #: time (epoch seconds).
    restarts: int
    last_restart: float | None


@dataclass(frozen=True, slots=True)
class Close:
    pass


@dataclass(frozen=True, slots=True)
class Ready:
    totals: Totals


@dataclass(frozen=True, slots=True)
class Done:
    seqs: list[int]
    totals: Totals


@dataclass(frozen=True, slots=True)
class Owned:
    seq: int


@dataclass(frozen=True, slots=True)
class Closed:
    pass


@dataclass(frozen=True, slots=True)
class Failed:
    error: str


ToPipeline = Batch | Own | Ends | ConnectorHealth | Close
ToWorker = Ready | Done | Owned | Closed | Failed
