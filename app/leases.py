"""Shard leases: which worker of a deployment writes which shard (``app.shards``).

The workers of one deployment (one ``worker_id``) share one Kafka consumer group,
``<worker_id>.shards``, subscribed to a topic of the same name with one partition per shard
(created on first start; nothing is ever produced to it). Kafka's group protocol is the
lease manager: the partitions assigned to a worker are the shards it writes. A worker that
stops cleanly leaves the group at once; one that is killed or cut off loses its shards after
``lease_session_timeout_ms``, and the database epochs (``app.shards``) fence it if it comes
back without knowing.

The group rebalances eagerly: every member first gives up all its shards (the callback
returns only when none of their rows is in flight and their positions are recorded), then
receives its new ones — so a shard is never written by two workers at once.

A worker leaves the group only once the claims it was asked for are made: a worker stopped
while its pipeline claims an assignment would otherwise leave first, and a claim made after
the group gave those shards to another worker would fence that worker's newer claim.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from app.clients import aiokafka_config
from app.settings import Settings
from app.shards import ShardCountMismatch
from app.topic_range import ensure_topic

log = logging.getLogger("viewsync.leases")

#: On the way out, how long a worker waits for the claims in progress before it leaves the
#: group anyway (a consumer database that is down holds them up).
LEAVE_WAIT_S = 30.0


def ensure_lease_topic(settings: Settings) -> None:
    """Create the lease topic with ``settings.shards`` partitions, or check that it has
    that many (raise :class:`~app.shards.ShardCountMismatch`)."""
    topic = settings.lease_topic()
    created, have = ensure_topic(settings, topic, settings.shards)
    if created:
        log.info("lease topic %s created with %d shards", topic, settings.shards)
    if have != settings.shards:
        raise ShardCountMismatch(
            f"the deployment {settings.worker_id!r} has {have} shards (topic {topic}), this "
            f"worker is configured with {settings.shards} (VIEWSYNC_SHARDS); change it for "
            f"every worker with `viewsync shards reshard {settings.shards}`")


class ShardLeases:
    """Membership in the lease group; ``on_change`` is awaited with the shards this worker
    owns after every change (an empty set first, on every rebalance)."""

    def __init__(self, settings: Settings,
                 on_change: Callable[[frozenset[int]], Awaitable[None]]) -> None:
        self.settings = settings
        self.on_change = on_change
        self.owned: frozenset[int] = frozenset()
        self._stopping = False
        #: The last ``on_change`` call; it runs on when the membership is cancelled.
        self._change: asyncio.Future[None] | None = None

    async def run(self) -> None:
        """Join the group and stay in it until cancelled; leave it on the way out."""
        from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

        s = self.settings
        await asyncio.to_thread(ensure_lease_topic, s)
        leases = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: object) -> None:
                await leases._set(frozenset())

            async def on_partitions_assigned(self, assigned: object) -> None:
                got = frozenset(tp.partition for tp in assigned  # type: ignore[attr-defined]
                                if tp.topic == s.lease_topic())
                await leases._set(got)

        consumer = AIOKafkaConsumer(
            **aiokafka_config(s), group_id=s.lease_group(),
            client_id=s.member_name(), enable_auto_commit=False,
            session_timeout_ms=s.lease_session_timeout_ms,
            heartbeat_interval_ms=max(s.lease_session_timeout_ms // 6, 300),
            rebalance_timeout_ms=120_000, auto_offset_reset="latest")
        consumer.subscribe(topics=[s.lease_topic()], listener=Listener())
        try:
            # Inside the ``try``: a worker stopped while it joins (its first assignment is
            # being taken over) still leaves the group at once, instead of staying listed
            # as a member until its session times out.
            await consumer.start()
            log.info("joined the shard-lease group %s as %s", s.lease_group(), s.member_name())
            while True:
                await consumer.getmany(timeout_ms=1000)
        finally:
            self._stopping = True
            try:
                await self.settle()
            finally:  # even if cancelled again meanwhile: leave the group
                await consumer.stop()

    async def settle(self, timeout: float = LEAVE_WAIT_S) -> None:
        """Wait for the ``on_change`` call in progress, if any (its caller may have been
        cancelled: the shards it claims are claimed all the same)."""
        change = self._change
        if change is None or change.done():
            return
        log.info("leaving the shard-lease group once the claims in progress are made")
        try:
            await asyncio.wait_for(asyncio.shield(change), timeout)
        except TimeoutError:
            log.warning("claims still in progress after %.0fs; leaving the shard-lease group "
                        "anyway", timeout)
        except Exception:  # raised, and reported, where the call was awaited
            pass

    async def _set(self, shards: frozenset[int]) -> None:
        if shards == self.owned:
            return
        if shards:
            log.info("shard leases: %s of %d", _show(shards), self.settings.shards)
        self.owned = shards
        # Shielded: cancelling the membership does not cancel the claims half made.
        self._change = asyncio.ensure_future(self.on_change(shards))
        await asyncio.shield(self._change)


def _show(shards: frozenset[int]) -> str:
    return ",".join(str(s) for s in sorted(shards))
