"""quorumfs: a distributed file system whose metadata masters are a Raft group.

Layers, each importing only the ones below it (checked by import-linter):

- ``quorumfs.raft``: the consensus core, a pure state machine (no I/O, no clock).
- ``quorumfs.runtime``: drives the core: asyncio, the journal on disk, the peer transport.
- ``quorumfs.master``: the master service: namespace state machine, HTTP API.
- ``quorumfs.verify``: the linearizability checker.
- ``quorumfs.cli``: the command line.
"""

__version__ = "0.1.0"
