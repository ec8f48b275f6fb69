"""The local stack's components: how each one is installed, started and checked.

Every component runs as a plain process bound to loopback, with its data, logs and pid
file under the state directory. Nothing here sleeps blindly: readiness is a query, a REST
call or a Kafka metadata request.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import ssl
import subprocess
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.clients import java_kafka_properties, kafka_config
from app.settings import Settings

MAVEN_DIR = Path(__file__).parent / "maven"
SQL_DIR = Path(__file__).parent / "sql"

APT_PACKAGES = ("mariadb-server", "mariadb-client", "postgresql", "postgresql-client", "openssl")

#: JVM flag sets for the stack's Java components (setting ``jvm_profile``): "small" (C1 only,
#: SerialGC: quick to start, light on a 2-core machine; for tests) or "production" (the JVM's
#: own defaults: tiered C2 and G1; for benchmarks).
JVM_PROFILES: dict[str, tuple[str, ...]] = {
    "small": ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"),
    "production": ("-XX:+UseG1GC", "-Djava.awt.headless=true"),
}

LOG4J2 = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.reflections.name = org.reflections
logger.reflections.level = ERROR
"""


def is_root() -> bool:
    return os.geteuid() == 0


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary (Debian keeps them out of PATH)."""
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if candidates:
        return candidates[-1]
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"PostgreSQL binary {name!r} not found (package postgresql)")


@dataclass
class Component:
    """One process of the stack."""

    name: str
    port: int
    description: str
    #: Prepares data dirs, config files; idempotent.
    prepare: Callable[[], None]
    #: The command line that runs the process in the foreground.
    command: Callable[[], Sequence[str]]
    #: True when the component answers for real.
    healthy: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    #: OS user to run as (for PostgreSQL when we are root).
    run_as: str | None = None
    ready_timeout: float = 180.0


class Paths:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.logs = state / "logs"
        self.run = state / "run"
        self.lib = state / "lib"
        self.conf = state / "conf"

    def data(self, name: str) -> Path:
        return self.state / "data" / name

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pidfile(self, name: str) -> Path:
        return self.run / f"{name}.pid"


class StackDefinition:
    """Builds the component list from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.p = Paths(settings.state_dir)

    # ---------------------------------------------------------------- helpers
    def _mariadb_socket(self, name: str) -> Path:
        return self.p.run / f"{name}.sock"

    def mariadb_sql(self, name: str, sql: str) -> str:
        """Run SQL as the database superuser over the unix socket."""
        user = "root" if is_root() else os.environ.get("USER", "root")
        out = subprocess.run(
            ["mariadb", "--no-defaults", f"--socket={self._mariadb_socket(name)}", "-u", user,
             "--batch", "--skip-column-names", "-e", sql],
            check=True, capture_output=True, text=True,
        )
        return out.stdout

    def _pg_socket_dir(self) -> Path:
        return self.p.run / "order-db"

    def psql(self, sql: str, database: str = "postgres") -> str:
        cmd = ["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h",
               str(self._pg_socket_dir()), "-p", str(self.s.order_db_port), "-U", "postgres",
               "-d", database, "-c", sql]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return out.stdout

    def _as_pg_user(self, cmd: Sequence[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if is_root() else list(cmd)

    def _own_for_pg(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if is_root():
            shutil.chown(path, "postgres", "postgres")

    # ---------------------------------------------------------------- TLS (stack_tls)
    def ensure_tls(self) -> None:
        """With ``stack_tls``: a CA of the stack's own and one server certificate for the
        stack's host, signed by it, in ``<state>/tls`` (made once, idempotent). The
        clients trust ``ca.pem`` (``ca.p12`` for the Java connector)."""
        d = self.s.tls_dir()
        if (d / "server.pem").exists() and (d / "ca.p12").exists():
            return
        if shutil.which("openssl") is None:
            raise FileNotFoundError("openssl is needed to make the stack's CA (package openssl)")
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
        host = self.s.host
        alt = f"IP:{host}" if _is_ip(host) else f"DNS:{host}"
        san = ",".join(dict.fromkeys([alt, "IP:127.0.0.1", "DNS:localhost"]))

        def run(*cmd: str) -> None:
            subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=d)

        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
            "-subj", "/CN=viewsync local stack CA", "-keyout", "ca.key", "-out", "ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}",
            "-keyout", "server.key", "-out", "server.csr")
        (d / "server.ext").write_text(
            f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n")
        run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "3650", "-extfile", "server.ext", "-out", "server.pem")
        # Kafka's PEM keystore: the (PKCS#8) key and its certificate in one file.
        (d / "kafka.pem").write_text((d / "server.key").read_text()
                                     + (d / "server.pem").read_text())
        # PostgreSQL reads its key only when the server's user owns it, mode 0600.
        (d / "postgres.key").write_bytes((d / "server.key").read_bytes())
        (d / "postgres.key").chmod(0o600)
        if is_root():
            shutil.chown(d / "postgres.key", "postgres", "postgres")
        for key in ("ca.key", "server.key", "kafka.pem"):
            (d / key).chmod(0o600)
        store = d / "ca.p12"
        store.unlink(missing_ok=True)
        run("keytool", "-importcert", "-noprompt", "-alias", "viewsync-ca", "-file", "ca.pem",
            "-keystore", str(store), "-storetype", "PKCS12",
            "-storepass", self.s.db_ssl_truststore_password.get_secret_value())

    def _db_tls(self) -> bool:
        return self.s.stack_tls and self.s.db_ssl_mode != "disable"

    # ---------------------------------------------------------------- MariaDB
    def _mariadb(self, name: str, port: int, server_id: int, binlog: bool, desc: str) -> Component:
        datadir = self.p.data(name)

        def prepare() -> None:
            if not (datadir / "mysql").exists():
                datadir.mkdir(parents=True, exist_ok=True)
                cmd = ["mariadb-install-db", "--no-defaults", f"--datadir={datadir}",
                       "--auth-root-authentication-method=socket", "--skip-test-db"]
                if is_root():
                    cmd.append("--user=root")
                subprocess.run(cmd, check=True, capture_output=True, text=True)

        def command() -> list[str]:
            cmd = ["mariadbd", "--no-defaults", f"--datadir={datadir}", f"--port={port}",
                   f"--bind-address={self.s.host}", f"--socket={self._mariadb_socket(name)}",
                   f"--pid-file={self.p.run / (name + '.mariadb.pid')}",
                   f"--server-id={server_id}", "--character-set-server=utf8mb4",
                   "--collation-server=utf8mb4_unicode_ci", "--innodb-buffer-pool-size=128M",
                   "--max-connections=200", "--skip-name-resolve"]
            if self._db_tls():  # TLS only
                t = self.s.tls_dir()
                cmd += [f"--ssl-ca={t / 'ca.pem'}", f"--ssl-cert={t / 'server.pem'}",
                        f"--ssl-key={t / 'server.key'}", "--require-secure-transport=ON"]
            if binlog:
                cmd += ["--log-bin=mysql-bin", "--binlog-format=ROW", "--binlog-row-image=FULL",
                        "--binlog-expire-logs-seconds=604800"]
            if is_root():
                cmd.append("--user=root")
            return cmd

        def healthy() -> bool:
            if not port_open(self.s.host, port):
                return False
            try:
                return self.mariadb_sql(name, "SELECT 1").strip() == "1"
            except (subprocess.CalledProcessError, FileNotFoundError):
                return False

        return Component(name, port, desc, prepare, command, healthy)

    # ---------------------------------------------------------------- PostgreSQL
    def _postgres(self) -> Component:
        datadir = self.p.data("order-db")

        def prepare() -> None:
            self._own_for_pg(self._pg_socket_dir())
            if self._db_tls():  # TCP connections over TLS only; the unix socket for the stack
                self.p.conf.mkdir(parents=True, exist_ok=True)
                hba = self.p.conf / "pg_hba.conf"
                hba.write_text("local all all trust\n"
                               "hostssl all all 0.0.0.0/0 scram-sha-256\n"
                               "hostssl all all ::/0 scram-sha-256\n")
                hba.chmod(0o644)
            if not (datadir / "PG_VERSION").exists():
                self._own_for_pg(datadir)
                subprocess.run(
                    self._as_pg_user([pg_bin("initdb"), "-D", str(datadir), "-U", "postgres",
                                      "--auth-local=trust", "--auth-host=scram-sha-256",
                                      "-E", "UTF8", "--locale=C.UTF-8"]),
                    check=True, capture_output=True, text=True,
                )

        def command() -> list[str]:
            cmd = [
                pg_bin("postgres"), "-D", str(datadir), "-p", str(self.s.order_db_port),
                "-c", f"listen_addresses={self.s.host}",
                "-c", f"unix_socket_directories={self._pg_socket_dir()}",
                "-c", "shared_buffers=128MB", "-c", "fsync=on", "-c", "max_connections=200",
            ]
            if self._db_tls():
                t = self.s.tls_dir()
                cmd += ["-c", "ssl=on", "-c", f"ssl_cert_file={t / 'server.pem'}",
                        "-c", f"ssl_key_file={t / 'postgres.key'}",
                        "-c", f"ssl_ca_file={t / 'ca.pem'}",
                        "-c", f"hba_file={self.p.conf / 'pg_hba.conf'}"]
            return cmd

        def healthy() -> bool:
            if not port_open(self.s.host, self.s.order_db_port):
                return False
            try:
                return self.psql("SELECT 1").strip() == "1"
            except (subprocess.CalledProcessError, FileNotFoundError):
                return False

        return Component("order-db", self.s.order_db_port,
                         "PostgreSQL: the Order service's database", prepare, command, healthy,
                         run_as="postgres" if is_root() else None)

    # ---------------------------------------------------------------- Kafka
    def _java(self, classpath: str, main: str, *args: str) -> list[str]:
        return ["java", f"-Xmx{self.s.java_heap}", f"-Xms{self.s.java_heap}",
                *JVM_PROFILES[self.s.jvm_profile],
                f"-Dlog4j2.configurationFile={self.p.conf / 'log4j2.properties'}",
                "-cp", classpath, main, *args]

    def _kafka(self) -> Component:
        datadir = self.p.data("kafka")
        conf = self.p.conf / "kafka.properties"
        cp = str(self.p.lib / "kafka" / "*")

        def prepare() -> None:
            self.p.conf.mkdir(parents=True, exist_ok=True)
            (self.p.conf / "log4j2.properties").write_text(LOG4J2)
            h, kp, cport = self.s.host, self.s.kafka_port, self.s.kafka_controller_port
            lst = self._kafka_listener()
            conf.write_text(
                "process.roles=broker,controller\nnode.id=1\n"
                f"controller.quorum.voters=1@{h}:{cport}\n"
                f"listeners={lst}://{h}:{kp},CONTROLLER://{h}:{cport}\n"
                f"advertised.listeners={lst}://{h}:{kp}\n"
                f"controller.listener.names=CONTROLLER\ninter.broker.listener.name={lst}\n"
                f"listener.security.protocol.map={lst}:{lst},CONTROLLER:PLAINTEXT\n"
                + self._kafka_security(lst) +
                f"log.dirs={datadir}\nnum.partitions=1\n"
                "offsets.topic.replication.factor=1\ntransaction.state.log.replication.factor=1\n"
                "transaction.state.log.min.isr=1\nshare.coordinator.state.topic.replication.factor=1\n"
                "share.coordinator.state.topic.min.isr=1\n"
                "group.initial.rebalance.delay.ms=0\nauto.create.topics.enable=true\n"
                "log.retention.hours=-1\n"
            )
            conf.chmod(0o600)
            scram = datadir / ".viewsync-scram"
            if not (datadir / "meta.properties").exists():
                datadir.mkdir(parents=True, exist_ok=True)
                users: list[str] = []
                if lst == "SASL_SSL":  # the SCRAM user, made with the metadata (KRaft)
                    pw = self.s.kafka_sasl_password
                    assert pw is not None  # the settings validate it
                    users = ["--add-scram", f"{self.s.kafka_sasl_mechanism}=[name="
                             f"{self.s.kafka_sasl_username},password={pw.get_secret_value()}]"]
                subprocess.run(
                    self._java(cp, "kafka.tools.StorageTool", "format", "-t",
                               _cluster_id(), "-c", str(conf), "--ignore-formatted", *users),
                    check=True, capture_output=True, text=True,
                )
                if users:
                    scram.write_text(f"{self.s.kafka_sasl_username}\n")
            if lst == "SASL_SSL" and not scram.exists():
                raise RuntimeError(
                    f"the Kafka data in {datadir} was made without SCRAM users; "
                    "`viewsync stack down --purge` makes the stack anew with stack_tls")

        def healthy() -> bool:
            if not port_open(self.s.host, self.s.kafka_port):
                return False
            from confluent_kafka.admin import AdminClient

            try:
                md = AdminClient(kafka_config(self.s)).list_topics(timeout=3)
                return bool(md.brokers)
            except Exception:
                return False

        return Component("kafka", self.s.kafka_port, "Apache Kafka broker+controller (KRaft)",
                         prepare, lambda: self._java(cp, "kafka.Kafka", str(conf)), healthy)

    def _kafka_listener(self) -> str:
        """The broker's one client listener: PLAINTEXT, or SASL_SSL with ``stack_tls``."""
        proto = self.s.kafka_security_protocol
        if proto == "PLAINTEXT":
            return proto
        if proto == "SASL_SSL" and self.s.stack_tls:
            return proto
        raise RuntimeError(
            f"the local stack serves Kafka as PLAINTEXT, or as SASL_SSL with stack_tls; not "
            f"kafka_security_protocol {proto} with stack_tls {self.s.stack_tls}")

    def _kafka_security(self, listener: str) -> str:
        if listener == "PLAINTEXT":
            return ""
        t, mech = self.s.tls_dir(), self.s.kafka_sasl_mechanism
        pw = self.s.kafka_sasl_password
        assert pw is not None  # the settings validate it
        # The broker's own login (inter-broker) is the same SCRAM user; this file is 0600.
        jaas = java_kafka_properties(self.s, pw.get_secret_value())["sasl.jaas.config"]
        return (f"sasl.enabled.mechanisms={mech}\nsasl.mechanism.inter.broker.protocol={mech}\n"
                f"listener.name.sasl_ssl.{mech.lower()}.sasl.jaas.config={jaas}\n"
                f"ssl.keystore.type=PEM\nssl.keystore.location={t / 'kafka.pem'}\n"
                f"ssl.truststore.type=PEM\nssl.truststore.location={t / 'ca.pem'}\n")

    def _registry(self) -> Component:
        home = self.p.lib / "registry"
        datadir = self.p.data("registry")

        tls = self.s.tls_dir()

        def command() -> list[str]:
            jar = next(home.glob("apicurio-registry-app-*-runner.jar"))
            if self.s.stack_tls:  # HTTPS only, with the stack's server certificate
                listen = [f"-Dquarkus.http.ssl-port={self.s.registry_port}",
                          f"-Dquarkus.http.ssl.certificate.files={tls / 'server.pem'}",
                          f"-Dquarkus.http.ssl.certificate.key-files={tls / 'server.key'}",
                          "-Dquarkus.http.insecure-requests=disabled"]
            else:
                listen = [f"-Dquarkus.http.port={self.s.registry_port}"]
            return ["java", f"-Xmx{self.s.java_heap}", *JVM_PROFILES[self.s.jvm_profile],
                    f"-Dquarkus.http.host={self.s.host}", *listen,
                    "-Dquarkus.log.level=WARN", "-Dquarkus.log.category.\"io.apicurio\".level=INFO",
                    "-jar", str(jar)]

        def healthy() -> bool:
            scheme = "http"
            verify: bool | ssl.SSLContext = True
            if self.s.stack_tls:
                scheme = "https"
                verify = ssl.create_default_context(cafile=str(tls / "ca.pem"))
            try:
                r = httpx.get(f"{scheme}://{self.s.host}:{self.s.registry_port}/health/ready",
                              timeout=3, verify=verify)
                return r.status_code == 200
            except httpx.HTTPError:
                return False

        return Component(
            "registry", self.s.registry_port,
            "Apicurio Registry 2.6 (Confluent-compatible API at /apis/ccompat/v7)",
            lambda: datadir.mkdir(parents=True, exist_ok=True), command, healthy,
            # File-backed H2 instead of the default in-memory one: schema ids must survive a
            # registry restart, or the records already in Kafka could not be decoded.
            env={"REGISTRY_DATASOURCE_URL": f"jdbc:h2:file:{datadir}/registry"},
        )

    def _connect(self) -> Component:
        conf = self.p.conf / "connect.properties"
        cp = str(self.p.lib / "kafka" / "*")

        def prepare() -> None:
            self.p.conf.mkdir(parents=True, exist_ok=True)
            conf.write_text(
                f"bootstrap.servers={self.s.bootstrap()}\ngroup.id=viewsync-connect\n"
                "key.converter=org.apache.kafka.connect.json.JsonConverter\n"
                "value.converter=org.apache.kafka.connect.json.JsonConverter\n"
                "config.storage.topic=_connect-configs\noffset.storage.topic=_connect-offsets\n"
                "status.storage.topic=_connect-status\nconfig.storage.replication.factor=1\n"
                "offset.storage.replication.factor=1\nstatus.storage.replication.factor=1\n"
                "offset.flush.interval.ms=1000\nscheduled.rebalance.max.delay.ms=0\n"
                f"listeners=http://{self.s.host}:{self.s.connect_port}\n"
                f"rest.advertised.host.name={self.s.host}\n"
                f"plugin.path={self.p.lib / 'plugins'}\n"
                "topic.creation.enable=true\n"
                "producer.linger.ms=5\n"
                # Secrets stay out of the connector config stored in Kafka: the connector
                # says ${env:VIEWSYNC_DB_PASSWORD} and the worker resolves it.
                "config.providers=env\n"
                "config.providers.env.class="
                "org.apache.kafka.common.config.provider.EnvVarConfigProvider\n"
                # Kafka's security, for the worker's own clients and the connectors' (the
                # password a ${env:} reference).
                + "".join(f"{prefix}{k}={v}\n" for prefix in ("", "producer.", "consumer.",
                                                              "admin.")
                          for k, v in java_kafka_properties(self.s).items())
            )

        def healthy() -> bool:
            try:
                r = httpx.get(f"{self.s.connect()}/connector-plugins", timeout=3)
                return r.status_code == 200 and "MariaDbConnector" in r.text
            except httpx.HTTPError:
                return False

        return Component(
            "connect", self.s.connect_port, "Kafka Connect (distributed) with Debezium MariaDB",
            prepare,
            lambda: self._java(cp, "org.apache.kafka.connect.cli.ConnectDistributed", str(conf)),
            healthy, ready_timeout=240.0,
        )

    def components(self) -> list[Component]:
        """In start order."""
        return [
            self._mariadb("product-db", self.s.product_db_port, 1, True,
                          "MariaDB: the Product service's database (binlog on)"),
            self._mariadb("purchase-db", self.s.purchase_db_port, 2, False,
                          "MariaDB: the Purchase service's database"),
            self._postgres(),
            self._kafka(),
            self._registry(),
            self._connect(),
        ]


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _cluster_id() -> str:
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
