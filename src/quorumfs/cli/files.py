"""``quorumfs fs put|get|cat|ls|stat|mkdir|rm|mv``: files and directories from the shell.

Each command opens one ``quorumfs.client.MasterClient`` (the sync facade: it
finds the leader, rides through a failover, and moves the bytes to and from the
volume servers), does one thing, and prints only what was asked for. Retries,
streaming and integrity checks are the client's job; this module owns the
arguments (``-`` for stdin or stdout, a directory as a destination), progress
bars (on stderr, when it is a terminal and the transfer is at least
``BAR_MIN_BYTES``), what is printed, and turning every failure into one
``error: ...`` line with the exit codes of ``cli.http`` (1: the cluster refused,
e.g. no such file; 2: usage, a local file problem, unreachable or unavailable).

``get`` into a local file writes a temporary file beside it and renames it over
the destination only once every byte arrived and was verified (the client's
``get`` with a ``Path``): a failed get never leaves a half file.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import stat as stat_bits
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Annotated, Final

import msgspec
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from quorumfs.client import (
    DataUnavailable,
    DirEntry,
    FileChanged,
    Kind,
    MasterClient,
    NotADirectory,
    NotFound,
    OutcomeUnknown,
    ProtocolError,
    QuorumfsError,
    RetryPolicy,
    Stat,
    Unavailable,
    WriteFailed,
    parse_masters,
    parse_nameserver,
)

from .http import (
    DEFAULT_MASTER,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    CliError,
    DnsServerOption,
    JsonOption,
    MasterOption,
    reported_errors,
)

__all__ = ["BAR_MIN_BYTES", "register"]

BAR_MIN_BYTES: Final = 8 * 1024 * 1024
"""Transfers smaller than this get no progress bar."""
_STDIO: Final = "-"
_NOT_THE_CLUSTERS_FAULT: Final = (
    Unavailable,
    OutcomeUnknown,
    ProtocolError,
    DataUnavailable,
    WriteFailed,
    FileChanged,
)
"""Client errors that are not a refusal of the request itself (exit code 2)."""

RemoteArgument = Annotated[str, typer.Argument(help="A path in quorumfs (absolute).")]
TimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout",
        envvar="QUORUMFS_TIMEOUT",
        min=0.1,
        help="Seconds to keep trying the masters (through a failover) before giving up.",
    ),
]
DEFAULT_TIMEOUT: Final = RetryPolicy().deadline


def register(app: typer.Typer) -> None:
    """Add the file commands to the ``fs`` app."""
    app.command("put")(put)
    app.command("get")(get)
    app.command("cat")(cat)
    app.command("ls")(ls)
    app.command("stat")(stat)
    app.command("mkdir")(mkdir)
    app.command("rm")(rm)
    app.command("mv")(mv)


# ----------------------------------------------------------------- commands


def put(
    local: Annotated[str, typer.Argument(help="A local file, or - for stdin.")],
    remote: Annotated[
        str,
        typer.Argument(help="Where to put it; ending in / or naming a directory: inside it."),
    ],
    replication: Annotated[
        int | None,
        typer.Option(
            "--replication", "-r", min=1, max=16, help="Copies of each chunk (a new file's)."
        ),
    ] = None,
    *,
    master: MasterOption = DEFAULT_MASTER,
    dns_server: DnsServerOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Upload a local file (or stdin) to quorumfs; it appears there whole, at once."""
    with _client(master, timeout, dns_server) as client:
        if local == _STDIO:
            if remote.endswith("/"):
                raise CliError(f"put -: name the file to create, not a directory ({remote})")
            client.put(remote, sys.stdin.buffer, replication=replication)
            return
        source = Path(local)
        if not source.is_file():
            what = "is not a regular file" if source.exists() else "does not exist"
            raise CliError(f"put: the local file {local} {what}")
        destination = _inside_directory(client, remote, source.name)
        with _progress_bar(f"put {destination}") as progress:
            client.put(destination, source, replication=replication, progress=progress)


def get(
    remote: RemoteArgument,
    local: Annotated[str, typer.Argument(help="A local file or directory, or - for stdout.")],
    master: MasterOption = DEFAULT_MASTER,
    dns_server: DnsServerOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Download a file from quorumfs; a local file is replaced only once it is complete."""
    with _client(master, timeout, dns_server) as client:
        if local == _STDIO:
            _to_stdout(client, remote)
            return
        target = Path(local)
        if target.is_dir():
            target /= PurePosixPath(remote).name
        with _progress_bar(f"get {remote}") as progress:
            client.get(remote, target, progress=progress)


def cat(
    remote: RemoteArgument,
    master: MasterOption = DEFAULT_MASTER,
    dns_server: DnsServerOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Print a file's bytes to stdout."""
    with _client(master, timeout, dns_server) as client:
        _to_stdout(client, remote)


def ls(
    path: Annotated[str, typer.Argument(help="A directory (or a file) in quorumfs.")] = "/",
    long: Annotated[
        bool, typer.Option("-l", "--long", help="Kind, mode, owner, size and mtime too.")
    ] = False,
    as_json: JsonOption = False,
    *,
    master: MasterOption = DEFAULT_MASTER,
    dns_server: DnsServerOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """List a directory (names; directories end in /)."""
    with _client(master, timeout, dns_server) as client:
        try:
            entries = client.ls(path)
        except NotADirectory:
            entries = [DirEntry(PurePosixPath(path).name, client.stat(path))]
        if as_json:
            typer.echo(
                msgspec.json.encode(
                    [{"name": e.name, **msgspec.to_builtins(e.stat)} for e in entries]
                )
            )
        elif long:
            for entry in entries:
                typer.echo(_long_line(entry))
        else:
            for entry in entries:
                typer.echo(_display_name(entry))


def stat(
    path: RemoteArgument,
    as_json: JsonOption = False,
    master: MasterOption = DEFAULT_MASTER,
    dns_server: DnsServerOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Print a file's or directory's attributes."""
    with _client(master, timeout, dns_server) as client:
        attributes = client.stat(path)
        if as_json:
            typer.echo(json.dumps({"path": path, **msgspec.to_builtins(attributes)}))
            return
        rows = [
            ("path", path),
            ("kind", attributes.kind.value),
            ("size", str(attributes.size)),
            ("mode", f"{attributes.mode:04o}"),
            ("owner", attributes.owner),
            ("mtime", _time(attributes.mtime, precise=True)),
            ("inode", str(attributes.inode)),
        ]
        if attributes.kind is Kind.FILE:
            rows += [
                ("version", str(attributes.version)),
                ("replication", str(attributes.replication)),
            ]
        for name, value in rows:
            typer.echo(f"{name + ':':<13}{value}")


def mkdir(
    path: RemoteArgument,
    parents: Annotated[
        bool,
        typer.Option("-p", "--parents", help="Create missing parents; an existing one is fine."),
    ] = False,
    master: MasterOption = DEFAULT_MASTER,
    dns_server: DnsServerOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Create a directory."""
    with _client(master, timeout, dns_server) as client:
        client.mkdir(path, parents=parents)


def rm(
    path: RemoteArgument,
    recursive: Annotated[
        bool, typer.Option("-r", "--recursive", help="Delete a directory and everything in it.")
    ] = False,
    master: MasterOption = DEFAULT_MASTER,
    dns_server: DnsServerOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Delete a file or an empty directory (any directory with -r)."""
    with _client(master, timeout, dns_server) as client:
        client.rm(path, recursive=recursive)


def mv(
    src: RemoteArgument,
    dst: RemoteArgument,
    master: MasterOption = DEFAULT_MASTER,
    dns_server: DnsServerOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
) -> None:
    """Rename a file or directory atomically (replacing a file or an empty directory)."""
    with _client(master, timeout, dns_server) as client:
        client.mv(src, dst)


# ----------------------------------------------------------------- helpers


@contextlib.contextmanager
def _client(master: str, timeout: float, dns_server: str | None) -> Iterator[MasterClient]:
    """A client of ``--master`` (a list, or one name resolved through ``--dns-server``);
    every failure inside becomes one ``error:`` line."""
    with reported_errors():
        try:
            masters = parse_masters(master)
        except ValueError as exc:
            raise CliError(f"--master: {exc}") from None
        nameserver = dns_server or None
        try:
            if nameserver is not None:
                parse_nameserver(nameserver)
        except ValueError as exc:
            raise CliError(f"--dns-server: {exc}") from None
        try:
            with MasterClient(
                masters, policy=RetryPolicy(deadline=timeout), nameserver=nameserver
            ) as client:
                yield client
        except QuorumfsError as exc:
            code = EXIT_UNAVAILABLE if isinstance(exc, _NOT_THE_CLUSTERS_FAULT) else EXIT_REFUSED
            raise CliError(f"{exc.message} ({exc.code})", code) from None
        except OSError as exc:  # a local file: the client's errors are QuorumfsErrors
            where = f"{exc.filename}: " if exc.filename else ""
            raise CliError(f"{where}{exc.strerror or exc}") from None


def _inside_directory(client: MasterClient, remote: str, name: str) -> str:
    """``remote``, or ``remote/name`` when it ends in / or names a directory."""
    if remote.endswith("/"):
        return remote + name
    try:
        if client.stat(remote).kind is Kind.DIRECTORY:
            return f"{remote}/{name}"
    except NotFound:
        pass
    return remote


def _to_stdout(client: MasterClient, remote: str) -> None:
    stdout = sys.stdout.buffer
    client.get(remote, stdout)
    stdout.flush()


@contextlib.contextmanager
def _progress_bar(description: str) -> Iterator[_Bar]:
    bar = _Bar(description)
    try:
        yield bar
    finally:
        bar.close()


class _Bar:
    """A ``Progress`` callback drawing a rich bar on stderr, once it knows the transfer is
    large enough (and only when stderr is a terminal). Called from the client's thread."""

    def __init__(self, description: str) -> None:
        self._description = description
        self._progress: Progress | None = None
        self._task = TaskID(0)
        self._terminal = sys.stderr.isatty()

    def __call__(self, done: int, total: int | None) -> None:
        if self._progress is None:
            if not self._terminal or total is None or total < BAR_MIN_BYTES:
                return
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self._description, total=total)
        self._progress.update(self._task, completed=done)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _display_name(entry: DirEntry) -> str:
    return entry.name + ("/" if entry.stat.kind is Kind.DIRECTORY else "")


def _long_line(entry: DirEntry) -> str:
    """``drwxr-xr-x  owner  size  mtime  name`` (as ``ls -l``)."""
    attributes: Stat = entry.stat
    kind = stat_bits.S_IFDIR if attributes.kind is Kind.DIRECTORY else stat_bits.S_IFREG
    mode = stat_bits.filemode(kind | attributes.mode)
    return (
        f"{mode}  {attributes.owner:<8}  {attributes.size:>12}  "
        f"{_time(attributes.mtime, precise=False)}  {_display_name(entry)}"
    )


def _time(nanoseconds: int, *, precise: bool) -> str:
    """An mtime (ns since the epoch) in local time."""
    seconds, fraction = divmod(nanoseconds, 10**9)
    moment = datetime.datetime.fromtimestamp(seconds).astimezone()
    if precise:
        return f"{moment:%Y-%m-%d %H:%M:%S}.{fraction:09d} {moment:%z}"
    return f"{moment:%Y-%m-%d %H:%M}"
