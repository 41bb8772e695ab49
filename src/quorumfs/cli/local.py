"""``quorumfs local``: a working cluster on this machine with embedded defaults.

Starts three master processes on loopback (HTTP 9333-9335, Raft 19333-19335),
each with its directory under ``--dir`` (default ``./data/local``) and its log
beside it, waits until they have elected a leader, prints where to reach them
and a few commands to try, and stops them cleanly on Ctrl-C. Started again on
the same directory, the cluster comes back with its namespace.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from quorumfs.master.server import SECRET_ENV


def _status(address: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://{address}/cluster/status", timeout=1) as response:
            status: dict[str, object] = json.loads(response.read())
            return status
    except (OSError, ValueError):
        return None


def local(
    *,
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the masters keep their data and logs.")
    ] = Path("data/local"),
    base_port: Annotated[int, typer.Option(help="HTTP port of the first master.")] = 9333,
    masters: Annotated[int, typer.Option(help="How many masters (3 or 5).")] = 3,
) -> None:
    """Start a local cluster of masters; Ctrl-C stops it."""
    console = Console(stderr=True, soft_wrap=True)
    if masters not in (1, 3, 5):
        console.print("[red]error:[/red] --masters must be 1, 3 or 5")
        raise typer.Exit(code=2)
    directory.mkdir(parents=True, exist_ok=True)
    secret_file = directory / "cluster.secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_hex(32) + "\n")
        secret_file.chmod(0o600)
    env = {**os.environ, SECRET_ENV: secret_file.read_text().strip()}
    addresses = [f"127.0.0.1:{base_port + i}" for i in range(masters)]
    processes: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for i, address in enumerate(addresses, start=1):
            log = (directory / f"master{i}.log").open("ab")
            command = [
                sys.executable, "-m", "quorumfs", "master",
                "--mdir", str(directory / f"master{i}"),
                "--port", address.rpartition(":")[2],
                "--peers", ",".join(addresses),
            ]  # fmt: skip
            processes.append(subprocess.Popen(command, stdout=log, stderr=log, env=env))
        leader = None
        deadline = time.monotonic() + 30
        while leader is None and not stopping and time.monotonic() < deadline:
            seen = set()
            for i, (process, address) in enumerate(zip(processes, addresses, strict=True), 1):
                if process.poll() is not None:
                    console.print(
                        f"[red]error:[/red] the master at {address} exited "
                        f"(code {process.returncode}); see {directory}/master{i}.log"
                    )
                    raise typer.Exit(code=1)
                status = _status(address)
                seen.add(status.get("leader_http") if status is not None else None)
            if len(seen) == 1 and None not in seen:  # every master knows the same leader
                leader = str(seen.pop())
            else:
                time.sleep(0.1)
        if leader is None:
            if not stopping:
                console.print(f"[red]error:[/red] no leader within 30 s; see {directory}/*.log")
            raise typer.Exit(code=1)
        pids = ", ".join(f"{a} (pid {p.pid})" for a, p in zip(addresses, processes, strict=True))
        console.print(f"[bold green]quorumfs local cluster is up[/bold green]: {pids}")
        console.print(f"leader: {leader}    data and logs: {directory}")
        first = addresses[0]
        console.print(f"API: http://{first}/openapi.json    try:")
        for line in (
            f"quorumfs fs masterInfo --master {first}",
            f"quorumfs cluster members --master {first}",
            f'curl -s -XPOST {first}/v1/fs/mkdir -d \'{{"path": "/hello"}}\'',
            f"curl -s '{first}/v1/fs/list?path=/'",
            "kill -9 <the leader's pid>   # another master takes over within a second",
        ):
            console.print(f"  {line}", highlight=False)
        console.print(
            "Volume servers and file data arrive with issue #4. Ctrl-C stops the cluster."
        )
        while not stopping:
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        if processes:
            console.print("stopped")
