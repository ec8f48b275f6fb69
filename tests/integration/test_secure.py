"""The pipeline end to end over secure connections, on a stack of its own (instance
``secure``): Kafka only over SASL_SSL with a SCRAM user, PostgreSQL and MariaDB only over
TLS, every certificate signed by a CA the stack made and verified by every client (host name
included). Plain connections are refused, a random workload converges exactly, and no
password reaches a log."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import sqlalchemy as sa
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from app.clients import kafka_config
from app.settings import Settings, load_settings
from app.stack.instances import instance_env, instance_overrides
from app.stack.manager import Stack, StackError
from tests.integration.conftest import LIVE_TIMEOUT, ROOT, wait_converged
from tests.integration.worker_process import WorkerProcess
from tests.integration.workload import Workload


@pytest.fixture(scope="module")
def secure() -> Iterator[Settings]:
    settings = load_settings(**instance_overrides("secure"))
    stack = Stack(settings)
    try:
        stack.up()
    except StackError as exc:
        pytest.fail(f"the secure stack ({settings.state_dir}) could not start: {exc}",
                    pytrace=False)
    yield settings
    stack.down()  # its JVMs would otherwise share the two cores with the other tests


@pytest.fixture(scope="module")
def engines(secure: Settings) -> Iterator[tuple[sa.Engine, dict[str, sa.Engine]]]:
    product = sa.create_engine(secure.product_url(), pool_pre_ping=True)
    consumers = {c: sa.create_engine(secure.consumer_url(c), pool_pre_ping=True)
                 for c in ("order", "purchase")}
    yield product, consumers
    for e in (product, *consumers.values()):
        e.dispose()


def test_plain_connections_are_refused(secure: Settings) -> None:
    # Kafka: a PLAINTEXT client, and the right protocol with a wrong password.
    for conf in (
        {"bootstrap.servers": secure.bootstrap()},
        kafka_config(secure, {"sasl.password": "not-the-password"}),
    ):
        with pytest.raises(KafkaException):
            AdminClient(conf).list_topics(timeout=5)
    assert AdminClient(kafka_config(secure)).list_topics(timeout=30).brokers
    # PostgreSQL: no TLS, no entry in pg_hba.conf.
    pw = secure.db_password.get_secret_value()
    plain_pg = sa.create_engine(
        f"postgresql+psycopg://{secure.db_user}:{pw}@{secure.host}:{secure.order_db_port}/order"
        "?sslmode=disable")
    with pytest.raises(sa.exc.OperationalError, match="no encryption"):
        plain_pg.connect()
    plain_pg.dispose()
    # MariaDB: insecure transport prohibited (MariaDB answers "access denied"); the same
    # login over TLS gets in.
    login = {"host": secure.host, "port": secure.purchase_db_port, "user": secure.db_user,
             "password": pw, "database": "purchase"}
    with pytest.raises(pymysql.err.OperationalError, match=r"1045|3159|insecure"):
        pymysql.connect(**login, ssl_disabled=True)
    pymysql.connect(**login, ssl_ca=str(secure.db_ca())).close()
    # A client that does not trust the stack's CA does not get in either.
    with pytest.raises(KafkaException):
        AdminClient(kafka_config(secure, {"ssl.ca.location": "/etc/ssl/certs/ca-certificates.crt"})
                    ).list_topics(timeout=5)


def test_pipeline_end_to_end_over_sasl_ssl_and_tls(
    secure: Settings, engines: tuple[sa.Engine, dict[str, sa.Engine]],
    tmp_path: Path,
) -> None:
    product_db, consumer_dbs = engines
    # Every connection of the test's own engines is TLS (PostgreSQL says so itself).
    with consumer_dbs["order"].connect() as conn:
        assert conn.execute(sa.text(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")).scalar_one()

    env = dict(instance_env("secure", dict(os.environ)),
               VIEWSYNC_WORKER_ID=f"it-{uuid.uuid4().hex[:8]}", VIEWSYNC_WORKER_NAME="w",
               VIEWSYNC_WORKER_DATA_DIR=str(tmp_path / "worker"))
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    try:
        seed = random.randrange(1 << 30)
        print(f"\nworkload seed: {seed}")
        wl = Workload(product_db, seed=seed)
        wl.run(150)
        worker.kill()  # and a crash in the middle, as everywhere else
        wl.run(50)
        worker.start()
        wl.run(100)
        views = wait_converged(product_db, consumer_dbs, worker, LIVE_TIMEOUT)
        assert sum(len(v) for v in views.values()) > 0

        # The CLI over the same secure settings: verify reads both sides and agrees.
        out = subprocess.run([sys.executable, "-m", "app.cli", "verify"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "in sync" in out.stdout + out.stderr
    finally:
        worker.stop()

    # Every session of the workers' database user on PostgreSQL was TLS.
    with consumer_dbs["order"].connect() as conn:
        plain = conn.execute(sa.text(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
            "WHERE a.usename = :u AND NOT s.ssl"), {"u": secure.db_user}).scalar_one()
    assert plain == 0

    # No password in the worker's log or the stack's logs.
    secrets = [secure.db_password.get_secret_value()]
    assert secure.kafka_sasl_password is not None
    secrets.append(secure.kafka_sasl_password.get_secret_value())
    logs = {"worker": (tmp_path / "worker.log").read_text(errors="replace")}
    for name in ("kafka", "connect", "registry"):
        logs[name] = (secure.state_dir / "logs" / f"{name}.log").read_text(errors="replace")
    for name, text in logs.items():
        for secret in secrets:
            assert secret not in text, f"a password is in the {name} log"
