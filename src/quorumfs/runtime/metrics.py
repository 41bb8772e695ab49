"""``NodeMetrics``: a ``RaftNode``'s Prometheus instruments (``quorumfs_raft_*``).

The instruments live in a ``CollectorRegistry`` the caller owns (one per
server: tests run several in one process, so never the global registry). Two
kinds:

- events counted or timed as they happen, cheaply: proposals by outcome, the
  commit latency of each proposal (``propose`` until the state machine's
  answer is back: one histogram observation per proposal), the duration of
  each journal sync that flushed something (``DiskStorage.sync_observer``, one
  per group commit, in the persisting thread), and leader changes (a role
  listener);
- values read from the node at scrape time (``collect``: nothing on the hot
  path): role, term, leader, commit, applied and last index, apply lag, lease
  remaining.

The lease remaining is ``Raft.lease_valid_until`` (a tick) turned into seconds
on the node's monotonic clock: 0 while the node holds no lease (it does not
lead, the lease lapsed or a transfer revoked it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from quorumfs.raft import NONE, Role, SoftState

from .node import NotLeaderError, RaftNode, UnavailableError

__all__ = ["LATENCY_BUCKETS", "ROLES", "NodeMetrics"]

LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)
"""Seconds: from half a millisecond (an fsync on a fast disk) to a request's deadline."""

ROLES: Final = tuple(role.value for role in Role)
"""The values of ``quorumfs_raft_role``'s ``role`` label (the core's roles)."""


class NodeMetrics:
    """The instruments of one node; hand it to ``RaftNode(metrics=...)``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        proposals = Counter(
            "quorumfs_raft_proposals",
            "Proposals made on this node, by outcome: committed (applied and answered), "
            "not_leader, refused (dropped by the core: no leader, a transfer in progress), "
            "unknown (leadership lost or timed out after it may have been replicated)",
            ["outcome"],
            registry=registry,
        )
        self.proposals_committed = proposals.labels("committed")
        self.proposals_not_leader = proposals.labels("not_leader")
        self.proposals_refused = proposals.labels("refused")
        self.proposals_unknown = proposals.labels("unknown")
        self.commit_latency = Histogram(
            "quorumfs_raft_commit_latency_seconds",
            "Seconds from a proposal to the state machine's answer for it (committed only)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.fsync_latency = Histogram(
            "quorumfs_raft_fsync_seconds",
            "Seconds each journal sync took (segment fsync, and the hard state when it "
            "changed); one per group commit",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.leader_changes = Counter(
            "quorumfs_raft_leader_changes",
            "Times this node learned of a new leader (another node, or a new term)",
            registry=registry,
        )
        self._last_leader: tuple[int, int] = (NONE, 0)
        """(leader, term) last counted by ``leader_changes``."""
        self._node: RaftNode | None = None

    def bind(self, node: RaftNode) -> None:
        """Start reading ``node`` at scrape time (``RaftNode`` calls it; once)."""
        if self._node is not None:
            raise RuntimeError("these metrics already belong to a node")
        self._node = node
        node.storage.sync_observer = self.fsync_latency.observe
        node.on_role_change(self._on_role_change)
        self.registry.register(_NodeCollector(node))

    def proposal_committed(self, seconds: float) -> None:
        self.proposals_committed.inc()
        self.commit_latency.observe(seconds)

    def proposal_failed(self, error: BaseException) -> None:
        if isinstance(error, NotLeaderError):
            self.proposals_not_leader.inc()
        elif isinstance(error, UnavailableError):
            self.proposals_refused.inc()
        else:  # OutcomeUnknownError, or the caller gave up (cancelled)
            self.proposals_unknown.inc()

    def _on_role_change(self, soft: SoftState, term: int) -> None:
        if soft.leader != NONE and (soft.leader, term) != self._last_leader:
            self._last_leader = (soft.leader, term)
            self.leader_changes.inc()


class _NodeCollector(Collector):
    """What is read from the node when scraped (on the event loop, like the node)."""

    def __init__(self, node: RaftNode) -> None:
        self._node = node

    def collect(self) -> Iterable[Metric]:
        node = self._node
        raft = node.raw.raft
        role = GaugeMetricFamily(
            "quorumfs_raft_role",
            "1 for this node's role (LEADER, FOLLOWER, CANDIDATE, PRE_CANDIDATE), 0 for the others",
            labels=["role"],
        )
        for name in ROLES:
            role.add_metric([name], 1.0 if raft.role.value == name else 0.0)
        yield role
        yield _gauge("quorumfs_raft_term", "The current term", raft.term)
        yield _gauge(
            "quorumfs_raft_leader_id", "The leader this node knows of (0: none)", raft.lead
        )
        commit, applied = raft.log.committed, raft.log.applied
        yield _gauge("quorumfs_raft_commit_index", "The highest log index known committed", commit)
        yield _gauge("quorumfs_raft_applied_index", "The highest log index applied here", applied)
        yield _gauge(
            "quorumfs_raft_apply_lag",
            "Committed entries not applied here yet (commit index - applied index)",
            commit - applied,
        )
        yield _gauge(
            "quorumfs_raft_last_index", "The last index of the log here", raft.log.last_index()
        )
        yield _gauge(
            "quorumfs_raft_lease_remaining_seconds",
            "Seconds the leader lease still holds (0: no lease: not leading, or it lapsed)",
            node.lease_remaining(),
        )
        yield _gauge(
            "quorumfs_raft_voters",
            "Voting members in this node's configuration",
            len(raft.conf.voters),
        )
        ticks = CounterMetricFamily(
            "quorumfs_raft_ticks", "Core ticks taken (the monotonic clock, in ticks)"
        )
        ticks.add_metric([], float(raft.ticks))
        yield ticks


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))
