"""The registry's schemas (registered by Debezium) read as the contracts the views file
declares (its [sources]: key and columns), and the records in the real topics decode."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient

from app.decode import DecodeFailure, Decoder, RegistrySchemas, SchemaUnavailable, check_writer
from app.settings import Settings
from app.stack.manager import Stack
from app.views import bundled_definitions

TABLES = bundled_definitions().graph.names


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("part", ["key", "value"])
@pytest.mark.usefixtures("source_events")
def test_registered_schema_reads_as_the_contract(
    stack: Stack, settings: Settings, table: str, part: str
) -> None:
    client = SchemaRegistryClient({"url": settings.registry_url()})
    subject = f"{settings.topic(table)}-{part}"
    registered = client.get_latest_version(subject)
    source = settings.graph().source(table)
    assert check_writer(source, part, registered.schema.schema_str) is None


@pytest.mark.usefixtures("source_events")
def test_records_in_the_topics_decode(stack: Stack, settings: Settings,
                                      product_db: sa.Engine) -> None:
    """Every record Debezium writes for a fresh row of each table decodes. (Read from the
    topics' current ends: earlier tests put deliberate poison on them.)"""
    import random

    from confluent_kafka import TopicPartition

    from app.topic_range import end_offsets, partitions

    topics = settings.topic_tables()
    decoder = Decoder(RegistrySchemas(settings.registry_url()), topics, settings.graph())
    c = Consumer({"bootstrap.servers": settings.bootstrap(), "group.id": f"probe-{time.time()}",
                  "enable.auto.commit": False})
    ends = {(t, p): off for t in topics
            for p, off in end_offsets(settings, t, partitions(settings, t)).items()}
    base = (1 << 41) + random.randrange(1 << 30)
    with product_db.begin() as conn:
        conn.execute(sa.text("INSERT INTO categories VALUES (:i, NULL, 'dec', 'Decode')"),
                     {"i": base})
        conn.execute(sa.text("INSERT INTO warranty_types VALUES (:i, 'Decode', 3)"), {"i": base})
        conn.execute(sa.text(
            "INSERT INTO products (id, sku, name, category_id, warranty_type_id, unit, price, "
            "status) VALUES (:i, :s, 'Decode', :i, :i, 'pcs', 1.25, 'active')"),
            {"i": base, "s": f"DEC-{base}"})
        conn.execute(sa.text("INSERT INTO batches VALUES (:i, :i, 'DEC', '2024-02-29', NULL)"),
                     {"i": base})
    c.assign([TopicPartition(t, p, max(off, 0)) for (t, p), off in ends.items()])
    seen: dict[str, int] = {}
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and len(seen) < len(topics):
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            out = decoder.decode(msg.topic(), msg.key(), msg.value())
            assert not isinstance(out, DecodeFailure), out
            seen[msg.topic()] = seen.get(msg.topic(), 0) + 1
    finally:
        c.close()
    assert set(seen) == set(topics), f"no records seen in {set(topics) - set(seen)}"


def test_registry_answers_unknown_id_and_outage_differently(stack: Stack,
                                                             settings: Settings) -> None:
    with pytest.raises(KeyError):
        RegistrySchemas(settings.registry_url()).schema_text(987_654_321)
    with pytest.raises(SchemaUnavailable):
        RegistrySchemas("http://127.0.0.1:9/apis/ccompat/v7").schema_text(1)


def _schemas_check(*args: str) -> tuple[int, dict[str, object]]:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "app.cli", "schemas", "check", "--json", *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    return r.returncode, json.loads(r.stdout)


def _with_columns(schema: dict[str, object], keep: Callable[[str], bool],
                  extra: list[dict[str, object]]) -> dict[str, object]:
    """The products value schema with its row image's columns filtered and extended."""
    doc = json.loads(json.dumps(schema))
    row = doc["fields"][0]["type"][1]
    row["fields"] = [f for f in row["fields"] if keep(f["name"])] + extra
    return doc


@pytest.mark.usefixtures("source_events")
def test_schemas_check_passes_on_the_registry_and_catches_a_breaking_migration(
    stack: Stack, settings: Settings, tmp_path: Path,
) -> None:
    rc, out = _schemas_check()
    assert rc == 0, out
    # the key and value subjects of every declared table (the bundled example: 4 tables)
    assert len(out["checks"]) == 2 * len(settings.graph().names)  # type: ignore[arg-type]

    client = SchemaRegistryClient({"url": settings.registry_url()})
    current = json.loads(client.get_latest_version(
        f"{settings.topic('products')}-value").schema.schema_str)
    breaking = tmp_path / "breaking.avsc"
    breaking.write_text(json.dumps(_with_columns(current, lambda n: n != "sku", [])))
    additive = tmp_path / "additive.avsc"
    additive.write_text(json.dumps(_with_columns(current, lambda n: True, [
        {"name": "colour", "type": ["null", "string"], "default": None}])))

    rc, out = _schemas_check("--no-registry", "--proposed", f"products.value={additive}")
    assert rc == 0, out
    rc, out = _schemas_check("--no-registry", "--proposed", f"products.value={breaking}",
                             "--proposed", f"products.value={additive}")
    assert rc == 1, out
    checks = out["checks"]
    assert isinstance(checks, list)
    assert not checks[0]["ok"] and "sku" in checks[0]["problem"], checks[0]
    assert checks[1]["ok"]
