"""Settings: defaults, environment, file, and errors that name the field."""

from __future__ import annotations

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
