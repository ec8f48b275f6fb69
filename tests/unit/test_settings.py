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
