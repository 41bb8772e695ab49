"""Entry point of the ``quorumfs`` command: builds the typer app from the subcommand modules."""

from __future__ import annotations

import typer

from quorumfs import __version__

from . import local, master, server, volume
from .cluster import app as cluster_app
from .fs import app as fs_app

app = typer.Typer(
    name="quorumfs",
    help="quorumfs: a distributed file system with highly available Raft masters.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("local")(local.local)
app.command("master")(master.master)
app.command("volume")(volume.volume)
app.command("server")(server.server)
app.add_typer(fs_app, name="fs")
app.add_typer(cluster_app, name="cluster")


@app.command("version")
def version() -> None:
    """Print the quorumfs version."""
    typer.echo(__version__)


def main() -> None:
    app()
