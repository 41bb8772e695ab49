"""The runtime: everything that drives the consensus core against the real world.

- ``runtime.node``: ``RaftNode``, the asyncio driver (the Ready loop, the clock).
- ``runtime.wal``: the journal on disk (write-ahead log, hard state, snapshots).
- ``runtime.transport``: authenticated TCP between Raft peers.
- ``runtime.lease_log``: ``lease.log``; ``runtime.clock``: a master's wall clock
  (``WallClock``, which fault tests can shift; leases never read it).

It may import ``quorumfs.raft``; the core never imports it.
"""
