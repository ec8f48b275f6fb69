"""The second example schema end to end on the real stack: ``schemas/examples/catalog``.

An e-commerce catalogue nothing like the demo (string keys, a hierarchy ``item_groups``
with the separator " / " and two paths, the three-hop chain variants → items → brands →
countries, an optional ``items.supplier``, no foreign keys, DATETIME(3), TIMESTAMP,
TINYINT(1), ENUM, DOUBLE, DECIMAL, DATE, utf8mb4 text), on a stack of its own inside the
test instance: its own Product database (``catalog_<uuid8>``, seeded from the example's
``product.sql``), its own connector and topics (``topic_prefix`` and ``source_database`` =
that name; the table list from the example's views file), and its own consumer databases
(``shop`` on the consumers' PostgreSQL, ``warehouse`` on the Purchase MariaDB) — all of it
deleted at the end, failed or not.

A random workload generated from the views file (``tests/integration/graph_workload.py``,
fixed seed ``VIEWSYNC_CATALOG_SEED``) runs through one deployment: the initial snapshot,
a few hundred steps, a kill -9 of the worker in the middle of a workload and its restart, a
second worker joining under load (the two share the shards), and ``viewsync verify`` at the
end. After each phase every view must equal, row by row, the generic reference join
(``tests/unit/reference.py``) of the source tables as they then are.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import tomllib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app.connectors import ConnectClient
from app.settings import Settings, load_settings
from app.stack.manager import Stack, ensure_source_topics
from app.views import view_named
from tests.integration.conftest import CONVERGE_TIMEOUT, LIVE_TIMEOUT, ROOT, WorkerProcess
from tests.integration.graph_workload import (
    GraphWorkload,
    Views,
    actual_views,
    diff_views,
    expected_views,
    read_columns,
    source_engine,
)

EXAMPLE = ROOT / "schemas" / "examples" / "catalog"
VIEWS_FILE = EXAMPLE / "views.toml"
SEED = int(os.environ.get("VIEWSYNC_CATALOG_SEED", "190519"))


@dataclass
class Catalog:
    """The example's own databases, connector and deployment on the test instance."""

    tag: str
    settings: Settings
    stack: Stack
    tmp: Path
    env: dict[str, str]
    deployment: str = field(default_factory=lambda: f"cat-{uuid.uuid4().hex[:8]}")
    source: sa.Engine | None = None
    consumers: dict[str, sa.Engine] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def db(self) -> sa.Engine:
        assert self.source is not None
        return self.source

    def worker(self, name: str) -> WorkerProcess:
        w = WorkerProcess(self.tmp, worker_id=self.deployment, name=name, **self.env)
        self.workers.append(w)
        return w

    def logs(self, n: int = 30) -> str:
        return "\n".join(f"--- worker {w.name} ({w.log}) ---\n{w.tail(n)}" for w in self.workers)

    def connector_state(self) -> str:
        try:
            st = ConnectClient(self.settings).status()
        except Exception as exc:  # only for a failure message
            return f"connector status unavailable: {exc}"
        tasks = [(t["state"], t.get("trace", "")[:300]) for t in st.get("tasks", [])]
        return f"connector {st['connector']['state']}, tasks {tasks}"

    def expected(self) -> Views:
        return expected_views(self.db, self.settings.graph(), self.settings.views())

    def converge(self, phase: str, workers: Sequence[WorkerProcess],
                 timeout: float = CONVERGE_TIMEOUT) -> Views:
        """Poll until every view equals the reference join; fail naming ``phase``."""
        views = self.settings.views()
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        while True:
            expected = self.expected()
            problems = diff_views(expected, actual_views(self.consumers, views))
            if not problems:
                # (a vacuous phase proves nothing: the workload keeps rows in every view)
                assert all(expected.values()), (phase, {k: len(v) for k, v in expected.items()})
                print(f"{phase}: converged in {time.monotonic() - t0:.1f}s; rows: "
                      + ", ".join(f"{k}={len(v)}" for k, v in expected.items()))
                return expected
            dead = [w.name for w in workers if not w.alive()]
            if dead or time.monotonic() > deadline:
                why = f"worker(s) {dead} exited" if dead else f"no convergence in {timeout:.0f}s"
                shown = "\n".join(problems[:40])
                more = f"\n… and {len(problems) - 40} more" if len(problems) > 40 else ""
                pytest.fail(f"{phase}: {why}; {len(problems)} differences:\n{shown}{more}\n"
                            f"{self.connector_state()}\n{self.logs()}", pytrace=False)
            time.sleep(0.5)

    def owners(self) -> dict[str, dict[int, str]]:
        out = {}
        for name, engine in self.consumers.items():
            try:
                with engine.connect() as conn:
                    out[name] = {int(s): str(o) for s, o in conn.execute(
                        sa.text("SELECT shard, owner FROM viewsync_shards"))}
            except sa.exc.ProgrammingError:
                out[name] = {}
        return out

    def wait_owned(self, names: set[str], timeout: float = LIVE_TIMEOUT) -> None:
        """Every shard claimed in every consumer database, by the workers ``names``."""
        shards = self.settings.shards
        deadline = time.monotonic() + timeout
        while True:
            got = self.owners()
            if all(set(o) >= set(range(shards)) and {o[s] for s in range(shards)} == names
                   for o in got.values()):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"shards not owned by {sorted(names)} within {timeout:.0f}s: "
                            f"{got}\n{self.logs()}", pytrace=False)
            time.sleep(0.25)

    def verify(self, *args: str) -> tuple[int, dict[str, Any]]:
        """``viewsync verify --json`` with the deployment's environment."""
        r = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "python"), "-m", "app.cli", "verify", "--json", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
            env=dict(self.env, VIEWSYNC_WORKER_ID=self.deployment))
        assert r.returncode in (0, 1) and r.stdout.strip(), (
            f"verify {args} exited {r.returncode}:\n{r.stderr[-3000:]}")
        return r.returncode, json.loads(r.stdout)


def _drop_everything(c: Catalog) -> None:
    """Workers, connector, databases and topics of ``c``: each step tried, the first
    error raised after all of them."""
    errors: list[str] = []

    def attempt(what: str, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:
            errors.append(f"{what}: {exc}")

    for w in c.workers:
        attempt(f"stop worker {w.name}", w.stop)
    attempt("delete the connector", lambda: ConnectClient(c.settings).delete())
    for e in [*c.consumers.values(), *([c.source] if c.source else [])]:
        e.dispose()
    st, tag = c.stack, c.tag
    attempt("drop the Product database",
            lambda: st.defn.mariadb_sql("product-db", f"DROP DATABASE IF EXISTS {tag}"))
    attempt("drop the shop database",
            lambda: st.defn.psql(f'DROP DATABASE IF EXISTS "{tag}_shop" WITH (FORCE)'))
    attempt("drop the warehouse database", lambda: st.defn.mariadb_sql(
        "purchase-db", f"DROP DATABASE IF EXISTS {tag}_warehouse"))

    def topics() -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": c.settings.bootstrap()})
        names = [t for t in admin.list_topics(timeout=30).topics
                 if t.startswith((f"{tag}.", f"{c.deployment}."))
                 or t in (f"_schema-history.{tag}", f"__debezium-heartbeat.{tag}")]
        for fut in (admin.delete_topics(names).values() if names else []):
            fut.result(30)

    attempt("delete the topics", topics)
    if errors:
        raise AssertionError("cleanup failed: " + "; ".join(errors))


@pytest.fixture
def catalog(stack: Stack, settings: Settings, tmp_path: Path) -> Iterator[Catalog]:
    tag = f"catalog_{uuid.uuid4().hex[:8]}"
    shop_url = settings.consumer_url("order").rsplit("/", 1)[0] + f"/{tag}_shop"
    warehouse_url = settings.consumer_url("purchase").rsplit("/", 1)[0] + f"/{tag}_warehouse"
    s = load_settings(views_file=VIEWS_FILE, source_database=tag, topic_prefix=tag,
                      connector_name=f"{tag}-source",
                      consumer_db_urls={"shop": shop_url, "warehouse": warehouse_url})
    env = dict(os.environ, VIEWSYNC_VIEWS_FILE=str(VIEWS_FILE), VIEWSYNC_TOPIC_PREFIX=tag,
               VIEWSYNC_SOURCE_DATABASE=tag, VIEWSYNC_CONNECTOR_NAME=f"{tag}-source",
               VIEWSYNC_SHOP_DB_URL=shop_url, VIEWSYNC_WAREHOUSE_DB_URL=warehouse_url)
    c = Catalog(tag=tag, settings=s, stack=stack, tmp=tmp_path, env=env)
    try:
        stack.defn.mariadb_sql("product-db", f"CREATE DATABASE {tag}; USE {tag};"
                               + (EXAMPLE / "product.sql").read_text())
        stack.defn.psql(f'CREATE DATABASE "{tag}_shop" OWNER "{settings.db_user}"')
        stack.defn.mariadb_sql("purchase-db", f"CREATE DATABASE {tag}_warehouse")
        c.source = source_engine(s.product_url())
        c.consumers = {"shop": sa.create_engine(shop_url, pool_pre_ping=True),
                       "warehouse": sa.create_engine(warehouse_url, pool_pre_ping=True)}
        yield c
    finally:
        print(f"\ncatalog example {tag}: deployment {c.deployment}, logs in {tmp_path}")
        _drop_everything(c)


def _assert_parsed_as_written(s: Settings) -> None:
    """The graph and the views the reference join takes (``app.views`` parsed them) are
    exactly what the file says, read here with tomllib."""
    doc = tomllib.loads(VIEWS_FILE.read_text())
    graph = s.graph()
    assert list(graph.names) == list(doc["sources"])
    for name, spec in doc["sources"].items():
        src = graph.source(name)
        assert (src.key, src.key_type) == (spec["key"], spec.get("key_type", "int")), name
        assert set(src.columns) == {spec["key"], *spec["columns"]}, name
        assert {(r.name, r.column, r.target, r.required) for r in src.references} == {
            (n, r["column"], r["to"], r.get("required", True))
            for n, r in spec.get("references", {}).items()}, name
        h, want = src.hierarchy, spec.get("hierarchy")
        assert (h is None) == (want is None), name
        if h is not None:
            assert (h.parent, h.separator, dict(h.paths)) == (
                want["parent"], want["separator"], want["paths"]), name
    names = []
    for consumer, tables in doc["views"].items():
        for table, spec in tables.items():
            v = view_named(f"{consumer}.{table}", s.views())
            names.append(v.name)
            assert (v.grain, v.key) == (spec["grain"], spec["key"]), v.name
            assert [(c.name, c.source) for c in v.columns] == [
                (c["name"], c["source"]) for c in spec["columns"]], v.name
    assert sorted(names) == sorted(v.name for v in s.views())


class Paced(threading.Thread):
    """The workload in a thread, ``pause`` seconds between steps; :meth:`finish` joins it
    and raises what it raised."""

    def __init__(self, wl: GraphWorkload, steps: int, pause: float) -> None:
        super().__init__(name="workload")
        self.wl, self.steps, self.pause = wl, steps, pause
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            for _ in range(self.steps):
                self.wl.step()
                time.sleep(self.pause)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.join(300)
        assert not self.is_alive(), "the workload thread did not finish"
        if self.error is not None:
            raise self.error


def test_the_catalog_example_end_to_end(catalog: Catalog) -> None:
    c, s = catalog, catalog.settings
    t_start = time.monotonic()
    _assert_parsed_as_written(s)
    graph, views = s.graph(), s.views()
    columns = read_columns(c.db, c.tag, graph.names)
    for src in graph.sources:  # every declared column is a column of the seeded table
        assert set(src.columns) <= set(columns[src.name]), src.name
    print(f"\nworkload seed: {SEED} (VIEWSYNC_CATALOG_SEED)")
    wl = GraphWorkload(c.db, graph, columns, seed=SEED)

    # 1. the initial snapshot: rows there before the connector is registered
    wl.seed()
    wl.run(40)
    ensure_source_topics(s)
    client = ConnectClient(s)
    assert f"{c.tag}.variants" in client.config["table.include.list"]
    assert client.config["table.include.list"] == ",".join(
        f"{c.tag}.{t}" for t in graph.names)
    client.apply()
    client.wait_running(timeout=120)
    w1 = c.worker("w1")
    w1.start()
    first = c.converge("initial snapshot", [w1], timeout=LIVE_TIMEOUT)
    assert all(first.values()), {k: len(v) for k, v in first.items()}

    # 2. a workload of a few hundred steps
    wl.run(300)
    c.converge("workload", [w1])

    # 3. kill -9 of the worker in the middle of a workload, changes while it is down, restart
    busy = Paced(wl, 600, pause=0.01)  # ~9 s: the restarted worker catches up under load
    time.sleep(1.0)
    w1.kill()
    time.sleep(0.5)
    w1.start()
    busy.finish()
    c.converge("kill -9 and restart", [w1])

    # 4. a second worker of the deployment joins while a workload runs: the two share the
    # shards, and every view is still exact
    w2 = c.worker("w2")
    busy = Paced(wl, 500, pause=0.01)  # the shards are handed over while it runs
    time.sleep(0.5)
    w2.start()
    busy.finish()
    c.converge("second worker joined", [w1, w2], timeout=LIVE_TIMEOUT)
    c.wait_owned({"w1", "w2"})
    wl.run(100)
    final = c.converge("two workers", [w1, w2])

    # The workload did what it is for: every kind of change, rows left invisible (dangling
    # or near-miss references, broken paths) and optional branches NULL.
    print(f"workload: {dict(wl.counts)}")
    for kind in ("insert", "update", "delete", "rekey-update", "rekey-delete-insert",
                 "rekey-cascade", "rekey-case", "near-miss-reference", "bulk-repoint",
                 "bulk-delete", "bulk-update"):
        assert wl.counts[kind] > 0, (kind, wl.counts)
    for v in views:
        visible, rows = len(final[v.name]), len(wl.rows[v.grain])
        print(f"{v.name}: {visible} of {rows} {v.grain} rows visible")
        assert 0 < visible <= rows
    assert any(len(final[v.name]) < len(wl.rows[v.grain]) for v in views)
    nullable = [(v.name, col.name) for v in views for col in v.columns if col.nullable]
    assert all(any(r[col] is None for r in final[name].values()) for name, col in nullable), (
        "every nullable column should hold a NULL somewhere")

    # 5. `viewsync verify` agrees: every view equals the join of the source
    for args in ((), ("--chunk", "7")):  # small chunks: string-key ranges in byte order
        rc, out = c.verify(*args)
        assert rc == 0 and out["drift"] == 0, json.dumps(out, indent=1)
        checked = {v["view"]: v["checked"] for v in out["views"]}
        assert checked == {name: len(rows) for name, rows in final.items()}, (checked, args)
    assert w1.alive() and w2.alive(), c.logs()

    print(f"catalog example end to end: {time.monotonic() - t_start:.0f}s")
