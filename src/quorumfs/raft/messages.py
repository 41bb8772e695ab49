"""The values the consensus core consumes and produces.

Everything here is an immutable ``msgspec.Struct``: cheap to build, hashable
where it matters, and directly encodable by the runtime's wire codec. The core
never serialises anything itself; it only builds and reads these values.

House rules:
- Node ids are positive integers; ``NONE`` (0) means "nobody".
- Log indexes start at 1; index 0 with term 0 is the empty log's sentinel.
- ``Message`` is one flat struct for every message type (as in etcd's
  ``raftpb.Message``); which fields are meaningful depends on ``type`` and is
  written beside each ``MessageType`` member.
"""

from __future__ import annotations

import enum

import msgspec

__all__ = [
    "NONE",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "Message",
    "MessageType",
    "ReadState",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
]

NONE = 0
"""The node id that stands for "no node" (no leader, no vote)."""


class Role(enum.Enum):
    """What a node is doing in its current term.

    A learner or witness is a membership kind, not a role: such a member is a
    FOLLOWER that never campaigns.
    """

    FOLLOWER = "FOLLOWER"
    PRE_CANDIDATE = "PRE_CANDIDATE"
    CANDIDATE = "CANDIDATE"
    LEADER = "LEADER"


class EntryType(enum.IntEnum):
    NORMAL = 0
    """Opaque application data; an empty payload is the leader's no-op."""
    CONF_CHANGE = 1
    """``data`` is an encoded ``ConfChange``; applied through ``apply_conf_change``."""


class Entry(msgspec.Struct, frozen=True, gc=False, array_like=True):
    index: int
    term: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


class HardState(msgspec.Struct, frozen=True):
    """What must be on stable storage before any message that depends on it is sent.

    Invariant: a node never sends a vote for ``vote`` in ``term`` unless this
    exact value has been persisted first.
    """

    term: int = 0
    vote: int = NONE
    commit: int = 0


EMPTY_HARD_STATE = HardState()


class ConfState(msgspec.Struct, frozen=True):
    """The membership of the group.

    Invariants: ``voters`` and ``learners`` are disjoint; ``witnesses`` is a
    subset of ``voters`` (a witness votes and counts towards quorums but keeps
    only log metadata and never leads).
    """

    voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()
    witnesses: frozenset[int] = frozenset()

    def members(self) -> frozenset[int]:
        return self.voters | self.learners


class ConfChangeType(enum.IntEnum):
    ADD_VOTER = 0
    """Add a voter, or promote a learner to voter."""
    REMOVE_NODE = 1
    ADD_LEARNER = 2
    """Add a learner, or demote a voter to learner."""
    ADD_WITNESS = 3
    """Add a voter that stores only log metadata and never campaigns."""


class ConfChange(msgspec.Struct, frozen=True, array_like=True):
    """One membership change: the core changes at most one voter at a time."""

    type: ConfChangeType
    node_id: int
    context: bytes = b""
    """Opaque to the core; the master keeps the new member's address here."""

    def encode(self) -> bytes:
        return _conf_change_encoder.encode(self)

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        return _conf_change_decoder.decode(data)


_conf_change_encoder = msgspec.msgpack.Encoder()
_conf_change_decoder = msgspec.msgpack.Decoder(ConfChange)


class SnapshotMeta(msgspec.Struct, frozen=True):
    index: int = 0
    term: int = 0
    conf_state: ConfState = ConfState()


class Snapshot(msgspec.Struct, frozen=True):
    """A state machine image as of ``meta.index``; ``data`` is opaque to the core."""

    meta: SnapshotMeta = SnapshotMeta()
    data: bytes = b""

    def is_empty(self) -> bool:
        return self.meta.index == 0


EMPTY_SNAPSHOT = Snapshot()


class MessageType(enum.IntEnum):
    # Local messages: never sent over the network.
    HUP = 0
    """Start an election (pre-vote first when enabled). ``context`` may be CAMPAIGN_TRANSFER."""
    PROP = 2
    """Propose ``entries``; forwarded to the leader when ``disable_proposal_forwarding`` is off."""
    TRANSFER_LEADER = 3
    """Ask the leader to hand over to ``frm`` (the transferee)."""
    UNREACHABLE = 4
    """The runtime could not deliver to ``frm``: fall back to probing."""

    # Replication.
    APP = 10
    """``index``/``log_term`` identify the entry before ``entries``; ``commit`` is the leader's."""
    APP_RESP = 11
    """``index``: last index now matched, or (``reject``) the rejected ``index`` with
    ``reject_hint``/``log_term`` naming where the follower's log can match."""
    HEARTBEAT = 12
    """``commit`` (capped at the follower's match); ``context`` carries a ReadIndex id;
    ``index`` carries the leader's heartbeat round (for the lease)."""
    HEARTBEAT_RESP = 13
    """Echoes ``context`` and ``index`` (the round)."""
    SNAP = 14
    """One chunk of ``snapshot.data`` at ``snap_offset`` (the struct carries the chunk's
    bytes in ``snapshot.data``); ``snap_done`` marks the last one."""
    SNAP_RESP = 15
    """``index``: bytes of the pending snapshot the follower now holds; ``reject`` when it
    cannot use the chunk (then ``index`` says from where to resend)."""

    # Elections.
    VOTE = 20
    """``index``/``log_term``: the candidate's last entry; ``context`` may be CAMPAIGN_TRANSFER."""
    VOTE_RESP = 21
    PRE_VOTE = 22
    """Sent with ``term`` = candidate's term + 1, without the candidate changing its term."""
    PRE_VOTE_RESP = 23
    TIMEOUT_NOW = 24
    """From the leader to a transferee: campaign at once, ignoring leases."""

    # Reads.
    READ_INDEX = 30
    """``context`` identifies the request; followers forward it to the leader."""
    READ_INDEX_RESP = 31
    """``index`` is the read index for ``context``; ``reject`` when it cannot be served."""


CAMPAIGN_TRANSFER = b"transfer"
"""``context`` of a HUP/VOTE that comes from a leadership transfer: voters ignore leases."""


class Message(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    type: MessageType
    to: int = NONE
    frm: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    snapshot: Snapshot | None = None
    snap_offset: int = 0
    snap_done: bool = False
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""


class ReadState(msgspec.Struct, frozen=True):
    """A linearizable read may be served once ``applied >= index``."""

    index: int
    context: bytes


class SoftState(msgspec.Struct, frozen=True):
    """Volatile state worth reporting (never persisted)."""

    leader: int = NONE
    role: Role = Role.FOLLOWER
