"""The pipeline end to end over secure connections, on a stack of its own (instance
``secure``): Kafka only over SASL_SSL with a SCRAM user, PostgreSQL and MariaDB only over
TLS, every certificate signed by a CA the stack made and verified by every client (host name
included), the registry over HTTPS only. Plain connections are refused, a random workload
converges exactly, and no password reaches a log. Registry basic auth is proved through a
gate in front of the real registry: for the worker's decoder, the CLI, and the connector's
Apicurio converters."""

from __future__ import annotations

import base64
import os
import random
import re
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pymysql
import pytest
import sqlalchemy as sa
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from app.clients import kafka_config, registry_config
from app.connectors import ConnectClient, ConnectError
from app.decode import RegistrySchemas, SchemaUnavailable
from app.settings import Settings, load_settings
from app.stack.instances import instance_env, instance_overrides
from app.stack.manager import Stack, StackError
from app.topic_range import topic_ends
from tests.integration.conftest import LIVE_TIMEOUT, ROOT, wait_converged
from tests.integration.worker_process import WorkerProcess
from tests.integration.workload import Workload

REGISTRY_USER, REGISTRY_PASSWORD = "viewsync-reader", "registry-s3cret"


@pytest.fixture(scope="module")
def secure() -> Iterator[Settings]:
    # Registry credentials too: Connect gets the password in its environment, and the
    # connector's converters send it (the registry itself does not check it; the gate of
    # ``registry_behind_basic_auth`` does).
    settings = load_settings(**instance_overrides("secure"), registry_username=REGISTRY_USER,
                             registry_password=REGISTRY_PASSWORD)
    stack = Stack(settings)
    try:
        stack.up()
    except StackError as exc:
        stack.down()  # what did start, so that nothing is left holding its ports
        pytest.fail(f"the secure stack ({settings.state_dir}) could not start: {exc}",
                    pytrace=False)
    yield settings
    stack.down()  # its JVMs would otherwise share the two cores with the other tests


def test_tls_required_is_never_downgraded_to_plain(stack: Stack) -> None:
    """``db_ssl_mode=require`` against servers that offer no TLS (the plain test stack's):
    each driver refuses to connect rather than go on in plain text (PyMySQL did that before
    1.2, hence its floor in pyproject)."""
    required = load_settings(db_ssl_mode="require")
    for url in (required.product_url(), required.consumer_url("order"),
                required.consumer_url("purchase")):
        engine = sa.create_engine(url)
        try:
            with pytest.raises(sa.exc.OperationalError, match=r"(?i)ssl"), engine.connect():
                pass
        finally:
            engine.dispose()


def registry_tls(settings: Settings) -> ssl.SSLContext:
    """What a client that trusts the stack's CA verifies the registry's HTTPS with."""
    return ssl.create_default_context(cafile=str(settings.registry_ca()))


@pytest.fixture(scope="module")
def engines(secure: Settings) -> Iterator[tuple[sa.Engine, dict[str, sa.Engine]]]:
    product = sa.create_engine(secure.product_url(), pool_pre_ping=True)
    consumers = {c: sa.create_engine(secure.consumer_url(c), pool_pre_ping=True)
                 for c in ("order", "purchase")}
    yield product, consumers
    for e in (product, *consumers.values()):
        e.dispose()


def test_plain_connections_are_refused(secure: Settings, tmp_path: Path) -> None:
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
    # A client that trusts another CA (a valid one) does not get in either.
    other = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=another CA", "-keyout", str(tmp_path / "other-ca.key"),
                    "-out", str(other)], check=True, capture_output=True)
    untrusting = AdminClient(kafka_config(secure, {"ssl.ca.location": str(other)}))
    with pytest.raises(KafkaException):
        untrusting.list_topics(timeout=5)
    # The registry: HTTPS only (no plain HTTP port), and only for a client that trusts the
    # stack's CA.
    registry = secure.registry_url()
    assert registry.startswith(f"https://{secure.host}:{secure.registry_port}/")
    with pytest.raises(httpx.HTTPError):
        httpx.get(registry.replace("https:", "http:") + "/subjects", timeout=10)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{registry}/subjects", timeout=10,
                  verify=ssl.create_default_context(cafile=str(other)))
    assert httpx.get(f"{registry}/subjects", timeout=10,
                     verify=registry_tls(secure)).status_code == 200


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


class Gate(ThreadingHTTPServer):
    """What the gate let through and what it refused."""

    allowed = 0
    refused = 0


@pytest.fixture(scope="module")
def registry_behind_basic_auth(secure: Settings) -> Iterator[Gate]:
    """The real registry behind a gate that lets only HTTP basic auth through: Apicurio 2.6
    enforces basic auth only together with a Keycloak server, which this machine cannot
    run. The gate checks the header and forwards the request unchanged."""
    upstream = secure.registry_url().split("/apis/", 1)[0]
    verify = registry_tls(secure)
    expected = "Basic " + base64.b64encode(
        f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()

    class Forward(BaseHTTPRequestHandler):
        server: Gate

        def _forward(self) -> None:
            if self.headers.get("Authorization") != expected:
                self.server.refused += 1
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="registry"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.server.allowed += 1
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            # The request's own headers (Apicurio's client names artifacts in X-Registry-*
            # headers), less the hop's.
            r = httpx.request(self.command, upstream + self.path, content=body, timeout=30,
                              verify=verify,
                              headers={k: v for k, v in self.headers.items()
                                       if k.lower() not in HOP_HEADERS})
            self.send_response(r.status_code)
            self.send_header("Content-Type", r.headers.get("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(r.content)))
            self.end_headers()
            self.wfile.write(r.content)

        do_GET = do_POST = do_PUT = _forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = Gate((secure.host, 0), Forward)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


HOP_HEADERS = frozenset({"host", "authorization", "content-length", "connection", "upgrade",
                         "http2-settings", "transfer-encoding", "keep-alive"})


def gate_url(gate: Gate) -> str:
    """The gate as a Confluent-API registry URL (``registry_native_url`` derives Apicurio's
    own API from it, as for the real registry)."""
    host, port = gate.server_address[:2]
    return f"http://{host!s}:{port}/apis/ccompat/v7"


def test_registry_basic_auth(secure: Settings, registry_behind_basic_auth: Gate,
                             engines: tuple[sa.Engine, dict[str, sa.Engine]]) -> None:
    gate = gate_url(registry_behind_basic_auth)
    # A schema Debezium registered: one change in the source makes sure there is one.
    product_db, _ = engines
    cid = (1 << 36) + random.randrange(1 << 30)
    with product_db.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO categories VALUES ({cid}, NULL, 'auth', 'Auth')"))
    deadline = time.monotonic() + 120
    while httpx.get(f"{secure.registry_url()}/schemas/ids/1", timeout=30,
                    verify=registry_tls(secure)).status_code != 200:
        assert time.monotonic() < deadline, "Debezium registered no schema within 120 s"
        time.sleep(0.5)
    authed = load_settings(**{**instance_overrides("secure"),
                              "schema_registry_url": gate,
                              "registry_username": REGISTRY_USER,
                              "registry_password": REGISTRY_PASSWORD})
    assert registry_config(authed)["basic.auth.user.info"]
    assert "type" in RegistrySchemas(registry_config(authed)).schema_text(1)
    with pytest.raises(SchemaUnavailable, match=r"401|nauthorized"):
        RegistrySchemas(gate).schema_text(1)
    # The CLI with the same settings from the environment: `schemas check` reads every
    # subject through the gate.
    env = dict(instance_env("secure", dict(os.environ)),
               VIEWSYNC_SCHEMA_REGISTRY_URL=gate,
               VIEWSYNC_REGISTRY_USERNAME=REGISTRY_USER,
               VIEWSYNC_REGISTRY_PASSWORD=REGISTRY_PASSWORD)
    out = subprocess.run([sys.executable, "-m", "app.cli", "schemas", "check"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reads as the contract" in out.stdout
    assert REGISTRY_PASSWORD not in out.stdout + out.stderr


def gated_connector(secure: Settings, gate: Gate, name: str, **creds: str) -> ConnectClient:
    """A second Debezium connector on the product DB (its own name, topics and server id,
    new at each run) whose Apicurio converters reach the registry only through the gate."""
    name = f"{name}-{uuid.uuid4().hex[:6]}"
    settings = load_settings(**{**instance_overrides("secure"), "connector_name": name,
                                "topic_prefix": name, "schema_registry_url": gate_url(gate),
                                **creds})
    client = ConnectClient(settings)
    client.apply()
    return client


def test_the_connectors_converters_register_schemas_through_basic_auth(
    secure: Settings, registry_behind_basic_auth: Gate,
) -> None:
    gate = registry_behind_basic_auth
    refused = gate.refused
    # Without credentials the gate refuses the converter: the task fails, naming the 401.
    anonymous = gated_connector(secure, gate, "gated-anonymous")
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                tasks = anonymous.status().get("tasks", [])
            except ConnectError:  # not registered yet
                tasks = []
            traces = [t.get("trace", "") for t in tasks if t["state"] == "FAILED"]
            if traces:
                break
            assert time.monotonic() < deadline, f"the anonymous connector never failed: {tasks}"
            time.sleep(1.0)
        assert re.search(r"401|[Uu]nauthori|NotAuthori", traces[0]), traces[0][-3000:]
        assert gate.refused > refused
    finally:
        anonymous.delete()

    # With them (the password from Connect's environment, `${env:…}` in the config), the
    # snapshot's schemas are registered through the gate and its records are written.
    allowed = gate.allowed
    authed = gated_connector(secure, gate, "gated-authed", registry_username=REGISTRY_USER,
                             registry_password=REGISTRY_PASSWORD)
    try:
        authed.wait_running(timeout=120)
        topic = authed.settings.topic("categories")
        deadline = time.monotonic() + 120
        while not sum(topic_ends(secure, (topic,)).values()):
            authed.wait_running(timeout=30)  # fails fast when the task has failed
            assert time.monotonic() < deadline, f"no record in {topic} within 120 s"
            time.sleep(1.0)
        assert gate.allowed > allowed
        assert authed.config.get("value.converter.apicurio.auth.password") == (
            "${env:VIEWSYNC_REGISTRY_PASSWORD}")
    finally:
        authed.delete()
    connect_log = (secure.state_dir / "logs" / "connect.log").read_text(errors="replace")
    assert REGISTRY_PASSWORD not in connect_log, "the registry password is in Connect's log"
