"""The runtime: everything that drives the consensus core against the real world.

It owns the disk (``runtime.wal``: write-ahead log, hard state, snapshots) and,
later, the asyncio driver, clock and transport. It may import
``quorumfs.raft``; the core never imports it.
"""
