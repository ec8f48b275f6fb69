"""`viewsync shards status | reshard N`: the shards of a deployment, and changing how many.

The shard count is fixed while workers run (every worker must agree which rows are whose).
Changing it, with every worker of the deployment stopped:

1. each consumer database's shard table is rewritten for ``N`` shards: every new shard
   starts from the positions that *every* old shard had reached (the lowest, per
   partition) — each view row belongs to some old shard, so it reflects at least those —
   and an epoch above every old one (a worker still running with the old count is fenced);
   with ``reset`` the positions are dropped instead, and each new shard is rebuilt from the
   state by its first owner (after the source topics were re-created, say);
2. the lease topic is re-created with ``N`` partitions.

Run twice, it changes nothing the second time but the epochs. Then start the workers with
``VIEWSYNC_SHARDS=N``: each claims its shards and redoes the few records past those
positions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from app.clients import kafka_config
from app.positions import Positions
from app.settings import Settings
from app.shards import decode_positions, encode_positions, merged_minimum
from app.sink import shards_table, sink_urls

log = logging.getLogger("viewsync.reshard")


class ReshardError(Exception):
    """Resharding refused (workers still running, say); the message says why."""


@dataclass(frozen=True)
class ShardRow:
    consumer: str
    shard: int
    shards: int
    epoch: int
    owner: str
    positions: dict[tuple[str, int], int] | None


def shard_rows(settings: Settings) -> list[ShardRow]:
    """Every consumer database's shard table (empty where none was written yet)."""
    out: list[ShardRow] = []
    for consumer, url in sink_urls(settings).items():
        engine = sa.create_engine(url)
        try:
            t = shards_table(sa.MetaData())
            if not sa.inspect(engine).has_table(t.name):
                continue
            with engine.connect() as conn:
                for r in conn.execute(sa.select(t).order_by(t.c.shard)):
                    out.append(ShardRow(consumer, int(r.shard), int(r.shards), int(r.epoch),
                                        str(r.owner), decode_positions(r.positions)))
        finally:
            engine.dispose()
    return out


def written(rows: Sequence[ShardRow], consumer: str) -> Positions | None:
    """The source positions every shard of ``consumer``'s database has recorded, from
    :func:`shard_rows` (``None``: no shard rows there; empty: some shard has none yet)."""
    mine = [r for r in rows if r.consumer == consumer]
    if not mine:
        return None
    if len(mine) < mine[0].shards:
        return {}
    return merged_minimum(r.positions for r in mine) or {}


def lease_members(settings: Settings) -> list[str]:
    """The members of the deployment's lease group now (its running workers)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka_config(settings))
    group = settings.lease_group()
    desc = admin.describe_consumer_groups([group])[group].result(30)
    return sorted(f"{m.client_id} ({m.host})" for m in desc.members)


def reshard(settings: Settings, shards: int, reset: bool = False,
            say: Callable[[str], None] = print) -> None:
    running = lease_members(settings)
    if running:
        raise ReshardError(
            f"{len(running)} worker(s) of deployment {settings.worker_id!r} are running "
            f"({', '.join(running)}); stop every one of them first")
    for consumer, url in sink_urls(settings).items():
        engine = sa.create_engine(url)
        try:
            _rewrite(engine, consumer, shards, reset, say)
        finally:
            engine.dispose()
    _recreate_lease_topic(settings, shards, say)
    say(f"done: start the workers with VIEWSYNC_SHARDS={shards}")


def _rewrite(engine: sa.Engine, consumer: str, shards: int, reset: bool,
             say: Callable[[str], None]) -> None:
    t = shards_table(sa.MetaData())
    t.create(engine, checkfirst=True)
    with engine.begin() as conn:
        rows = conn.execute(sa.select(t).with_for_update()).all()
        if not rows and not reset:
            say(f"{consumer}: no shard was written yet; nothing to carry over")
            return
        old = {int(r.shards) for r in rows}
        complete = len(rows) == max(old, default=0) and len(old) == 1
        start = None if reset or not complete else merged_minimum(
            decode_positions(r.positions) for r in rows)
        epoch = max((int(r.epoch) for r in rows), default=0) + 1
        conn.execute(sa.delete(t))
        conn.execute(sa.insert(t), [
            {"shard": s, "shards": shards, "epoch": epoch, "owner": "reshard",
             "positions": None if start is None else encode_positions(start)}
            for s in range(shards)])
    how = ("every shard will be rebuilt by its first owner" if start is None
           else "every shard starts from the positions all old shards had reached")
    say(f"{consumer}: {len(rows)} shard(s) of {sorted(old) or '-'} -> {shards}; {how}")


def _recreate_lease_topic(settings: Settings, shards: int, say: Callable[[str], None]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient(kafka_config(settings))
    topic = settings.lease_topic()
    meta = admin.list_topics(timeout=30).topics.get(topic)
    if meta is not None and len(meta.partitions) == shards:
        return
    if meta is not None:
        admin.delete_topics([topic])[topic].result(30)
    deadline = time.monotonic() + 60
    while True:  # a topic being deleted cannot be created again for a moment
        try:
            admin.create_topics([NewTopic(topic, num_partitions=shards)])[topic].result(30)
            break
        except Exception as exc:
            if time.monotonic() > deadline:
                raise ReshardError(f"could not re-create {topic}: {exc}") from exc
            time.sleep(0.5)
    say(f"lease topic {topic}: {shards} partitions")
