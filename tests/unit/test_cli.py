"""The command line without any server: help everywhere, usage and config errors, exit
codes."""

from __future__ import annotations

import pytest

from app.cli import EXIT_CONFIG, cli, main

COMMANDS = [
    [], ["worker"], ["verify"], ["stack"], ["stack", "up"], ["stack", "down"],
    ["stack", "status"], ["stack", "env"], ["stack", "logs"], ["connectors"],
    ["connectors", "apply"], ["connectors", "status"], ["connectors", "restart"],
    ["connectors", "delete"], ["connectors", "resnapshot"], ["dlq"], ["dlq", "list"],
    ["dlq", "show"], ["dlq", "replay"], ["schemas"], ["schemas", "check"], ["demo"],
    ["shards"], ["shards", "status"], ["shards", "reshard"], ["status"],
    ["resync"],
    ["demo", "seed"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "viewsync")
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "Usage: viewsync" in text
    assert "\x1b[" not in text, "colour codes on a non-terminal"


def test_every_command_is_listed_above() -> None:
    import typer.main

    group = typer.main.get_group(cli)
    listed = {tuple(c) for c in COMMANDS}
    for name, cmd in group.commands.items():
        assert (name,) in listed, name
        for sub in getattr(cmd, "commands", {}):
            assert (name, sub) in listed, (name, sub)


def test_usage_error_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stack", "--instance", "prod", "status"]) == EXIT_CONFIG
    assert main(["verify", "--no-such-option"]) == EXIT_CONFIG
    assert main(["verify", "no.such_view"]) == EXIT_CONFIG
    assert "unknown view" in capsys.readouterr().err


def test_bad_setting_is_rejected_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VIEWSYNC_SINK_BATCH_SIZE", "0")
    assert main(["stack", "env"]) == EXIT_CONFIG
    assert "VIEWSYNC_SINK_BATCH_SIZE" in capsys.readouterr().err
