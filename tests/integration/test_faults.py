"""Faults while changes flow: a consumer database goes away, Kafka Connect restarts, the
Kafka broker restarts. After each, the views must converge exactly to the reference join,
with the same worker process still running (it waits and retries; it does not give up)."""

from __future__ import annotations

import random
import time

import pytest
import sqlalchemy as sa

from app.stack.manager import Stack, read_pid, start, stop, wait_ready
from tests.integration.conftest import WorkerProcess, wait_converged, wait_live
from tests.integration.workload import Workload


def _restart(stack: Stack, name: str, down_for: float, wl: Workload, steps: int) -> None:
    """Stop one component, keep the workload going while it is down, start it again."""
    comp = next(c for c in stack.components() if c.name == name)
    assert stop(stack.paths, comp), f"{name} was not running"
    assert read_pid(stack.paths, name) is None
    deadline = time.monotonic() + down_for
    wl.run(steps)
    while time.monotonic() < deadline:
        time.sleep(0.2)
    proc = start(stack.paths, comp, stack.settings)
    wait_ready(stack.paths, comp, proc)


@pytest.mark.parametrize(
    ("component", "down_for", "timeout"),
    [("purchase-db", 5.0, 120.0), ("connect", 0.0, 120.0), ("kafka", 3.0, 240.0)],
    ids=["consumer-db-outage", "connect-restart", "kafka-broker-restart"],
)
def test_views_converge_across_a_restart_of(
    component: str, down_for: float, timeout: float, stack: Stack, product_db: sa.Engine,
    consumer_dbs: dict[str, sa.Engine], worker: WorkerProcess,
) -> None:
    wait_live(product_db, consumer_dbs, worker)  # the worker is up and caught up
    wl = Workload(product_db, seed=random.randrange(1 << 30))
    wl.run(30)
    _restart(stack, component, down_for=down_for, wl=wl, steps=60)
    wl.run(30)
    wait_converged(product_db, consumer_dbs, worker, timeout=timeout)
    assert worker.alive()
    if component == "purchase-db":
        assert "sink write failed" in worker.log.read_text(), "the outage was never noticed"
