"""The health of a deployment, wherever it runs, from the outside: the one model that
``viewsync status`` (``app.cli``) and the worker's status page (``app.web``) show.

Everything comes from the systems the pipeline already uses — no worker has to answer:

* the **connector** and its tasks (Kafka Connect REST);
* the **workers**: the members of the deployment's lease group, and each one's lag — the
  records of the source topics past its own consumer group's committed offsets;
* per **view**: its row count, and its *freshness* — the age of the oldest source record
  its database has not got yet, found from the shard table's written positions
  (``app.shards``) and the timestamp of the first record past them (0 when none);
* the **dead letters** in the dead-letter topic.

A :class:`Problem` is reported (and the command exits 1) for a connector or task that is not
RUNNING, no worker, a worker's lag above ``status_max_lag`` records, a view staler than
``status_max_staleness_s`` seconds, or a component that does not answer.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa

from app.clients import kafka_config
from app.positions import Positions, records_to_go
from app.settings import Settings
from app.shards import merged_minimum
from app.sink import sink_urls
from app.views import ViewDef


@dataclass
class WorkerStatus:
    name: str
    host: str
    lag: int | None


@dataclass
class ViewStatus:
    view: str
    rows: int | None
    #: Seconds since the oldest source record this view's database lacks (0: none).
    staleness_s: float | None
    #: Source records past what every shard of the database has written.
    behind: int | None


class RowCounts:
    """Views' row counts, each counted again at most every ``ttl_s`` seconds. A ``COUNT(*)``
    scans the table (a second or more at millions of rows): right for a one-shot
    ``viewsync status`` (``ttl_s=0``), not every few seconds for a page left open."""

    def __init__(self, ttl_s: float = 0.0) -> None:
        self.ttl_s = ttl_s
        self._counted: dict[str, tuple[float, int]] = {}

    def count(self, engine: sa.Engine, view: ViewDef) -> int:
        hit = self._counted.get(view.name)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        with engine.connect() as conn:
            n = int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {view.table}")).scalar_one())
        self._counted[view.name] = (time.monotonic(), n)
        return n


@dataclass
class Status:
    connector: str = "unknown"
    tasks: list[str] = field(default_factory=list)
    workers: list[WorkerStatus] = field(default_factory=list)
    views: list[ViewStatus] = field(default_factory=list)
    dead_letters: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return dict(asdict(self), ok=self.ok)


def _ends(settings: Settings) -> Positions:
    from app.topic_range import topic_ends

    return topic_ends(settings, settings.source_topics())


def _connector(settings: Settings, st: Status) -> None:
    from app.connectors import ConnectClient, ConnectError, trace_line

    try:
        doc = ConnectClient(settings).status()
    except ConnectError as exc:
        st.problems.append(f"connector: {exc}")
        return
    st.connector = str(doc.get("connector", {}).get("state", "unknown"))
    st.tasks = [str(t.get("state")) for t in doc.get("tasks", [])]
    # A FAILED one says why; the workers' supervisors (app.supervisor) restart it.
    healing = " (the workers restart it with backoff)" if settings.connector_supervise else ""
    if st.connector != "RUNNING":
        why = (f": {trace_line(str(doc['connector'].get('trace', '')))}{healing}"
               if st.connector == "FAILED" else "")
        st.problems.append(f"connector {settings.connector_name} is {st.connector}{why}")
    for i, task in enumerate(doc.get("tasks", [])):
        state = st.tasks[i]
        if state != "RUNNING":
            why = (f": {trace_line(str(task.get('trace', '')))}{healing}"
                   if state == "FAILED" else "")
            st.problems.append(f"connector task {i} is {state}{why}")
    if not st.tasks:
        st.problems.append(f"connector {settings.connector_name} has no task")


def _workers(settings: Settings, st: Status, ends: Positions) -> None:
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka_config(settings))
    group = settings.lease_group()
    desc = admin.describe_consumer_groups([group])[group].result(30)
    for m in desc.members:
        c = Consumer(kafka_config(settings, {"group.id": f"{settings.worker_id}.{m.client_id}",
                                             "enable.auto.commit": False}))
        try:
            committed = c.committed([TopicPartition(t, p) for t, p in ends], timeout=30)
            lag: int | None = records_to_go(
                ends, {(tp.topic, tp.partition): max(tp.offset, 0) for tp in committed})
        except Exception:
            lag = None
        finally:
            c.close()
        st.workers.append(WorkerStatus(str(m.client_id), str(m.host), lag))
        if lag is not None and lag > settings.status_max_lag:
            st.problems.append(f"worker {m.client_id}: lag {lag:,} records "
                               f"(> {settings.status_max_lag:,})")
    if not st.workers:
        st.problems.append(f"no worker of deployment {settings.worker_id!r} is running "
                           f"(lease group {group} is empty)")


def _staleness(settings: Settings, written: Positions | None, ends: Positions
               ) -> tuple[float | None, int | None]:
    """Seconds since the oldest record past ``written``, and how many records that is."""
    from app.topic_range import read_range

    if written is None:
        return None, None
    behind = {tp: (written.get(tp, 0), end) for tp, end in ends.items()
              if written.get(tp, 0) < end}
    oldest: float | None = None
    for (topic, part), (start, end) in behind.items():
        for r in read_range(settings, topic, {part: start}, {part: end}):
            oldest = r.timestamp_ms if oldest is None else min(oldest, r.timestamp_ms)
            break
    age = 0.0 if oldest is None else max(0.0, time.time() - oldest / 1000)
    return age, records_to_go(ends, written)


def _views(settings: Settings, st: Status, ends: Positions, counts: RowCounts) -> None:
    from app.reshard import shard_rows

    try:
        rows = shard_rows(settings)
    except sa.exc.DBAPIError as exc:
        st.problems.append(f"consumer databases: {str(exc.orig or exc).splitlines()[0]}")
        return
    for consumer, url in sink_urls(settings).items():
        mine = [r for r in rows if r.consumer == consumer]
        written = merged_minimum(r.positions for r in mine) if mine else None
        age, behind = _staleness(settings, written, ends)
        engine = sa.create_engine(url)
        try:
            for view in (v for v in settings.views() if v.consumer == consumer):
                try:
                    n: int | None = counts.count(engine, view)
                except sa.exc.DBAPIError as exc:
                    n = None
                    st.problems.append(f"{view.name}: {str(exc.orig or exc).splitlines()[0]}")
                st.views.append(ViewStatus(view.name, n, age, behind))
                if age is None:
                    st.problems.append(f"{view.name}: no shard has been written yet")
                elif age > settings.status_max_staleness_s:
                    st.problems.append(f"{view.name}: {age:.0f}s behind the source "
                                       f"(> {settings.status_max_staleness_s:.0f}s)")
        finally:
            engine.dispose()


def dead_letter_count(settings: Settings) -> int:
    from confluent_kafka import Consumer, TopicPartition

    from app.topic_range import partitions

    c = Consumer(kafka_config(settings, {"group.id": "viewsync-status"}))
    try:
        return sum(hi - lo for lo, hi in (
            c.get_watermark_offsets(TopicPartition(settings.dead_letter_topic, p), timeout=30)
            for p in partitions(settings, settings.dead_letter_topic)))
    finally:
        c.close()


def status(settings: Settings, counts: RowCounts | None = None) -> Status:
    """The deployment's health now; row counts as fresh as ``counts`` allows (default:
    counted now)."""
    st = Status()
    _connector(settings, st)
    try:
        ends = _ends(settings)
        _workers(settings, st, ends)
        st.dead_letters = dead_letter_count(settings)
    except Exception as exc:  # Kafka down: the rest cannot be known
        st.problems.append(f"kafka: {exc}")
        return st
    _views(settings, st, ends, counts or RowCounts())
    return st
