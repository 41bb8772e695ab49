"""How a node of the consensus core is tuned, and the switches tests use to break it.

Timing is counted in ticks: the driver decides how long a tick lasts (the
master uses 50 ms by default). Nothing in the core ever reads a clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Config", "ConfigError", "RandomSource", "ReadOnlyOption", "TestingKnobs"]


class ConfigError(ValueError):
    pass


class RandomSource(Protocol):
    """The only randomness the core uses (election timeouts); injected so runs replay."""

    def randrange(self, start: int, stop: int) -> int: ...


class ReadOnlyOption(enum.Enum):
    SAFE = "safe"
    """ReadIndex confirms leadership with a quorum round for every batch of reads."""
    LEASE = "lease"
    """Serve under the leader lease while it holds; fall back to SAFE when it has lapsed."""


@dataclass(frozen=True)
class TestingKnobs:
    """Each switch turns one safety rule off. Only tests set them.

    They exist to prove that every rule is load-bearing: with any one of them
    on, the simulator must find a violation (``tests/simulation``).
    """

    __test__ = False  # not a pytest test class, despite the name

    forget_vote: bool = False
    """Hand out hard state without the vote, so a restarted node may vote twice in a term."""
    commit_any_term: bool = False
    """Commit by counting replicas of entries from earlier terms (Raft §5.4.2 off)."""
    ignore_lease_expiry: bool = False
    """Serve lease reads after the lease has lapsed."""
    pre_vote_skips_log_check: bool = False
    """Grant pre-votes to candidates whose log is behind."""
    vote_skips_log_check: bool = False
    """Grant votes to candidates whose log is behind (Raft §5.4.1 off)."""
    ignore_leader_stickiness: bool = False
    """Grant (pre-)votes while still hearing from a live leader (breaks leases)."""


@dataclass(frozen=True)
class Config:
    id: int
    election_tick: int = 10
    """Followers campaign after a random timeout in [election_tick, 2 * election_tick)."""
    heartbeat_tick: int = 1
    """A leader sends heartbeats every heartbeat_tick ticks."""
    lease_tick: int | None = None
    """How long a quorum heartbeat acknowledgement keeps the leader lease, counted from
    when the heartbeat was sent. Must be < election_tick; the gap is the allowance for
    clock-rate drift between nodes. Default: election_tick - 2 (at least 1)."""
    pre_vote: bool = True
    check_quorum: bool = True
    read_only: ReadOnlyOption = ReadOnlyOption.SAFE
    max_size_per_msg: int = 1 << 20
    """Payload bytes of entries in one append message (at least one entry always goes)."""
    max_inflight_msgs: int = 256
    max_inflight_bytes: int | None = None
    max_apply_bytes: int | None = None
    """Payload bytes of committed entries handed out in one Ready (None: no limit)."""
    snapshot_chunk_bytes: int = 1 << 20
    disable_proposal_forwarding: bool = False
    knobs: TestingKnobs = field(default_factory=TestingKnobs)

    def effective_lease_tick(self) -> int:
        if self.lease_tick is not None:
            return self.lease_tick
        return max(1, self.election_tick - 2)

    def validate(self) -> None:
        if self.id <= 0:
            raise ConfigError("node id must be a positive integer")
        if self.heartbeat_tick <= 0:
            raise ConfigError("heartbeat_tick must be positive")
        if self.election_tick <= self.heartbeat_tick:
            raise ConfigError("election_tick must be greater than heartbeat_tick")
        if not 0 < self.effective_lease_tick() < self.election_tick:
            raise ConfigError("lease_tick must be positive and smaller than election_tick")
        if self.read_only is ReadOnlyOption.LEASE and not self.check_quorum:
            raise ConfigError("lease reads are only safe with check_quorum on")
        if self.max_inflight_msgs <= 0:
            raise ConfigError("max_inflight_msgs must be positive")
        if self.snapshot_chunk_bytes <= 0:
            raise ConfigError("snapshot_chunk_bytes must be positive")
