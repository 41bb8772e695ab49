"""Benchmark of the consensus core alone: entries committed per second.

Three nodes in one process, storage in memory, messages handed over directly:
what is measured is the core's own cost (the runtime adds disk and network).
Proposals arrive in batches between two Ready cycles, as they do under load.

    .venv/bin/python bench/raft_core.py [--entries 500000] [--batch 1000]

Prints entries/s for 100-byte commands. Target on a 2-core machine: >= 100,000/s.
"""

from __future__ import annotations

import argparse
import random
import time

from quorumfs.raft import (
    ConfChange,
    Config,
    EntryType,
    MemoryStorage,
    Message,
    RawNode,
    Role,
    bootstrap_log,
)


class InMemoryCluster:
    def __init__(self, size: int, *, max_size_per_msg: int) -> None:
        rng = random.Random(1)
        entries, hard_state = bootstrap_log(range(1, size + 1))
        self.storages: dict[int, MemoryStorage] = {}
        self.nodes: dict[int, RawNode] = {}
        for node_id in range(1, size + 1):
            storage = MemoryStorage()
            storage.append(entries)
            storage.set_hard_state(hard_state)
            self.storages[node_id] = storage
            config = Config(id=node_id, max_size_per_msg=max_size_per_msg)
            self.nodes[node_id] = RawNode(config, storage, rng)
        self.applied = 0  # normal entries applied on node 1

    def pump(self) -> None:
        """Run the Ready recipe on every node until no message is left in flight."""
        while True:
            outbox: list[Message] = []
            for node_id, node in self.nodes.items():
                storage = self.storages[node_id]
                while node.has_ready():
                    rd = node.ready()
                    storage.append(rd.entries)
                    if rd.hard_state is not None:
                        storage.set_hard_state(rd.hard_state)
                    outbox.extend(rd.messages)
                    for entry in rd.committed_entries:
                        if entry.type is EntryType.CONF_CHANGE:
                            node.apply_conf_change(ConfChange.decode(entry.data))
                        elif node_id == 1 and entry.data:
                            self.applied += 1
                    node.advance(rd)
            if not outbox:
                return
            for m in outbox:
                self.nodes[m.to].step(m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--size", type=int, default=100, help="bytes per command")
    args = parser.parse_args()

    cluster = InMemoryCluster(3, max_size_per_msg=4 << 20)
    leader = cluster.nodes[1]
    cluster.pump()  # apply the bootstrap membership first
    leader.campaign()
    cluster.pump()
    assert leader.raft.role is Role.LEADER
    command = bytes(args.size)
    batch = [command] * args.batch

    started = time.perf_counter()
    while cluster.applied < args.entries:
        leader.propose_batch(batch)
        cluster.pump()
    elapsed = time.perf_counter() - started
    print(
        f"raft core, 3 nodes in memory, {args.size}-byte commands, batches of {args.batch}: "
        f"{cluster.applied / elapsed:,.0f} entries committed/s "
        f"({cluster.applied:,} in {elapsed:.2f} s)"
    )


if __name__ == "__main__":
    main()
