"""``--fault-injection`` (``quorumfs master``) and ``--master.fault-injection``
(``quorumfs server``): off by default, passed to the master when given, and documented
as for fault tests only. The servers are replaced by fakes that record their options."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from quorumfs.cli import master as master_cli
from quorumfs.cli import server as server_cli
from quorumfs.cli.main import app
from quorumfs.master.server import MasterOptions

WIDE = {"COLUMNS": "300"}


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[MasterOptions]:
    """The options each master would have run with."""
    seen: list[MasterOptions] = []

    async def fake_master(options: MasterOptions, **_: Any) -> None:
        seen.append(options)

    async def fake_volume(*_: Any, **__: Any) -> None:
        return None

    monkeypatch.setattr(master_cli, "run_master", fake_master)
    monkeypatch.setattr(server_cli, "run_master", fake_master)
    monkeypatch.setattr(server_cli, "run_volume", fake_volume)
    monkeypatch.setattr(sys, "setswitchinterval", lambda _interval: None)
    return seen


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (["master", "--mdir"], "--fault-injection"),
        (["server", "--dir"], "--master.fault-injection"),
    ],
)
def test_fault_injection_is_off_unless_asked_for(
    tmp_path: Path, started: list[MasterOptions], command: list[str], flag: str
) -> None:
    for extra, expected in (([], False), ([flag], True)):
        result = CliRunner().invoke(app, [*command, str(tmp_path / "d"), *extra], env=WIDE)
        assert result.exit_code == 0, result.output
        assert started[-1].fault_injection is expected
    assert len(started) == 2


@pytest.mark.parametrize(
    ("command", "flag"),
    [("master", "--fault-injection"), ("server", "--master.fault-injection")],
)
def test_the_help_says_fault_tests_only(command: str, flag: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert flag in text
    assert "For fault tests only: never in production." in text
