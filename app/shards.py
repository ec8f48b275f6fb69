"""Shards: which worker writes which view row (pure).

Every worker holds the whole join state (it reads every partition of every source topic),
so any worker *could* compute any row; exactly one may write it. View rows are divided into
``shards`` shards by their key (``app.graph.shard_of``: an integer key modulo the shard
count, a string key by a stable hash) — and each shard has one owner at a time: the
worker the shard-lease consumer group assigned its partition to (``app.leases``).

A row is owned through its own key, never through a row it references: a child row that
moves between parents keeps its writer, whatever partitions the parents live on.

Each consumer database keeps, per shard, the owner's *epoch* and the *source positions* up
to which the shard's rows are written (``viewsync_shards``, written in the same transaction
as the rows, by :mod:`app.sink`):

* a new owner **claims** a shard by incrementing its epoch in every consumer database; a
  write carries the epochs its writer claimed and is refused (:class:`Fenced`) once
  another worker has claimed since — a worker that lost its lease without knowing it
  (hung, cut off from Kafka) cannot write a row of the shard again;
* the positions tell the new owner what it must redo: every record from the shard's
  positions up to its own state's positions is re-projected for the shard's rows
  (:meth:`app.pipeline.Pipeline.redo`), and a shard with no positions at all (never
  written: a new deployment or shard count) is rebuilt from the whole state, deleting the
  rows the state does not have.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from app.graph import Key, shard_of
from app.positions import Positions

__all__ = ["Claim", "Fenced", "Progress", "ShardCountMismatch", "decode_positions",
           "encode_positions", "in_shards", "merged_minimum", "shard_of"]


def in_shards(keys: Iterable[Key], shards: int, owned: frozenset[int]) -> set[Key]:
    """The keys of ``keys`` in the shards ``owned``."""
    if len(owned) == shards:
        return set(keys)
    return {k for k in keys if shard_of(k, shards) in owned}


class Fenced(Exception):
    """Another worker claimed a shard this worker was writing: it lost its lease."""


class ShardCountMismatch(Exception):
    """The consumer database was sharded with another shard count."""


@dataclass(frozen=True)
class Claim:
    """One worker's claim of one shard: its epoch and the shard's positions, per consumer
    database (``None``: the shard was never written there)."""

    shard: int
    epochs: Mapping[str, int]
    positions: Mapping[str, Positions | None]

    def start(self) -> Positions | None:
        """Where a redo must start so that every database is covered: the lowest position
        of every partition over the databases (``None``: some database needs a rebuild)."""
        return merged_minimum(self.positions.values())


@dataclass
class Progress:
    """What a write carries: the epoch of every shard its writer owns, per database, and
    the source positions its rows reflect (recorded for those shards; ``None``: not yet,
    as in the chunks of a rebuild). ``flush``: record them even in a database the write
    has no rows for."""

    epochs: dict[int, Mapping[str, int]] = field(default_factory=dict)
    positions: Positions | None = None
    flush: bool = False

    def for_consumer(self, consumer: str) -> dict[int, int]:
        return {s: e[consumer] for s, e in self.epochs.items()}


def encode_positions(p: Positions) -> str:
    """A compact, stable text form (``topic|partition=offset`` joined by ``,``)."""
    return ",".join(f"{t}|{part}={off}" for (t, part), off in sorted(p.items()))


def decode_positions(text: str | None) -> Positions | None:
    if text is None:
        return None
    out: Positions = {}
    for item in filter(None, text.split(",")):
        tp, off = item.rsplit("=", 1)
        topic, part = tp.rsplit("|", 1)
        out[(topic, int(part))] = int(off)
    return out


def merged_minimum(claims: Iterable[Positions | None]) -> Positions | None:
    """Positions that every one of ``claims`` has reached (``None`` when one is ``None``):
    what a shard of a new shard count may start from when the old shards are merged."""
    out: Positions | None = {}
    seen: list[Positions] = []
    for c in claims:
        if c is None:
            return None
        seen.append(c)
    for c in seen:
        assert out is not None
        for tp, off in c.items():
            out[tp] = min(off, out.get(tp, off))
    assert out is not None
    for c in seen:
        for tp in list(out):
            if tp not in c:
                out[tp] = 0
    return out
