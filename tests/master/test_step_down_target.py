"""Whom a stepping-down leader hands over to (``service.step_down_target``)."""

from __future__ import annotations

from quorumfs.master.service import step_down_target
from quorumfs.raft import ConfState, PeerStatus, ProgressState, Role, Status


def status(*peers: PeerStatus, witnesses: frozenset[int] = frozenset()) -> Status:
    """Node 1 leads; ``peers`` are the others (learners are not voters)."""
    me = PeerStatus(1, 50, 51, ProgressState.REPLICATE, True, False, False)
    voters = frozenset({1} | {p.id for p in peers if not p.is_learner})
    learners = frozenset(p.id for p in peers if p.is_learner)
    return Status(
        id=1,
        term=3,
        vote=1,
        leader=1,
        role=Role.LEADER,
        commit=50,
        applied=50,
        last_index=50,
        conf=ConfState(voters, learners, witnesses),
        lease_remaining_ticks=8,
        lead_transferee=0,
        peers={p.id: p for p in (me, *peers)},
    )


def peer(
    node: int, match: int, *, active: bool = True, learner: bool = False, witness: bool = False
) -> PeerStatus:
    return PeerStatus(node, match, match + 1, ProgressState.REPLICATE, active, learner, witness)


def test_the_voter_with_the_longest_log_is_chosen_ties_going_to_the_lowest_id() -> None:
    assert step_down_target(status(peer(2, 40), peer(3, 50))) == 3
    assert step_down_target(status(peer(3, 50), peer(2, 50))) == 2


def test_a_voter_heard_from_recently_comes_before_a_silent_one() -> None:
    assert step_down_target(status(peer(2, 50, active=False), peer(3, 45))) == 3
    assert step_down_target(status(peer(2, 50, active=False), peer(3, 49, active=False))) == 2


def test_learners_and_witnesses_cannot_take_over() -> None:
    learner, witness = peer(2, 50, learner=True), peer(3, 50, witness=True)
    assert step_down_target(status(learner, witness, witnesses=frozenset({3}))) is None
    assert step_down_target(status(learner, witness, peer(4, 10), witnesses=frozenset({3}))) == 4
    assert step_down_target(status()) is None  # a group of one
