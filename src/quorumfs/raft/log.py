"""The Raft log as one node sees it: stable storage plus an unstable tail.

``RaftLog`` joins what ``Storage`` already holds with what the node has
accepted but the driver has not yet persisted (``Unstable``). Entries move
from unstable to stable when the driver reports, through ``stable_to``, that
it wrote them.

    snapshot/first.....applied....committed....stable.....last
    |--- storage ---------------------------------|-- unstable --|

Invariants:
- ``applied <= committed <= last_index()``.
- ``committed`` never decreases (a node is never told to un-commit).
- An entry at or below ``committed`` is never overwritten: doing so is a
  safety violation and raises ``AssertionError`` at once.
"""

from __future__ import annotations

from .messages import Entry, Snapshot
from .storage import CompactedError, Storage, UnavailableError, limit_size

__all__ = ["RaftLog", "Unstable"]


class Unstable:
    """Entries (and possibly one snapshot) not yet written to storage.

    Invariant: ``entries[i].index == offset + i``; when ``snapshot`` is set,
    ``offset == snapshot.meta.index + 1``.
    """

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_first_index(self) -> int | None:
        return self.snapshot.meta.index + 1 if self.snapshot is not None else None

    def maybe_last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        return self.snapshot.meta.index if self.snapshot is not None else None

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            if self.snapshot is not None and self.snapshot.meta.index == index:
                return self.snapshot.meta.term
            return None
        last = self.maybe_last_index()
        if last is None or index > last:
            return None
        return self.entries[index - self.offset].term

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted entries up to ``index`` (which had ``term`` when handed out)."""
        current = self.maybe_term(index)
        if current is None or current != term or index < self.offset:
            return  # a newer leader overwrote it meanwhile: still unstable
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.meta.index == index:
            self.snapshot = None

    def restore(self, snapshot: Snapshot) -> None:
        self.offset = snapshot.meta.index + 1
        self.entries = []
        self.snapshot = snapshot

    def truncate_and_append(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        first = entries[0].index
        if first == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif first <= self.offset:
            # Replaces everything unstable (and, in storage, whatever follows ``first``).
            self.offset = first
            self.entries = list(entries)
        else:
            del self.entries[first - self.offset :]
            self.entries.extend(entries)

    def slice(self, lo: int, hi: int) -> list[Entry]:
        return self.entries[lo - self.offset : hi - self.offset]


class RaftLog:
    def __init__(self, storage: Storage, max_apply_bytes: int | None = None) -> None:
        self.storage = storage
        first = storage.first_index()
        last = storage.last_index()
        self.unstable = Unstable(last + 1)
        self.committed = first - 1
        self.applied = first - 1
        # Payload bytes handed out per Ready for application; None is unlimited.
        self.max_apply_bytes = max_apply_bytes

    def __repr__(self) -> str:
        return (
            f"RaftLog(committed={self.committed}, applied={self.applied}, "
            f"unstable.offset={self.unstable.offset}, unstable.len={len(self.unstable.entries)})"
        )

    # -- index and term queries -----------------------------------------

    def first_index(self) -> int:
        index = self.unstable.maybe_first_index()
        return index if index is not None else self.storage.first_index()

    def last_index(self) -> int:
        index = self.unstable.maybe_last_index()
        return index if index is not None else self.storage.last_index()

    def term(self, index: int) -> int:
        """Term of ``index``; raises ``CompactedError``/``UnavailableError`` outside the log."""
        term = self.unstable.maybe_term(index)
        if term is not None:
            return term
        if index < self.first_index() - 1:
            raise CompactedError(index)
        if index > self.last_index():
            raise UnavailableError(index)
        return self.storage.term(index)

    def term_or_zero(self, index: int) -> int:
        try:
            return self.term(index)
        except (CompactedError, UnavailableError):
            return 0

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (CompactedError, UnavailableError):
            return False

    def is_up_to_date(self, last_index: int, term: int) -> bool:
        """Raft §5.4.1: is a log ending at (``last_index``, ``term``) as current as ours?"""
        our_term = self.last_term()
        return term > our_term or (term == our_term and last_index >= self.last_index())

    # -- appending ----------------------------------------------------------

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> int:
        if not entries:
            return self.last_index()
        if entries[0].index - 1 < self.committed:
            raise AssertionError(
                f"overwriting committed entry {entries[0].index} (committed={self.committed})"
            )
        self.unstable.truncate_and_append(entries)
        return self.last_index()

    def maybe_append(
        self, index: int, log_term: int, committed: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """Follower side of AppendEntries. Returns the new last index, or None on mismatch."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise AssertionError(
                    f"entry {conflict} conflicts with committed entry (committed={self.committed})"
                )
            self.append(entries[conflict - entries[0].index :])
        self.commit_to(min(committed, last_new))
        return last_new

    def find_conflict(self, entries: tuple[Entry, ...] | list[Entry]) -> int:
        """Index of the first entry that is new or disagrees with ours; 0 if none.

        Common case first: entries that all lie beyond our last index are new.
        """
        if not entries:
            return 0
        last = self.last_index()
        if entries[0].index > last:
            return entries[0].index
        for entry in entries:
            if not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest ``i <= index`` whose term is ``<= term``, with that term (fast backtracking).

        Used on both sides of a rejected append to skip a whole run of entries
        from a term the other side cannot have.
        """
        while index > 0:
            try:
                our_term = self.term(index)
            except (CompactedError, UnavailableError):
                return index, 0
            if our_term <= term:
                return index, our_term
            index -= 1
        return 0, 0

    # -- commit and apply -----------------------------------------------

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise AssertionError(f"commit {index} is past the last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Leader: advance commit to ``index`` if that entry is from ``term`` (Raft §5.4.2)."""
        if index > self.committed and self.term_or_zero(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        if index == 0:
            return
        if index > self.committed or index < self.applied:
            raise AssertionError(f"applied {index} outside [{self.applied}, {self.committed}]")
        self.applied = index

    def has_next_committed_entries(self) -> bool:
        return self.committed > self.applied and self.applied + 1 >= self.first_index()

    def next_committed_entries(self) -> list[Entry]:
        lo = max(self.applied + 1, self.first_index())
        if self.committed < lo:
            return []
        return self.slice(lo, self.committed + 1, self.max_apply_bytes)

    # -- persistence hand-off -------------------------------------------

    def unstable_entries(self) -> list[Entry]:
        return list(self.unstable.entries)

    def has_pending_snapshot(self) -> bool:
        return self.unstable.snapshot is not None

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)

    def restore(self, snapshot: Snapshot) -> None:
        self.committed = snapshot.meta.index
        self.unstable.restore(snapshot)

    # -- reading entries ---------------------------------------------------

    def entries_from(self, lo: int, max_bytes: int | None) -> list[Entry]:
        """Entries from ``lo`` to the end; raises ``CompactedError`` if ``lo`` is compacted."""
        if lo > self.last_index():
            return []
        return self.slice(lo, self.last_index() + 1, max_bytes)

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)`` within ``max_bytes`` (never fewer than one)."""
        if lo < self.first_index():
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        if lo == hi:
            return []
        offset = self.unstable.offset
        result: list[Entry] = []
        if lo < offset:
            result = self.storage.entries(lo, min(hi, offset), max_bytes)
            if len(result) < min(hi, offset) - lo:
                return result  # trimmed by size
        if hi > offset:
            result = result + self.unstable.slice(max(lo, offset), hi)
        return limit_size(result, max_bytes)
