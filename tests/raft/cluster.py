"""A synchronous in-memory cluster for scripted tests of the core.

Unlike the simulator (random, timed), this delivers every message at once,
in order, until nothing moves (``stabilize``), so a test can set up an exact
situation: elect node 1, cut node 3 off, tick node 2 ten times, and so on.
Each node follows the Ready recipe of ``rawnode.py`` with a ``MemoryStorage``
that survives ``crash``/``restart``.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable
from dataclasses import replace

from quorumfs.raft import (
    ConfChange,
    Config,
    DroppedError,
    EntryType,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    ReadState,
    Role,
    bootstrap_log,
)


class Cluster:
    def __init__(self, size: int = 3, *, seed: int = 1, **config: object) -> None:
        self.rng = random.Random(seed)
        self.base = Config(id=1, **config)  # type: ignore[arg-type]
        self.storages: dict[int, MemoryStorage] = {}
        self.nodes: dict[int, RawNode] = {}
        self.applied: dict[int, list[bytes]] = {}
        self.read_states: dict[int, list[ReadState]] = {}
        self.blocked: set[tuple[int, int]] = set()
        self.sent: list[Message] = []  # every message delivered, for assertions
        self.snapshot_data: dict[int, bytes] = {}  # what each node restored from a snapshot
        self.observers: list[Callable[[int, bool], None]] = []
        """Called with a node's id, and True, after each of its ticks; with False for each
        Ready taken from it (before its messages go): where the runtime's lease log looks."""
        entries, hard_state = bootstrap_log(range(1, size + 1))
        for node_id in range(1, size + 1):
            storage = MemoryStorage()
            storage.append(entries)
            storage.set_hard_state(hard_state)
            self._start(node_id, storage)
        self.stabilize()

    # -- membership of the harness --------------------------------------------------

    def _start(self, node_id: int, storage: MemoryStorage, **overrides: object) -> None:
        self.storages[node_id] = storage
        config = replace(self.base, id=node_id, **overrides)  # type: ignore[arg-type]
        self.nodes[node_id] = RawNode(config, storage, self.rng)
        self.applied.setdefault(node_id, [])
        self.read_states.setdefault(node_id, [])

    def add_empty_node(self, node_id: int) -> None:
        """A brand-new process with an empty log, not yet a member."""
        self._start(node_id, MemoryStorage())

    def crash(self, node_id: int) -> None:
        del self.nodes[node_id]

    def restart(self, node_id: int, **overrides: object) -> None:
        self._start(node_id, self.storages[node_id], **overrides)

    def wipe(self, node_id: int) -> None:
        """The node lost its disk: it comes back empty under the same id."""
        self.crash(node_id)
        self.applied[node_id] = []
        self._start(node_id, MemoryStorage())

    # -- the network -----------------------------------------------------------------

    def isolate(self, node_id: int) -> None:
        for other in self.storages:
            if other != node_id:
                self.blocked |= {(node_id, other), (other, node_id)}

    def cut(self, a: int, b: int) -> None:
        self.blocked |= {(a, b), (b, a)}

    def heal(self) -> None:
        self.blocked.clear()

    # -- driving ---------------------------------------------------------------------

    def _process(self, node_id: int) -> list[Message]:
        node = self.nodes[node_id]
        storage = self.storages[node_id]
        out: list[Message] = []
        while node.has_ready():
            rd = node.ready()
            self._observe(node_id, ticked=False)
            if rd.snapshot is not None:
                storage.apply_snapshot(rd.snapshot)
                self.snapshot_data[node_id] = rd.snapshot.data
                self.applied[node_id] = [rd.snapshot.data]
            storage.append(rd.entries)
            if rd.hard_state is not None:
                storage.set_hard_state(rd.hard_state)
            out.extend(rd.messages)
            for entry in rd.committed_entries:
                if entry.type is EntryType.CONF_CHANGE:
                    node.apply_conf_change(ConfChange.decode(entry.data))
                elif entry.data:
                    self.applied[node_id].append(entry.data)
            self.read_states[node_id].extend(rd.read_states)
            node.advance(rd)
        return out

    def stabilize(self, max_rounds: int = 10_000) -> None:
        for _ in range(max_rounds):
            outbox: list[Message] = []
            for node_id in sorted(self.nodes):
                outbox.extend(self._process(node_id))
            if not outbox:
                return
            for m in outbox:
                self.deliver(m)
        raise AssertionError("the cluster did not stabilize")

    def deliver(self, m: Message) -> None:
        if (m.frm, m.to) in self.blocked or m.to not in self.nodes:
            return
        self.sent.append(m)
        with contextlib.suppress(DroppedError):  # e.g. a proposal forwarded to no leader
            self.nodes[m.to].step(m)

    def tick(self, nodes: Iterable[int] | None = None, times: int = 1) -> None:
        for _ in range(times):
            for node_id in sorted(nodes if nodes is not None else self.nodes):
                if node_id in self.nodes:
                    self.nodes[node_id].tick()
                    self._observe(node_id, ticked=True)
            self.stabilize()

    def _observe(self, node_id: int, *, ticked: bool) -> None:
        for observer in self.observers:
            observer(node_id, ticked)

    def elect(self, node_id: int) -> None:
        self.nodes[node_id].campaign()
        self.stabilize()
        assert self.role(node_id) is Role.LEADER, f"node {node_id} did not win"

    def propose(self, node_id: int, data: bytes) -> None:
        self.nodes[node_id].propose(data)
        self.stabilize()

    # -- queries -----------------------------------------------------------------------

    def role(self, node_id: int) -> Role:
        return self.nodes[node_id].raft.role

    def term(self, node_id: int) -> int:
        return self.nodes[node_id].raft.term

    def leaders(self) -> list[int]:
        return [n for n, node in self.nodes.items() if node.raft.role is Role.LEADER]

    def sent_of(self, kind: MessageType) -> list[Message]:
        return [m for m in self.sent if m.type is kind]
