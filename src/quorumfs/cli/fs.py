"""``quorumfs fs``: file-system commands: ``masterInfo`` here, the file commands
(``put``, ``get``, ``cat``, ``ls``, ``stat``, ``mkdir``, ``rm``, ``mv``) in ``cli.files``.

``masterInfo`` prints who leads and which masters exist, in the format of
GooseFS's ``fs masterInfo`` (HTTP addresses)::

    current leader master: 10.0.0.1:9333
    All masters: [10.0.0.1:9333, 10.0.0.2:9333, 10.0.0.3:9333]

It asks the masters in ``--master`` order until one knows the leader (a master
that just restarted may not know yet), and exits with 2 when none does.
Talking HTTP is ``cli.http``'s job; this module only asks and prints.
"""

from __future__ import annotations

import json

import msgspec
import typer

from quorumfs.master.contract import ClusterStatus

from . import files
from .http import (
    DEFAULT_MASTER,
    EXIT_UNAVAILABLE,
    CliError,
    DnsServerOption,
    JsonOption,
    MasterClient,
    MasterOption,
    reported_errors,
)

app = typer.Typer(
    name="fs",
    help="File-system commands: files and directories, and who leads the masters.",
    no_args_is_help=True,
)

NO_LEADER = "(none: no quorum)"

files.register(app)


@app.command("masterInfo")
def master_info(
    master: MasterOption = DEFAULT_MASTER,
    as_json: JsonOption = False,
    dns_server: DnsServerOption = None,
) -> None:
    """Print the current leader master and all masters (exit code 2 when there is no leader)."""
    with reported_errors():
        first: ClusterStatus | None = None
        leader: str | None = None
        for reply in MasterClient(master, dns_server=dns_server).replies("/cluster/status"):
            status = _status(reply.body, reply.address)
            first = first or status
            if status.leader_http is not None:
                leader, first = status.leader_http, status
                break
        assert first is not None, "replies() yields at least one answer or raises"
        masters = [m.http for m in sorted(first.members, key=lambda m: m.id)]
        if as_json:
            typer.echo(json.dumps({"leader": leader, "masters": masters}))
        else:
            typer.echo(f"current leader master: {leader or NO_LEADER}")
            typer.echo(f"All masters: [{', '.join(masters)}]")
        if leader is None:
            raise typer.Exit(EXIT_UNAVAILABLE)


def _status(body: object, address: str) -> ClusterStatus:
    try:
        return msgspec.convert(body, ClusterStatus)
    except msgspec.ValidationError as exc:
        raise CliError(
            f"{address} answered /cluster/status with an unexpected shape ({exc}); "
            "is it a quorumfs master of the same version?"
        ) from None
