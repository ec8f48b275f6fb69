"""What every end-to-end bench shares: its own stack, databases, connector, topics and workers.

A bench never touches the user's stack: it runs on the ``bench`` stack instance (its own state
directory and ports, see ``app.stack.instances``), started here when it is not running, with
the ``production`` JVM profile unless ``VIEWSYNC_JVM_PROFILE`` says otherwise. On it,
:class:`BenchEnv` creates a tagged Product
database, tagged consumer databases per worker variant, a tagged connector (so tagged
topics) and drops all of it on exit (unless ``keep``). Workers run as real
``viewsync worker`` processes, from this checkout or from another one (``repo``), so that
two versions can be measured side by side in one run.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.connectors import ConnectClient  # noqa: E402
from app.settings import Settings, load_settings  # noqa: E402
from app.sink import create_view_tables  # noqa: E402
from app.stack.components import SQL_DIR  # noqa: E402
from app.stack.instances import instance_env  # noqa: E402
from app.stack.manager import Stack, ensure_source_topics  # noqa: E402
from tests.integration.worker_process import WorkerProcess  # noqa: E402

# Everything below (settings, workers, subprocesses) sees the bench instance only.
_env = instance_env("bench")
_env.setdefault("VIEWSYNC_JVM_PROFILE", "production")
os.environ.clear()
os.environ.update(_env)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def count(engine: sa.Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql), params).scalar_one())


def wait_for(fn: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> float:
    """Seconds until ``fn()`` is true; ``TimeoutError`` naming ``what`` after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if fn():
            return time.monotonic() - t0
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


class Worker(WorkerProcess):
    """One ``viewsync worker`` process of one variant, with its own consumer databases."""

    def __init__(self, name: str, settings: Settings, env: dict[str, str], repo: Path,
                 log_path: Path, dbs: dict[str, sa.Engine]) -> None:
        super().__init__(env, log_path, repo)
        self.name = name
        self.settings = settings
        self.dbs = dbs

    def pause(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)


class BenchEnv:
    """A tagged Product database + connector, and consumer databases per worker variant."""

    def __init__(self, keep: bool = False) -> None:
        self.base = load_settings()
        self.stack = Stack(self.base)
        down = [n for n, _p, _pid, ok in self.stack.status() if not ok]
        if down:
            log(f"bench stack ({self.base.state_dir}): starting {', '.join(down)}")
            self.stack.up()
        self.keep = keep
        # A bench stopped with SIGTERM still drops what it created (the finally blocks run).
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        self.tag = f"bench{random.randrange(10**6)}"
        self.tmp = Path(tempfile.mkdtemp(prefix="viewsync-bench-"))
        self.workers: list[Worker] = []
        self._consumer_dbs: list[str] = []
        tag = self.tag
        self.stack.defn.mariadb_sql("product-db", f"CREATE DATABASE {tag}; USE {tag};"
                                    + (SQL_DIR / "product.sql").read_text())
        self.settings: Settings = load_settings(
            source_database=tag, topic_prefix=tag, connector_name=f"{tag}-source")
        self.source = sa.create_engine(self.settings.product_url(), pool_pre_ping=True)

    def start_connector(self, overrides: dict[str, str] | None = None) -> None:
        """Register the bench's connector (``connectors/product-source.json``, with
        ``overrides`` of its config for a before/after comparison)."""
        ensure_source_topics(self.settings)
        client = ConnectClient(self.settings)
        client.config.update(overrides or {})
        client.apply()
        client.wait_running(timeout=120)

    def worker(self, name: str, repo: Path = ROOT, **env: str) -> Worker:
        """A worker variant with fresh consumer databases ``order_<tag>_<name>`` and
        ``purchase_<tag>_<name>`` and its own consumer group and data directory."""
        db = f"{self.tag}_{name}"
        self.stack.defn.psql(f'CREATE DATABASE "order_{db}" OWNER "{self.base.db_user}"')
        self.stack.defn.mariadb_sql("purchase-db", f"CREATE DATABASE purchase_{db}")
        self._consumer_dbs.append(db)
        s = load_settings(
            source_database=self.tag, topic_prefix=self.tag,
            connector_name=f"{self.tag}-source",
            order_db_url=self.base.consumer_url("order").rsplit("/", 1)[0] + f"/order_{db}",
            purchase_db_url=self.base.consumer_url("purchase").rsplit("/", 1)[0]
            + f"/purchase_{db}",
        )
        create_view_tables(s)
        full_env = dict(
            os.environ, VIEWSYNC_SOURCE_DATABASE=self.tag, VIEWSYNC_TOPIC_PREFIX=self.tag,
            VIEWSYNC_ORDER_DB_URL=s.consumer_url("order"),
            VIEWSYNC_PURCHASE_DB_URL=s.consumer_url("purchase"),
            VIEWSYNC_WORKER_ID=f"{db}-worker", VIEWSYNC_WORKER_NAME=name,
            VIEWSYNC_WORKER_DATA_DIR=str(self.tmp / name), **env)
        w = Worker(name, s, full_env, repo, self.tmp / f"{name}.log",
                   dbs={c: sa.create_engine(s.consumer_url(c), pool_pre_ping=True)
                        for c in ("order", "purchase")})
        self.workers.append(w)
        return w

    def sibling(self, w: Worker, name: str, **env: str) -> Worker:
        """Another worker process of ``w``'s deployment: same consumer databases and
        deployment id, its own name and data directory."""
        full_env = dict(w.env, VIEWSYNC_WORKER_NAME=name,
                        VIEWSYNC_WORKER_DATA_DIR=str(self.tmp / name), **env)
        s = Worker(name, w.settings, full_env, w.repo, self.tmp / f"{name}.log", w.dbs)
        self.workers.append(s)
        return s

    def close(self) -> None:
        for w in self.workers:
            w.resume()
            w.stop()
            for e in w.dbs.values():
                e.dispose()
        self.source.dispose()
        if self.keep:
            log(f"kept: databases and connector tagged {self.tag}; logs in {self.tmp}")
            return
        ConnectClient(self.settings).delete()
        self.stack.defn.mariadb_sql("product-db", f"DROP DATABASE IF EXISTS {self.tag}")
        for db in self._consumer_dbs:
            self.stack.defn.mariadb_sql("purchase-db", f"DROP DATABASE IF EXISTS purchase_{db}")
            self.stack.defn.psql(f'DROP DATABASE IF EXISTS "order_{db}" WITH (FORCE)')
        self._delete_topics()

    def _delete_topics(self) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.base.bootstrap()})
        names = [t for t in admin.list_topics(timeout=10).topics
                 if t.startswith(self.tag)]
        if names:
            for fut in admin.delete_topics(names).values():
                try:
                    fut.result(30)
                except Exception as exc:  # report, do not fail the bench on cleanup
                    log(f"could not delete a bench topic: {exc}")
