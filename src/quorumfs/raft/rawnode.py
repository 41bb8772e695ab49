"""The driver's view of a node: inputs in, ``Ready`` batches out.

The driver loop, in full (the runtime's asyncio driver and the simulator both
follow it)::

    node.tick()                  # every tick interval
    node.step(message)           # for each message received
    node.propose(data)           # for each client write
    if node.has_ready():
        rd = node.ready()
        storage.save(rd.hard_state, rd.entries, rd.snapshot)   # 1. persist
        storage.sync()                                         #    (fsync if rd.must_sync)
        send(rd.messages)                                      # 2. only then send
        apply(rd.snapshot, rd.committed_entries)               # 3. apply, in order
        serve(rd.read_states)                                  #    once applied >= index
        node.advance(rd)                                       # 4. acknowledge

Step 1 before step 2 is what makes a vote or an acknowledgement durable
before anyone can rely on it. Nothing may be sent from a Ready until its
hard state and entries are durable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import Config, RandomSource
from .messages import (
    ConfChange,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Role,
    Snapshot,
    SoftState,
)
from .progress import ProgressState
from .raft import Raft
from .storage import Storage

__all__ = ["PeerStatus", "RawNode", "Ready", "Status"]


@dataclass(frozen=True, slots=True)
class Ready:
    """Everything the driver must do, in the order the module docstring gives."""

    soft_state: SoftState | None
    hard_state: HardState | None
    entries: list[Entry]
    snapshot: Snapshot | None
    committed_entries: list[Entry]
    messages: list[Message]
    read_states: list[ReadState]

    @property
    def must_sync(self) -> bool:
        """Whether this Ready must reach stable storage before its messages leave."""
        return bool(self.entries) or self.hard_state is not None or self.snapshot is not None


@dataclass(frozen=True, slots=True)
class PeerStatus:
    id: int
    match: int
    next: int
    state: ProgressState
    recent_active: bool
    is_learner: bool
    is_witness: bool


@dataclass(frozen=True, slots=True)
class Status:
    id: int
    term: int
    vote: int
    leader: int
    role: Role
    commit: int
    applied: int
    last_index: int
    conf: ConfState
    lease_remaining_ticks: int
    lead_transferee: int
    peers: dict[int, PeerStatus] = field(default_factory=dict)
    """Filled on the leader only: what it knows of every member."""


class RawNode:
    def __init__(self, config: Config, storage: Storage, rng: RandomSource) -> None:
        self.raft = Raft(config, storage, rng)
        self._prev_soft = self.raft.soft_state()
        self._prev_hard = storage.initial_state()[0]

    # -- inputs ------------------------------------------------------------------------

    def tick(self) -> None:
        self.raft.tick()

    def campaign(self) -> None:
        """Start an election now (as if the election timeout had passed)."""
        self.raft.step(Message(type=MessageType.HUP))

    def propose(self, data: bytes) -> None:
        """Propose one command. Raises ``DroppedError`` when it cannot be taken now."""
        self.raft.step(
            Message(type=MessageType.PROP, entries=(Entry(0, 0, EntryType.NORMAL, data),))
        )

    def propose_batch(self, commands: list[bytes]) -> None:
        """Propose several commands at once (one message, one append)."""
        entries = tuple(Entry(0, 0, EntryType.NORMAL, data) for data in commands)
        self.raft.step(Message(type=MessageType.PROP, entries=entries))

    def propose_membership(self, change: ConfChange) -> None:
        """Propose one membership change; it takes effect when applied (``apply_conf_change``)."""
        entry = Entry(0, 0, EntryType.CONF_CHANGE, change.encode())
        self.raft.step(Message(type=MessageType.PROP, entries=(entry,)))

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        """Call when applying a committed CONF_CHANGE entry. Returns the new membership."""
        return self.raft.apply_conf_change(change)

    def step(self, m: Message) -> None:
        """Deliver a message from a peer. Local message types are refused."""
        if m.type is MessageType.HUP:
            raise ValueError("HUP is local; use campaign()")
        self.raft.step(m)

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read point; a ``ReadState`` with ``context`` follows."""
        self.raft.step(Message(type=MessageType.READ_INDEX, context=context))

    def transfer_leadership(self, target: int) -> None:
        """Ask the leader (this node or, forwarded, the one it knows) to hand over to ``target``."""
        self.raft.step(Message(type=MessageType.TRANSFER_LEADER, frm=target))

    def report_unreachable(self, node: int) -> None:
        self.raft.step(Message(type=MessageType.UNREACHABLE, frm=node))

    # -- outputs -----------------------------------------------------------------------

    def has_ready(self) -> bool:
        r = self.raft
        return bool(
            r.msgs
            or r.read_states
            or r.broadcast_pending
            or r.log.unstable.entries
            or r.log.has_pending_snapshot()
            or r.log.has_next_committed_entries()
            or r.soft_state() != self._prev_soft
            or r.hard_state() != self._prev_hard
        )

    def ready(self) -> Ready:
        r = self.raft
        r.flush_broadcast()
        soft, hard = r.soft_state(), r.hard_state()
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            entries=r.log.unstable_entries(),
            snapshot=r.log.unstable.snapshot,
            committed_entries=r.log.next_committed_entries(),
            messages=r.msgs,
            read_states=r.read_states,
        )
        r.msgs = []
        r.read_states = []
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver did everything ``rd`` asked for."""
        r = self.raft
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.snapshot is not None:
            r.log.stable_snap_to(rd.snapshot.meta.index)
            r.log.applied_to(rd.snapshot.meta.index)
        if rd.entries:
            last = rd.entries[-1]
            r.log.stable_to(last.index, last.term)
            r.on_stable(last.index)
        if rd.committed_entries:
            r.log.applied_to(rd.committed_entries[-1].index)

    # -- introspection -----------------------------------------------------------------

    def status(self) -> Status:
        r = self.raft
        peers: dict[int, PeerStatus] = {}
        if r.role is Role.LEADER:
            peers = {
                node: PeerStatus(
                    node,
                    pr.match,
                    pr.next,
                    pr.state,
                    pr.recent_active or node == r.id,
                    pr.is_learner,
                    pr.is_witness,
                )
                for node, pr in sorted(r.prs.items())
            }
        return Status(
            id=r.id,
            term=r.term,
            vote=r.vote,
            leader=r.lead,
            role=r.role,
            commit=r.log.committed,
            applied=r.log.applied,
            last_index=r.log.last_index(),
            conf=r.conf,
            lease_remaining_ticks=r.lease_remaining(),
            lead_transferee=r.lead_transferee,
            peers=peers,
        )
