"""Stable storage as the core sees it: a small read interface and an in-memory model.

The core only *reads* storage. Writing (the entries, hard state and snapshot a
``Ready`` hands out) is the driver's job; ``MemoryStorage`` has the write
methods a driver needs, and the runtime's disk storage implements the same
read ``Protocol`` on top of the write-ahead log.

Storage holds a contiguous run of entries ``[first_index, last_index]``
preceded by a snapshot at ``first_index - 1``; the term of that snapshot index
is still known (it anchors the log-matching check).
"""

from __future__ import annotations

from typing import Protocol

from .messages import EMPTY_HARD_STATE, ConfState, Entry, HardState, Snapshot, SnapshotMeta

__all__ = [
    "CompactedError",
    "MemoryStorage",
    "SnapshotOutOfDateError",
    "Storage",
    "UnavailableError",
    "limit_size",
]


class CompactedError(Exception):
    """The requested index is at or before the last snapshot."""


class UnavailableError(Exception):
    """The requested index is past the last stored entry."""


class SnapshotOutOfDateError(Exception):
    """A snapshot older than the one already held was offered."""


class Storage(Protocol):
    def initial_state(self) -> tuple[HardState, ConfState]: ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in ``[lo, hi)``, at least one if any, trimmed to ``max_bytes`` of payload."""
        ...

    def term(self, index: int) -> int:
        """Term of ``index``; valid for ``first_index() - 1 <= index <= last_index()``."""
        ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot: ...


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix within ``max_bytes`` of payload, never fewer than one entry."""
    if max_bytes is None or not entries:
        return entries
    size = len(entries[0].data)
    for n in range(1, len(entries)):
        size += len(entries[n].data)
        if size > max_bytes:
            return entries[:n]
    return entries


class MemoryStorage:
    """The reference ``Storage``: everything in a list, as etcd's ``MemoryStorage``.

    ``self._ents[0]`` is a dummy entry at the snapshot index carrying its term.
    Invariant: ``self._ents[i].index == self._ents[0].index + i``.
    """

    def __init__(self) -> None:
        self.hard_state: HardState = EMPTY_HARD_STATE
        self._snapshot = Snapshot()
        self._ents: list[Entry] = [Entry(0, 0)]

    # -- Storage protocol -------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self._snapshot.meta.conf_state

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        offset = self._ents[0].index
        if lo <= offset:
            raise CompactedError(lo)
        if hi > self.last_index() + 1:
            raise UnavailableError(hi)
        return limit_size(self._ents[lo - offset : hi - offset], max_bytes)

    def term(self, index: int) -> int:
        offset = self._ents[0].index
        if index < offset:
            raise CompactedError(index)
        if index - offset >= len(self._ents):
            raise UnavailableError(index)
        return self._ents[index - offset].term

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- writes, used by drivers ------------------------------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        """Append, replacing any stored entries from ``entries[0].index`` on."""
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return  # entirely covered by the snapshot
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        offset = entries[0].index - self._ents[0].index
        if offset > len(self._ents):
            raise ValueError(f"gap: appending index {entries[0].index} after {self.last_index()}")
        del self._ents[offset:]
        self._ents.extend(entries)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace everything with ``snapshot`` (a follower catching up)."""
        if snapshot.meta.index < self._snapshot.meta.index:
            raise SnapshotOutOfDateError(snapshot.meta.index)
        self._snapshot = snapshot
        self._ents = [Entry(snapshot.meta.index, snapshot.meta.term)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record the state machine's image at applied ``index``; ``compact`` may follow."""
        if index <= self._snapshot.meta.index:
            raise SnapshotOutOfDateError(index)
        if index > self.last_index():
            raise UnavailableError(index)
        meta = SnapshotMeta(index=index, term=self.term(index), conf_state=conf_state)
        self._snapshot = Snapshot(meta=meta, data=data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop entries before ``index`` (which must be covered by a snapshot)."""
        offset = self._ents[0].index
        if index <= offset:
            raise CompactedError(index)
        if index > self.last_index():
            raise UnavailableError(index)
        del self._ents[: index - offset]
