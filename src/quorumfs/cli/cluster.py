"""``quorumfs cluster``: see and change the Raft group of masters.

``members`` shows every master with its role (LEADER/FOLLOWER/CANDIDATE/LEARNER/
WITNESS; "LEARNER (to be voter)" for a learner the leader promotes once it has caught
up), addresses and, as the leader knows them, replication progress and last
contact, followed by the status's warnings. ``add``, ``remove``,
``transfer-leader`` and ``step-down`` change the group; they need the admin token,
and any master accepts them (a follower forwards to the leader). The last two
return once the new leader is in place and print it. Talking HTTP is
``cli.http``'s job; this module only asks and prints.
"""

from __future__ import annotations

import json
from typing import Annotated, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from quorumfs.master.contract import ClusterStatus, MemberInfo
from quorumfs.master.http_api import TransferLeaderResponse
from quorumfs.wire import VolumesResponse

from .http import (
    DEFAULT_MASTER,
    EXIT_REFUSED,
    CliError,
    JsonOption,
    MasterClient,
    MasterOption,
    Reply,
    TokenOption,
    parse_address,
    reported_errors,
)

T = TypeVar("T")

app = typer.Typer(
    name="cluster",
    help="See and change the Raft group of masters.",
    no_args_is_help=True,
)


@app.command("members")
def members(master: MasterOption = DEFAULT_MASTER, as_json: JsonOption = False) -> None:
    """Show the masters: id, role, addresses, replication progress, last contact."""
    with reported_errors():
        client = MasterClient(master)
        reply = client.request("GET", "/cluster/status")
        status = _decode(reply.body, ClusterStatus, reply.address)
        seen_by = reply.address
        if status.leader_http is not None and status.leader_id != status.id:
            # Progress and last contact are known on the leader only: ask it if we can.
            try:
                leader_reply = MasterClient(status.leader_http).request("GET", "/cluster/status")
                status = _decode(leader_reply.body, ClusterStatus, leader_reply.address)
                seen_by = leader_reply.address
            except CliError:
                pass  # the view of the master that answered will do
        if as_json:
            typer.echo(json.dumps(msgspec.to_builtins(status), indent=2))
            return
        console = Console(highlight=False)
        console.print(_members_table(status, seen_by))
        for warning in status.warnings:
            console.print(Text(f"warning: {warning}", style="yellow"))


@app.command("volumes")
def volumes(master: MasterOption = DEFAULT_MASTER, as_json: JsonOption = False) -> None:
    """Show the volume servers as the leader sees them: liveness, space, chunks, repairs."""
    with reported_errors():
        reply = MasterClient(master).request("GET", "/v1/volumes")
        answer = _decode(reply.body, VolumesResponse, reply.address)
        if as_json:
            typer.echo(json.dumps(msgspec.to_builtins(answer), indent=2))
            return
        console = Console(highlight=False)
        console.print(_volumes_table(answer))
        console.print(
            f"under-replicated chunks: {answer.under_replicated}    "
            f"copies being made: {answer.repairs_in_flight}"
        )


@app.command("add")
def add(
    *,
    http: Annotated[str, typer.Option("--http", help="HTTP host:port of the new master.")],
    raft: Annotated[str, typer.Option("--raft", help="Raft host:port (HTTP port + 10000).")],
    learner: Annotated[
        bool, typer.Option("--learner", help="Keep it a non-voting learner.")
    ] = False,
    master: MasterOption = DEFAULT_MASTER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a master: it joins as a learner and becomes a voter once it has caught up."""
    with reported_errors():
        body = {
            "http": parse_address(http, "--http"),
            "raft": parse_address(raft, "--raft"),
            "voter": not learner,
        }
        reply = MasterClient(master, token=token).request("POST", "/cluster/members", body)
        member = _decode(reply.body, MemberInfo, reply.address)
        if as_json:
            typer.echo(json.dumps(msgspec.to_builtins(member)))
            return
        future = "stays a learner" if learner else "becomes a voter once it has caught up"
        typer.echo(
            f"added member {member.id} (http {member.http}, raft {member.raft}) "
            f"as a {member.role.value.lower()}; it {future}"
        )


@app.command("remove")
def remove(
    member_id: Annotated[int, typer.Argument(metavar="ID", help="The member's id.", min=1)],
    master: MasterOption = DEFAULT_MASTER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove a master from the group (see its id with `cluster members`)."""
    with reported_errors():
        reply = MasterClient(master, token=token).request("DELETE", f"/cluster/members/{member_id}")
        if as_json:
            typer.echo(json.dumps(reply.body))
            return
        typer.echo(f"removed member {member_id}")


@app.command("transfer-leader")
def transfer_leader(
    to: Annotated[
        str,
        typer.Option(
            "--to",
            metavar="ID|HOST:PORT",
            help="The voting member to lead: its id, or its HTTP (or Raft) address.",
        ),
    ],
    master: MasterOption = DEFAULT_MASTER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Hand leadership to another voting member; return once it leads."""
    with reported_errors():
        client = MasterClient(master, token=token)
        target = _member_id(client, to)
        reply = client.request("POST", "/cluster/transfer-leader", {"to": target})
        _print_leader(reply, as_json)


@app.command("step-down")
def step_down(
    master: MasterOption = DEFAULT_MASTER,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make the leader hand over to the most caught-up voting member; return once it leads."""
    with reported_errors():
        reply = MasterClient(master, token=token).request("POST", "/cluster/step-down")
        _print_leader(reply, as_json)


def _member_id(client: MasterClient, to: str) -> int:
    """The id ``--to`` names: an id as it is, an address looked up among the members."""
    if to.isascii() and to.isdigit():
        if int(to) < 1:
            raise CliError(f"--to: {to} is not a member id (ids start at 1)")
        return int(to)
    address = _same_host(parse_address(to, "--to"))
    reply = client.request("GET", "/cluster/status")
    status = _decode(reply.body, ClusterStatus, reply.address)
    for member in status.members:
        if address in (_same_host(member.http), _same_host(member.raft)):
            return member.id
    raise CliError(
        f"--to: no member has the address {to} (see them with `quorumfs cluster members`)",
        EXIT_REFUSED,
    )


def _same_host(address: str) -> str:
    """``localhost:P`` as the masters write it (``127.0.0.1:P``)."""
    host, _, port = address.rpartition(":")
    return f"127.0.0.1:{port}" if host == "localhost" else address


def _print_leader(reply: Reply, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(reply.body))
        return
    answer = _decode(reply.body, TransferLeaderResponse, reply.address)
    typer.echo(f"member {answer.leader_id} ({answer.leader_http}) leads now")


def _members_table(status: ClusterStatus, seen_by: str) -> Table:
    table = Table(
        title=f"masters (term {status.term}, as seen by member {status.id} at {seen_by})",
        title_justify="left",
    )
    for column in ("ID", "ROLE", "HTTP", "RAFT"):
        table.add_column(column)
    table.add_column("MATCH", justify="right")
    table.add_column("LAST CONTACT", justify="right")
    for member in sorted(status.members, key=lambda m: m.id):
        role = member.role.value
        shown = f"{role} (to be voter)" if member.promote else role
        table.add_row(
            str(member.id),
            Text(shown, style="bold green" if role == "LEADER" else ""),
            member.http,
            member.raft,
            "-" if member.match_index is None else str(member.match_index),
            "-" if member.last_contact_ms is None else f"{member.last_contact_ms} ms ago",
        )
    return table


def _volumes_table(answer: VolumesResponse) -> Table:
    table = Table(title="volume servers (as the leader sees them)", title_justify="left")
    for column in ("ID", "ADDRESS", "STATE"):
        table.add_column(column)
    for column in ("USED", "FREE", "CHUNKS", "CORRUPT", "LAST HEARTBEAT"):
        table.add_column(column, justify="right")
    for volume in answer.volumes:
        state = "WRITABLE" if volume.writable else "UP" if volume.alive else "DOWN"
        style = {"WRITABLE": "bold green", "UP": "yellow", "DOWN": "red"}[state]
        table.add_row(
            str(volume.volume_id),
            volume.address,
            Text(state, style=style),
            _size(volume.used),
            _size(volume.free),
            str(volume.chunks),
            str(volume.corrupt),
            "-" if volume.last_heartbeat_ms is None else f"{volume.last_heartbeat_ms} ms ago",
        )
    return table


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _decode(body: object, kind: type[T], address: str) -> T:
    try:
        return msgspec.convert(body, kind)
    except msgspec.ValidationError as exc:
        raise CliError(
            f"{address} answered with an unexpected shape ({exc}); "
            "is it a quorumfs master of the same version?"
        ) from None
