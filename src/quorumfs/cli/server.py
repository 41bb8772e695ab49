"""``quorumfs server``: a master and a volume server in one process (SeaweedFS's ``weed server``).

It reuses the two servers' own options under prefixes (``--master.port``,
``--volume.port``) and adds nothing of its own but ``--dir``, which holds
both: ``DIR/master`` (the master directory) and ``DIR/volume`` (the volume
server's). Three of them form an HA cluster as in SeaweedFS's cheat sheet::

    export QUORUMFS_CLUSTER_SECRET=...   # the same on all three
    quorumfs server --dir ./1 --master.port 9333 --volume.port 8080 \\
        --master.peers 127.0.0.1:9333,127.0.0.1:9334,127.0.0.1:9335
    quorumfs server --dir ./2 --master.port 9334 --volume.port 8081 --master.peers ...
    quorumfs server --dir ./3 --master.port 9335 --volume.port 8082 --master.peers ...

The volume server heartbeats to its own master and the peers, and follows the
leader wherever it is. Ctrl-C (or SIGTERM) stops both. Alone (no peers and no
secret) it generates the cluster secret, which the master keeps in
``DIR/master/cluster.secret`` for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from pathlib import Path
from typing import Annotated

import typer
import uvloop
from rich.console import Console

from quorumfs.master.server import MasterOptions, MasterStartupError, run_master
from quorumfs.runtime.transport import ListenError
from quorumfs.runtime.wal import CorruptLogError, JournalInUseError
from quorumfs.tokens import SECRET_ENV
from quorumfs.volume.errors import StoreError
from quorumfs.volume.server import VolumeOptions, VolumeStartupError, run_volume

from .volume import parse_size


def server(
    *,
    directory: Annotated[
        Path, typer.Option("--dir", help="Holds the master's (master/) and the volume's (volume/).")
    ],
    ip: Annotated[str, typer.Option(help="Address to listen on and advertise.")] = "127.0.0.1",
    master_port: Annotated[
        int, typer.Option("--master.port", help="The master's HTTP port (Raft: + 10000).")
    ] = 9333,
    master_peers: Annotated[
        str,
        typer.Option(
            "--master.peers",
            help="Comma-separated HOST:PORT of masters: all founders (this one included), "
            "or running masters to join. Not needed on restart.",
        ),
    ] = "",
    master_fault_injection: Annotated[
        bool,
        typer.Option(
            "--master.fault-injection",
            help="Serve GET/PUT /debug/faults (admin token) to slow the master's journal "
            "fsync or shift its wall clock at run time. For fault tests only: never in "
            "production.",
        ),
    ] = False,
    volume_port: Annotated[
        int, typer.Option("--volume.port", help="The volume server's HTTP port.")
    ] = 8080,
    volume_max: Annotated[
        str | None,
        typer.Option("--volume.max", help="Most bytes the volume server stores (e.g. 100GiB)."),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(envvar=SECRET_ENV, help="Shared cluster secret (same on every server)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run a master and a volume server in one process."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    console = Console(stderr=True, soft_wrap=True)
    peers = [p.strip() for p in master_peers.split(",") if p.strip()]
    stored = directory / "master" / "cluster.secret"
    if secret is None and stored.exists():
        secret = stored.read_text().strip()  # a restart: both halves use the master's secret
    elif secret is None and not peers:
        secret = secrets.token_hex(32)  # a cluster of one: the master stores it on first start
    master_options = MasterOptions(
        mdir=directory / "master",
        ip=ip,
        port=master_port,
        peers=peers,
        secret=secret,
        fault_injection=master_fault_injection,
    )
    try:
        max_bytes = parse_size(volume_max) if volume_max is not None else None
    except ValueError as error:
        console.print(f"[red]error:[/red] --volume.max: {error}", highlight=False)
        raise typer.Exit(code=2) from error
    volume_options = VolumeOptions(
        dir=directory / "volume",
        ip=ip,
        port=volume_port,
        masters=tuple(dict.fromkeys([master_options.http_address, *peers])),
        secret=secret,
        max_bytes=max_bytes,
    )

    async def both() -> None:
        stop = asyncio.Event()
        master = asyncio.create_task(run_master(master_options, started=console.print, stop=stop))
        volume = asyncio.create_task(run_volume(volume_options, started=console.print, stop=stop))
        await asyncio.wait({master, volume}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()  # one ended (stopped, or failed to start): stop the other
        results = await asyncio.gather(master, volume, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    try:
        sys.setswitchinterval(0.0005)  # see cli/master.py
        uvloop.run(both())
    except (
        MasterStartupError,
        VolumeStartupError,
        CorruptLogError,
        JournalInUseError,
        ListenError,
        StoreError,
    ) as error:
        console.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(code=2) from error
