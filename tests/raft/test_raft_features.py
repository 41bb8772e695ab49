"""One scripted test per feature of the core, in the synchronous ``Cluster``."""

from __future__ import annotations

import pytest
from cluster import Cluster

from quorumfs.raft import (
    NONE,
    ConfChange,
    ConfChangeType,
    DroppedError,
    MessageType,
    ProgressState,
    ReadOnlyOption,
    Role,
    TestingKnobs,
)

ELECTION = 10


# -- elections ---------------------------------------------------------------------------


def test_a_single_campaign_elects_a_leader_and_commits_its_noop() -> None:
    c = Cluster(3)
    c.elect(1)
    assert c.leaders() == [1]
    assert all(c.nodes[n].raft.lead == 1 for n in c.nodes)
    leader_log = c.nodes[1].raft.log
    assert leader_log.committed == leader_log.last_index() == 4  # 3 bootstrap entries + no-op


def test_election_timeout_alone_elects_exactly_one_leader() -> None:
    c = Cluster(5, seed=7)
    c.tick(times=3 * ELECTION)
    assert len(c.leaders()) == 1
    terms = {c.term(n) for n in c.nodes}
    assert len(terms) == 1


def _rejoin_after_partition(knobs: TestingKnobs) -> tuple[Cluster, int]:
    # Pre-vote alone (CheckQuorum off) so that pre-vote's own log check is what is tested.
    c = Cluster(3, pre_vote=True, check_quorum=False, knobs=knobs)
    c.elect(1)
    term = c.term(1)
    c.isolate(3)
    c.tick([3], times=5 * ELECTION)  # it keeps timing out, alone
    for i in range(5):
        c.propose(1, f"write {i}".encode())  # its log falls behind
    c.heal()
    c.tick([3], times=3 * ELECTION)  # it campaigns again, now connected
    return c, term


def test_pre_vote_keeps_a_rejoining_partitioned_node_from_deposing_the_leader() -> None:
    c, term = _rejoin_after_partition(TestingKnobs())
    assert c.leaders() == [1]
    assert c.term(1) == term
    assert c.term(3) == term  # pre-votes never raised its term
    assert c.role(3) is not Role.LEADER


def test_without_pre_votes_log_check_the_rejoining_node_deposes_the_leader() -> None:
    c, term = _rejoin_after_partition(TestingKnobs(pre_vote_skips_log_check=True))
    assert c.term(1) > term  # the healthy leader was disrupted
    assert c.role(1) is not Role.LEADER or c.term(1) > term


def test_an_isolated_leader_steps_down_within_two_election_timeouts() -> None:
    c = Cluster(3, check_quorum=True)
    c.elect(1)
    c.isolate(1)
    stepped_down_after = None
    for elapsed in range(1, 2 * ELECTION + 1):
        c.tick([1])
        if c.role(1) is not Role.LEADER:
            stepped_down_after = elapsed
            break
    assert stepped_down_after is not None and stepped_down_after <= 2 * ELECTION
    assert c.nodes[1].raft.lead == NONE


def test_without_check_quorum_an_isolated_leader_stays_leader() -> None:
    c = Cluster(3, check_quorum=False)
    c.elect(1)
    c.isolate(1)
    c.tick([1], times=5 * ELECTION)
    assert c.role(1) is Role.LEADER


def test_a_follower_that_hears_its_leader_ignores_vote_requests() -> None:
    c = Cluster(3, pre_vote=False, check_quorum=True)
    c.elect(1)
    c.cut(1, 3)
    c.tick([3], times=3 * ELECTION)  # 3 campaigns with ever higher terms
    assert c.term(3) > c.term(2)
    assert c.leaders() == [1]  # 2 kept following 1: it was in the leader's lease


# -- the Ready contract and persistence ---------------------------------------------


def test_a_vote_leaves_only_with_the_hard_state_that_records_it() -> None:
    c = Cluster(3, pre_vote=False)
    node = c.nodes[2]
    node.campaign()
    rd = node.ready()
    votes = [m for m in rd.messages if m.type is MessageType.VOTE]
    assert votes, "the candidate asks for votes"
    assert rd.hard_state is not None
    assert (rd.hard_state.term, rd.hard_state.vote) == (votes[0].term, 2)
    assert rd.must_sync


def test_a_restarted_voter_remembers_its_vote() -> None:
    c = Cluster(3, pre_vote=False, check_quorum=False)
    c.cut(1, 3)
    c.nodes[2].campaign()
    c.stabilize()  # node 1 votes for 2
    assert c.nodes[1].raft.vote == 2
    term = c.term(1)
    c.crash(1)
    c.restart(1)
    assert (c.term(1), c.nodes[1].raft.vote) == (term, 2)


def test_an_entry_is_acknowledged_only_after_the_follower_persisted_it() -> None:
    c = Cluster(3)
    c.elect(1)
    c.nodes[1].propose(b"x")
    rd = c.nodes[1].ready()
    appends = [m for m in rd.messages if m.type is MessageType.APP]
    assert appends and rd.entries  # the leader's own copy is persisted with the send
    follower = c.nodes[2]
    follower.step(appends[0])
    frd = follower.ready()
    assert frd.entries and any(m.type is MessageType.APP_RESP for m in frd.messages)


# -- replication ----------------------------------------------------------------------------


def test_proposals_between_two_readys_go_out_as_one_append_per_follower() -> None:
    c = Cluster(3)
    c.elect(1)
    leader = c.nodes[1]
    for i in range(50):
        leader.propose(f"cmd {i}".encode())
    rd = leader.ready()
    appends = [m for m in rd.messages if m.type is MessageType.APP]
    assert sorted(m.to for m in appends) == [2, 3]
    assert all(len(m.entries) == 50 for m in appends)


def test_flow_control_pauses_a_follower_at_the_inflight_limit() -> None:
    c = Cluster(3, max_inflight_msgs=2, max_size_per_msg=1)
    c.elect(1)
    c.blocked.add((2, 1))  # acks from 2 never arrive
    for i in range(10):
        c.propose(1, f"cmd {i}".encode())
    pr = c.nodes[1].raft.prs[2]
    assert pr.state is ProgressState.REPLICATE
    assert pr.is_paused()
    assert len(pr.inflights) == 2


def test_a_diverged_follower_is_repaired_with_few_round_trips() -> None:
    c = Cluster(3, pre_vote=False, check_quorum=False)
    c.elect(1)
    c.isolate(1)
    for i in range(30):
        c.nodes[1].propose(f"lost {i}".encode())  # appended on 1 only
    c.stabilize()
    c.elect(2)
    for i in range(5):
        c.propose(2, f"kept {i}".encode())
    c.heal()
    c.sent.clear()
    c.tick([2], times=2)
    rejects = [m for m in c.sent if m.type is MessageType.APP_RESP and m.reject and m.frm == 1]
    assert len(rejects) <= 2  # fast backtracking skips the whole stale term at once
    assert c.nodes[1].raft.log.last_index() == c.nodes[2].raft.log.last_index()
    assert c.applied[1] == c.applied[2]


def test_the_leader_commits_only_entries_of_its_own_term_by_counting() -> None:
    # Raft §5.4.2, at the log level: a majority holding an old-term entry is not enough.
    c = Cluster(3)
    c.elect(1)
    log = c.nodes[1].raft.log
    old_term = log.term(log.last_index())
    c.propose(1, b"x")
    assert not log.maybe_commit(log.last_index() + 1, old_term)
    committed = log.committed
    assert not log.maybe_commit(committed, old_term + 1)  # nothing to do for the past
    assert log.committed == committed


# -- reads ------------------------------------------------------------------------------------


def test_read_index_waits_for_a_quorum_round() -> None:
    c = Cluster(3, read_only=ReadOnlyOption.SAFE)
    c.elect(1)
    c.nodes[1].read_index(b"r1")
    rd = c.nodes[1].ready()
    assert not rd.read_states  # not before the heartbeat round
    assert any(m.type is MessageType.HEARTBEAT and m.context == b"r1" for m in rd.messages)
    c.nodes[1].advance(rd)
    for m in rd.messages:
        c.deliver(m)
    c.stabilize()
    assert [s.context for s in c.read_states[1]] == [b"r1"]


def test_a_follower_read_is_served_through_the_leader() -> None:
    c = Cluster(3)
    c.elect(1)
    c.propose(1, b"x")
    c.nodes[3].read_index(b"follower read")
    c.stabilize()
    [state] = c.read_states[3]
    assert state.index == c.nodes[1].raft.log.committed


def test_a_lease_read_is_served_at_once_while_the_lease_holds() -> None:
    c = Cluster(3, read_only=ReadOnlyOption.LEASE)
    c.elect(1)
    c.tick([1])  # one heartbeat round acknowledged by a quorum
    assert c.nodes[1].raft.lease_remaining() > 0
    c.nodes[1].read_index(b"lease")
    rd = c.nodes[1].ready()
    assert [s.context for s in rd.read_states] == [b"lease"]


def test_a_lease_read_is_refused_once_the_lease_has_lapsed() -> None:
    c = Cluster(3, read_only=ReadOnlyOption.LEASE)
    c.elect(1)
    c.tick([1])
    c.isolate(1)
    lease = c.nodes[1].raft.lease_remaining()
    assert lease > 0
    c.tick([1], times=lease)
    assert c.role(1) is Role.LEADER  # still leader: CheckQuorum has not fired yet
    assert c.nodes[1].raft.lease_remaining() == 0
    c.nodes[1].read_index(b"too late")
    c.stabilize()
    assert c.read_states[1] == []  # it falls back to a quorum round, which cannot finish


def test_lease_remaining_counts_from_when_the_heartbeat_was_sent() -> None:
    c = Cluster(3, read_only=ReadOnlyOption.LEASE, election_tick=10)
    c.elect(1)
    c.tick([1])
    assert c.nodes[1].raft.lease_remaining() == c.nodes[1].raft.lease_ticks
    c.isolate(1)
    c.tick([1], times=3)
    assert c.nodes[1].raft.lease_remaining() == c.nodes[1].raft.lease_ticks - 3


def test_lease_valid_until_moves_on_each_renewal_and_stops_without_one() -> None:
    c = Cluster(3, read_only=ReadOnlyOption.LEASE, election_tick=10)
    leader = c.nodes[1].raft
    assert leader.lease_valid_until() is None  # not leading
    c.elect(1)
    c.tick([1])  # a heartbeat round, acknowledged by both followers at once
    assert leader.lease_valid_until() == leader.ticks + leader.lease_ticks
    c.tick([1], times=2)
    assert leader.lease_valid_until() == leader.ticks + leader.lease_ticks  # renewed
    assert c.nodes[2].raft.lease_valid_until() is None  # followers hold no lease
    c.isolate(1)
    until = leader.lease_valid_until()
    c.tick([1], times=3)
    assert leader.lease_valid_until() == until  # no quorum contact: no renewal
    assert leader.lease_remaining() == leader.lease_ticks - 3
    assert until is not None
    c.tick([1], times=until - leader.ticks + 1)  # one tick past the end, still leading
    assert c.role(1) is Role.LEADER
    assert (leader.lease_remaining(), leader.lease_valid_until()) == (0, None)
    c.heal()
    c.tick([1])
    assert leader.lease_valid_until() == leader.ticks + leader.lease_ticks  # acquired again


def test_a_leadership_transfer_revokes_the_lease_at_once() -> None:
    c = Cluster(3, read_only=ReadOnlyOption.LEASE)
    c.elect(1)
    c.tick([1])
    assert c.nodes[1].raft.lease_valid_until() is not None
    c.isolate(3)  # the transfer cannot finish
    c.nodes[1].transfer_leadership(3)
    assert c.nodes[1].raft.lease_valid_until() is None


# -- leadership transfer -------------------------------------------------------------------


def test_leadership_transfer_ends_with_the_chosen_node_leading() -> None:
    c = Cluster(3)
    c.elect(1)
    c.propose(1, b"before")
    c.nodes[1].transfer_leadership(3)
    c.stabilize()
    assert c.leaders() == [3]
    c.propose(3, b"after")
    assert c.applied[1] == c.applied[3] == [b"before", b"after"]


def test_transfer_to_a_lagging_node_catches_it_up_first() -> None:
    c = Cluster(3)
    c.elect(1)
    c.cut(1, 3)
    for i in range(10):
        c.propose(1, f"w{i}".encode())
    c.heal()
    c.nodes[1].transfer_leadership(3)
    c.stabilize()
    assert c.leaders() == [3]
    assert len(c.applied[3]) == 10


def test_proposals_are_refused_during_a_transfer_which_gives_up_after_a_timeout() -> None:
    c = Cluster(3)
    c.elect(1)
    c.isolate(3)
    c.nodes[1].transfer_leadership(3)
    c.stabilize()
    with pytest.raises(DroppedError, match="transferred"):
        c.nodes[1].propose(b"x")
    c.tick([1, 2], times=ELECTION)
    assert c.leaders() == [1]
    c.propose(1, b"x")  # accepted again
    assert c.applied[2][-1] == b"x"


def test_a_follower_forwards_a_transfer_request_to_the_leader() -> None:
    c = Cluster(3)
    c.elect(1)
    c.nodes[2].transfer_leadership(2)
    c.stabilize()
    assert c.leaders() == [2]


# -- membership -------------------------------------------------------------------------------


def _change(c: Cluster, leader: int, kind: ConfChangeType, node: int) -> None:
    c.nodes[leader].propose_membership(ConfChange(kind, node))
    c.stabilize()


def test_a_learner_catches_up_without_voting_then_is_promoted() -> None:
    c = Cluster(3)
    c.elect(1)
    c.propose(1, b"a")
    c.add_empty_node(4)
    _change(c, 1, ConfChangeType.ADD_LEARNER, 4)
    assert c.applied[4] == [b"a"]
    assert 4 in c.nodes[1].raft.conf.learners
    c.tick([4], times=3 * ELECTION)
    assert c.role(4) is Role.FOLLOWER  # a learner never campaigns
    _change(c, 1, ConfChangeType.ADD_VOTER, 4)
    assert c.nodes[1].raft.conf.voters == {1, 2, 3, 4}
    c.nodes[1].transfer_leadership(4)
    c.stabilize()
    assert c.leaders() == [4]


def test_one_membership_change_at_a_time() -> None:
    c = Cluster(3)
    c.elect(1)
    c.add_empty_node(4)
    c.cut(1, 2)
    c.cut(1, 3)  # nothing commits
    c.nodes[1].propose_membership(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    with pytest.raises(DroppedError, match="pending"):
        c.nodes[1].propose_membership(ConfChange(ConfChangeType.ADD_LEARNER, 5))


def test_invalid_membership_changes_are_refused() -> None:
    c = Cluster(3)
    c.elect(1)
    with pytest.raises(DroppedError, match="already a voter"):
        c.nodes[1].propose_membership(ConfChange(ConfChangeType.ADD_VOTER, 2))
    with pytest.raises(DroppedError, match="not a member"):
        c.nodes[1].propose_membership(ConfChange(ConfChangeType.REMOVE_NODE, 9))


def test_a_removed_leader_steps_down_and_the_rest_elect_another() -> None:
    c = Cluster(3)
    c.elect(1)
    _change(c, 1, ConfChangeType.REMOVE_NODE, 1)
    assert c.role(1) is Role.FOLLOWER
    c.tick([2, 3], times=3 * ELECTION)
    assert len(c.leaders()) == 1 and c.leaders()[0] in (2, 3)
    c.tick([1], times=3 * ELECTION)
    assert c.role(1) is Role.FOLLOWER  # not a voter any more: never campaigns


def test_a_removed_node_that_missed_its_removal_does_not_disrupt() -> None:
    c = Cluster(3)
    c.elect(1)
    c.add_empty_node(4)
    _change(c, 1, ConfChangeType.ADD_LEARNER, 4)
    _change(c, 1, ConfChangeType.ADD_VOTER, 4)
    c.isolate(3)
    _change(c, 1, ConfChangeType.REMOVE_NODE, 3)  # 3 never hears of it
    assert 3 not in c.nodes[1].raft.conf.members()
    term = c.term(1)
    c.tick([3], times=4 * ELECTION)  # it times out again and again, alone
    c.heal()
    for _ in range(4 * ELECTION):
        c.tick()
    assert c.leaders() == [1]
    assert c.term(1) == term


def test_a_witness_votes_but_never_leads_and_stores_no_payload() -> None:
    c = Cluster(3)
    c.elect(1)
    c.add_empty_node(4)
    _change(c, 1, ConfChangeType.ADD_WITNESS, 4)
    assert c.nodes[1].raft.conf.voters == {1, 2, 3, 4}
    c.propose(1, b"payload")
    last = c.nodes[4].raft.log.last_index()
    [entry] = c.nodes[4].raft.log.slice(last, last + 1)
    assert entry.data == b""  # metadata only
    c.tick([4], times=4 * ELECTION)
    assert c.role(4) is Role.FOLLOWER
    with pytest.raises(DroppedError, match="not a voter that can lead"):
        c.nodes[1].transfer_leadership(4)


# -- snapshots ------------------------------------------------------------------------------


def _lose_disk_and_rejoin(c: Cluster, node: int) -> None:
    """The operator's procedure for a node whose disk is gone: remove, wipe, re-add."""
    _change(c, 1, ConfChangeType.REMOVE_NODE, node)
    c.wipe(node)
    _change(c, 1, ConfChangeType.ADD_LEARNER, node)


def test_a_node_that_lost_its_log_catches_up_through_a_chunked_snapshot() -> None:
    c = Cluster(3, snapshot_chunk_bytes=16)
    c.elect(1)
    for i in range(20):
        c.propose(1, f"entry {i:02d}".encode())
    leader_storage = c.storages[1]
    applied = c.nodes[1].raft.log.applied
    image = b"|".join(c.applied[1])
    leader_storage.create_snapshot(applied, c.nodes[1].raft.conf, image)
    leader_storage.compact(applied)
    _lose_disk_and_rejoin(c, 3)
    c.tick([1], times=2)
    chunks = c.sent_of(MessageType.SNAP)
    assert len(chunks) >= len(image) // 16  # streamed in pieces
    assert c.snapshot_data[3] == image
    c.propose(1, b"after the snapshot")
    assert c.applied[3][-1] == b"after the snapshot"
    assert c.nodes[3].raft.log.applied == c.nodes[1].raft.log.applied
    _change(c, 1, ConfChangeType.ADD_VOTER, 3)
    assert c.nodes[3].raft.conf.voters == {1, 2, 3}


def test_a_follower_told_of_commits_it_does_not_hold_fails_loudly() -> None:
    # A node that lost its disk but kept its id would vote without the entries it
    # acknowledged; the core refuses to carry on rather than risk a second history.
    c = Cluster(3)
    c.elect(1)
    c.propose(1, b"x")
    c.wipe(3)
    with pytest.raises(AssertionError, match="past the last index"):
        c.tick([1])


def test_a_lost_snapshot_chunk_is_resent() -> None:
    c = Cluster(3, snapshot_chunk_bytes=8)
    c.elect(1)
    for i in range(5):
        c.propose(1, f"e{i}".encode())
    applied = c.nodes[1].raft.log.applied
    c.storages[1].create_snapshot(applied, c.nodes[1].raft.conf, b"0123456789abcdefghij")
    c.storages[1].compact(applied)
    c.blocked.add((1, 3))
    _lose_disk_and_rejoin(c, 3)
    c.tick([1], times=2)  # chunks are lost
    c.heal()
    c.tick([1], times=4)
    assert c.snapshot_data[3] == b"0123456789abcdefghij"


def test_an_abandoned_transfer_leaves_no_lease_for_the_rest_of_the_term() -> None:
    # Regression (simulator seed 195): a TimeoutNow still in flight after the transfer
    # was abandoned let the transferee win while the old leader trusted a renewed lease.
    c = Cluster(3, read_only=ReadOnlyOption.LEASE)
    c.elect(1)
    c.tick([1])
    assert c.nodes[1].raft.lease_remaining() > 0
    c.isolate(3)
    c.nodes[1].transfer_leadership(3)
    c.tick([1, 2], times=ELECTION + 2)  # abandoned; heartbeats acknowledged again
    assert c.leaders() == [1]
    assert c.nodes[1].raft.lead_transferee == NONE
    assert c.nodes[1].raft.lease_remaining() == 0
    c.nodes[1].read_index(b"safe read")
    c.stabilize()
    assert [s.context for s in c.read_states[1]] == [b"safe read"]  # through ReadIndex
