"""``DiskStorage``: the core's ``Storage`` kept durable in a master's journal folder.

Layout under the journal directory::

    LOCK                                      flock()ed while open: one process at a time
    hardstate                                 term, vote, commit: one record, replaced atomically
    wal/0000000000000001-0000000000000001.seg segments: <seq>-<first index>, decimal
    wal/0000000000000002-0000000000041377.seg
    snap/0000000000000003-0000000000041000.snap  the newest snapshot: <term>-<index>
    *.tmp                                     half-written replacements; deleted on open

(records.py gives the byte layout of a record, segments.py the segment format
and the torn-tail rule, statefiles.py the hard state and snapshot files.)

Memory: every entry after the snapshot is kept in memory, as in
``MemoryStorage`` (the master's journal is compacted by snapshots regularly),
plus one byte offset per entry for truncation. Reads never touch the disk.

Durability contract, the driver's recipe for each ``Ready``::

    storage.save(ready.hard_state, ready.entries, ready.snapshot)  # maybe several times
    storage.sync()      # entries, then hard state, durable: ONE segment fsync (group commit)
    send(ready.messages)

``save`` only writes (into the page cache). ``sync`` fsyncs the newest segment,
then, if the hard state changed, replaces the ``hardstate`` file. That order
matters: a commit index must never reach the disk before the entries it
covers, or a crash in between would look like lost committed data. Rare
operations make themselves durable at once: a conflict truncation (so that no
stale record can reappear after it), segment rollover (the full segment is
fsynced before the next one is created), compaction, and snapshots.

Recovery (``open``): take the newest valid snapshot ``S`` (term ``T``), replay
the segments (repairing only a torn tail, see segments.py), then join them:

- the log must start at or before ``S + 1``, else entries are missing;
- if the log holds index ``S`` at term ``T``, entries after ``S`` are kept
  (entries up to ``S`` are dropped from memory: ``first_index() == S + 1``);
- otherwise (the log ends before ``S`` or disagrees at ``S``) the snapshot
  superseded the log: ``apply_snapshot`` was interrupted between its two
  steps, or a snapshot was taken past what had been synced. The log is
  discarded, as ``apply_snapshot`` would have done;
- finally the hard state's commit index must not exceed the last index.

Thread model: write methods (``save``, ``sync``, ``create_snapshot``,
``compact``, ``apply_snapshot``, ``close``) must not run concurrently with one
another; the ``Storage`` reads may run on another thread meanwhile (the driver
may persist in a worker thread while the core reads on the event loop): they
see the log either before or after each in-memory update. ``sync_delay`` may
be set from any thread at any time (the HTTP API sets it on the event loop).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from quorumfs.fslock import try_lock
from quorumfs.raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from quorumfs.raft.storage import (
    CompactedError,
    SnapshotOutOfDateError,
    UnavailableError,
    limit_size,
)

from .errors import CorruptLogError, JournalInUseError, WalError
from .fileio import TMP_SUFFIX, Durability, write_all
from .records import frame_entry
from .segments import RecoveredLog, Segment, create_segment, recover_segments
from .statefiles import (
    HARD_STATE_FILE,
    SNAP_DIR,
    load_newest_snapshot,
    read_hard_state,
    write_hard_state,
    write_snapshot,
)

__all__ = ["DEFAULT_SEGMENT_BYTES", "DiskStorage"]

logger = logging.getLogger("quorumfs.wal")

DEFAULT_SEGMENT_BYTES: Final = 64 * 1024 * 1024
WAL_DIR: Final = "wal"
LOCK_FILE: Final = "LOCK"


COMMIT_PERSIST_INTERVAL = 4096
"""Entries the stored commit index may lag the real one by (see ``DiskStorage.sync``)."""


class DiskStorage:
    """The core's ``Storage`` on disk; also the write side a driver needs.

    Construct with ``DiskStorage.open(directory)``; use as a context manager or
    call ``close()``.
    """

    def __init__(
        self,
        directory: Path,
        *,
        durability: Durability,
        segment_bytes: int,
        lock_fd: int,
        hard_state: HardState,
        snapshot: Snapshot,
        ents: list[Entry],
        segments: list[Segment],
        tail_fd: int,
    ) -> None:
        """Internal: use ``open``."""
        self._dir = directory
        self._wal_dir = directory / WAL_DIR
        self._snap_dir = directory / SNAP_DIR
        self._durability = durability
        self._segment_bytes = segment_bytes
        self._lock_fd = lock_fd
        self._mutex = threading.Lock()
        """Guards the in-memory view below against readers on other threads."""

        # The in-memory view: what the Storage reads answer from.
        self._hard_state = hard_state
        """The latest hard state given to ``save``; durable once ``sync`` returns."""
        self._durable_hard_state = hard_state
        """What the ``hardstate`` file holds."""
        self._snapshot = snapshot
        self._ents = ents
        """Invariant: ``_ents[0]`` is a dummy at ``first_index() - 1`` carrying its term,
        and ``_ents[i].index == _ents[0].index + i`` (as in ``MemoryStorage``)."""

        # The files.
        self._segments = segments
        """Invariant: non-empty and consecutive; ``segments[0].first_index <= first_index()``;
        ``segments[-1]`` is the tail and ends at ``last_index()``; every segment but the tail
        is completely fsynced."""
        self._tail_fd = tail_fd
        """Write fd (O_APPEND) of ``segments[-1]``."""
        self._tail_dirty = False
        """Bytes were written to the tail since its last fsync."""
        self._wal_dir_dirty = False
        """A segment was created since the last fsync of ``wal/``."""
        self._broken: BaseException | None = None
        """Set when a write failed half-way: memory and disk may disagree, so stop."""
        self._closed = False
        self.sync_observer: Callable[[float], None] | None = None
        """Called with the seconds each ``sync`` that flushed something took (metrics),
        ``sync_delay`` included."""

    @property
    def sync_delay(self) -> float:
        """Seconds slept just before every fsync of the journal; 0.0 (the default): none.

        Fault injection only (a master started with ``--fault-injection``): it makes
        this journal behave like a slow disk. Every fsync the journal does pays it:
        the segment and ``wal/`` fsyncs and the hard state's file and directory
        fsyncs of ``sync`` (one delay per fsync: a group commit waits one for its
        segment before it is acknowledged, two more when it writes the hard state),
        and those of a truncation, a rollover, a snapshot and a compaction; with
        ``fsync=False`` too (only the sleep, no flush). It is slept in the calling
        thread: while a master serves, ``RaftNode`` persists in a worker thread
        (``asyncio.to_thread``); its startup replay and the master's final ``close``
        run on the event loop. It counts in what ``sync_observer`` sees, as a slow
        disk's latency would.

        Invariant: finite and >= 0 (the setter refuses anything else). It may be set
        from any thread; a change applies from the next fsync.
        """
        return self._durability.delay

    @sync_delay.setter
    def sync_delay(self, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"sync_delay must be a finite number of seconds >= 0, not {seconds}")
        self._durability.delay = float(seconds)

    # -- opening and recovery -----------------------------------------------

    @classmethod
    def open(
        cls,
        directory: Path | str,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = True,
        fsync_hook: Callable[[], None] | None = None,
    ) -> DiskStorage:
        """Open (creating if needed) the journal in ``directory`` and recover it.

        ``fsync=False`` skips every flush (tests, benchmarks: NOT durable);
        ``fsync_hook`` runs before every fsync, even skipped ones.

        Raises ``CorruptLogError`` for damage that could hide committed data,
        ``JournalInUseError`` if another process holds the journal.
        """
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive, not {segment_bytes}")
        directory = Path(directory)
        durability = Durability(fsync, fsync_hook)
        _make_dirs(directory, durability)
        lock_fd = _lock(directory)
        try:
            for leftover in [*directory.glob("*" + TMP_SUFFIX), *(directory / SNAP_DIR).iterdir()]:
                if leftover.name.endswith(TMP_SUFFIX):
                    logger.info("deleting %s, left over from an interrupted write", leftover)
                    leftover.unlink()
            hard_state = read_hard_state(directory)
            snapshot = load_newest_snapshot(directory / SNAP_DIR)
            log = recover_segments(directory / WAL_DIR, durability)
            ents, segments = _join(directory / WAL_DIR, snapshot, log, durability)
            last_index = ents[-1].index
            if hard_state.commit > last_index:
                raise CorruptLogError(
                    directory / HARD_STATE_FILE,
                    None,
                    f"commit index {hard_state.commit} is past the last entry in the log "
                    f"({last_index}): committed entries are missing",
                )
            tail_fd = os.open(segments[-1].path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except BaseException:
            os.close(lock_fd)
            raise
        logger.info(
            "opened journal %s: snapshot at %d, entries %d..%d, term %d, commit %d",
            directory,
            snapshot.meta.index,
            ents[0].index + 1,
            last_index,
            hard_state.term,
            hard_state.commit,
        )
        return cls(
            directory,
            durability=durability,
            segment_bytes=segment_bytes,
            lock_fd=lock_fd,
            hard_state=hard_state,
            snapshot=snapshot,
            ents=ents,
            segments=segments,
            tail_fd=tail_fd,
        )

    # -- Storage protocol (reads; never touch the disk) ------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        with self._mutex:
            return self._hard_state, self._snapshot.meta.conf_state

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        with self._mutex:
            offset = self._ents[0].index
            if lo <= offset:
                raise CompactedError(lo)
            if hi > offset + len(self._ents):
                raise UnavailableError(hi)
            return limit_size(self._ents[lo - offset : hi - offset], max_bytes)

    def term(self, index: int) -> int:
        with self._mutex:
            offset = self._ents[0].index
            if index < offset:
                raise CompactedError(index)
            if index - offset >= len(self._ents):
                raise UnavailableError(index)
            return self._ents[index - offset].term

    def first_index(self) -> int:
        with self._mutex:
            return self._ents[0].index + 1

    def last_index(self) -> int:
        with self._mutex:
            return self._ents[-1].index

    def snapshot(self) -> Snapshot:
        with self._mutex:
            return self._snapshot

    # -- writes ------------------------------------------------------------------

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        """Write one ``Ready``'s persistent part; durable only after ``sync()``.

        The snapshot (if any) is installed first (``apply_snapshot``, durable at
        once), then the entries are appended: those at or before the snapshot
        are skipped, and if ``entries[0]`` is at or before ``last_index()`` the
        stored suffix from there is dropped first. Overwriting a committed
        entry, a gap, or a commit index past the log is refused with
        ``ValueError`` before anything is written.
        """
        self._check_usable()
        snap = snapshot if snapshot is not None and not snapshot.is_empty() else None
        entries = self._check_batch(hard_state, entries, snap)
        with self._poison_on_failure():
            if snap is not None:
                self._install_snapshot(snap)
            if entries:
                self._append(entries)
        if hard_state is not None:
            with self._mutex:
                self._hard_state = hard_state

    def sync(self, *, full: bool = False) -> None:
        """Make everything ``save`` wrote durable: entries first, then the hard state.

        Term and vote are durable when this returns: Raft needs them before any
        message leaves. The commit index alone is written lazily (every
        ``COMMIT_PERSIST_INTERVAL`` entries, and on ``close`` or ``full=True``):
        it only saves work on restart, since a restarted node learns the commit
        index from the leader again, and writing it on every batch would cost
        the hard state file's three fsyncs per group commit.
        """
        self._check_usable()
        started = time.perf_counter()
        flushed = self._tail_dirty or self._wal_dir_dirty
        with self._poison_on_failure():
            if self._tail_dirty:
                self._durability.fsync(self._tail_fd)
                self._tail_dirty = False
            if self._wal_dir_dirty:
                self._durability.fsync_dir(self._wal_dir)
                self._wal_dir_dirty = False
            hard_state = self._hard_state
            durable = self._durable_hard_state
            if (hard_state.term, hard_state.vote) != (durable.term, durable.vote) or (
                hard_state.commit != durable.commit
                and (full or hard_state.commit - durable.commit >= COMMIT_PERSIST_INTERVAL)
            ):
                write_hard_state(self._dir, hard_state, self._durability)
                self._durable_hard_state = hard_state
                flushed = True
        if flushed and self.sync_observer is not None:
            self.sync_observer(time.perf_counter() - started)

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record the state machine's image at applied ``index``; durable on return.

        ``compact`` may follow to release the entries the snapshot covers.
        """
        self._check_usable()
        if index <= self._snapshot.meta.index:
            raise SnapshotOutOfDateError(index)
        if index > self.last_index():
            raise UnavailableError(index)
        snapshot = Snapshot(SnapshotMeta(index, self.term(index), conf_state), data)
        with self._poison_on_failure():
            write_snapshot(self._snap_dir, snapshot, self._durability)
        with self._mutex:
            self._snapshot = snapshot
        return snapshot

    def compact(self, index: int) -> None:
        """Drop entries before ``index`` (which the snapshot must cover); durable on return.

        In memory ``first_index()`` becomes ``index + 1`` and ``term(index)``
        stays answerable. On disk whole segments are deleted once every entry
        in them is at or before ``index``; after a restart the log starts after
        the snapshot.
        """
        self._check_usable()
        offset = self._ents[0].index
        if index <= offset:
            raise CompactedError(index)
        if index > self.last_index():
            raise UnavailableError(index)
        if index > self._snapshot.meta.index:
            raise ValueError(
                f"compact({index}): only the snapshot (index {self._snapshot.meta.index}) "
                f"covers compacted entries; create_snapshot first"
            )
        with self._mutex:
            del self._ents[: index - offset]
        doomed: list[Segment] = []
        while len(self._segments) > 1 and self._segments[1].first_index <= index + 1:
            doomed.append(self._segments.pop(0))
        if doomed:
            with self._poison_on_failure():
                for segment in doomed:  # oldest first: a crash leaves a consecutive run
                    segment.path.unlink()
                self._durability.fsync_dir(self._wal_dir)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """A follower installs the leader's snapshot: persist it, then discard the log.

        Durable on return.
        """
        self._check_usable()
        self._check_snapshot(snapshot)
        with self._poison_on_failure():
            self._install_snapshot(snapshot)

    def close(self) -> None:
        """``sync()`` (unless a write failed earlier), then release the journal."""
        if self._closed:
            return
        try:
            if self._broken is None:
                self.sync(full=True)
        finally:
            self._closed = True
            if self._tail_fd >= 0:
                os.close(self._tail_fd)
            os.close(self._lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise WalError(f"journal {self._dir} is closed")
        if self._broken is not None:
            raise WalError(
                f"journal {self._dir} is unusable after a failed write ({self._broken!r}); "
                "restart the master: recovery discards what was not written completely"
            )

    @contextlib.contextmanager
    def _poison_on_failure(self) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            self._broken = exc
            raise

    def _check_snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.meta.index < self._snapshot.meta.index:
            raise SnapshotOutOfDateError(snapshot.meta.index)
        if snapshot.meta.index < self._hard_state.commit:
            raise ValueError(
                f"snapshot at {snapshot.meta.index} is behind the commit index "
                f"{self._hard_state.commit}: installing it would discard committed entries"
            )

    def _check_batch(
        self, hard_state: HardState | None, entries: Sequence[Entry], snap: Snapshot | None
    ) -> Sequence[Entry]:
        """Validate a ``save`` before touching anything; return the entries to append."""
        for k in range(1, len(entries)):
            if entries[k].index != entries[0].index + k:
                raise ValueError(f"entries are not consecutive at position {k}: {entries[k]}")
        first, last = self.first_index(), self.last_index()
        # Entries at or before ``floor`` are committed: they must never be overwritten.
        floor = max(self._hard_state.commit, self._snapshot.meta.index)
        if snap is not None:
            self._check_snapshot(snap)
            first, last = snap.meta.index + 1, snap.meta.index
            floor = snap.meta.index
        if entries and entries[-1].index >= first:
            entries = entries[max(0, first - entries[0].index) :]
            start = entries[0].index
            if start > last + 1:
                raise ValueError(f"gap: appending index {start} after {last}")
            if start <= floor and start <= last:
                raise ValueError(
                    f"refusing to overwrite entry {start}: entries up to {floor} are committed"
                )
            last = entries[-1].index
        else:
            entries = ()
        if hard_state is not None and hard_state.commit > last:
            raise ValueError(f"commit index {hard_state.commit} is past the last entry {last}")
        return entries

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        write_snapshot(self._snap_dir, snapshot, self._durability)
        # Discard the log, newest segment first: if this is interrupted, what is
        # left is a consecutive run, which recovery discards or keeps (see above).
        os.close(self._tail_fd)
        self._tail_fd = -1
        for segment in reversed(self._segments):
            segment.path.unlink()
        self._durability.fsync_dir(self._wal_dir)
        meta = snapshot.meta
        next_seq = self._segments[-1].seq + 1
        segment, self._tail_fd = create_segment(self._wal_dir, next_seq, meta.index + 1, meta.term)
        self._segments = [segment]
        self._tail_dirty = self._wal_dir_dirty = True
        with self._mutex:
            self._snapshot = snapshot
            self._ents = [Entry(meta.index, meta.term)]

    def _append(self, entries: Sequence[Entry]) -> None:
        start = entries[0].index
        prev_term = self.term(start - 1)
        if start <= self.last_index():
            self._truncate_from(start)
        tail = self._segments[-1]
        chunks: list[bytes] = []
        pending = 0  # bytes in chunks
        for entry in entries:
            record = frame_entry(entry)
            if tail.offsets and tail.size + pending + len(record) > self._segment_bytes:
                self._write_tail(chunks, pending)
                tail = self._roll(entry.index, prev_term)
                chunks, pending = [], 0
            tail.offsets.append(tail.size + pending)
            chunks.append(record)
            pending += len(record)
            prev_term = entry.term
        self._write_tail(chunks, pending)
        with self._mutex:
            offset = self._ents[0].index
            del self._ents[start - offset :]
            self._ents.extend(entries)

    def _write_tail(self, chunks: list[bytes], size: int) -> None:
        if chunks:
            write_all(self._tail_fd, b"".join(chunks))
            self._segments[-1].size += size
            self._tail_dirty = True

    def _roll(self, first_index: int, prev_term: int) -> Segment:
        """Start a new tail segment at ``first_index``; the old tail is fsynced first."""
        old = self._segments[-1]
        if self._tail_dirty:
            # Invariant: only the tail can be torn, so it must be whole before it stops
            # being the tail.
            self._durability.fsync(self._tail_fd)
            self._tail_dirty = False
        os.close(self._tail_fd)
        self._tail_fd = -1
        segment, self._tail_fd = create_segment(self._wal_dir, old.seq + 1, first_index, prev_term)
        self._segments.append(segment)
        self._tail_dirty = self._wal_dir_dirty = True
        return segment

    def _truncate_from(self, index: int) -> None:
        """Drop the stored entries from ``index`` on, durably, before anything is appended.

        Durable at once: otherwise a crash could leave stale records past the
        new ones, which recovery would rightly call corruption.
        """
        k = bisect.bisect_right([s.first_index for s in self._segments], index) - 1
        doomed = self._segments[k + 1 :]
        if doomed:
            os.close(self._tail_fd)
            self._tail_fd = -1
            for segment in reversed(doomed):  # newest first: a crash leaves a consecutive run
                segment.path.unlink()
            self._durability.fsync_dir(self._wal_dir)
            del self._segments[k + 1 :]
            self._tail_fd = os.open(
                self._segments[-1].path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
            )
        tail = self._segments[-1]
        cut = tail.offsets[index - tail.first_index]
        os.ftruncate(self._tail_fd, cut)
        self._durability.fsync(self._tail_fd)
        del tail.offsets[index - tail.first_index :]
        tail.size = cut
        self._tail_dirty = False


def _make_dirs(directory: Path, durability: Durability) -> None:
    for path in (directory, directory / WAL_DIR, directory / SNAP_DIR):
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            durability.fsync_dir(path.parent)


def _lock(directory: Path) -> int:
    fd = try_lock(directory / LOCK_FILE)
    if fd is None:
        raise JournalInUseError(
            f"journal {directory} is in use by another process (it holds the lock on "
            f"{directory / LOCK_FILE}); stop that master first"
        )
    return fd


def _join(
    wal_dir: Path, snapshot: Snapshot, log: RecoveredLog, durability: Durability
) -> tuple[list[Entry], list[Segment]]:
    """Combine the snapshot and the replayed segments (rules in the module docstring)."""
    snap_index, snap_term = snapshot.meta.index, snapshot.meta.term
    next_seq = 1
    if log.segments:
        first = log.segments[0]
        prev_index = first.first_index - 1  # the anchor: its term is first.prev_term
        if prev_index > snap_index:
            raise CorruptLogError(
                first.path,
                None,
                f"the log starts at index {first.first_index} but "
                + (f"the newest snapshot ends at {snap_index}" if snap_index else "no snapshot")
                + f": entries {snap_index + 1}..{prev_index} are missing",
            )
        last_index = prev_index + len(log.entries)
        if snap_index <= last_index:
            at = snap_index - prev_index  # position of the snapshot index after the anchor
            term_at_snap = first.prev_term if at == 0 else log.entries[at - 1].term
            if term_at_snap == snap_term:
                return [Entry(snap_index, snap_term), *log.entries[at:]], log.segments
            if snap_index == 0:
                raise CorruptLogError(
                    first.path, 0, f"the first segment anchors index 0 at term {term_at_snap}"
                )
        logger.warning(
            "the snapshot at index %d (term %d) supersedes the log (entries %d..%d): an "
            "install of a leader's snapshot was interrupted; discarding the log as it would have",
            snap_index,
            snap_term,
            first.first_index,
            last_index,
        )
        for segment in reversed(log.segments):
            segment.path.unlink()
        durability.fsync_dir(wal_dir)
        next_seq = log.segments[-1].seq + 1
    segment, fd = create_segment(wal_dir, next_seq, snap_index + 1, snap_term)
    try:
        durability.fsync(fd)
    finally:
        os.close(fd)
    durability.fsync_dir(wal_dir)
    return [Entry(snap_index, snap_term)], [segment]
