"""``quorumfs master``: run one master of the metadata group."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
import uvloop
from rich.console import Console

from quorumfs.master.data_service import DataOptions
from quorumfs.master.server import MasterOptions, MasterStartupError, run_master
from quorumfs.master.topology import TopologyOptions
from quorumfs.runtime.transport import ListenError
from quorumfs.runtime.wal import CorruptLogError, JournalInUseError
from quorumfs.tokens import SECRET_ENV


def master(
    *,
    mdir: Annotated[Path, typer.Option(help="Master directory: identity, secret and journal.")],
    port: Annotated[int, typer.Option(help="HTTP port; Raft listens on port + 10000.")] = 9333,
    ip: Annotated[str, typer.Option(help="Address to listen on and advertise.")] = "127.0.0.1",
    peers: Annotated[
        str,
        typer.Option(
            help="Comma-separated HOST:PORT of masters. Include this master's own address "
            "to found a group; list only others to join a running group. Not needed on restart."
        ),
    ] = "",
    secret: Annotated[
        str | None,
        typer.Option(envvar=SECRET_ENV, help="Shared cluster secret (same on every master)."),
    ] = None,
    raft_port: Annotated[
        int | None, typer.Option(help="Raft port (default: HTTP port + 10000).")
    ] = None,
    tick_ms: Annotated[int, typer.Option(help="Raft tick length in milliseconds.", min=1)] = 50,
    election_ticks: Annotated[
        int,
        typer.Option(
            help="Election timeout T in ticks: followers campaign after a random [T, 2T) "
            "without a leader, and ignore other candidates within T of hearing it.",
            min=3,
        ),
    ] = 10,
    lease_ticks: Annotated[
        int | None,
        typer.Option(
            help="Leader lease in ticks, counted from when a heartbeat round a quorum "
            "acknowledged was sent; at most election-ticks - 2 (the default).",
            min=1,
            show_default=False,
        ),
    ] = None,
    snapshot_every: Annotated[
        int,
        typer.Option(
            help="Applied entries between two snapshots of the namespace; the journal "
            "before a snapshot is dropped.",
            min=10,
        ),
    ] = 10_000,
    fsync: Annotated[
        bool,
        typer.Option(help="fsync the journal before acknowledging (never turn off in production)."),
    ] = True,
    fault_injection: Annotated[
        bool,
        typer.Option(
            "--fault-injection",
            help="Serve GET/PUT /debug/faults (admin token) to slow this master's journal "
            "fsync or shift its wall clock at run time. For fault tests only: never in "
            "production.",
        ),
    ] = False,
    volume_pulse_ms: Annotated[
        int, typer.Option(help="How often volume servers heartbeat to the leader (ms).", min=50)
    ] = 1000,
    volume_dead_after: Annotated[
        float,
        typer.Option(
            help="Seconds without a heartbeat before a volume server counts as down.", min=0.1
        ),
    ] = 5.0,
    replication_delay: Annotated[
        float,
        typer.Option(
            help="Seconds a volume server must be down before its chunks are re-replicated.",
            min=0.0,
        ),
    ] = 60.0,
    orphan_grace: Annotated[
        float,
        typer.Option(
            help="Seconds before an uploaded but never committed chunk is deleted.", min=1.0
        ),
    ] = 3600.0,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run a master: a member of the Raft group that holds the namespace."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    console = Console(stderr=True, soft_wrap=True)  # a path in an error must stay whole
    try:
        options = MasterOptions(
            mdir=mdir,
            ip=ip,
            port=port,
            raft_port=raft_port,
            peers=[p for p in peers.split(",") if p.strip()],
            secret=secret,
            tick_interval=tick_ms / 1000,
            election_tick=election_ticks,
            lease_tick=lease_ticks,
            snapshot_every=snapshot_every,
            fsync=fsync,
            fault_injection=fault_injection,
            data=DataOptions(
                pulse=volume_pulse_ms / 1000,
                topology=TopologyOptions(
                    dead_after=volume_dead_after,
                    replication_delay=replication_delay,
                    orphan_grace=orphan_grace,
                ),
            ),
        )
        # The journal's fsync runs in a worker thread; when it returns, it needs the GIL
        # back from a busy event loop. The default 5 ms switch interval would put up to
        # that much on every commit's critical path.
        sys.setswitchinterval(0.0005)
        uvloop.run(run_master(options, started=console.print))
    except (MasterStartupError, CorruptLogError, JournalInUseError, ListenError) as error:
        console.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(code=2) from error
