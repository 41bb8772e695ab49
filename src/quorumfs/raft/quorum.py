"""Majority arithmetic over a set of voters, independent of everything else in the core.

Two questions only: which index has a majority acknowledged, and has a
majority voted yes. Kept apart (as etcd's ``quorum/majority.go``) so the
commit rule can be read, and tested, on its own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping

__all__ = ["VoteResult", "committed_index", "vote_result"]


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def committed_index(voters: Iterable[int], acked: Callable[[int], int]) -> int:
    """The largest index that at least a majority of ``voters`` have acknowledged.

    ``acked(id)`` is the voter's acknowledged (matched) index, 0 if unknown.
    With no voters there is nothing to wait for; that is reported as an
    unbounded index so a caller taking a ``min`` over configurations works.
    """
    indexes = sorted((acked(v) for v in voters), reverse=True)
    if not indexes:
        return 2**63 - 1
    return indexes[len(indexes) // 2]


def vote_result(voters: Iterable[int], votes: Mapping[int, bool]) -> VoteResult:
    """WON once a majority said yes, LOST once a majority can no longer say yes."""
    voter_set = set(voters)
    if not voter_set:
        return VoteResult.WON
    yes = sum(1 for v in voter_set if votes.get(v) is True)
    missing = sum(1 for v in voter_set if v not in votes)
    majority = len(voter_set) // 2 + 1
    if yes >= majority:
        return VoteResult.WON
    if yes + missing >= majority:
        return VoteResult.PENDING
    return VoteResult.LOST
