"""``quorumfs volume``: run one volume server, which stores chunks and reports to the masters."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Final

import typer
import uvloop
from rich.console import Console

from quorumfs.client import DNS_SERVER_ENV
from quorumfs.tokens import SECRET_ENV
from quorumfs.volume.server import VolumeOptions, VolumeStartupError, run_volume

_SIZE: Final = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[KMGTP]?)(?P<suffix>i?B?)", re.I)
_POWERS: Final = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}


def parse_size(text: str) -> int:
    """Bytes from ``"10GiB"``, ``"10G"`` (both 1024-based), ``"10GB"`` (1000-based) or
    ``"1048576"``; ``ValueError`` for anything else."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size (e.g. 500GiB, 2T, 1000000000)")
    unit, suffix = match["unit"].upper(), match["suffix"].upper()
    base = 1000 if suffix == "B" and unit else 1024
    if suffix == "IB" and not unit:
        raise ValueError(f"{text!r} is not a size (e.g. 500GiB, 2T, 1000000000)")
    return int(float(match["number"]) * base ** _POWERS[unit])


def volume(
    *,
    dir_: Annotated[
        Path,
        typer.Option(
            "--dir", help="Volume server directory: identity.json and chunks/ (the chunk store)."
        ),
    ],
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8080,
    ip: Annotated[str, typer.Option(help="Address to listen on and advertise.")] = "127.0.0.1",
    public_address: Annotated[
        str | None,
        typer.Option(help="HOST:PORT clients are told to use (default: IP:PORT)."),
    ] = None,
    mserver: Annotated[
        str,
        typer.Option(
            help="Comma-separated HOST:PORT of masters (any of them; the leader is found), "
            "or one NAME:PORT whose DNS A/AAAA records are the masters (re-resolved every 5 s)."
        ),
    ] = "127.0.0.1:9333",
    dns_server: Annotated[
        str | None,
        typer.Option(
            envvar=DNS_SERVER_ENV,
            help="Nameserver (IP or IP:PORT) to resolve a --mserver NAME with "
            "(default: the system's resolv.conf).",
            show_default=False,
        ),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(envvar=SECRET_ENV, help="Cluster secret (the masters' own)."),
    ] = None,
    max_size: Annotated[
        str | None,
        typer.Option(
            "--max", help="Most bytes to store, e.g. 500GiB (default: as much as the disk holds)."
        ),
    ] = None,
    pulse_ms: Annotated[
        int, typer.Option(help="Milliseconds between heartbeats (the leader may change it).")
    ] = 1000,
    compaction_interval: Annotated[
        float, typer.Option(help="Seconds between looks for volume files worth compacting.")
    ] = 60.0,
    fsync: Annotated[
        bool,
        typer.Option(help="fsync chunks before acknowledging them (never turn off in production)."),
    ] = True,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run a volume server: it stores chunks and reports them to the leading master."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        max_bytes = None if max_size is None else parse_size(max_size)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--max") from None
    options = VolumeOptions(
        dir=dir_,
        ip=ip,
        port=port,
        masters=tuple(m for m in mserver.split(",") if m.strip()),
        dns_server=dns_server or None,
        secret=secret,
        max_bytes=max_bytes,
        pulse_ms=pulse_ms,
        fsync=fsync,
        compaction_interval=compaction_interval,
        public_address=public_address,
    )
    console = Console(stderr=True, soft_wrap=True)  # a path in an error must stay whole
    try:
        uvloop.run(run_volume(options, started=console.print))
    except VolumeStartupError as error:
        console.print(f"[red]error:[/red] {error}", highlight=False)
        raise typer.Exit(code=2) from error
