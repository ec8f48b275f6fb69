"""dashboards/viewsync.json queries only metrics that app.metrics exposes, through the
provisioned Prometheus datasource."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from app.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
METRIC = re.compile(r"\bviewsync_[A-Za-z0-9_]+")


def _dashboard() -> dict[str, Any]:
    doc = json.loads((DASHBOARDS / "viewsync.json").read_text())
    assert isinstance(doc, dict)
    return doc


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def _exprs() -> list[str]:
    return [t["expr"] for p in _panels(_dashboard()["panels"]) for t in p.get("targets", [])]


def _everything_recorded() -> Metrics:
    m = Metrics(worker="w")
    m.events("products", 1)
    m.rows_written("order.product_view", upserts=1, deletes=1)
    m.sink_write(rows=1, seconds=0.01)
    m.dead_letters(1)
    m.lag({("product.products", 0): 1})
    m.freshness("order.product_view", [1_700_000_000_000], 1_700_000_001.0)
    m.oldest_unapplied("order.product_view", 1.0)
    m.shards(1)
    m.caught_up(True)
    return m


def test_every_panel_metric_is_exposed() -> None:
    exposed = _everything_recorded().names()
    used = {name for expr in _exprs() for name in METRIC.findall(expr)}
    assert used, "the dashboard queries no viewsync metric"
    assert not used - exposed, f"the dashboard queries unknown metrics {used - exposed}"


def test_every_metric_is_on_the_dashboard() -> None:
    used = {name for expr in _exprs() for name in METRIC.findall(expr)}
    families = {f.name for f in Metrics().registry.collect()}
    for family in families:
        assert any(u == family or u.startswith(family + "_") for u in used), family


def test_panels_use_the_prometheus_datasource_variable() -> None:
    doc = _dashboard()
    assert doc["schemaVersion"] >= 36 and doc["uid"] == "viewsync"
    (var,) = [v for v in doc["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
    assert var["type"] == "datasource" and var["query"] == "prometheus"
    datasource = yaml.safe_load((DASHBOARDS / "provisioning/datasources/prometheus.yml")
                                .read_text())["datasources"][0]
    assert var["current"]["value"] == datasource["uid"]
    ids = [p["id"] for p in _panels(doc["panels"])]
    assert len(ids) == len(set(ids))
    for p in _panels(doc["panels"]):
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"].strip(), p["title"]
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]


def test_provisioning_points_at_the_dashboard() -> None:
    provider = yaml.safe_load((DASHBOARDS / "provisioning/dashboards/viewsync.yml")
                              .read_text())["providers"][0]
    assert provider["type"] == "file"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in compose["services"]["grafana"]
                  ["volumes"])
    container = mounts["./dashboards/viewsync.json"]
    assert Path(container).parent == Path(provider["options"]["path"])
    assert mounts["./dashboards/provisioning"] == "/etc/grafana/provisioning"
