"""Table-driven tests of the pieces the protocol is built from: quorums, the log, progress."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quorumfs.raft import Entry, MemoryStorage
from quorumfs.raft.log import RaftLog
from quorumfs.raft.progress import Inflights, Progress, ProgressState
from quorumfs.raft.quorum import VoteResult, committed_index, vote_result


@pytest.mark.parametrize(
    ("acked", "expected"),
    [
        ({1: 5}, 5),
        ({1: 5, 2: 3, 3: 1}, 3),
        ({1: 5, 2: 5, 3: 1}, 5),
        ({1: 9, 2: 2, 3: 7, 4: 1}, 2),  # four voters need three acks
        ({1: 9, 2: 2, 3: 7, 4: 8, 5: 0}, 7),
    ],
)
def test_committed_index_is_the_highest_index_a_majority_holds(
    acked: dict[int, int], expected: int
) -> None:
    assert committed_index(acked, lambda v: acked[v]) == expected


@given(st.lists(st.integers(0, 100), min_size=1, max_size=7))
def test_committed_index_is_held_by_a_majority_and_no_higher_index_is(acks: list[int]) -> None:
    acked = dict(enumerate(acks, start=1))
    index = committed_index(acked, lambda v: acked[v])
    majority = len(acks) // 2 + 1
    assert sum(a >= index for a in acks) >= majority
    assert sum(a >= index + 1 for a in acks) < majority


@pytest.mark.parametrize(
    ("votes", "expected"),
    [
        ({}, VoteResult.PENDING),
        ({1: True}, VoteResult.PENDING),
        ({1: True, 2: True}, VoteResult.WON),
        ({1: True, 2: False}, VoteResult.PENDING),
        ({1: False, 2: False}, VoteResult.LOST),
        ({1: True, 2: False, 3: False}, VoteResult.LOST),
    ],
)
def test_vote_result_for_three_voters(votes: dict[int, bool], expected: VoteResult) -> None:
    assert vote_result({1, 2, 3}, votes) is expected


def _log(terms: list[int]) -> RaftLog:
    storage = MemoryStorage()
    storage.append([Entry(i, t) for i, t in enumerate(terms, start=1)])
    return RaftLog(storage)


@pytest.mark.parametrize(
    ("terms", "index", "term", "expected"),
    [
        ([1, 1, 2, 2, 3], 5, 2, (4, 2)),  # skip the whole run of term 3
        ([1, 1, 2, 2, 3], 5, 3, (5, 3)),
        ([1, 1, 2, 2, 3], 5, 1, (2, 1)),
        ([1, 1, 2, 2, 3], 5, 0, (0, 0)),
        ([2, 2, 2], 2, 5, (2, 2)),
    ],
)
def test_find_conflict_by_term_skips_a_whole_term(
    terms: list[int], index: int, term: int, expected: tuple[int, int]
) -> None:
    assert _log(terms).find_conflict_by_term(index, term) == expected


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([], 0),
        ([Entry(1, 1), Entry(2, 2)], 0),  # all match
        ([Entry(3, 3), Entry(4, 4)], 4),  # first new entry
        ([Entry(2, 2), Entry(3, 4)], 3),  # term disagrees at 3
        ([Entry(5, 5)], 5),  # beyond the end: new
    ],
)
def test_find_conflict(entries: list[Entry], expected: int) -> None:
    assert _log([1, 2, 3]).find_conflict(entries) == expected


def test_an_append_that_would_overwrite_a_committed_entry_is_a_bug() -> None:
    log = _log([1, 1, 1])
    log.commit_to(3)
    with pytest.raises(AssertionError, match="committed"):
        log.maybe_append(1, 1, 3, (Entry(2, 2),))


def test_commit_from_an_append_stops_at_the_last_entry_it_matched() -> None:
    log = _log([1, 1, 1, 1, 1])  # the follower has more than the leader sent
    log.maybe_append(1, 1, 5, (Entry(2, 1),))
    assert log.committed == 2  # not 5: entries past 2 were not checked against the leader


def test_inflights_free_everything_up_to_an_ack() -> None:
    window = Inflights(max_messages=3, max_bytes=100)
    for last, size in [(3, 10), (6, 50), (9, 40)]:
        window.add(last, size)
    assert window.full()
    window.free_le(6)
    assert (len(window), window.bytes, window.full()) == (1, 40, False)


def test_a_stale_rejection_does_not_move_a_replicating_follower_back() -> None:
    pr = Progress(10, Inflights(8, None))
    pr.maybe_update(8)
    pr.become_replicate()
    assert not pr.maybe_decr_to(rejected=7, match_hint=3)
    assert (pr.state, pr.next) == (ProgressState.REPLICATE, 9)
