"""`viewsync stack` against the running stack: status, env, and a second `up` that changes
nothing."""

from __future__ import annotations

import subprocess
import sys

import sqlalchemy as sa

from app.settings import Settings
from app.stack.manager import Stack, read_pid

CLI = [sys.executable, "-m", "app.cli"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)


def test_status_lists_every_component_up(stack: Stack) -> None:
    r = _run("stack", "status")
    assert r.returncode == 0, r.stdout + r.stderr
    for comp in stack.components():
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith(comp.name))
        assert line.rstrip().endswith("up"), line
        assert str(comp.port) in line


def test_second_up_changes_nothing(stack: Stack) -> None:
    before = {c.name: read_pid(stack.paths, c.name) for c in stack.components()}
    r = _run("stack", "up")
    assert r.returncode == 0, r.stderr
    after = {c.name: read_pid(stack.paths, c.name) for c in stack.components()}
    assert before == after, "a second `up` restarted something"
    for comp in stack.components():
        assert f"= {comp.name} already running" in r.stderr
    assert "unchanged, RUNNING" in r.stderr
    assert "mvn:" not in r.stderr and "apt-get" not in r.stderr


def test_env_prints_contract_variables_that_open(stack: Stack, settings: Settings) -> None:
    r = _run("stack", "env")
    assert r.returncode == 0
    env = dict(
        ln.removeprefix("export ").split("=", 1) for ln in r.stdout.splitlines()
    )
    env = {k: v.strip("'") for k, v in env.items()}
    for name in ("VIEWSYNC_SOURCE_URL", "VIEWSYNC_ORDER_DB_URL", "VIEWSYNC_PURCHASE_DB_URL",
                 "VIEWSYNC_KAFKA_BOOTSTRAP", "VIEWSYNC_SCHEMA_REGISTRY_URL",
                 "VIEWSYNC_CONNECT_URL"):
        assert env.get(name), f"{name} missing from `stack env`"
    for name in ("VIEWSYNC_SOURCE_URL", "VIEWSYNC_ORDER_DB_URL", "VIEWSYNC_PURCHASE_DB_URL"):
        engine = sa.create_engine(env[name])
        try:
            with engine.begin() as conn:  # a plain create_engine, read and write
                conn.execute(sa.text("CREATE TABLE IF NOT EXISTS viewsync_probe (x INT)"))
                conn.execute(sa.text("DROP TABLE viewsync_probe"))
        finally:
            engine.dispose()


def test_logs_of_one_component(stack: Stack) -> None:
    r = _run("stack", "logs", "kafka", "-n", "5")
    assert r.returncode == 0 and "kafka.log" in r.stdout
    bad = _run("stack", "logs", "nope")
    assert bad.returncode == 1 and "unknown component" in bad.stderr
