"""The control topic: commands to the workers of a deployment, in order with the changes.

``<worker_id>.control`` (one partition) is read by every worker with the source topics, so
a command takes effect at a well-defined point of the stream. Each worker carries it out for
the shards it owns — so repairs and rebuilds keep one writer per view row — and a shard
that changes hands redoes the commands past its written positions like any other record.

* ``resync VIEW``: every row of the view, in the owner's shards, is upserted from the state,
  then the rows the source does not have are deleted (the table is created first when it is
  missing): the consumer never sees the table empty, its own indexes and grants survive;
* ``repair VIEW KEYS``: those rows are re-projected and written (what ``verify --repair``
  sends for the drift it found).

The value is JSON: ``{"op": "resync", "view": "purchase.batch_view"}`` or
``{"op": "repair", "view": "order.product_view", "keys": [1, 2]}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from app.clients import kafka_config
from app.graph import Key
from app.positions import behind
from app.settings import Settings
from app.topic_range import ensure_topic

Op = Literal["resync", "repair"]


@dataclass(frozen=True)
class Command:
    op: Op
    view: str
    keys: tuple[Key, ...] = ()


def encode(cmd: Command) -> bytes:
    doc: dict[str, object] = {"op": cmd.op, "view": cmd.view}
    if cmd.op == "repair":
        doc["keys"] = list(cmd.keys)
    return json.dumps(doc).encode()


def decode(value: bytes | None, views: set[str]) -> Command | str:
    """The command, or why the record is not one (it goes to the dead-letter topic)."""
    try:
        doc = json.loads(value or b"")
        op, view = doc["op"], doc["view"]
        if op not in ("resync", "repair"):
            return f"control record: unknown op {op!r}"
        if view not in views:
            return f"control record: unknown view {view!r}"
        keys = tuple(_key(k) for k in doc.get("keys", ())) if op == "repair" else ()
        return Command(op, view, keys)
    except (ValueError, KeyError, TypeError) as exc:
        return f"control record is not a command: {type(exc).__name__}: {exc}"


def _key(value: object) -> Key:
    """A view key of a repair: an integer or a string, as JSON has it."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"key {value!r} is neither an integer nor a string")
    return value


def ensure_control_topic(settings: Settings) -> None:
    ensure_topic(settings, settings.control_topic())


def carried_out(settings: Settings, consumer: str, end: int) -> bool:
    """Whether every shard in ``consumer``'s database has written positions past ``end`` on
    the control topic (its owner has carried out every command before ``end``)."""
    from app.reshard import shard_rows, written

    done = written(shard_rows(settings), consumer)
    return done is not None and not behind(done, {(settings.control_topic(), 0): end})


def wait_carried_out(settings: Settings, consumers: set[str], end: int, timeout: float,
                     say: Callable[[str], None]) -> float:
    """Wait until the deployment carried out every command before ``end`` in every one of
    ``consumers``' databases; return the seconds it took (``TimeoutError`` past
    ``timeout``)."""
    t0 = last = time.monotonic()
    while not all(carried_out(settings, c, end) for c in consumers):
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(
                f"the workers of {settings.worker_id!r} did not carry the command out within "
                f"{timeout:.0f}s (is every shard owned? `viewsync shards status`)")
        if time.monotonic() - last > 10:
            last = time.monotonic()
            say(f"  waiting for the workers ({last - t0:.0f}s)")
        time.sleep(0.5)
    return time.monotonic() - t0


def send(settings: Settings, commands: list[Command]) -> int:
    """Append ``commands`` to the control topic; return the offset after the last one."""
    from confluent_kafka import Producer

    ensure_control_topic(settings)
    offsets: list[int] = []

    def delivered(err: object, msg: object) -> None:
        if err is None:
            offsets.append(int(msg.offset()))  # type: ignore[attr-defined]

    p = Producer(kafka_config(settings, {"acks": "all", "enable.idempotence": True}))
    for cmd in commands:
        p.produce(settings.control_topic(), value=encode(cmd), on_delivery=delivered)
    if p.flush(60) != 0 or len(offsets) != len(commands):
        raise RuntimeError(f"could not write the commands to {settings.control_topic()}")
    return max(offsets) + 1
