"""Shard leases without Kafka: the order of claims and leaving the group."""

from __future__ import annotations

import asyncio

from app.leases import ShardLeases
from app.settings import load_settings


def test_a_cancelled_membership_leaves_only_once_its_claims_are_made() -> None:
    """A worker stopped while its pipeline claims an assignment: the claims are not cut
    short, and ``settle`` (run before the consumer leaves the group) waits for them."""
    events: list[str] = []
    claiming = asyncio.Event()

    async def on_change(shards: frozenset[int]) -> None:
        events.append(f"claims {sorted(shards)}")
        claiming.set()
        await asyncio.sleep(0.2)
        events.append("claimed")

    async def main() -> None:
        leases = ShardLeases(load_settings(), on_change)
        callback = asyncio.ensure_future(leases._set(frozenset({0, 2})))
        await claiming.wait()
        callback.cancel()  # the worker stops while the rebalance callback waits
        await asyncio.gather(callback, return_exceptions=True)
        assert events == ["claims [0, 2]"]
        await leases.settle()
        events.append("left the group")

    asyncio.run(main())
    assert events == ["claims [0, 2]", "claimed", "left the group"]


def test_settle_gives_up_waiting_after_its_timeout() -> None:
    started = asyncio.Event()

    async def never(shards: frozenset[int]) -> None:
        started.set()
        await asyncio.Event().wait()

    async def main() -> None:
        leases = ShardLeases(load_settings(), never)
        callback = asyncio.ensure_future(leases._set(frozenset({1})))
        await started.wait()
        callback.cancel()
        await asyncio.gather(callback, return_exceptions=True)
        await asyncio.wait_for(leases.settle(timeout=0.05), 5)

    asyncio.run(main())


def test_settle_returns_at_once_with_nothing_in_progress() -> None:
    async def quick(shards: frozenset[int]) -> None:
        return None

    async def main() -> None:
        leases = ShardLeases(load_settings(), quick)
        await leases.settle()
        await leases._set(frozenset({3}))
        await asyncio.wait_for(leases.settle(timeout=60), 1)
        assert leases.owned == frozenset({3})

    asyncio.run(main())
