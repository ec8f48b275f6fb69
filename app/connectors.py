"""`viewsync connectors apply | status | restart`: the Kafka Connect REST API.

Connector configs live in ``connectors/*.json`` with ``{placeholders}`` filled from the
settings (hosts, ports, topic prefix) and from the views file (the tables to capture:
``{table_include_list}``, every declared source table; ``{partitioned_topics}``, a regex of
the topics of :func:`partitioned_tables`), and the security settings added
(``app.clients.connector_security``). Secrets are never written there: the Connect worker
resolves ``${env:VIEWSYNC_DB_PASSWORD}`` (and the other ``${env:…}``) itself.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from importlib.resources.abc import Traversable
from typing import Any

import httpx

from app.clients import connector_security
from app.resources import bundled
from app.settings import Settings

CONNECTORS_DIR = bundled("connectors")
SOURCE_CONFIG = CONNECTORS_DIR / "product-source.json"

_PLACEHOLDER = re.compile(r"(?<!\$)\{([a-z_]+)\}")


class ConnectError(Exception):
    """The Connect REST API refused or the connector failed; the message says why."""


#: The longest trace line :func:`trace_line` quotes.
TRACE_CHARS = 300


def trace_line(trace: str) -> str:
    """A Java trace in one line: its first line, and its last ``Caused by:`` (the root
    cause), each cut to TRACE_CHARS."""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip()]
    if not lines:
        return "no trace"
    first = lines[0][:TRACE_CHARS]
    causes = [ln for ln in lines[1:] if ln.startswith("Caused by:")]
    if causes and causes[-1][:TRACE_CHARS] != first:
        return f"{first} … {causes[-1][:TRACE_CHARS]}"
    return first


def partitioned_tables(settings: Settings) -> tuple[str, ...]:
    """The declared tables whose topics get ``source_partitions`` partitions when created:
    the grains of the views (one view row per source row: the tables that grow with the
    catalogue). The other tables' topics have one partition."""
    grains = {v.grain for v in settings.views()}
    return tuple(t for t in settings.graph().names if t in grains)


def _topics_regex(settings: Settings, tables: tuple[str, ...]) -> str:
    """A Java regex matching exactly the topics of ``tables``."""
    prefix = f"{re.escape(settings.topic_prefix)}\\.{re.escape(settings.source_database)}\\."
    return f"{prefix}({'|'.join(re.escape(t) for t in tables)})"


def render(path: Traversable, settings: Settings) -> tuple[str, dict[str, str]]:
    """Fill a connector file's placeholders; return (name, config)."""
    tables = settings.graph().names
    values = {
        "connector_name": settings.connector_name,
        # Every binlog client needs its own server id; derive it from the connector's name
        # so two connectors on one database never kick each other off.
        "server_id": str(5400 + zlib.crc32(settings.connector_name.encode()) % 100_000),
        "host": settings.host,
        "product_db_port": str(settings.product_db_port),
        "db_user": settings.db_user,
        "topic_prefix": settings.topic_prefix,
        "source_database": settings.source_database,
        "kafka_bootstrap": settings.bootstrap(),
        "registry_native_url": settings.registry_native_url(),
        "source_partitions": str(settings.source_partitions),
        # Debezium's list of regexes of <database>.<table> (table names are identifiers).
        "table_include_list": ",".join(f"{settings.source_database}.{t}" for t in tables),
        "partitioned_topics": _topics_regex(settings, partitioned_tables(settings)),
    }

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise ConnectError(f"{path}: unknown placeholder {{{key}}}")
        return json.dumps(values[key])[1:-1]  # inside a JSON string

    doc = json.loads(_PLACEHOLDER.sub(sub, path.read_text(encoding="utf-8")))
    config = {k: str(v) for k, v in doc["config"].items()}
    config.update(connector_security(settings))
    return str(doc["name"]), config


class ConnectClient:
    def __init__(self, settings: Settings, config_path: Traversable = SOURCE_CONFIG) -> None:
        self.settings = settings
        self.base = settings.connect()
        self.name, self.config = render(config_path, settings)

    def _req(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = httpx.request(method, f"{self.base}{path}", timeout=30, **kw)
        except httpx.HTTPError as exc:
            raise ConnectError(f"Kafka Connect at {self.base} is unreachable: {exc}") from exc
        return r

    def current_config(self) -> dict[str, str] | None:
        r = self._req("GET", f"/connectors/{self.name}/config")
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise ConnectError(f"GET config of {self.name}: {r.status_code} {r.text}")
        cfg = dict(r.json())
        cfg.pop("name", None)
        return cfg

    def apply(self) -> bool:
        """Create or update the connector; return True when something changed (idempotent)."""
        if self.current_config() == self.config:
            return False
        r = self._req("PUT", f"/connectors/{self.name}/config", json=self.config)
        if r.status_code not in (200, 201):
            raise ConnectError(f"PUT config of {self.name}: {r.status_code} {r.text}")
        return True

    def status(self) -> dict[str, Any]:
        r = self._req("GET", f"/connectors/{self.name}/status")
        if r.status_code == 404:
            raise ConnectError(
                f"connector {self.name} is not registered (run: viewsync connectors apply)"
            )
        if r.status_code != 200:
            raise ConnectError(f"GET status of {self.name}: {r.status_code} {r.text}")
        return dict(r.json())

    def delete(self) -> bool:
        """Remove the connector (its topics and offsets stay); False when it was not there."""
        r = self._req("DELETE", f"/connectors/{self.name}")
        if r.status_code == 404:
            return False
        if r.status_code not in (200, 204):
            raise ConnectError(f"DELETE {self.name}: {r.status_code} {r.text}")
        return True

    def restart(self, only_failed: bool = False) -> None:
        """Restart the connector and its tasks (``only_failed``: only those FAILED, KIP-745)."""
        flag = "true" if only_failed else "false"
        r = self._req("POST",
                      f"/connectors/{self.name}/restart?includeTasks=true&onlyFailed={flag}")
        if r.status_code not in (200, 202, 204):
            raise ConnectError(f"restart of {self.name}: {r.status_code} {r.text}")

    def _put_state(self, action: str) -> None:
        r = self._req("PUT", f"/connectors/{self.name}/{action}")
        if r.status_code not in (200, 202, 204):
            raise ConnectError(f"{action} of {self.name}: {r.status_code} {r.text}")

    def stop(self, timeout: float = 120.0) -> None:
        """Stop the connector (state STOPPED: tasks shut down, offsets flushed, config kept)."""
        self._put_state("stop")
        self._wait_state("STOPPED", timeout)

    def resume(self) -> None:
        self._put_state("resume")

    def offsets(self) -> list[dict[str, Any]]:
        """The connector's committed source offsets (``GET /connectors/{name}/offsets``)."""
        r = self._req("GET", f"/connectors/{self.name}/offsets")
        if r.status_code != 200:
            raise ConnectError(f"GET offsets of {self.name}: {r.status_code} {r.text}")
        return list(r.json().get("offsets", []))

    def reset_offsets(self) -> None:
        """Forget where the connector was (it must be STOPPED): its next start snapshots."""
        r = self._req("DELETE", f"/connectors/{self.name}/offsets")
        if r.status_code not in (200, 202, 204):
            raise ConnectError(f"reset offsets of {self.name}: {r.status_code} {r.text}")

    def _wait_state(self, state: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.status()
            if last["connector"]["state"] == state and not last.get("tasks"):
                return
            time.sleep(0.5)
        raise ConnectError(f"connector {self.name} not {state} within {timeout:.0f}s: {last}")

    def wait_running(self, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the connector and all its tasks are RUNNING; fail fast on FAILED."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                last = self.status()
            except ConnectError:
                time.sleep(0.5)
                continue
            states = [last["connector"]["state"]] + [t["state"] for t in last.get("tasks", [])]
            if "FAILED" in states:
                traces = [t.get("trace", "") for t in last.get("tasks", []) if t.get("trace")]
                raise ConnectError(
                    f"connector {self.name} FAILED: " + (traces[0][:2000] if traces else str(last))
                )
            if last.get("tasks") and all(s == "RUNNING" for s in states):
                return last
            time.sleep(0.5)
        raise ConnectError(f"connector {self.name} not RUNNING within {timeout:.0f}s: {last}")
