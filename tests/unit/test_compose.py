"""``docker-compose.yml``, checked statically (there is no Docker engine here): valid YAML,
the same topology and ports as ``viewsync stack up``, a worker whose settings are real
settings and whose image is built from the wheel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from app.settings import Settings, stack_consumer_url_keys

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def _host_port(service: dict[str, Any]) -> int:
    (mapping,) = service["ports"]
    return int(str(mapping).split(":")[-2])


def test_every_stack_component_is_a_service_on_the_stacks_port() -> None:
    s = Settings()
    services = _compose()["services"]
    expected = {"product-db": s.product_db_port, "purchase-db": s.purchase_db_port,
                "order-db": s.order_db_port, "kafka": s.kafka_port,
                "registry": s.registry_port, "connect": s.connect_port}
    for name, port in expected.items():
        assert name in services, f"docker-compose.yml has no {name}"
        assert _host_port(services[name]) == port, name


def test_databases_are_the_contracts() -> None:
    services = _compose()["services"]
    assert services["product-db"]["environment"]["MARIADB_DATABASE"] == Settings().source_database
    assert services["purchase-db"]["environment"]["MARIADB_DATABASE"] == "purchase"
    assert services["order-db"]["environment"]["POSTGRES_DB"] == "order"
    assert "--binlog-format=ROW" in services["product-db"]["command"]


def test_worker_settings_are_real_settings() -> None:
    env = _compose()["services"]["worker"]["environment"]
    fields = set(Settings.model_fields) | set(stack_consumer_url_keys())  # + consumers' URLs
    for key in env:
        assert key.startswith("VIEWSYNC_"), key
        assert key.removeprefix("VIEWSYNC_").lower() in fields, f"{key} is not a setting"


def test_worker_image_is_built_from_the_wheel_without_the_checkout() -> None:
    build = _compose()["services"]["worker"]["build"]["dockerfile_inline"]
    stages = build.split("\nFROM ")
    assert len(stages) == 2, "a wheel stage and a runtime stage"
    assert "pip wheel" in stages[0]
    runtime = stages[1]
    assert "pip install" in runtime and ".whl" in runtime
    assert "COPY . " not in runtime and "COPY app" not in runtime
    assert 'CMD ["viewsync", "worker"]' in runtime


def test_prometheus_scrapes_the_workers_metrics_port_and_grafana_shows_it() -> None:
    services = _compose()["services"]
    worker, prometheus, grafana = services["worker"], services["prometheus"], services["grafana"]
    port = int(worker["environment"]["VIEWSYNC_METRICS_PORT"])
    assert str(port) in [str(p) for p in worker["expose"]]
    for s in (prometheus, grafana):
        assert s["profiles"] == worker["profiles"]
    assert prometheus["image"].startswith("prom/prometheus")
    assert grafana["image"].startswith("grafana/grafana")
    assert _host_port(prometheus) == 9090 and _host_port(grafana) == 3000
    mounts = {c: h for h, c in (v.rsplit(":", 1)[0].split(":", 1) for v in prometheus["volumes"])}
    config = yaml.safe_load((ROOT / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "viewsync"]
    targets = [(name, sd["port"]) for sd in job.get("dns_sd_configs", [])
               for name in sd["names"]]
    targets += [tuple(str(t).rsplit(":", 1)) for sc in job.get("static_configs", [])
                for t in sc["targets"]]
    assert targets and all(h == "worker" and int(p) == port for h, p in targets), targets
