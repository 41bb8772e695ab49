"""``quorumfs local``: a working cluster on this machine with embedded defaults.

Starts three master processes on loopback (HTTP 9333-9335, Raft 19333-19335)
and three volume servers (HTTP 8080-8082), each with its directory under
``--dir`` (default ``./data/local``) and its log beside it; waits until the
masters have elected a leader and every volume server can take writes; prints
where to reach them and a few commands to try; and stops them cleanly on
Ctrl-C. Started again on the same directory, the cluster comes back with its
files.
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

from quorumfs.tokens import SECRET_ENV


def _get(address: str, path: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=1) as response:
            answer: dict[str, object] = json.loads(response.read())
            return answer
    except (OSError, ValueError):
        return None


def _writable_volumes(leader: str) -> int:
    answer = _get(leader, "/v1/volumes")
    listed = answer.get("volumes") if answer is not None else None
    if not isinstance(listed, list):
        return 0
    return sum(1 for volume in listed if isinstance(volume, dict) and volume.get("writable"))


def _check_running(
    processes: list[subprocess.Popen[bytes]], names: list[str], directory: Path, console: Console
) -> None:
    for name, process in zip(names, processes, strict=True):
        if process.poll() is not None:
            console.print(
                f"[red]error:[/red] {name} exited (code {process.returncode}); "
                f"see {directory}/{name}.log"
            )
            raise typer.Exit(code=1)


def local(
    *,
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the masters keep their data and logs.")
    ] = Path("data/local"),
    base_port: Annotated[int, typer.Option(help="HTTP port of the first master.")] = 9333,
    masters: Annotated[int, typer.Option(help="How many masters (3 or 5).")] = 3,
    volume_port: Annotated[int, typer.Option(help="HTTP port of the first volume server.")] = 8080,
    volumes: Annotated[int, typer.Option(help="How many volume servers.", min=0, max=20)] = 3,
) -> None:
    """Start a local cluster of masters and volume servers; Ctrl-C stops it."""
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
    volume_addresses = [f"127.0.0.1:{volume_port + i}" for i in range(volumes)]
    processes: list[subprocess.Popen[bytes]] = []
    names: list[str] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:

        def spawn(name: str, *args: str) -> None:
            log = (directory / f"{name}.log").open("ab")
            command = [sys.executable, "-m", "quorumfs", *args]
            processes.append(subprocess.Popen(command, stdout=log, stderr=log, env=env))
            names.append(name)

        for i, address in enumerate(addresses, start=1):
            spawn(
                f"master{i}", "master", "--mdir", str(directory / f"master{i}"),
                "--port", address.rpartition(":")[2], "--peers", ",".join(addresses),
            )  # fmt: skip
        for i, address in enumerate(volume_addresses, start=1):
            spawn(
                f"volume{i}", "volume", "--dir", str(directory / f"volume{i}"),
                "--port", address.rpartition(":")[2], "--mserver", ",".join(addresses),
            )  # fmt: skip
        leader = None
        deadline = time.monotonic() + 30
        while leader is None and not stopping and time.monotonic() < deadline:
            seen = set()
            _check_running(processes, names, directory, console)
            for address in addresses:
                status = _get(address, "/cluster/status")
                seen.add(status.get("leader_http") if status is not None else None)
            if len(seen) == 1 and None not in seen:  # every master knows the same leader
                candidate = str(seen.pop())
                if _writable_volumes(candidate) >= volumes:
                    leader = candidate
            if leader is None:
                time.sleep(0.1)
        if leader is None:
            if not stopping:
                console.print(
                    f"[red]error:[/red] no leader with {volumes} writable volume servers "
                    f"within 30 s; see {directory}/*.log"
                )
            raise typer.Exit(code=1)
        console.print("[bold green]quorumfs local cluster is up[/bold green]")
        for name, address, process in zip(
            names, [*addresses, *volume_addresses], processes, strict=True
        ):
            role = " (leader)" if address == leader else ""
            console.print(f"  {name:8} http://{address}  pid {process.pid}{role}", highlight=False)
        console.print(f"data and logs: {directory}")
        masters_option = ",".join(addresses)
        console.print(f"API: http://{addresses[0]}/openapi.json    try:")
        for line in (
            f"export QUORUMFS_MASTER={masters_option}",
            "quorumfs fs put README.md /readme.md",
            "quorumfs fs ls / -l",
            "quorumfs fs cat /readme.md | head",
            f"quorumfs fs masterInfo --master {addresses[0]}",
            f"quorumfs cluster members --master {addresses[0]}",
            f"quorumfs cluster volumes --master {addresses[0]}",
            "kill -9 <the leader's pid>   # another master takes over within a second",
        ):
            console.print(f"  {line}", highlight=False)
        console.print("Ctrl-C stops the cluster.")
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
