"""``quorumfs master``'s timing flags: a lease that could outlive the followers' promise
is refused before anything is created."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from quorumfs.cli.main import app


@pytest.mark.parametrize(
    ("flags", "mentions"),
    [
        (["--lease-ticks", "9"], "--lease-ticks 9 must be between 1 and --election-ticks - 2 = 8"),
        (["--election-ticks", "6", "--lease-ticks", "5"], "= 4: the lease must end before"),
        (["--election-ticks", "2"], "--election-ticks"),
        (["--lease-ticks", "0"], "--lease-ticks"),
        (["--tick-ms", "0"], "--tick-ms"),
    ],
)
def test_unsafe_timing_is_refused_before_anything_starts(
    tmp_path: Path, flags: list[str], mentions: str
) -> None:
    mdir = tmp_path / "m1"
    result = CliRunner().invoke(
        app, ["master", "--mdir", str(mdir), *flags], env={"COLUMNS": "300"}
    )
    assert result.exit_code == 2, result.output
    assert mentions in " ".join(result.output.split())
    assert not mdir.exists()
