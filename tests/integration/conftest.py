"""Fixtures for tests against the real stack: the ``test`` stack instance.

The tests never touch the user's stack: this module points every setting and every
subprocess at the ``test`` instance (its own state directory and ports, see
``app.stack.instances``; ``viewsync stack --instance test status`` shows it), and the
``stack`` fixture starts it when it is not running. Nothing here starts a fake: a component
that does not come up fails the test with its name and why.
The worker under test runs as a real ``viewsync worker`` process with a fresh consumer group
and fresh state tables, so it reads every source topic from the beginning.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.connectors import ConnectClient, ConnectError
from app.settings import Settings, load_settings
from app.stack.components import port_open
from app.stack.instances import instance_env
from app.stack.manager import Stack, StackError
from tests.integration.reference import Views, actual_views, diff_views, expected_views
from tests.integration.worker_process import WorkerProcess as BaseWorkerProcess

ROOT = Path(__file__).resolve().parents[2]
CONVERGE_TIMEOUT = float(os.environ.get("VIEWSYNC_TEST_CONVERGE_TIMEOUT", "120"))
#: A fresh worker reads the topics' whole history before it takes shards (hundreds of
#: thousands of records late in a test run).
LIVE_TIMEOUT = float(os.environ.get("VIEWSYNC_TEST_LIVE_TIMEOUT", "600"))
#: The session's budget. A healthy run takes about 10 minutes; one that passes this stops
#: before its next test, so the failures so far are reported (CI's limit is 90 minutes, and a
#: stack left broken by one test would otherwise make each later test wait out its timeouts).
SESSION_BUDGET_S = float(os.environ.get("VIEWSYNC_TEST_BUDGET_S", "2400"))
_SESSION_START = time.monotonic()

# From here on, settings and subprocesses see the test instance and nothing else.
_env = instance_env("test")
os.environ.clear()
os.environ.update(_env)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Stack:
    st = Stack(settings)
    _start_what_is_down(st, settings)
    return st


def _start_what_is_down(st: Stack, settings: Settings) -> list[str]:
    down = [f"{name} (port {port})" for name, port, _pid, ok in st.status() if not ok]
    if down:
        try:
            st.up()
        except StackError as exc:
            pytest.fail(
                f"the real test stack ({settings.state_dir}) is required and could not start "
                f"{', '.join(down)}: {exc}", pytrace=False)
    return down


def pytest_runtest_setup(item: pytest.Item) -> None:
    spent = time.monotonic() - _SESSION_START
    if spent > SESSION_BUDGET_S:
        pytest.exit(f"the test session has run {spent / 60:.0f} min, past its budget of "
                    f"{SESSION_BUDGET_S / 60:.0f} min (VIEWSYNC_TEST_BUDGET_S); not starting "
                    f"{item.nodeid}. Look at the first failure above.", returncode=1)


@pytest.fixture(autouse=True)
def _stack_up_and_connector_running(request: pytest.FixtureRequest) -> None:
    """Every test on the stack starts with every component up and the shared source connector
    running. A component that an earlier, failed fault test left down is started again (and
    said so); a connector that is not running fails the test at once, naming its state. Either
    would otherwise make every later test wait out its own timeouts for changes that never
    come."""
    if "stack" not in request.fixturenames:
        return
    st: Stack = request.getfixturevalue("stack")
    settings: Settings = request.getfixturevalue("settings")
    closed = [c for c in st.components() if not port_open(settings.host, c.port)]
    restarted = _start_what_is_down(st, settings) if closed else []
    if restarted:
        print(f"\n{', '.join(restarted)} was down (left so by an earlier test?): started again")
    try:
        ConnectClient(settings).wait_running(timeout=60)
    except ConnectError as exc:
        pytest.fail(f"the source connector is not running (an earlier test left it so?): {exc}",
                    pytrace=False)


@pytest.fixture(scope="session")
def product_db(stack: Stack, settings: Settings) -> Iterator[sa.Engine]:
    engine = sa.create_engine(settings.product_url(), pool_pre_ping=True)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def consumer_dbs(stack: Stack, settings: Settings) -> Iterator[dict[str, sa.Engine]]:
    engines = {c: sa.create_engine(settings.consumer_url(c), pool_pre_ping=True)
               for c in ("order", "purchase")}
    yield engines
    for e in engines.values():
        e.dispose()


class WorkerProcess(BaseWorkerProcess):
    """A worker with a fresh data directory under ``tmp``: alone in a fresh deployment, or
    worker ``name`` of the deployment ``worker_id``."""

    def __init__(self, tmp: Path, worker_id: str | None = None, name: str | None = None,
                 **env: str) -> None:
        self.worker_id = worker_id or f"it-{uuid.uuid4().hex[:8]}"
        self.name = name or "w"
        here = f"{self.worker_id}-{self.name}"
        super().__init__(
            dict(os.environ, VIEWSYNC_WORKER_ID=self.worker_id, VIEWSYNC_WORKER_NAME=self.name,
                 VIEWSYNC_WORKER_DATA_DIR=str(tmp / here), **env),
            tmp / f"{here}.log")


@pytest.fixture(scope="session")
def worker(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    w = WorkerProcess(tmp_path_factory.mktemp("worker"))
    w.start()
    yield w
    w.stop()


@pytest.fixture
def exclusive(worker: WorkerProcess) -> Iterator[None]:
    """The session's worker stopped for a test that runs workers of its own (a deployment
    of its own would fence them off the views, as it should), and started again after."""
    worker.stop()
    try:
        yield
    finally:
        worker.start()


def wait_converged(product_db: sa.Engine, consumer_dbs: dict[str, sa.Engine],
                   worker: WorkerProcess, timeout: float = CONVERGE_TIMEOUT) -> Views:
    """Poll until every view equals the reference join of the source; fail with the diff."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        expected = expected_views(product_db)
        actual = actual_views(consumer_dbs)
        problems = diff_views(expected, actual)
        if not problems:
            return expected
        if not worker.alive():
            pytest.fail(f"worker exited ({worker.proc and worker.proc.returncode}):\n"
                        + worker.tail())
        if time.monotonic() > deadline:
            shown = "\n".join(problems[:40])
            more = f"\n… and {len(problems) - 40} more" if len(problems) > 40 else ""
            pytest.fail(f"views did not converge within {timeout:.0f}s; "
                        f"{len(problems)} differences:\n{shown}{more}\n--- worker log ---\n"
                        + worker.tail(), pytrace=False)
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)


@pytest.fixture(scope="session")
def source_events(stack: Stack, settings: Settings, product_db: sa.Engine) -> None:
    """One fresh row in each source table, and Debezium's schemas registered for all four.

    Debezium registers a table's schemas with its first record, so on a brand-new stack the
    registry is empty until something changes.
    """
    import random

    from confluent_kafka.schema_registry import SchemaRegistryClient

    base = (1 << 34) + random.randrange(1 << 40)
    with product_db.begin() as conn:
        for sql in (
            f"INSERT INTO categories VALUES ({base}, NULL, 'probe', 'Probe')",
            f"INSERT INTO warranty_types VALUES ({base}, 'Probe', 1)",
            f"INSERT INTO products VALUES ({base}, 'PROBE-{base}', 'Probe', {base}, {base}, "
            "'pcs', 1.00, 'active')",
            f"INSERT INTO batches VALUES ({base}, {base}, 'PROBE', '2024-02-29', NULL)",
        ):
            conn.execute(sa.text(sql))
    client = SchemaRegistryClient({"url": settings.registry_url()})
    wanted = {f"{settings.topic(t)}-{p}" for t in ("categories", "warranty_types", "products",
                                                   "batches") for p in ("key", "value")}
    deadline = time.monotonic() + 120
    while not wanted <= set(client.get_subjects()):
        if time.monotonic() > deadline:
            pytest.fail(f"Debezium did not register {wanted - set(client.get_subjects())} "
                        "within 120s; see `viewsync stack logs connect`", pytrace=False)
        time.sleep(0.5)


def wait_live(product_db: sa.Engine, consumer_dbs: dict[str, sa.Engine],
              worker: WorkerProcess, timeout: float = LIVE_TIMEOUT) -> None:
    """Wait until the worker is processing live changes: a fresh probe product reaches both
    consumer databases. (Converged views alone may predate this worker.)"""
    import random

    pid = (1 << 35) + random.randrange(1 << 40)
    with product_db.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO categories VALUES ({pid}, NULL, 'live', 'Live')"))
        conn.execute(sa.text(f"INSERT INTO products VALUES ({pid}, 'LIVE-{pid}', 'Live', {pid}, "
                             "NULL, 'pcs', 1.00, 'active')"))
    deadline = time.monotonic() + timeout
    while True:
        seen = 0
        for engine in consumer_dbs.values():
            with engine.connect() as conn:
                seen += conn.execute(sa.text(
                    f"SELECT COUNT(*) FROM product_view WHERE product_id = {pid}")).scalar_one()
        if seen == len(consumer_dbs):
            return
        if not worker.alive():
            pytest.fail("worker exited:\n" + worker.tail())
        if time.monotonic() > deadline:
            pytest.fail(f"the worker did not pick up a live change within {timeout:.0f}s:\n"
                        + worker.tail(), pytrace=False)
        time.sleep(0.05)
