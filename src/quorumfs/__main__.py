"""``python -m quorumfs``: the same as the ``quorumfs`` command."""

from quorumfs.cli.main import main

main()
