"""``MasterStateMachine``'s membership: who the masters are, and which learner is to become
a voter, from the log and from snapshots; journals and snapshots written before the
promotion intent existed still decode, and masters without it read the new ones."""

from __future__ import annotations

import msgspec

from quorumfs.master.state_machine import MasterStateMachine, Member, MemberAddresses
from quorumfs.raft import ConfChange, ConfChangeType, ConfState


class _OldAddresses(msgspec.Struct, frozen=True, array_like=True):
    """``MemberAddresses`` as it was before ``promote``."""

    http: str
    raft: str


class _OldMember(msgspec.Struct, frozen=True, array_like=True):
    """``Member`` as it was before ``promote``."""

    id: int
    http: str
    raft: str


class _OldImage(msgspec.Struct, array_like=True):
    """The state machine's snapshot image as it was before ``Member.promote``."""

    namespace: bytes
    members: list[_OldMember]
    next_member_id: int


OLD_CONTEXT = b"\x92\xad10.0.0.4:9333\xae10.0.0.4:19333"
"""The two-field context a master wrote for 10.0.0.4 before ``promote`` existed."""

CONF = ConfState(voters=frozenset({1}), learners=frozenset({4}))


def test_an_old_two_field_context_decodes_without_the_intent() -> None:
    assert msgspec.msgpack.encode(_OldAddresses("10.0.0.4:9333", "10.0.0.4:19333")) == OLD_CONTEXT
    assert MemberAddresses.decode(OLD_CONTEXT) == MemberAddresses(
        "10.0.0.4:9333", "10.0.0.4:19333", promote=False
    )
    state = MasterStateMachine()
    state.apply_membership(7, ConfChange(ConfChangeType.ADD_LEARNER, 4, OLD_CONTEXT), CONF)
    assert state.members == {4: Member(4, "10.0.0.4:9333", "10.0.0.4:19333", promote=False)}


def test_a_master_without_the_field_reads_the_new_context() -> None:
    new = MemberAddresses("10.0.0.4:9333", "10.0.0.4:19333", promote=True).encode()
    old_decoded = msgspec.msgpack.decode(new, type=_OldAddresses)
    assert old_decoded == _OldAddresses("10.0.0.4:9333", "10.0.0.4:19333")


def test_the_intent_is_kept_until_the_promotion_and_survives_a_snapshot() -> None:
    state = MasterStateMachine()
    added = MemberAddresses("10.0.0.4:9333", "10.0.0.4:19333", promote=True).encode()
    state.apply_membership(7, ConfChange(ConfChangeType.ADD_LEARNER, 4, added), CONF)
    assert state.members[4].promote

    restored = MasterStateMachine()
    restored.restore(state.snapshot())
    assert restored.members == state.members
    assert restored.next_member_id == 5

    promoted = MemberAddresses("10.0.0.4:9333", "10.0.0.4:19333").encode()
    voters = ConfState(voters=frozenset({1, 4}))
    state.apply_membership(9, ConfChange(ConfChangeType.ADD_VOTER, 4, promoted), voters)
    assert state.members[4] == Member(4, "10.0.0.4:9333", "10.0.0.4:19333", promote=False)


def test_an_old_snapshot_image_restores_without_the_intent() -> None:
    namespace = MasterStateMachine().namespace.snapshot()
    old = msgspec.msgpack.encode(
        _OldImage(namespace, [_OldMember(1, "10.0.0.1:9333", "10.0.0.1:19333")], 2)
    )
    state = MasterStateMachine()
    state.restore(old)
    assert state.members == {1: Member(1, "10.0.0.1:9333", "10.0.0.1:19333", promote=False)}
    assert state.next_member_id == 2


def test_a_master_without_the_field_reads_the_new_snapshot_image() -> None:
    state = MasterStateMachine()
    added = MemberAddresses("10.0.0.4:9333", "10.0.0.4:19333", promote=True).encode()
    state.apply_membership(7, ConfChange(ConfChangeType.ADD_LEARNER, 4, added), CONF)
    old_decoded = msgspec.msgpack.decode(state.snapshot(), type=_OldImage)
    assert old_decoded.members == [_OldMember(4, "10.0.0.4:9333", "10.0.0.4:19333")]
