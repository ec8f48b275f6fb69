"""One typed settings object for every viewsync command.

Values come, in increasing precedence, from the defaults here, an optional TOML file named
by ``VIEWSYNC_CONFIG_FILE`` (or ``--config``), and ``VIEWSYNC_*`` environment variables.
Everything is validated when the settings are loaded, before anything starts; an invalid
value is reported with the name of its field. Secrets are :class:`SecretStr` and never
printed (``repr`` shows ``**********``).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.addresses import bootstrap_problem, database_url_problem, http_url_problem

if TYPE_CHECKING:
    from app.graph import Graph
    from app.views import Definitions, ViewDef


def _default_state_dir() -> Path:
    """Where the local stack keeps its data.

    ``$XDG_STATE_HOME/viewsync`` (``~/.local/state/viewsync``) for an ordinary user. As root,
    ``/var/lib/viewsync``: PostgreSQL refuses to run as root, so it runs as the ``postgres``
    system user, which cannot enter ``/root``.
    """
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/viewsync")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "viewsync"


class ConfigError(Exception):
    """A configuration value is invalid; the message names the field."""


def _refuse(problem: str | None) -> None:
    """Fail a validator with ``problem`` as the whole message (no "Value error, " prefix)."""
    if problem:
        raise PydanticCustomError("invalid_setting", "{problem}", {"problem": problem})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VIEWSYNC_", extra="forbid", validate_default=True, frozen=True
    )

    # --- local stack ------------------------------------------------------------------
    state_dir: Path = Field(default_factory=_default_state_dir)
    host: str = "127.0.0.1"
    product_db_port: int = Field(3307, ge=1, le=65535)
    purchase_db_port: int = Field(3308, ge=1, le=65535)
    order_db_port: int = Field(5433, ge=1, le=65535)
    kafka_port: int = Field(9092, ge=1, le=65535)
    kafka_controller_port: int = Field(9093, ge=1, le=65535)
    connect_port: int = Field(8083, ge=1, le=65535)
    registry_port: int = Field(8081, ge=1, le=65535)
    db_user: str = "viewsync"
    db_password: SecretStr = SecretStr("viewsync-local")
    java_heap: str = Field("512m", pattern=r"^\d+[mMgG]$")
    #: JVM flags of Kafka, Connect and the registry: "small" (C1 only, SerialGC; quick start,
    #: light on 2 cores) or "production" (tiered C2, G1: what benchmarks run).
    jvm_profile: Literal["small", "production"] = "small"

    # --- endpoints (derived from the stack settings when not given) --------------------
    source_url: SecretStr | None = None
    kafka_bootstrap: str | None = None
    schema_registry_url: str | None = None
    connect_url: str | None = None

    #: The views file (``app.views``); default: the bundled ``schemas/views.toml``.
    views_file: Path | None = None
    #: Consumer database URLs by consumer name (see :meth:`consumer_url`). A consumer of
    #: the local stack (``[consumers]`` of the views file) may also be given as
    #: ``<consumer>_db_url``. ``VIEWSYNC_<CONSUMER>_DB_URL`` beats the config file's.
    consumer_db_urls: dict[str, SecretStr] = Field(default_factory=dict)

    # --- secure connections (README, "Secure connections") -----------------------------
    #: How every client (worker, CLI, Kafka Connect) talks to Kafka.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = (
        "PLAINTEXT")
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    #: PEM file of the CA(s) that signed the brokers' certificates (default: the system's
    #: CAs; with ``stack_tls``, the local stack's own CA).
    kafka_ssl_cafile: Path | None = None
    #: HTTP basic auth to the schema registry (the worker, the CLI and the connector's
    #: converters; Connect reads the password from ``VIEWSYNC_REGISTRY_PASSWORD``).
    registry_username: str | None = None
    registry_password: SecretStr | None = None
    #: PEM file of the CA that signed an ``https://`` registry's certificate (default: the
    #: system's CAs; with ``stack_tls``, the local stack's own CA).
    registry_ssl_cafile: Path | None = None
    #: TLS to every database, the source and the consumers: ``disable``, ``require``
    #: (encrypted, the server not verified), ``verify-ca`` or ``verify-full`` (the CA and
    #: the host name). A URL's own TLS parameters win over these.
    db_ssl_mode: Literal["disable", "require", "verify-ca", "verify-full"] = "disable"
    #: PEM file of the CA that signed the databases' certificates (``verify-*``).
    db_ssl_cafile: Path | None = None
    #: The same CA as a PKCS12 truststore for the Debezium connector (Java), and its
    #: password (Connect reads it from ``VIEWSYNC_DB_SSL_TRUSTSTORE_PASSWORD``). With
    #: ``stack_tls``: made by the stack.
    db_ssl_truststore: Path | None = None
    #: (A truststore holds only public certificates: its password guards its integrity.)
    db_ssl_truststore_password: SecretStr = SecretStr("viewsync-truststore")
    #: The local stack makes a CA of its own (``<state_dir>/tls``) and serves what the
    #: settings above ask for: Kafka over SASL_SSL with a SCRAM user, the databases over
    #: TLS only, the registry over HTTPS only. Chosen when the stack's data is first made
    #: (``stack down --purge`` to change it).
    stack_tls: bool = False

    # --- pipeline ------------------------------------------------------------------------
    topic_prefix: str = Field("product", pattern=r"^[A-Za-z0-9_.-]+$")
    source_database: str = Field("product", pattern=r"^[A-Za-z0-9_]+$")
    connector_name: str = Field("product-source", pattern=r"^[A-Za-z0-9_.-]+$")
    #: Every worker checks the source connector each ``connector_check_interval_s`` seconds
    #: and restarts a FAILED connector or task, with backoff (``app.supervisor``).
    connector_supervise: bool = True
    connector_check_interval_s: float = Field(10.0, ge=1, le=3600)
    dead_letter_topic: str = Field("viewsync.dead-letter", pattern=r"^[A-Za-z0-9_.-]+$")
    #: The deployment's name: every worker of one deployment has the same ``worker_id``;
    #: it names the shard-lease consumer group and topic (see ``app.leases``).
    worker_id: str = Field("viewsync-worker", pattern=r"^[A-Za-z0-9_.-]+$")
    #: This worker process's name within the deployment (distinct per process; default:
    #: the host name and a hash of the data directory). Names its own consumer group.
    worker_name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    #: How many shards the view rows are divided into (the partitions of the shard-lease
    #: topic): the most workers that can write at once. Product rows belong to shard
    #: ``product_id % shards``, batch rows to ``batch_id % shards``. Fixed per deployment;
    #: ``viewsync shards reshard`` changes it (README, "Running N workers").
    shards: int = Field(12, ge=1, le=1024)
    #: Partitions of the topics of the views' grain tables when the connector creates them
    #: (``app.connectors.partitioned_tables``; the other tables' topics stay at one).
    source_partitions: int = Field(4, ge=1, le=1024)
    #: A worker that stops heartbeating (killed, hung, cut off) loses its shards after this.
    lease_session_timeout_ms: int = Field(6000, ge=1000, le=300_000)
    sink_batch_size: int = Field(2000, ge=1, le=100_000)
    sink_max_wait_ms: int = Field(50, ge=0, le=60_000)
    #: A consumer database ends a worker's session that sits idle inside a transaction this
    #: long (a worker frozen mid-write must not hold its shards' locks, and their next
    #: owner, until it wakes up); 0: never. Far above any pause inside a real write.
    sink_idle_transaction_timeout_s: float = Field(60.0, ge=0, le=86_400)
    #: Run decode → state → project → sink in a child process of the worker, so that Faust's
    #: own per-record work and the pipeline's run on two cores (off: in the worker process).
    pipeline_process: bool = True
    worker_data_dir: Path | None = None
    #: Where the worker keeps its join state: "rocksdb" in worker_data_dir, with the source
    #: positions it reached, so a restart reads only what is new; "memory" rebuilds it from
    #: the compacted source topics at every start (small catalogues, tests).
    worker_store: Literal["memory", "rocksdb"] = "rocksdb"
    #: Seconds between two progress lines of the worker (records, rows/s, lag, caught up).
    progress_interval_s: float = Field(10.0, gt=0, le=3600)
    #: Port of the worker's Prometheus endpoint (``/metrics``) and status page; 0: off.
    #: Distinct per worker on one host.
    metrics_port: int = Field(0, ge=0, le=65535)
    #: `viewsync status` reports a problem (exit 1) past these: a worker's lag in records,
    #: and a view's staleness (age of the oldest source change it lacks) in seconds.
    status_max_lag: int = Field(100_000, ge=0)
    status_max_staleness_s: float = Field(60.0, gt=0)
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")

    # An address that cannot parse is refused here, naming its field: the clients would
    # retry it forever (librdkafka logs "Failed to resolve" every 50 ms) and name nothing.
    # The problems never repeat a database URL (it holds a password).
    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_syntax(cls, value: str | None) -> str | None:
        """``host:port[,host:port…]``; empty: the local stack's."""
        if value:
            _refuse(bootstrap_problem(value))
        return value

    @field_validator("schema_registry_url", "connect_url")
    @classmethod
    def _http_url_syntax(cls, value: str | None) -> str | None:
        """An ``http(s)://`` URL with a host; empty: the local stack's."""
        if value:
            _refuse(http_url_problem(value))
        return value

    @field_validator("source_url")
    @classmethod
    def _source_url_syntax(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _refuse(database_url_problem(value.get_secret_value()))
        return value

    @field_validator("consumer_db_urls")
    @classmethod
    def _consumer_urls_syntax(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for consumer, url in value.items():
            problem = database_url_problem(url.get_secret_value())
            if problem:
                _refuse(f"the URL of consumer {consumer!r}: {problem}")
        return value

    @model_validator(mode="after")
    def _consumer_urls_in_the_environment(self) -> Settings:
        """``VIEWSYNC_<CONSUMER>_DB_URL`` (read by :meth:`consumer_url` when no value of
        ``consumer_db_urls`` beats it), checked now like every other URL."""
        for var, url in sorted(os.environ.items()):
            m = re.fullmatch(r"VIEWSYNC_([A-Z0-9_]+)_DB_URL", var)
            if m is None or not url or m.group(1).lower() in self.consumer_db_urls:
                continue
            problem = database_url_problem(url)
            if problem:
                _refuse(f"{m.group(1).lower()}_db_url ({var}): {problem}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _consumer_url_keys(cls, data: Any) -> Any:
        """``<consumer>_db_url`` (a file key, an override) of a consumer of the local stack:
        its entry of ``consumer_db_urls``; ``None`` changes nothing."""
        if not isinstance(data, dict):
            return data
        keys = stack_consumer_url_keys()
        data = dict(data)
        urls: dict[str, Any] = {}
        for key in [k for k in data if k in keys]:
            value = data.pop(key)
            if value is None:
                continue
            if not isinstance(value, str | SecretStr):
                raise ValueError(f"{key} (VIEWSYNC_{key.upper()}): not a database URL")
            urls[keys[key]] = value
        given = data.get("consumer_db_urls") or {}
        if urls and isinstance(given, dict):  # (anything else: its own validation error)
            data["consumer_db_urls"] = {**given, **urls}
        return data

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        ports = {
            "product_db_port": self.product_db_port,
            "purchase_db_port": self.purchase_db_port,
            "order_db_port": self.order_db_port,
            "kafka_port": self.kafka_port,
            "kafka_controller_port": self.kafka_controller_port,
            "connect_port": self.connect_port,
            "registry_port": self.registry_port,
        }
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen:
                raise ValueError(f"{name} and {seen[port]} are both {port}")
            seen[port] = name
        return self

    @model_validator(mode="after")
    def _secure_settings(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_"):
            for name in ("kafka_sasl_username", "kafka_sasl_password"):
                if not getattr(self, name):
                    raise ValueError(f"{name} (VIEWSYNC_{name.upper()}) is required with "
                                     f"kafka_security_protocol {self.kafka_security_protocol}")
        if (self.registry_username is None) != (self.registry_password is None):
            raise ValueError("registry_username and registry_password (VIEWSYNC_REGISTRY_"
                             "USERNAME, VIEWSYNC_REGISTRY_PASSWORD) go together")
        if self.db_ssl_mode.startswith("verify") and self.db_ca() is None:
            raise ValueError(f"db_ssl_cafile (VIEWSYNC_DB_SSL_CAFILE) is required with "
                             f"db_ssl_mode {self.db_ssl_mode}")
        for name in ("kafka_ssl_cafile", "db_ssl_cafile", "db_ssl_truststore",
                     "registry_ssl_cafile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name} (VIEWSYNC_{name.upper()}): no file {path}")
        return self

    # --- secure connections ------------------------------------------------------------
    def tls_dir(self) -> Path:
        """Where the local stack keeps its CA and certificates (``stack_tls``)."""
        return self.state_dir / "tls"

    def kafka_tls(self) -> bool:
        return self.kafka_security_protocol in ("SSL", "SASL_SSL")

    def kafka_ca(self) -> Path | None:
        """The CA file the Kafka clients trust (None: the system's)."""
        if self.kafka_ssl_cafile is not None:
            return self.kafka_ssl_cafile
        return self.tls_dir() / "ca.pem" if self.stack_tls and self.kafka_tls() else None

    def registry_ca(self) -> Path | None:
        """The CA file the registry clients trust (None: the system's)."""
        if self.registry_ssl_cafile is not None:
            return self.registry_ssl_cafile
        return self.tls_dir() / "ca.pem" if self.stack_tls else None

    def db_ca(self) -> Path | None:
        """The PEM CA the database clients trust."""
        return self._db_tls_file(self.db_ssl_cafile, "ca.pem")

    def db_truststore(self) -> Path | None:
        """The same CA as a PKCS12 truststore (Debezium's connection to the source)."""
        return self._db_tls_file(self.db_ssl_truststore, "ca.p12")

    def _db_tls_file(self, given: Path | None, name: str) -> Path | None:
        """``given``; else the stack's own file ``name`` when the stack serves database TLS."""
        if given is not None:
            return given
        return self.tls_dir() / name if self.stack_tls and self.db_ssl_mode != "disable" else None

    def _with_db_tls(self, url: str) -> str:
        """``url`` with the TLS parameters of ``db_ssl_mode`` added (those it has win)."""
        mode = self.db_ssl_mode
        if mode == "disable":
            return url
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        ca = self.db_ca()
        if parts.scheme.startswith("postgresql"):  # libpq's own modes
            add = {"sslmode": mode} | ({"sslrootcert": str(ca)} if ca else {})
        elif parts.scheme.startswith(("mysql", "mariadb")):  # SQLAlchemy's ssl_* for PyMySQL
            add = {"ssl_check_hostname": "true" if mode == "verify-full" else "false"}
            if ca is not None and mode != "require":
                add["ssl_ca"] = str(ca)
        else:
            return url
        for key, value in add.items():
            query.setdefault(key, value)
        return urlunsplit(parts._replace(query=urlencode(query)))

    # --- derived endpoints -------------------------------------------------------------
    def _mariadb_url(self, port: int, database: str) -> str:
        pw = quote(self.db_password.get_secret_value(), safe="")
        return f"mysql+pymysql://{self.db_user}:{pw}@{self.host}:{port}/{database}"

    def product_url(self) -> str:
        if self.source_url is not None:
            return self._with_db_tls(self.source_url.get_secret_value())
        return self._with_db_tls(self._mariadb_url(self.product_db_port, self.source_database))

    def consumer_url(self, consumer: str) -> str:
        """The SQLAlchemy URL of one consumer database: ``consumer_db_urls`` as given (an
        override), ``VIEWSYNC_<CONSUMER>_DB_URL``, ``consumer_db_urls`` of the config file;
        else the local stack's: a database of the consumer's name on the server the views
        file's ``[consumers]`` tables name (``app.views.stack_servers``; default the
        consumers' PostgreSQL server). With the TLS of ``db_ssl_mode``."""
        return self._with_db_tls(self._consumer_url(consumer))

    def _consumer_url(self, consumer: str) -> str:
        given = self.consumer_db_urls.get(consumer)
        if given is not None:  # load_settings drops the file's when the environment has one
            return given.get_secret_value()
        env = os.environ.get(f"VIEWSYNC_{consumer.upper()}_DB_URL")
        if env:
            return env
        from app.views import stack_servers

        if stack_servers(self.views_file).get(consumer) == "mariadb":
            return self._mariadb_url(self.purchase_db_port, consumer)
        pw = quote(self.db_password.get_secret_value(), safe="")
        return (f"postgresql+psycopg://{self.db_user}:{pw}@{self.host}:{self.order_db_port}/"
                f"{consumer}")

    def definitions(self) -> Definitions:
        """The source graph and the views (``views_file``, else the bundled file)."""
        from app.views import load_definitions

        return load_definitions(self.views_file)

    def views(self) -> tuple[ViewDef, ...]:
        """The views to maintain (``views_file``, else the bundled file)."""
        return self.definitions().views

    def graph(self) -> Graph:
        """The declared source tables, references and hierarchies."""
        return self.definitions().graph

    def bootstrap(self) -> str:
        return self.kafka_bootstrap or f"{self.host}:{self.kafka_port}"

    def registry_url(self) -> str:
        """The Confluent-compatible API of the registry (HTTPS on the local stack with
        ``stack_tls``)."""
        scheme = "https" if self.stack_tls else "http"
        return (self.schema_registry_url
                or f"{scheme}://{self.host}:{self.registry_port}/apis/ccompat/v7")

    def registry_native_url(self) -> str:
        """Apicurio's own v2 API (what the Kafka Connect converter talks to)."""
        return self.registry_url().replace("/apis/ccompat/v7", "/apis/registry/v2")

    def connect(self) -> str:
        return self.connect_url or f"http://{self.host}:{self.connect_port}"

    def topic(self, table: str) -> str:
        return f"{self.topic_prefix}.{self.source_database}.{table}"

    def topic_tables(self) -> dict[str, str]:
        """Every source topic and the declared table whose changes it carries."""
        return {self.topic(t): t for t in self.graph().names}

    def source_topics(self) -> tuple[str, ...]:
        """The source topics (one per source table), in the tables' order."""
        return tuple(self.topic_tables())

    def stream_topics(self) -> tuple[str, ...]:
        """What a worker reads, in order: the source topics and the control topic."""
        return (*self.source_topics(), self.control_topic())

    def worker_dir(self) -> Path:
        return self.worker_data_dir or (self.state_dir / "worker")

    def member_name(self) -> str:
        """This worker's name in the deployment: ``worker_name``, or the host name and a
        hash of the data directory (distinct for every worker process on a host)."""
        if self.worker_name:
            return self.worker_name
        where = hashlib.sha1(str(self.worker_dir().resolve()).encode()).hexdigest()[:8]
        host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())
        return f"{host}-{where}"

    def data_group(self) -> str:
        """The worker's own consumer group for the source topics: every worker reads every
        partition (its join state is whole), so each reads in a group of its own."""
        return f"{self.worker_id}.{self.member_name()}"

    def lease_group(self) -> str:
        """The consumer group the workers of one deployment share: its assignment of the
        shard-lease topic's partitions says which worker writes which shard."""
        return f"{self.worker_id}.shards"

    def lease_topic(self) -> str:
        return f"{self.worker_id}.shards"

    def control_topic(self) -> str:
        """Commands to the deployment's workers (``app.control``): resync, repair."""
        return f"{self.worker_id}.control"

    def instance_id(self) -> str:
        """This worker process's static member id in the consumer group: stable across its
        restarts, distinct for every data directory (one per worker process) and host."""
        where = hashlib.sha1(str(self.worker_dir().resolve()).encode()).hexdigest()[:10]
        return f"{self.worker_id}@{socket.gethostname()}/{where}"


def stack_consumer_url_keys() -> dict[str, str]:
    """``<consumer>_db_url`` -> consumer, for every consumer of the local stack (the
    ``[consumers]`` tables of the bundled views file): the settings keys that give their
    database URLs besides ``consumer_db_urls`` (and ``VIEWSYNC_<CONSUMER>_DB_URL``)."""
    from app.views import stack_servers

    return {f"{c}_db_url": c for c in stack_servers()}


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Load and validate settings; raise :class:`ConfigError` naming the bad field."""
    path = config_file or os.environ.get("VIEWSYNC_CONFIG_FILE")
    values: dict[str, Any] = {}
    if path:
        p = Path(path)
        try:
            values = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
        values = values.get("viewsync", values)
    # Environment beats the file: drop file values that the environment sets.
    for key in list(values):
        if f"VIEWSYNC_{key.upper()}" in os.environ:
            del values[key]
    file_urls = values.get("consumer_db_urls")
    if isinstance(file_urls, dict):
        values["consumer_db_urls"] = {c: url for c, url in file_urls.items()
                                      if not os.environ.get(f"VIEWSYNC_{str(c).upper()}_DB_URL")}
    values.update(overrides)
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(x) for x in err["loc"]) or "settings"
            env = f"VIEWSYNC_{field.upper()}" if err["loc"] else ""
            where = f"{field} ({env})" if env else field
            problems.append(f"{where}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
    if settings.views_file is not None:  # validated now, before anything starts
        from app.views import ViewFileError

        try:
            settings.views()
        except ViewFileError as exc:
            raise ConfigError(f"invalid configuration: views_file (VIEWSYNC_VIEWS_FILE): "
                              f"{exc}") from None
    return settings
