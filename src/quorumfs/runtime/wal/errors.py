"""The errors the write-ahead log raises, and the one piece of advice they all give."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CorruptLogError", "JournalInUseError", "WalError"]

RESTORE_ADVICE = (
    "This master's journal cannot be trusted, so it refuses to start rather than risk "
    "losing or inventing committed entries. Do not edit the files by hand: stop this "
    "master, move its journal directory aside (keep it for inspection), start the "
    "master with an empty journal and re-add it to the group; the leader will send it "
    "a snapshot."
)


class WalError(Exception):
    """The journal cannot be used: misuse, an earlier I/O failure, or damage on disk."""


class CorruptLogError(WalError):
    """Damage that could hide committed data: never repaired automatically.

    ``path`` is the damaged file and ``offset`` the byte offset of the first bad
    byte (``None`` when the damage is not at one place, e.g. a missing file).
    """

    def __init__(self, path: Path, offset: int | None, reason: str) -> None:
        where = f"{path}" if offset is None else f"{path} at byte offset {offset}"
        super().__init__(f"corrupt journal: {where}: {reason}. {RESTORE_ADVICE}")
        self.path = path
        self.offset = offset
        self.reason = reason


class JournalInUseError(WalError):
    """Another process (or another ``DiskStorage`` in this one) holds the journal's lock."""
