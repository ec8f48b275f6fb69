"""`viewsync connectors` against the real Kafka Connect REST API."""

from __future__ import annotations

from app.connectors import ConnectClient
from app.settings import Settings
from app.stack.manager import Stack


def test_apply_is_idempotent_and_running(stack: Stack, settings: Settings) -> None:
    client = ConnectClient(settings)
    assert client.apply() is False  # `stack up` registered exactly this config
    status = client.wait_running(timeout=60)
    assert status["connector"]["state"] == "RUNNING"
    assert [t["state"] for t in status["tasks"]] == ["RUNNING"]


def test_stored_config_has_no_secret(stack: Stack, settings: Settings) -> None:
    client = ConnectClient(settings)
    stored = client.current_config() or {}
    assert stored["database.password"] == "${env:VIEWSYNC_DB_PASSWORD}"
    assert settings.db_password.get_secret_value() not in str(stored)


def test_the_connector_captures_every_declared_table(stack: Stack, settings: Settings) -> None:
    stored = ConnectClient(settings).current_config() or {}
    assert stored["table.include.list"].split(",") == [
        f"{settings.source_database}.{t}" for t in settings.graph().names]
