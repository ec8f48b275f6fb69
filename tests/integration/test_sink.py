"""The sink against the real consumer databases (a database of its own per test, so that
no claim here fences the session's worker)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from app.settings import Settings
from app.sink import ConsumerSink
from app.stack.manager import Stack

SHARDS = 12


@pytest.fixture(params=["order", "purchase"])
def consumer_url(request: pytest.FixtureRequest, stack: Stack,
                 settings: Settings) -> Iterator[tuple[str, str]]:
    consumer = str(request.param)
    name = f"{consumer}_sink{random.randrange(10**6)}"
    if consumer == "order":
        stack.defn.psql(f'CREATE DATABASE "{name}" OWNER "{settings.db_user}"')
    else:
        stack.defn.mariadb_sql("purchase-db", f"CREATE DATABASE {name}")
    try:
        yield consumer, settings.consumer_url(consumer).rsplit("/", 1)[0] + f"/{name}"
    finally:
        if consumer == "order":
            stack.defn.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            stack.defn.mariadb_sql("purchase-db", f"DROP DATABASE IF EXISTS {name}")


def test_a_writer_frozen_inside_a_transaction_holds_its_shard_only_for_the_timeout(
    settings: Settings, consumer_url: tuple[str, str],
) -> None:
    """A worker frozen mid-write (its session idle inside a transaction that locked its
    shard rows) holds the next owner's claim up for ``sink_idle_transaction_timeout_s``,
    not until it wakes up: the database ends its session. Thawed, it finds the session
    gone (its retry is then fenced by the epochs)."""
    consumer, url = consumer_url
    views = settings.views()
    frozen = ConsumerSink(consumer, url, views, idle_transaction_timeout_s=2)
    other = ConsumerSink(consumer, url, views)
    try:
        frozen.create_tables()
        assert frozen.claim(0, SHARDS, "frozen") == (1, None)
        conn = frozen.engine.connect()
        conn.begin()
        t = frozen.shards
        conn.execute(sa.select(t).where(t.c.shard == 0).with_for_update())  # then frozen
        claimed: list[tuple[int, float]] = []

        def claim() -> None:
            t0 = time.monotonic()
            epoch, _ = other.claim(0, SHARDS, "next")
            claimed.append((epoch, time.monotonic() - t0))

        th = threading.Thread(target=claim, daemon=True)
        th.start()
        th.join(30)
        assert claimed, "the next owner's claim still waits for the frozen writer after 30 s"
        epoch, waited = claimed[0]
        assert epoch == 2
        assert 1.0 <= waited < 20, waited  # it did wait for the lock, then the timeout ended it
        with pytest.raises(sa.exc.DBAPIError):  # thawed: the session is gone
            conn.execute(sa.select(t.c.epoch).where(t.c.shard == 0)).all()
        conn.close()
    finally:
        frozen.engine.dispose()
        other.engine.dispose()
