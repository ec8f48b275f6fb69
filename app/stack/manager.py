"""`viewsync stack up | down | status | env | logs`: the local stack as plain processes.

``up`` is idempotent: it installs what is missing (Debian packages, Maven artifacts into
``~/.m2`` and the state directory), starts what is not running, waits on real readiness
checks, creates the Product schema, the consumer databases and their view tables, and
registers the connector. A second ``up`` starts nothing and changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.clients import connect_worker_env, kafka_config
from app.settings import Settings
from app.stack.components import (
    APT_PACKAGES,
    MAVEN_DIR,
    SQL_DIR,
    Component,
    Paths,
    StackDefinition,
    is_root,
    pg_bin,
)

log = logging.getLogger("viewsync.stack")


class StackError(Exception):
    """A component could not be installed or started; the message says which and why."""


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextmanager
def step(title: str) -> Iterator[None]:
    """Print a step, then how long it took."""
    say(f"  … {title}")
    t0 = time.monotonic()
    try:
        yield
    except Exception:
        say(f"  ✗ {title} failed after {time.monotonic() - t0:.1f}s")
        raise
    say(f"  ✓ {title} ({time.monotonic() - t0:.1f}s)")


# ------------------------------------------------------------------------ install
def _missing_binaries() -> list[str]:
    missing = [b for b in ("mariadbd", "mariadb", "mariadb-install-db", "psql", "openssl")
               if shutil.which(b) is None]
    try:
        pg_bin("postgres")
        pg_bin("initdb")
    except FileNotFoundError:
        missing.append("postgres")
    return missing


def install_packages() -> None:
    missing = _missing_binaries()
    if not missing:
        return
    if not is_root():
        raise StackError(
            f"missing {', '.join(missing)}; install them with: sudo apt-get install -y "
            + " ".join(APT_PACKAGES)
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with step(f"apt-get install {' '.join(APT_PACKAGES)} (missing: {', '.join(missing)})"):
        for cmd in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES]):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                raise StackError(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    _stop_distro_services()


def _stop_distro_services() -> None:
    """Debian's packages may start their own servers; viewsync runs its own instances."""
    for svc in ("mariadb", "postgresql"):
        subprocess.run(["service", svc, "stop"], capture_output=True, check=False)


@dataclass(frozen=True)
class MavenBundle:
    pom: str
    target: str  # directory under <state>/lib
    marker: str  # a glob that exists once unpacked


MAVEN_BUNDLES = (
    MavenBundle("kafka.pom.xml", "kafka", "kafka_2.13-*.jar"),
    MavenBundle("plugins.pom.xml", "plugins", "debezium-connector-mariadb/*.jar"),
    MavenBundle("registry.pom.xml", "registry", "apicurio-registry-app-*-runner.jar"),
)


def install_maven(paths: Paths) -> None:
    """Resolve the Java components from Maven Central into ``<state>/lib`` (cache: ~/.m2)."""
    if shutil.which("mvn") is None:
        raise StackError("mvn (Maven) is not on PATH; install Maven 3.8+ (package maven)")
    for bundle in MAVEN_BUNDLES:
        pom = MAVEN_DIR / bundle.pom
        digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
        out = paths.lib / bundle.target
        stamp = out / ".viewsync-pom"
        if stamp.exists() and stamp.read_text() == digest and any(out.glob(bundle.marker)):
            continue
        with step(f"mvn: resolve {bundle.target} ({bundle.pom})"):
            if out.exists():
                shutil.rmtree(out)
            work = paths.state / "maven" / bundle.target
            work.mkdir(parents=True, exist_ok=True)
            shutil.copy(pom, work / "pom.xml")
            r = subprocess.run(
                ["mvn", "-B", "-q", "-f", str(work / "pom.xml"), f"-Dout={out}", "validate"],
                capture_output=True, text=True,
            )
            if r.returncode != 0 or not any(out.glob(bundle.marker)):
                raise StackError(
                    f"mvn could not resolve {bundle.pom}:\n{(r.stdout + r.stderr)[-3000:]}"
                )
            stamp.write_text(digest)


# ------------------------------------------------------------------------ processes
def read_pid(paths: Paths, name: str) -> int | None:
    try:
        pid = int(paths.pidfile(name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # A stale pid file (the machine or session went away) may name a reused pid: only a
    # process whose command line points into our state directory is ours.
    if str(paths.state).encode() not in cmdline:
        return None
    return pid


def start(paths: Paths, comp: Component, settings: Settings) -> subprocess.Popen[bytes]:
    paths.logs.mkdir(parents=True, exist_ok=True)
    paths.run.mkdir(parents=True, exist_ok=True)
    logf = open(paths.log(comp.name), "ab")  # noqa: SIM115 - handed to the child
    env = dict(os.environ)
    env.update(comp.env)
    env.update(connect_worker_env(settings))  # the secrets Connect resolves (${env:…})
    proc = subprocess.Popen(
        list(comp.command()), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env=env, cwd=str(paths.state),
        user=comp.run_as, group=comp.run_as, extra_groups=[] if comp.run_as else None,
    )
    logf.close()
    paths.pidfile(comp.name).write_text(str(proc.pid))
    return proc


def wait_ready(paths: Paths, comp: Component, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + comp.ready_timeout
    delay = 0.2
    while time.monotonic() < deadline:
        if comp.healthy():
            return
        if proc.poll() is not None:
            raise StackError(
                f"{comp.name} exited with code {proc.returncode} during start-up; "
                "last log lines:\n"
                + tail(paths.log(comp.name), 30)
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)
    raise StackError(
        f"{comp.name} was not ready on port {comp.port} within {comp.ready_timeout:.0f}s; "
        f"last log lines:\n" + tail(paths.log(comp.name), 30)
    )


def stop(paths: Paths, comp: Component, timeout: float = 60.0) -> bool:
    pid = read_pid(paths, comp.name)
    if pid is None:
        paths.pidfile(comp.name).unlink(missing_ok=True)
        return False
    # PostgreSQL: SIGINT is "fast shutdown" (SIGTERM waits for every client to leave).
    sig = signal.SIGINT if comp.name == "order-db" else signal.SIGTERM
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and read_pid(paths, comp.name) is not None:
        time.sleep(0.2)
    if read_pid(paths, comp.name) is not None:
        say(f"  ! {comp.name} did not stop within {timeout:.0f}s; killing it")
        os.killpg(pid, signal.SIGKILL)
    paths.pidfile(comp.name).unlink(missing_ok=True)
    return True


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {path})"


# ------------------------------------------------------------------------ commands
class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.defn = StackDefinition(settings)
        self.paths = self.defn.p

    def components(self) -> list[Component]:
        return self.defn.components()

    def up(self, *, connector: bool = True) -> None:
        t0 = time.monotonic()
        say(f"viewsync stack up (state: {self.paths.state})")
        self.paths.state.mkdir(parents=True, exist_ok=True)
        install_packages()
        install_maven(self.paths)
        if self.settings.stack_tls:
            with step(f"TLS: the stack's CA and certificate in {self.settings.tls_dir()}"):
                try:
                    self.defn.ensure_tls()
                except (OSError, subprocess.CalledProcessError) as exc:
                    raise StackError(f"could not make the stack's CA: {_why(exc)}") from exc
        bootstraps: dict[str, Callable[[], None]] = {
            "product-db": self._bootstrap_product,
            "purchase-db": self._bootstrap_purchase,
            "order-db": self._bootstrap_order,
        }
        for comp in self.components():
            if comp.healthy():
                say(f"  = {comp.name} already running on {comp.port}")
            else:
                with step(f"start {comp.name} on {self.settings.host}:{comp.port}"):
                    if read_pid(self.paths, comp.name) is not None:
                        stop(self.paths, comp)
                    try:
                        comp.prepare()
                    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                        raise StackError(f"{comp.name}: {_why(exc)}") from exc
                    proc = start(self.paths, comp, self.settings)
                    wait_ready(self.paths, comp, proc)
            if comp.name in bootstraps:
                bootstraps[comp.name]()
        with step("source topics (compacted)"):
            created = ensure_source_topics(self.settings)
            say(f"    {'created ' + ', '.join(created) if created else 'all present'}")
        with step("view tables in the consumer databases"):
            from app.sink import create_view_tables

            create_view_tables(self.settings)
        if connector:
            from app.connectors import ConnectClient

            with step(f"connector {self.settings.connector_name}"):
                client = ConnectClient(self.settings)
                changed = client.apply()
                client.wait_running(timeout=120)
                say(f"    {'registered/updated' if changed else 'unchanged'}, RUNNING")
        say(f"stack is up ({time.monotonic() - t0:.1f}s)")

    def _bootstrap_product(self) -> None:
        s = self.settings
        sql = _mariadb_user_sql(s) + (
            f"CREATE DATABASE IF NOT EXISTS `{s.source_database}`;"
            f"USE `{s.source_database}`;" + (SQL_DIR / "product.sql").read_text()
        )
        self.defn.mariadb_sql("product-db", sql)

    def consumers_on(self, server: str) -> list[str]:
        """The consumer databases the views file names on one server of the stack
        (``[consumers.<name>] stack_server``; the consumers' PostgreSQL by default)."""
        from app.views import consumers, stack_servers

        servers = stack_servers(self.settings.views_file)
        return [c for c in consumers(self.settings.views())
                if servers.get(c, "postgresql") == server]

    def _bootstrap_purchase(self) -> None:
        sql = _mariadb_user_sql(self.settings) + "".join(
            f"CREATE DATABASE IF NOT EXISTS `{c}`;" for c in self.consumers_on("mariadb"))
        self.defn.mariadb_sql("purchase-db", sql)

    def _bootstrap_order(self) -> None:
        s = self.settings
        pw = s.db_password.get_secret_value().replace("'", "''")
        exists = self.defn.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{s.db_user}'").strip()
        verb = "ALTER" if exists else "CREATE"
        self.defn.psql(f"{verb} ROLE \"{s.db_user}\" LOGIN PASSWORD '{pw}'")
        for db in self.consumers_on("postgresql"):
            if not self.defn.psql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'").strip():
                self.defn.psql(f'CREATE DATABASE "{db}" OWNER "{s.db_user}"')

    def down(self, *, purge: bool = False) -> None:
        say(f"viewsync stack down (state: {self.paths.state})")
        for comp in reversed(self.components()):
            with step(f"stop {comp.name}"):
                stopped = stop(self.paths, comp)
                if not stopped:
                    say(f"    {comp.name} was not running")
        if purge and self.paths.state.exists():
            with step(f"purge {self.paths.state}"):
                shutil.rmtree(self.paths.state)

    def status(self) -> list[tuple[str, int, int | None, bool]]:
        rows = []
        for comp in self.components():
            rows.append((comp.name, comp.port, read_pid(self.paths, comp.name), comp.healthy()))
        return rows

    def env_lines(self) -> list[str]:
        """One ``export`` a setting: the source, every consumer database the views file
        names, Kafka, the registry, Connect."""
        from app.views import consumers

        s = self.settings
        pairs = [
            ("VIEWSYNC_SOURCE_URL", s.product_url()),
            *((f"VIEWSYNC_{c.upper()}_DB_URL", s.consumer_url(c))
              for c in consumers(s.views())),
            ("VIEWSYNC_KAFKA_BOOTSTRAP", s.bootstrap()),
            ("VIEWSYNC_SCHEMA_REGISTRY_URL", s.registry_url()),
            ("VIEWSYNC_CONNECT_URL", s.connect()),
            ("VIEWSYNC_STATE_DIR", str(s.state_dir)),
        ]
        if s.stack_tls:
            pairs.append(("VIEWSYNC_STACK_TLS", "true"))
        if s.kafka_security_protocol != "PLAINTEXT":
            pairs.append(("VIEWSYNC_KAFKA_SECURITY_PROTOCOL", s.kafka_security_protocol))
        if s.kafka_sasl_username and s.kafka_sasl_password:
            pairs += [("VIEWSYNC_KAFKA_SASL_MECHANISM", s.kafka_sasl_mechanism),
                      ("VIEWSYNC_KAFKA_SASL_USERNAME", s.kafka_sasl_username),
                      ("VIEWSYNC_KAFKA_SASL_PASSWORD", s.kafka_sasl_password.get_secret_value())]
        if (ca := s.kafka_ca()) is not None:
            pairs.append(("VIEWSYNC_KAFKA_SSL_CAFILE", str(ca)))
        if (ca := s.registry_ca()) is not None:
            pairs.append(("VIEWSYNC_REGISTRY_SSL_CAFILE", str(ca)))
        if s.db_ssl_mode != "disable":  # (the URLs above carry it already)
            pairs.append(("VIEWSYNC_DB_SSL_MODE", s.db_ssl_mode))
            if (ca := s.db_ca()) is not None:
                pairs.append(("VIEWSYNC_DB_SSL_CAFILE", str(ca)))
        return [f"export {k}='{v}'" for k, v in pairs]

    def logs(self, component: str | None, lines: int) -> str:
        names = [c.name for c in self.components()]
        if component is not None and component not in names:
            raise StackError(f"unknown component {component!r}; one of: {', '.join(names)}")
        out = []
        for name in [component] if component else names:
            out.append(f"==> {self.paths.log(name)} <==\n{tail(self.paths.log(name), lines)}")
        return "\n".join(out)


def ensure_source_topics(settings: Settings) -> list[str]:
    """Create the source topics (one per declared table), compacted, unless they exist.

    The connector would create them the same way (``topic.creation.*``) with its first
    record, but a worker started before that subscribes to them, and the broker would then
    auto-create them with the default delete-after-retention policy.
    """
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    from app.connectors import partitioned_tables

    admin = AdminClient(kafka_config(settings))
    existing = set(admin.list_topics(timeout=10).topics)
    partitioned = set(partitioned_tables(settings))  # as the connector would create them
    wanted = {settings.topic(t): settings.source_partitions if t in partitioned else 1
              for t in settings.graph().names if settings.topic(t) not in existing}
    if not wanted:
        return []
    futures = admin.create_topics([
        NewTopic(name, num_partitions=parts, replication_factor=1,
                 config={"cleanup.policy": "compact"})
        for name, parts in wanted.items()
    ])
    for name, fut in futures.items():
        try:
            fut.result(30)
        except Exception as exc:  # a concurrent creator is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise StackError(f"could not create topic {name}: {exc}") from exc
    return list(wanted)


def _why(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        out = (exc.stderr or exc.stdout or "")[-1500:]
        return f"{' '.join(map(str, exc.cmd[:2]))}… failed: {out}"  # no arguments: secrets
    return str(exc)


def _mariadb_user_sql(s: Settings) -> str:
    pw = s.db_password.get_secret_value().replace("\\", "\\\\").replace("'", "\\'")
    stmts = []
    for host in ("127.0.0.1", "localhost", "::1"):
        stmts.append(f"CREATE USER IF NOT EXISTS '{s.db_user}'@'{host}' IDENTIFIED BY '{pw}';")
        stmts.append(f"ALTER USER '{s.db_user}'@'{host}' IDENTIFIED BY '{pw}';")
        # The local stack's single application user: reads the binlog (Debezium), writes
        # the demo data and the views.
        stmts.append(f"GRANT ALL PRIVILEGES ON *.* TO '{s.db_user}'@'{host}';")
    return "".join(stmts)
