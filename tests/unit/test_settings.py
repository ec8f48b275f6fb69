"""Settings: defaults, environment, file, and errors that name the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.settings import ConfigError, load_settings


def test_defaults_give_contract_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("VIEWSYNC_ORDER_DB_URL", "VIEWSYNC_PURCHASE_DB_URL", "VIEWSYNC_SOURCE_URL",
                "VIEWSYNC_KAFKA_BOOTSTRAP", "VIEWSYNC_SCHEMA_REGISTRY_URL"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert s.consumer_url("order").startswith("postgresql+psycopg://")
    assert s.consumer_url("purchase").startswith("mysql+pymysql://")
    assert s.registry_url().endswith("/apis/ccompat/v7")
    assert s.topic("products") == "product.product.products"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIEWSYNC_SINK_BATCH_SIZE", "17")
    monkeypatch.setenv("VIEWSYNC_ORDER_DB_URL", "postgresql+psycopg://u:p@h/db")
    s = load_settings()
    assert s.sink_batch_size == 17
    assert s.consumer_url("order") == "postgresql+psycopg://u:p@h/db"


def test_bad_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIEWSYNC_SINK_BATCH_SIZE", "0")
    with pytest.raises(ConfigError, match=r"sink_batch_size.*VIEWSYNC_SINK_BATCH_SIZE"):
        load_settings()


def test_unknown_file_key_is_rejected(tmp_path: Path) -> None:
    f = tmp_path / "viewsync.toml"
    f.write_text("[viewsync]\nsink_batch_sise = 5\n")
    with pytest.raises(ConfigError, match="sink_batch_sise"):
        load_settings(f)


def test_file_values_and_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "viewsync.toml"
    f.write_text("[viewsync]\nsink_batch_size = 5\nsink_max_wait_ms = 7\n")
    monkeypatch.setenv("VIEWSYNC_SINK_MAX_WAIT_MS", "9")
    s = load_settings(f)
    assert (s.sink_batch_size, s.sink_max_wait_ms) == (5, 9)


def test_port_clash_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIEWSYNC_CONNECT_PORT", "9092")
    with pytest.raises(ConfigError, match="connect_port and kafka_port"):
        load_settings()


def test_secrets_are_not_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIEWSYNC_DB_PASSWORD", "hunter2")
    s = load_settings()
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


# --- consumer database URLs: no consumer is named in the code -------------------------------

def test_a_stack_consumers_url_key_in_the_file_or_an_override(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "viewsync.toml"
    f.write_text('[viewsync]\norder_db_url = "postgresql+psycopg://f:p@file/order"\n'
                 'consumer_db_urls = { purchase = "mysql+pymysql://f:p@file/purchase", '
                 'inventory = "postgresql+psycopg://f:p@file/inv" }\n')
    s = load_settings(f)
    assert s.consumer_url("order") == "postgresql+psycopg://f:p@file/order"
    assert s.consumer_url("purchase") == "mysql+pymysql://f:p@file/purchase"
    assert s.consumer_url("inventory") == "postgresql+psycopg://f:p@file/inv"
    # the environment beats the file, an override beats the environment, None changes nothing
    monkeypatch.setenv("VIEWSYNC_ORDER_DB_URL", "postgresql+psycopg://e:p@env/order")
    monkeypatch.setenv("VIEWSYNC_INVENTORY_DB_URL", "postgresql+psycopg://e:p@env/inv")
    s = load_settings(f)
    assert s.consumer_url("order") == "postgresql+psycopg://e:p@env/order"
    assert s.consumer_url("inventory") == "postgresql+psycopg://e:p@env/inv"
    s = load_settings(f, order_db_url="postgresql+psycopg://o:p@over/order", purchase_db_url=None)
    assert s.consumer_url("order") == "postgresql+psycopg://o:p@over/order"
    assert s.consumer_url("purchase") == "mysql+pymysql://f:p@file/purchase"
    assert "f:p@file" not in repr(s)


def test_only_the_stack_consumers_have_a_url_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"inventory_db_url.*Extra inputs"):
        load_settings(inventory_db_url="postgresql+psycopg://u:p@h/inv")
    with pytest.raises(ConfigError, match=r"order_db_url \(VIEWSYNC_ORDER_DB_URL\)"):
        load_settings(order_db_url=5)


def test_the_stack_server_of_a_consumer_comes_from_the_views_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.resources import bundled

    bundled_text = (bundled("schemas") / "views.toml").read_text()
    f = tmp_path / "views.toml"
    f.write_text(bundled_text.replace('[consumers.purchase]\nstack_server = "mariadb"\n',
                                      '[consumers.inventory]\nstack_server = "mariadb"\n'))
    monkeypatch.setenv("VIEWSYNC_VIEWS_FILE", str(f))
    s = load_settings()
    assert s.consumer_url("inventory").startswith("mysql+pymysql://")
    assert s.consumer_url("inventory").endswith(f":{s.purchase_db_port}/inventory")
    assert s.consumer_url("purchase").startswith("postgresql+psycopg://")
    # a views file without [consumers] tables keeps the bundled file's
    without = re.sub(r'(?m)^\[consumers\.\w+\]\nstack_server = "\w+"\n', "", bundled_text)
    assert "stack_server" not in without
    f.write_text(without)
    s = load_settings()
    assert s.consumer_url("purchase") == load_settings(views_file=None).consumer_url("purchase")
    assert s.consumer_url("purchase").startswith("mysql+pymysql://")


# --- endpoints that cannot parse are refused at load, naming the field ----------------------

@pytest.mark.parametrize("bootstrap", [
    "::not-a-host::", "kafka", "kafka:0", "kafka:65536", "kafka:port", "PLAINTEXT://kafka:9092",
    "kafka:9092,", "a:1,,b:2", "bad host:9092", "1.2.3.999:9092", "[not-v6]:9092", "::1:9092",
    "-kafka:9092"])
def test_a_malformed_kafka_bootstrap_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                bootstrap: str) -> None:
    monkeypatch.setenv("VIEWSYNC_KAFKA_BOOTSTRAP", bootstrap)
    with pytest.raises(ConfigError, match=r"^invalid configuration: kafka_bootstrap "
                       r"\(VIEWSYNC_KAFKA_BOOTSTRAP\): \S"):
        load_settings()


@pytest.mark.parametrize("bootstrap", [
    "kafka:9092", "b1.example.com:9092,b2.example.com:9093", "10.0.0.1:9092", "[::1]:9092",
    "kafka_1:29092, kafka_2:29092", "localhost:1"])
def test_good_kafka_bootstraps_pass(monkeypatch: pytest.MonkeyPatch, bootstrap: str) -> None:
    monkeypatch.setenv("VIEWSYNC_KAFKA_BOOTSTRAP", bootstrap)
    assert load_settings().bootstrap() == bootstrap


@pytest.mark.parametrize("field", ["schema_registry_url", "connect_url"])
@pytest.mark.parametrize("url", [
    "registry:8081", "ftp://registry:8081", "http://", "http://:8081/x", "http://bad host/",
    "http://h:99999", "http://h:0", "http://h:port/", "https://[::1/x"])
def test_a_malformed_http_endpoint_is_refused(field: str, url: str) -> None:
    with pytest.raises(ConfigError, match=rf"^invalid configuration: {field} "
                       rf"\(VIEWSYNC_{field.upper()}\): \S"):
        load_settings(**{field: url})


@pytest.mark.parametrize("url", [
    "http://registry:8081/apis/ccompat/v7", "https://registry.example:8443/apis/ccompat/v7",
    "http://127.0.0.1:8083", "http://[::1]:8083/"])
def test_good_http_endpoints_pass(url: str) -> None:
    s = load_settings(schema_registry_url=url, connect_url=url)
    assert (s.registry_url(), s.connect()) == (url, url)


BAD_DB_URLS = ["not a url", "postgres://u:hunter2@h/db", "postgresql+psycopg://u:hunter2@h:99999/db",
               "postgresql+psycopg://u:hunter2@h:port/db", "mysql+nodriver://u:hunter2@h/db",
               "postgresql+psycopg://u:hunter2@bad host/db"]


@pytest.mark.parametrize("url", BAD_DB_URLS)
def test_a_malformed_source_url_is_refused_without_its_password(
        monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("VIEWSYNC_SOURCE_URL", url)
    with pytest.raises(ConfigError, match=r"source_url \(VIEWSYNC_SOURCE_URL\): \S") as exc:
        load_settings()
    assert "hunter2" not in str(exc.value)


@pytest.mark.parametrize("url", BAD_DB_URLS)
def test_a_malformed_consumer_url_is_refused_without_its_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.delenv("VIEWSYNC_ORDER_DB_URL", raising=False)
    # the environment, as consumer_url reads it (a consumer of the stack or any other)
    for var in ("VIEWSYNC_ORDER_DB_URL", "VIEWSYNC_INVENTORY_DB_URL"):
        monkeypatch.setenv(var, url)
        with pytest.raises(ConfigError, match=rf"{var.lower()[9:]} \({var}\): \S") as exc:
            load_settings()
        assert "hunter2" not in str(exc.value)
        monkeypatch.delenv(var)
    # a key of the file, consumer_db_urls of the file, an override
    f = tmp_path / "viewsync.toml"
    for text in (f"order_db_url = {url!r}\n", f"consumer_db_urls = {{ inventory = {url!r} }}\n"):
        f.write_text(text)
        with pytest.raises(ConfigError, match=r"consumer_db_urls.*consumer '(order|inventory)'"
                           ) as exc:
            load_settings(f)
        assert "hunter2" not in str(exc.value)
    with pytest.raises(ConfigError, match=r"consumer 'purchase'") as exc:
        load_settings(purchase_db_url=url)
    assert "hunter2" not in str(exc.value)


def test_an_override_beats_a_malformed_url_in_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """consumer_url never reads the environment's URL then: it is not checked either."""
    monkeypatch.setenv("VIEWSYNC_ORDER_DB_URL", "not a url")
    s = load_settings(order_db_url="postgresql+psycopg://u:p@h/order")
    assert s.consumer_url("order") == "postgresql+psycopg://u:p@h/order"


def test_good_database_urls_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIEWSYNC_SOURCE_URL", "mysql+pymysql://u:p@db.example:3306/product")
    monkeypatch.setenv("VIEWSYNC_ORDER_DB_URL", "postgresql+psycopg://u:p%40ss@[::1]:5432/order")
    monkeypatch.setenv("VIEWSYNC_INVENTORY_DB_URL", "")  # empty: the local stack's
    s = load_settings(purchase_db_url="mysql+pymysql://u:p@h/purchase?ssl_check_hostname=false")
    assert s.product_url() == "mysql+pymysql://u:p@db.example:3306/product"
    assert s.consumer_url("order").endswith("@[::1]:5432/order")
    assert s.consumer_url("purchase").startswith("mysql+pymysql://u:p@h/purchase")


def test_the_cli_refuses_a_malformed_setting_at_once_naming_it() -> None:
    import os
    import subprocess
    import sys
    import time

    env = dict(os.environ, VIEWSYNC_KAFKA_BOOTSTRAP="::not-a-host::")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "app.cli", "worker"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert time.monotonic() - t0 < 30
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("viewsync: invalid configuration: kafka_bootstrap "
                               "(VIEWSYNC_KAFKA_BOOTSTRAP): '::not-a-host::'"), lines


def test_the_supervisor_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.connector_supervise, s.connector_check_interval_s) == (True, 10.0)
    monkeypatch.setenv("VIEWSYNC_CONNECTOR_SUPERVISE", "false")
    monkeypatch.setenv("VIEWSYNC_CONNECTOR_CHECK_INTERVAL_S", "2.5")
    s = load_settings()
    assert (s.connector_supervise, s.connector_check_interval_s) == (False, 2.5)
    monkeypatch.setenv("VIEWSYNC_CONNECTOR_CHECK_INTERVAL_S", "0")
    with pytest.raises(ConfigError, match=r"connector_check_interval_s "
                       r"\(VIEWSYNC_CONNECTOR_CHECK_INTERVAL_S\)"):
        load_settings()
