"""What the leader knows about each follower's log, and how fast it may send to it.

One ``Progress`` per member. The leader moves a follower between three states
(as etcd's ``tracker/progress.go``):

- PROBE: we do not know where its log matches ours; send one append per
  heartbeat interval and wait for the answer.
- REPLICATE: it matches up to ``match``; stream appends optimistically
  (``next`` runs ahead of ``match``) within the ``Inflights`` window.
- SNAPSHOT: its next entry is compacted away; stream a snapshot in chunks.

Invariants:
- ``match < next``.
- In REPLICATE, every index in ``(match, next)`` was sent in a message that
  is still counted in ``inflights`` (until acked or the state is left).
"""

from __future__ import annotations

import enum
from collections import deque

__all__ = ["Inflights", "Progress", "ProgressState"]


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """A window of append messages sent but not yet acknowledged.

    Bounded both by message count and by payload bytes. Each slot remembers
    the last index the message carried, so an ack for index ``i`` frees every
    message ending at or before ``i``.
    """

    def __init__(self, max_messages: int, max_bytes: int | None) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._slots: deque[tuple[int, int]] = deque()  # (last index, bytes), ascending index
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._slots)

    def add(self, last_index: int, size: int) -> None:
        self._slots.append((last_index, size))
        self.bytes += size

    def free_le(self, index: int) -> None:
        while self._slots and self._slots[0][0] <= index:
            self.bytes -= self._slots.popleft()[1]

    def full(self) -> bool:
        if len(self._slots) >= self.max_messages:
            return True
        return self.max_bytes is not None and self.bytes >= self.max_bytes

    def reset(self) -> None:
        self._slots.clear()
        self.bytes = 0


class Progress:
    def __init__(
        self,
        next_index: int,
        inflights: Inflights,
        *,
        is_learner: bool = False,
        is_witness: bool = False,
    ) -> None:
        self.match = 0
        self.next = next_index  # Invariant: match < next.
        self.state = ProgressState.PROBE
        # PROBE: an append went out this heartbeat interval; wait before the next.
        self.probe_sent = False
        # SNAPSHOT: index of the snapshot being sent, and how many of its bytes
        # the follower has confirmed holding.
        self.pending_snapshot = 0
        self.snapshot_offset = 0
        # Heard from since the last CheckQuorum round (reset by the leader each round).
        self.recent_active = False
        # The newest heartbeat round this follower answered (for the leader lease).
        self.acked_round = 0
        # ``match`` when the previous heartbeat response came: no progress across a whole
        # heartbeat interval while behind means appends were lost (see ``stalled``).
        self.match_at_last_heartbeat = 0
        self.inflights = inflights
        self.is_learner = is_learner
        self.is_witness = is_witness

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.value} match={self.match} next={self.next} "
            f"inflight={len(self.inflights)})"
        )

    def become_probe(self) -> None:
        # After a snapshot, resume right after it; otherwise retry from what matched.
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index
        self.snapshot_offset = 0

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_offset = 0
        self.inflights.reset()

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged ``index``. Returns whether ``match`` advanced."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def sent_entries(self, last_index: int, size: int) -> None:
        """Record an append carrying entries up to ``last_index`` (``size`` payload bytes)."""
        if self.state is ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflights.add(last_index, size)
        else:
            self.probe_sent = True

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append at ``rejected``; retry from ``match_hint + 1``.

        Returns False for a stale rejection (one about an index we already moved past).
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def stalled(self, last_index: int) -> bool:
        """Called on each heartbeat response: were optimistic appends lost?

        In REPLICATE the leader never resends by itself; on a network that can
        drop a message (or a connection that broke), an idle follower would stay
        behind forever. No progress between two heartbeat responses while
        behind sends it back to PROBE, which resends from ``match + 1``.
        """
        stalled = (
            self.state is ProgressState.REPLICATE
            and self.match < last_index
            and self.match == self.match_at_last_heartbeat
        )
        self.match_at_last_heartbeat = self.match
        return stalled

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True
