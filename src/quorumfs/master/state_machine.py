"""The master's replicated state: the namespace plus who the masters are.

``MasterStateMachine`` is what the Raft log is applied to on every master.
It adds to the ``Namespace`` the membership of the master group: each
member's id and addresses arrive in the ``context`` of the membership change
that added it, so every master (and a master restarted with only its
directory) knows every other master's addresses from the log alone. This is
SeaweedFS's "sticky" cluster information, kept in the journal. So is whether a
learner is to become a voter (``MemberAddresses.promote``): whichever master
leads promotes it once it has caught up, not only the one that added it.

Compatibility: ``MemberAddresses`` and ``Member`` are msgpack arrays; a field is
only ever added at the end, with a default, so journals and snapshots written
before it decode (to the default), and a master without it ignores it.

Pure and deterministic like the namespace: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from quorumfs.raft import ConfChange, ConfChangeType, ConfState

from .commands import Command, decode_command
from .namespace import Namespace
from .results import ErrorCode, NamespaceError, Result

__all__ = ["MasterStateMachine", "Member", "MemberAddresses"]


class MemberAddresses(msgspec.Struct, frozen=True, array_like=True):
    """The ``ConfChange.context`` of a master: where to reach it, and whether it is to
    become a voter."""

    http: str
    raft: str
    promote: bool = False
    """On an added learner: promote it to voter once it has caught up. False on a
    promotion (the intent is fulfilled) and in journals older than the field."""

    def encode(self) -> bytes:
        return _encoder.encode(self)

    @staticmethod
    def decode(data: bytes) -> MemberAddresses:
        return _addresses_decoder.decode(data)


class Member(msgspec.Struct, frozen=True, array_like=True):
    id: int
    http: str
    raft: str
    promote: bool = False
    """As in the ``MemberAddresses`` of the member's last membership change: a learner
    the leader promotes to voter once it has caught up (False in older snapshots)."""


class _Image(msgspec.Struct, array_like=True):
    namespace: bytes
    members: list[Member]
    next_member_id: int


_encoder = msgspec.msgpack.Encoder()
_addresses_decoder = msgspec.msgpack.Decoder(MemberAddresses)
_image_decoder = msgspec.msgpack.Decoder(_Image)


class MasterStateMachine:
    def __init__(self) -> None:
        self.namespace = Namespace()
        self.members: dict[int, Member] = {}
        # Invariant: greater than every id ever added, so a removed id is never reused.
        self.next_member_id = 1
        self.membership_index = 0
        """The log index of the last membership change applied (0: none since a restore)."""
        self.removed: set[int] = set()
        """Masters whose removal this process applied (a snapshot does not say who was
        removed before it; ids are never reused, so this only grows)."""
        self._membership_listeners: list[Callable[[], None]] = []
        self._apply_listeners: list[Callable[[Command, Result[Any]], None]] = []

    def apply(self, index: int, command: bytes) -> Result[Any]:
        try:
            decoded = decode_command(command)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            # Deterministic on every replica: the same bytes fail the same way.
            return Result(
                error=NamespaceError(ErrorCode.EINVAL, f"undecodable command: {error}", "")
            )
        result = self.namespace.apply(decoded)
        for listener in self._apply_listeners:
            listener(decoded, result)
        return result

    def on_applied(self, listener: Callable[[Command, Result[Any]], None]) -> None:
        """Call ``listener(command, result)`` after each command is applied (on every
        master; leader-only work must check leadership itself)."""
        self._apply_listeners.append(listener)

    def apply_membership(self, index: int, change: ConfChange, conf: ConfState) -> None:
        self.membership_index = index
        if change.type is ConfChangeType.REMOVE_NODE:
            self.members.pop(change.node_id, None)
            self.removed.add(change.node_id)
        elif change.context:
            addresses = MemberAddresses.decode(change.context)
            self.members[change.node_id] = Member(
                change.node_id, addresses.http, addresses.raft, addresses.promote
            )
        self.next_member_id = max(self.next_member_id, change.node_id + 1)
        for listener in self._membership_listeners:
            listener()

    def on_membership_change(self, listener: Callable[[], None]) -> None:
        self._membership_listeners.append(listener)

    def snapshot(self) -> bytes:
        members = sorted(self.members.values(), key=lambda m: m.id)
        return _encoder.encode(_Image(self.namespace.snapshot(), members, self.next_member_id))

    def restore(self, image: bytes) -> None:
        if not image:  # a journal with no snapshot yet: the empty state
            self.namespace, self.members, self.next_member_id = Namespace(), {}, 1
        else:
            decoded = _image_decoder.decode(image)
            self.namespace = Namespace.restore(decoded.namespace)
            self.members = {m.id: m for m in decoded.members}
            self.next_member_id = decoded.next_member_id
        for listener in self._membership_listeners:
            listener()
