"""Stack instances: the tests' and benches' stacks share nothing with the user's."""

from __future__ import annotations

import pytest

from app.settings import Settings
from app.stack.instances import (
    EPHEMERAL_FIRST,
    INSTANCES,
    PORT_FIELDS,
    instance_env,
    instance_overrides,
)


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_an_instance_has_its_own_state_dir_and_ports(name: str) -> None:
    user = Settings()
    inst = Settings(**instance_overrides(name))
    assert inst.state_dir != user.state_dir
    assert inst.state_dir.name.endswith(f"-{name}")
    user_ports = {getattr(user, f) for f in PORT_FIELDS}
    inst_ports = {getattr(inst, f) for f in PORT_FIELDS}
    assert not user_ports & inst_ports


def test_instances_do_not_share_ports() -> None:
    seen: set[int] = set()
    for name in INSTANCES:
        ports = {v for f, v in instance_overrides(name).items() if f in PORT_FIELDS}
        assert not ports & seen
        seen |= ports


@pytest.mark.parametrize("name", sorted(INSTANCES))
def test_an_instance_listens_below_the_ephemeral_port_range(name: str) -> None:
    """A listener on an ephemeral port can find it taken by a client connection's local end
    (seen once in CI: "Address already in use")."""
    ports = {f: v for f, v in instance_overrides(name).items() if f in PORT_FIELDS}
    assert all(v < EPHEMERAL_FIRST for v in ports.values()), ports


def test_instance_env_drops_every_setting_that_points_elsewhere() -> None:
    env = instance_env("test", {
        "VIEWSYNC_ORDER_DB_URL": "postgresql+psycopg://u:p@prod/order",
        "VIEWSYNC_KAFKA_BOOTSTRAP": "prod:9092",
        "VIEWSYNC_CONFIG_FILE": "/etc/viewsync.toml",
        "VIEWSYNC_KAFKA_PORT": "9092",
        "VIEWSYNC_JVM_PROFILE": "production",
        "VIEWSYNC_TEST_CONVERGE_TIMEOUT": "60",
        "PATH": "/usr/bin",
    })
    assert "VIEWSYNC_ORDER_DB_URL" not in env
    assert "VIEWSYNC_KAFKA_BOOTSTRAP" not in env
    assert "VIEWSYNC_CONFIG_FILE" not in env
    assert env["VIEWSYNC_KAFKA_PORT"] == str(9092 + INSTANCES["test"])
    assert env["VIEWSYNC_JVM_PROFILE"] == "production"
    assert env["VIEWSYNC_TEST_CONVERGE_TIMEOUT"] == "60"
    assert env["PATH"] == "/usr/bin"


def test_unknown_instance_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown stack instance"):
        instance_overrides("prod")
