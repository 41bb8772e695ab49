"""The chunk store: a volume server's chunks, durable and checksummed, in a few big files.

Owns one directory of append-only volume files and the in-memory index
``chunk id -> (volume, offset, size, crc)`` over them. Synchronous, pure
storage: no HTTP, no asyncio; the server calls it from a thread pool. Leaves
to others: which chunks to store and delete (the master), authorising writes,
replication, and deciding *when* to compact (``usage()`` gives the numbers).

Layout of the directory::

    LOCK                flock()ed while open: one process at a time
    vol-000001.dat      volume files, append-only, each up to ``volume_size`` bytes
    vol-000002.dat      the newest is the only one written to (the *active* volume)
    vol-000001.dat.tmp  a compacted copy being written; deleted on open

(``needles.py`` gives the byte layout, ``volume_file.py`` the scan.) A chunk
is one record ("needle": header, a CRC32C per 64 KiB block, data), so a small
chunk costs no file of its own and one pread to read; a chunk of up to 64 MiB
is streamed in and out in 1 MiB pieces and never held whole in memory. A
record never spans volumes; a volume exceeds ``volume_size`` only when it
holds one record larger than that.

Chunk ids and overwrites: the master hands out chunk ids and never commits one
twice (``master.namespace``), and records each chunk's CRC32C, so a chunk id
names immutable content. Writing an id again is allowed, for retries and for
repairing a corrupt copy, and the newest record wins: records are ordered by
(volume id, offset), which is the order they were written in, because only the
newest volume is appended to and compaction keeps both the volume id and the
order of what it copies. A generation number is therefore not stored: it could
only tell apart two contents of one id, which the master never creates. A
reader that must be sure checks ``ChunkInfo.crc`` against the master's
checksum.

Durability contract:

- ``write_chunk`` and ``delete_chunk`` return after their record is fsynced.
  With ``sync=False`` they return once the record is written (visible to
  reads, not durable); ``sync()`` then makes every earlier write durable with
  one fsync, and ``write_chunks`` does this for a batch. Concurrent writers
  with ``sync=True`` share fsyncs too (group commit): a writer whose record
  an fsync already covered does not fsync again.
- Only the active volume ever holds unsynced bytes: a volume is fsynced before
  the next is created, and compacted copies are fsynced before they are
  renamed into place.
- A failed fsync (or a write that could not be undone) stops all writes:
  what reached the disk is unknown, and the page cache may have dropped the
  dirty pages (Linux does, "fsyncgate"). Reads continue; a restart rescans.

Crash and corruption rules, applied on open:

- Leftover ``*.tmp`` files (interrupted compactions) are deleted.
- The newest volume file with no valid file header and no records (its
  creation was interrupted) is deleted. Any other file whose header is bad is
  reported and skipped whole: nothing in it is readable, the rest is served.
- A torn tail of the newest volume (damage with no intact record after it,
  or a last record whose data fails its CRC) is truncated with a warning.
  Those bytes belong to a write that never completed, so never acknowledged.
  (Should they instead be an acknowledged last record that rotted since, the
  chunk is reported missing rather than corrupt: either way the master
  re-replicates it.)
- Damage anywhere else (a torn tail of an older volume, damage followed by
  intact records) is reported (``damage()``) and skipped; the scan
  resynchronises at the next intact record. The damaged header's chunk id
  field is believed if its magic is intact or its length field makes the
  record end exactly where the next intact one starts; that chunk, unless an
  intact record stores it, is then marked corrupt: reading it raises
  ``ChunkCorruptError`` rather than ``ChunkNotFoundError``. (A hint, not a
  certainty: the checksum that failed covers the id. Its damage would at worst
  mark an id that nothing stores.)
- Data is verified on every read, never at open (except the newest volume's
  last record): a block that fails its CRC raises ``ChunkCorruptError`` and
  marks the chunk corrupt (``corrupt_chunks()``); no byte of it is returned.
  Records of an interrupted ``sync=False`` batch other than the last one may
  be torn inside; they show up as corrupt, and were never acknowledged.

Reads (``reader.py``): a chunk of up to 1 MiB is read whole with one pread
(header, table and data) and every block is verified, whatever range was
asked for. A larger chunk is read block by block: a range read reads and
verifies only the 64 KiB blocks it touches, so reading 4 KiB of a 64 MiB chunk
costs one 64 KiB read, not 64 MiB; a read of the whole chunk also checks the
whole-data CRC.

Deletion and compaction: ``delete_chunk`` appends a tombstone to the active
volume. ``compact(volume)`` copies the volume's live records into a new file
(``.tmp``, fsync, rename over the old name, fsync the directory) and swaps
the index entries in one step under the lock; readers already streaming from
the old file keep reading it (``volume_file.Handle``). A tombstone is kept as
long as an older volume still holds a needle of its chunk, and dropped after
(otherwise the old needle would come back to life on the next open). The
active volume is sealed (fsynced, and a new one started at the next write)
before it is compacted, so only immutable files are ever compacted. Writes and
deletes go on during a compaction; records that make a needle garbage are
fsynced before the compacted file, which no longer has that needle, replaces
the old one.

Thread model: every public method may be called from any thread. ``_lock``
guards the index and the bookkeeping and is never held across I/O except the
close of a file; ``_append_lock`` admits one writer at a time to the active
volume (held for a whole streaming write); ``_sync_lock`` admits one fsync of
the active volume at a time; ``_compact_lock`` one compaction. Lock order:
compact, append, sync, lock. Reads take ``_lock`` only to look up a location
and pin the file, then pread without any lock, concurrently with appends.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol, Self, runtime_checkable

from quorumfs.fslock import try_lock

from .errors import (
    ChecksumMismatchError,
    ChunkCorruptError,
    ChunkNotFoundError,
    ChunkRangeError,
    SourceSizeError,
    StoreClosedError,
    StoreError,
    StoreFailedError,
    StoreFullError,
    StoreInUseError,
)
from .needles import (
    FILE_HEADER_SIZE,
    MAX_CHUNK_ID,
    MAX_CHUNK_SIZE,
    TOMBSTONE_SIZE,
    Kind,
    NeedleHeader,
    record_size,
)
from .reader import SMALL_CHUNK, ChunkReader
from .volume_file import (
    READ_PIECE,
    TMP_SUFFIX,
    Copied,
    DamagedRegion,
    DataDamageError,
    Durability,
    Handle,
    Skipped,
    append_needle,
    append_tombstone,
    copy_records,
    create_volume,
    open_volume,
    parse_volume_name,
    scan_records,
    volume_name,
)

__all__ = [  # the errors too: this module is the store's whole public surface
    "DEFAULT_GARBAGE_RATIO",
    "DEFAULT_VOLUME_SIZE",
    "LOCK_FILE",
    "MAX_CHUNK_SIZE",
    "SMALL_CHUNK",
    "ChecksumMismatchError",
    "ChunkCorruptError",
    "ChunkInfo",
    "ChunkNotFoundError",
    "ChunkRangeError",
    "ChunkReader",
    "ChunkStore",
    "CompactionResult",
    "DamageReport",
    "Readable",
    "Source",
    "SourceSizeError",
    "StoreClosedError",
    "StoreError",
    "StoreFailedError",
    "StoreFullError",
    "StoreInUseError",
    "StoreUsage",
    "VolumeUsage",
]

logger = logging.getLogger("quorumfs.volume")

DEFAULT_VOLUME_SIZE: Final = 1 << 30
DEFAULT_GARBAGE_RATIO: Final = 0.3
LOCK_FILE: Final = "LOCK"


@runtime_checkable
class Readable(Protocol):
    """A binary file or stream: ``read(n)`` returns up to ``n`` bytes, ``b""`` at the end."""

    def read(self, n: int = -1, /) -> bytes: ...


Source = bytes | bytearray | memoryview | Readable | Iterable[bytes]
"""A chunk's data: a buffer, a binary file object, or an iterable of pieces of any size."""


# -- what the store reports ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    chunk_id: int
    size: int
    crc: int
    """CRC32C of the chunk's data: compare with the master's ``Chunk.checksum``."""
    volume_id: int


@dataclass(frozen=True, slots=True)
class VolumeUsage:
    volume_id: int
    size_bytes: int
    """The file's length."""
    live_bytes: int
    """Bytes of the records a compaction would keep (live needles, needed tombstones)."""
    chunk_count: int
    active: bool
    """The volume being appended to."""
    damaged: str | None
    """Why the volume is unreadable, or None."""

    @property
    def garbage_bytes(self) -> int:
        """What a compaction would reclaim (dead records, damaged regions); 0 if unreadable."""
        if self.damaged is not None:
            return 0
        return max(0, self.size_bytes - FILE_HEADER_SIZE - self.live_bytes)

    @property
    def garbage_ratio(self) -> float:
        return self.garbage_bytes / self.size_bytes if self.size_bytes else 0.0


@dataclass(frozen=True, slots=True)
class StoreUsage:
    total_bytes: int
    """Bytes of all volume files: what the store takes on disk."""
    live_bytes: int
    garbage_bytes: int
    chunk_count: int
    volume_count: int
    max_bytes: int | None
    """The capacity limit (None: only the disk limits it)."""
    volumes: tuple[VolumeUsage, ...]

    @property
    def free_bytes(self) -> int | None:
        return None if self.max_bytes is None else max(0, self.max_bytes - self.total_bytes)


@dataclass(frozen=True, slots=True)
class DamageReport:
    """Damage found when the store was opened."""

    volume_id: int
    start: int
    end: int
    """Bytes ``[start, end)`` of the volume file held no intact record."""
    reason: str
    claimed_chunk_id: int | None
    """The chunk id the damaged header seems to carry (a hint; see ``needles.Damage``)."""
    action: str
    """``"truncated"`` (a torn tail, removed), ``"skipped"`` (kept until compaction), or
    ``"volume unreadable"`` (the file header is bad: the whole file is skipped)."""


@dataclass(frozen=True, slots=True)
class CompactionResult:
    volume_id: int
    bytes_before: int
    bytes_after: int
    """0 when nothing was left to keep and the file was deleted."""
    records_kept: int
    corrupt_dropped: tuple[int, ...]
    """Chunks found damaged while copying: dropped, and marked corrupt until rewritten."""


# -- internal bookkeeping -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Loc:
    """Where a live needle (or a needed tombstone: ``length == crc == 0``) sits."""

    volume_id: int
    offset: int
    length: int
    crc: int


@dataclass(eq=False, slots=True)
class _Volume:
    volume_id: int
    path: Path
    handle: Handle | None
    """None iff ``damaged``."""
    salt: bytes
    size: int
    """Invariant: the file's length and the append position; grows only under the append lock
    (and the index lock), changes otherwise only by compaction or the open-time truncation."""
    synced: int
    """Invariant: ``synced <= size``; bytes before it are durable. Sealed volumes: ``== size``."""
    live_bytes: int = 0
    """Invariant: the sum of ``record_size`` over the live needles in this volume plus
    ``TOMBSTONE_SIZE`` per needed tombstone in it."""
    live_chunks: int = 0
    damaged: str | None = None


def _pieces(source: Source, size: int) -> Iterable[bytes | bytearray | memoryview]:
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source).cast("B")
        if len(view) != size:
            raise SourceSizeError(
                f"the data is {len(view)} bytes, not the announced {size}; nothing was stored"
            )
        return (view,)
    if isinstance(source, Readable):
        return _read_pieces(source, size)
    return source


def _read_pieces(source: Readable, size: int) -> Iterator[bytes]:
    """Up to ``size`` bytes of ``source``; never reads past them (it may be a socket)."""
    remaining = size
    while remaining:
        piece = source.read(min(READ_PIECE, remaining))
        if not piece:
            return
        remaining -= len(piece)
        yield piece


def _check_range(chunk_id: int, size: int, offset: int, length: int | None) -> tuple[int, int]:
    if offset < 0 or (length is not None and length < 0):
        raise ChunkRangeError(f"chunk {chunk_id}: negative offset or length ({offset}, {length})")
    if offset > size:
        raise ChunkRangeError(
            f"offset {offset} is beyond the end of chunk {chunk_id}, which has {size} bytes"
        )
    stop = size if length is None else offset + length
    if stop > size:
        raise ChunkRangeError(
            f"bytes {offset}..{stop} of chunk {chunk_id} asked for, but it has only {size} bytes"
        )
    return offset, stop


def _lock_dir(directory: Path) -> int:
    fd = try_lock(directory / LOCK_FILE)
    if fd is None:
        raise StoreInUseError(
            f"chunk store {directory} is in use by another process (it holds the lock on "
            f"{directory / LOCK_FILE}); stop that volume server first"
        )
    return fd


class ChunkStore:
    """Chunks in append-only volume files with an in-memory index (see the module docstring).

    Open with ``ChunkStore.open(directory)``; use as a context manager or call ``close()``.
    """

    def __init__(
        self, directory: Path, *, durability: Durability, volume_size: int, max_bytes: int | None
    ) -> None:
        """Internal: use ``open``."""
        self._dir = directory
        self._durability = durability
        self._volume_size = volume_size
        self._max_bytes = max_bytes
        self._lock_fd = -1

        self._lock = threading.Lock()
        """Guards every field below (the index and the bookkeeping)."""
        self._append_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._compact_lock = threading.Lock()

        self._volumes: dict[int, _Volume] = {}
        self._active: _Volume | None = None
        """The volume appended to, the newest. None until the next write creates one (after
        sealing, or when the newest file is damaged). Invariant: every other volume is
        sealed: ``synced == size``, and it is never appended to again."""
        self._total_bytes = 0
        """Invariant: the sum of ``size`` over ``_volumes``."""
        self._live: dict[int, _Loc] = {}
        """Chunk id -> its newest record, a needle."""
        self._tombs: dict[int, _Loc] = {}
        """Chunk id -> its newest record, a tombstone, while the tombstone is *needed*.
        Invariant: ``x in _tombs`` implies ``x not in _live`` and ``_dead_in[x]`` holds a volume
        other than the tombstone's own (an older needle there would otherwise come back)."""
        self._dead_in: dict[int, set[int]] = {}
        """Chunk id -> the volumes holding needles of it that are no longer live (overwritten or
        deleted). Entries go when the volume is compacted. Invariant: sets are non-empty."""
        self._corrupt: dict[int, str] = {}
        """Chunk id -> why it is known to be damaged. Cleared by a new record for the id."""
        self._damage: list[DamageReport] = []
        self._failed: BaseException | None = None
        self._closed = False

    # -- opening, recovery, closing -------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: Path | str,
        *,
        volume_size: int = DEFAULT_VOLUME_SIZE,
        max_bytes: int | None = None,
        fsync: bool = True,
    ) -> ChunkStore:
        """Open (creating if needed) the store in ``directory`` and rebuild its index.

        ``volume_size`` is the size at which a new volume file is started;
        ``max_bytes`` caps the total size of the volume files (``StoreFullError``
        past it); ``fsync=False`` skips every flush (tests only: NOT durable).
        Raises ``StoreInUseError`` if another process has the directory open.
        """
        if volume_size <= FILE_HEADER_SIZE:
            raise ValueError(f"volume_size must exceed {FILE_HEADER_SIZE} bytes, not {volume_size}")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, not {max_bytes}")
        directory = Path(directory)
        durability = Durability(fsync)
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            durability.fsync_dir(directory.parent)
        store = cls(directory, durability=durability, volume_size=volume_size, max_bytes=max_bytes)
        store._lock_fd = _lock_dir(directory)
        try:
            store._recover()
        except BaseException:
            store._release_files()
            raise
        return store

    def _recover(self) -> None:
        for leftover in sorted(self._dir.glob("*" + TMP_SUFFIX)):
            logger.info("deleting %s, left over from an interrupted compaction", leftover)
            leftover.unlink()
        ids = sorted(
            vid for e in self._dir.iterdir() if (vid := parse_volume_name(e.name)) is not None
        )
        for vid in ids:
            self._recover_volume(vid, newest=vid == ids[-1])
        self._durability.fsync_dir(self._dir)  # the deletions above
        if ids and (newest := self._volumes.get(ids[-1])) is not None and newest.damaged is None:
            self._active = newest
        usage = self.usage()
        logger.info(
            "chunk store %s: %d chunks, %d volumes, %d live bytes, %d garbage bytes",
            self._dir,
            usage.chunk_count,
            usage.volume_count,
            usage.live_bytes,
            usage.garbage_bytes,
        )

    def _recover_volume(self, vid: int, *, newest: bool) -> None:
        path = self._dir / volume_name(vid)
        fd, size, header = open_volume(path, writable=newest)
        if isinstance(header, str) or header.volume_id != vid:
            os.close(fd)
            reason = (
                header if isinstance(header, str) else f"it says it is volume {header.volume_id}"
            )
            if newest and size <= FILE_HEADER_SIZE:
                logger.warning("deleting %s: its creation was interrupted (%s)", path, reason)
                path.unlink()
                return
            logger.error(
                "volume file %s is unreadable (%s): skipping all of it; its chunks will be "
                "reported missing. Move it aside for inspection.",
                path,
                reason,
            )
            self._volumes[vid] = _Volume(vid, path, None, b"", size, size, damaged=reason)
            self._total_bytes += size
            self._damage.append(DamageReport(vid, 0, size, reason, None, "volume unreadable"))
            return
        volume = _Volume(vid, path, Handle(fd), header.salt, size, size)
        self._volumes[vid] = volume
        for item in scan_records(fd, size, header.salt, verify_last=newest):
            if isinstance(item, NeedleHeader):
                self._apply(volume, item)
            else:
                self._recover_damage(volume, item, truncate=newest and item.torn_tail)
        self._total_bytes += volume.size

    def _recover_damage(self, volume: _Volume, damage: DamagedRegion, *, truncate: bool) -> None:
        assert volume.handle is not None
        if truncate:
            logger.warning(
                "%s: torn tail at byte offset %d (%s): truncating %d bytes, the remains of a "
                "write that never completed (and so was never acknowledged)",
                volume.path,
                damage.start,
                damage.reason,
                damage.end - damage.start,
            )
            os.ftruncate(volume.handle.fd, damage.start)
            self._durability.fsync(volume.handle.fd)
            volume.size = volume.synced = damage.start
            action = "truncated"
        else:
            logger.error(
                "%s: damaged bytes %d..%d (%s%s): skipped; the chunks around them are served",
                volume.path,
                damage.start,
                damage.end,
                damage.reason,
                ""
                if damage.claimed_chunk_id is None
                else f", probably chunk {damage.claimed_chunk_id}",
            )
            action = "skipped"
            claimed = damage.claimed_chunk_id
            if claimed is not None and claimed not in self._live:
                self._corrupt[claimed] = (
                    f"its record in volume {volume.volume_id} at byte offset {damage.start} is "
                    f"damaged ({damage.reason})"
                )
        self._damage.append(
            DamageReport(
                volume.volume_id,
                damage.start,
                damage.end,
                damage.reason,
                damage.claimed_chunk_id,
                action,
            )
        )

    def close(self) -> None:
        """Make pending writes durable (if possible) and close. Open readers finish normally."""
        with self._append_lock:
            if self._closed:
                return
            try:
                if self._failed is None and self._active is not None:
                    self._sync_through(self._active, self._active.size)
            finally:
                with self._sync_lock:
                    self._closed = True
                    self._release_files()

    def _release_files(self) -> None:
        with self._lock:
            for volume in self._volumes.values():
                if volume.handle is not None:
                    volume.handle.release()
                    volume.handle = None
            self._active = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the index ----------------------------------------------------------------

    def _apply(self, volume: _Volume, record: NeedleHeader) -> None:
        """Make ``record`` (just written, or just scanned) the newest for its chunk. Lock held."""
        cid = record.chunk_id
        old = self._live.pop(cid, None)
        if old is not None:
            holder = self._volumes[old.volume_id]
            holder.live_bytes -= record_size(old.length)
            holder.live_chunks -= 1
            self._dead_in.setdefault(cid, set()).add(old.volume_id)
        tomb = self._tombs.pop(cid, None)
        if tomb is not None:
            self._volumes[tomb.volume_id].live_bytes -= TOMBSTONE_SIZE
        self._corrupt.pop(cid, None)
        if record.kind == Kind.NEEDLE:
            self._live[cid] = _Loc(volume.volume_id, record.offset, record.length, record.crc)
            volume.live_bytes += record.size
            volume.live_chunks += 1
        elif self._dead_in.get(cid, set()) - {volume.volume_id}:
            self._tombs[cid] = _Loc(volume.volume_id, record.offset, 0, 0)
            volume.live_bytes += TOMBSTONE_SIZE

    def _note_corrupt(self, chunk_id: int, loc: _Loc, exc: DataDamageError) -> ChunkCorruptError:
        """Remember that the record at ``loc`` is damaged; the error to raise."""
        with self._lock:
            if self._live.get(chunk_id) == loc and chunk_id not in self._corrupt:
                self._corrupt[chunk_id] = exc.reason
                logger.error(
                    "chunk %d is corrupt (volume %d, byte offset %d): %s",
                    chunk_id,
                    loc.volume_id,
                    exc.offset,
                    exc.reason,
                )
        return ChunkCorruptError(chunk_id, exc.reason, loc.volume_id, exc.offset)

    # -- writing ------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._failed is not None:
            raise StoreFailedError(
                f"chunk store {self._dir} refuses writes since an earlier I/O error "
                f"({self._failed}); restart the volume server to recover what is on disk"
            ) from self._failed
        if self._closed:
            raise StoreClosedError(f"chunk store {self._dir} is closed")

    def _fail(self, exc: BaseException) -> StoreFailedError:
        self._failed = exc
        logger.error("chunk store %s: I/O error, refusing further writes: %s", self._dir, exc)
        return StoreFailedError(
            f"chunk store {self._dir}: I/O error ({exc}); writes are refused until the volume "
            "server restarts"
        )

    def _room_for(self, needed: int, *, enforce_limit: bool) -> _Volume:
        """The volume to append ``needed`` bytes to, started if need be. Append lock held."""
        active = self._active
        # A record never spans volumes; an empty volume takes even an oversized one.
        fresh = active is None or (
            active.size + needed > self._volume_size and active.size > FILE_HEADER_SIZE
        )
        if enforce_limit and self._max_bytes is not None:
            extra = needed + (FILE_HEADER_SIZE if fresh else 0)
            if self._total_bytes + extra > self._max_bytes:
                raise StoreFullError(extra, self._total_bytes, self._max_bytes)
        if not fresh:
            assert active is not None
            return active
        self._seal_active()
        vid = max(self._volumes, default=0) + 1
        fd, salt = create_volume(self._dir, vid, self._durability)
        volume = _Volume(
            vid, self._dir / volume_name(vid), Handle(fd), salt, FILE_HEADER_SIZE, FILE_HEADER_SIZE
        )
        with self._lock:
            self._volumes[vid] = volume
            self._total_bytes += FILE_HEADER_SIZE
        self._active = volume
        return volume

    def _seal_active(self) -> None:
        """Fsync the active volume and stop appending to it. Append lock held."""
        if self._active is not None:
            self._sync_through(self._active, self._active.size)
            self._active = None

    def _undo_append(self, volume: _Volume, offset: int) -> None:
        """Cut off a record that failed half-way. Append lock held."""
        assert volume.handle is not None
        try:
            os.ftruncate(volume.handle.fd, offset)
        except OSError as exc:
            raise self._fail(exc) from exc

    def _sync_through(self, volume: _Volume, end: int) -> None:
        """Make ``volume`` durable up to ``end`` at least, sharing fsyncs between writers."""
        with self._sync_lock:
            if volume.synced >= end:
                return
            if volume is not self._active and self._failed is None:
                return  # sealed: a volume stops being active only once it is fsynced whole
            self._check_writable()
            assert volume.handle is not None
            target = volume.size  # every record before it is complete: share this fsync
            try:
                self._durability.fsync(volume.handle.fd)
            except OSError as exc:
                raise self._fail(exc) from exc
            volume.synced = max(volume.synced, target)

    def write_chunk(
        self,
        chunk_id: int,
        source: Source,
        size: int,
        *,
        expected_crc: int | None = None,
        sync: bool = True,
    ) -> ChunkInfo:
        """Store ``size`` bytes from ``source`` as chunk ``chunk_id`` (replacing any older copy).

        Streams: memory stays bounded whatever the size. Returns once the chunk
        is durable (with ``sync=False``: once written; call ``sync()``). If
        ``expected_crc`` is given, the data's CRC32C must equal it. On any error
        nothing is stored: ``SourceSizeError``, ``ChecksumMismatchError``,
        ``StoreFullError``, ``StoreFailedError``, or the source's own exception.
        """
        if not 0 <= chunk_id <= MAX_CHUNK_ID:
            raise ValueError(f"chunk id must be in 0..{MAX_CHUNK_ID}, not {chunk_id}")
        if not 0 <= size <= MAX_CHUNK_SIZE:
            raise ValueError(f"a chunk is 0..{MAX_CHUNK_SIZE} bytes, not {size}")
        pieces = _pieces(source, size)
        with self._append_lock:
            self._check_writable()
            volume = self._room_for(record_size(size), enforce_limit=True)
            assert volume.handle is not None
            offset = volume.size
            try:
                record = append_needle(
                    volume.handle.fd,
                    offset,
                    volume.salt,
                    chunk_id=chunk_id,
                    pieces=pieces,
                    size=size,
                )
                if expected_crc is not None and record.crc != expected_crc:
                    raise ChecksumMismatchError(chunk_id, expected_crc, record.crc)
            except BaseException:
                self._undo_append(volume, offset)
                raise
            with self._lock:
                volume.size = record.end
                self._total_bytes += record.size
                self._apply(volume, record)
        if sync:
            self._sync_through(volume, record.end)
        return ChunkInfo(chunk_id, size, record.crc, volume.volume_id)

    def write_chunks(self, batch: Iterable[tuple[int, bytes]]) -> list[ChunkInfo]:
        """Store several (small) chunks, durable together with one fsync.

        Not atomic: after an error, the chunks before it are stored (and durable).
        """
        infos: list[ChunkInfo] = []
        try:
            for chunk_id, data in batch:
                infos.append(self.write_chunk(chunk_id, data, len(data), sync=False))
        finally:
            if infos:
                self.sync()
        return infos

    @property
    def writable(self) -> bool:
        """False once a failed write or fsync stopped all writes (or the store is closed)."""
        return self._failed is None and not self._closed

    def sync(self) -> None:
        """Make every write and delete that has returned durable."""
        active = self._active
        if active is not None:
            self._sync_through(active, active.size)

    def delete_chunk(self, chunk_id: int, *, sync: bool = True) -> bool:
        """Delete a chunk durably (a tombstone record); False if it was not stored.

        Works on a full store too (a tombstone is 32 bytes and may pass
        ``max_bytes``): deleting is how space is made.
        """
        with self._append_lock:
            self._check_writable()
            with self._lock:
                if chunk_id not in self._live:
                    self._corrupt.pop(chunk_id, None)
                    return False
            volume = self._room_for(TOMBSTONE_SIZE, enforce_limit=False)
            assert volume.handle is not None
            offset = volume.size
            try:
                record = append_tombstone(volume.handle.fd, offset, volume.salt, chunk_id)
            except BaseException:
                self._undo_append(volume, offset)
                raise
            with self._lock:
                volume.size = record.end
                self._total_bytes += TOMBSTONE_SIZE
                self._apply(volume, record)
        if sync:
            self._sync_through(volume, record.end)
        return True

    # -- reading ------------------------------------------------------------------

    def open_chunk(self, chunk_id: int, offset: int = 0, length: int | None = None) -> ChunkReader:
        """A reader of bytes ``[offset, offset + length)`` of the chunk (to its end if None).

        Raises ``ChunkNotFoundError``, ``ChunkRangeError`` (a range past the
        end), or ``ChunkCorruptError`` (now, or while iterating). Close the
        reader (or exhaust it) to let compaction free the old file.
        """
        with self._lock:
            if self._closed:
                raise StoreClosedError(f"chunk store {self._dir} is closed")
            loc = self._live.get(chunk_id)
            if loc is None:
                why = self._corrupt.get(chunk_id)
                if why is not None:
                    raise ChunkCorruptError(chunk_id, why)
                raise ChunkNotFoundError(chunk_id)
            start, stop = _check_range(chunk_id, loc.length, offset, length)
            volume = self._volumes[loc.volume_id]
            assert volume.handle is not None
            handle = volume.handle.acquire()
            salt = volume.salt
        return ChunkReader(
            chunk_id,
            handle=handle,
            salt=salt,
            record_offset=loc.offset,
            chunk_size=loc.length,
            crc=loc.crc,
            start=start,
            stop=stop,
            on_damage=functools.partial(self._note_corrupt, chunk_id, loc),
        )

    def read_chunk(self, chunk_id: int, offset: int = 0, length: int | None = None) -> bytes:
        """``open_chunk`` read into memory: for small chunks and tests."""
        with self.open_chunk(chunk_id, offset, length) as reader:
            return b"".join(reader)

    def stat(self, chunk_id: int) -> ChunkInfo:
        with self._lock:
            loc = self._live.get(chunk_id)
        if loc is None:
            raise ChunkNotFoundError(chunk_id)
        return ChunkInfo(chunk_id, loc.length, loc.crc, loc.volume_id)

    def __contains__(self, chunk_id: object) -> bool:
        with self._lock:
            return chunk_id in self._live

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)

    def chunks(self) -> list[ChunkInfo]:
        """Every live chunk, sorted by id (what a heartbeat reports)."""
        with self._lock:
            items = sorted(self._live.items())
        return [ChunkInfo(cid, loc.length, loc.crc, loc.volume_id) for cid, loc in items]

    def corrupt_chunks(self) -> dict[int, str]:
        """Chunk id -> why, for every chunk known to be damaged here (report them to the master)."""
        with self._lock:
            return dict(self._corrupt)

    def damage(self) -> list[DamageReport]:
        """Damage found when the store was opened (minus volumes compacted since)."""
        with self._lock:
            return list(self._damage)

    def usage(self) -> StoreUsage:
        with self._lock:
            volumes = tuple(
                VolumeUsage(
                    v.volume_id,
                    v.size,
                    v.live_bytes,
                    v.live_chunks,
                    v is self._active,
                    v.damaged,
                )
                for _, v in sorted(self._volumes.items())
            )
            total = self._total_bytes
        live = sum(v.live_bytes for v in volumes)
        return StoreUsage(
            total_bytes=total,
            live_bytes=live,
            garbage_bytes=sum(v.garbage_bytes for v in volumes),
            chunk_count=sum(v.chunk_count for v in volumes),
            volume_count=len(volumes),
            max_bytes=self._max_bytes,
            volumes=volumes,
        )

    def compaction_candidates(self, min_garbage_ratio: float = DEFAULT_GARBAGE_RATIO) -> list[int]:
        """Readable volumes whose garbage ratio is at least ``min_garbage_ratio``."""
        return [
            v.volume_id
            for v in self.usage().volumes
            if v.damaged is None and v.garbage_bytes > 0 and v.garbage_ratio >= min_garbage_ratio
        ]

    # -- compaction ---------------------------------------------------------------

    def compact(self, volume_id: int) -> CompactionResult:
        """Rewrite a volume without its garbage (see the module docstring); reads continue."""
        with self._compact_lock:
            with self._append_lock:
                self._check_writable()
                if self._active is not None and self._active.volume_id == volume_id:
                    self._seal_active()
            with self._lock:
                volume = self._volumes.get(volume_id)
                if volume is None:
                    raise ValueError(f"there is no volume {volume_id} in {self._dir}")
                if volume.damaged is not None or volume.handle is None:
                    raise StoreError(
                        f"volume {volume_id} is unreadable ({volume.damaged}) and cannot be "
                        f"compacted; move {volume.path} aside and restart the volume server"
                    )
                plan = sorted(
                    [
                        (loc.offset, Kind.NEEDLE, cid, loc.length)
                        for cid, loc in self._live.items()
                        if loc.volume_id == volume_id
                    ]
                    + [
                        (loc.offset, Kind.TOMBSTONE, cid, 0)
                        for cid, loc in self._tombs.items()
                        if loc.volume_id == volume_id
                    ]
                )
                old_handle = volume.handle.acquire()
                old_salt = volume.salt
                bytes_before = volume.size
            tmp = volume.path.with_name(volume.path.name + TMP_SUFFIX)
            try:
                # Whatever made the records we are about to drop garbage must be durable before
                # they are gone, or a crash could lose both the old copy and its replacement.
                self.sync()
                copied, skipped, new_size, new_salt = copy_records(
                    old_handle.fd,
                    old_salt,
                    plan,
                    dst_path=tmp,
                    volume_id=volume_id,
                    durability=self._durability,
                )
                if copied:
                    os.replace(tmp, volume.path)
                    new_fd = os.open(volume.path, os.O_RDONLY | os.O_CLOEXEC)
                else:
                    tmp.unlink()
                    volume.path.unlink()
                self._durability.fsync_dir(self._dir)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            finally:
                old_handle.release()
            with self._lock:
                corrupt = self._swap(volume, copied, skipped)
                self._total_bytes += (new_size if copied else 0) - volume.size
                assert volume.handle is not None
                volume.handle.release()
                if copied:
                    volume.handle = Handle(new_fd)
                    volume.salt = new_salt
                    volume.size = volume.synced = new_size
                else:
                    volume.handle = None
                    del self._volumes[volume_id]
                self._damage = [d for d in self._damage if d.volume_id != volume_id]
        logger.info(
            "compacted volume %d: %d -> %d bytes, %d records kept",
            volume_id,
            bytes_before,
            new_size if copied else 0,
            len(copied),
        )
        return CompactionResult(
            volume_id, bytes_before, new_size if copied else 0, len(copied), corrupt
        )

    def _swap(
        self, volume: _Volume, copied: list[Copied], skipped: list[Skipped]
    ) -> tuple[int, ...]:
        """Point the index at the compacted copy of ``volume``; the corrupt chunks dropped.

        Lock held. Records copied may have become garbage while they were being
        copied (their chunk was overwritten or deleted meanwhile): they are
        simply not pointed at, and their volume stays in ``_dead_in``.
        """
        vid = volume.volume_id
        live_bytes = live_chunks = 0
        copied_but_dead: set[int] = set()
        for copy in copied:
            cid = copy.new.chunk_id
            if copy.new.kind == Kind.NEEDLE:
                loc = self._live.get(cid)
                if loc is not None and loc.volume_id == vid and loc.offset == copy.old_offset:
                    self._live[cid] = _Loc(vid, copy.new.offset, loc.length, loc.crc)
                    live_bytes += copy.new.size
                    live_chunks += 1
                else:
                    copied_but_dead.add(cid)
            else:
                loc = self._tombs.get(cid)
                if loc is not None and loc.volume_id == vid and loc.offset == copy.old_offset:
                    self._tombs[cid] = _Loc(vid, copy.new.offset, 0, 0)
                    live_bytes += TOMBSTONE_SIZE
        corrupt: list[int] = []
        for skip in skipped:
            loc = self._live.get(skip.chunk_id)
            if loc is not None and loc.volume_id == vid and loc.offset == skip.old_offset:
                del self._live[skip.chunk_id]
                self._corrupt[skip.chunk_id] = (
                    f"dropped by the compaction of volume {vid}: {skip.reason}"
                )
                corrupt.append(skip.chunk_id)
                logger.error(
                    "compaction of volume %d: chunk %d is corrupt (%s) and was dropped",
                    vid,
                    skip.chunk_id,
                    skip.reason,
                )
        volume.live_bytes, volume.live_chunks = live_bytes, live_chunks
        # The garbage needles this volume held are gone: so may be the need for tombstones
        # that only kept them from coming back.
        gone = [c for c, vols in self._dead_in.items() if vid in vols and c not in copied_but_dead]
        for cid in gone:
            vols = self._dead_in[cid]
            vols.discard(vid)
            if not vols:
                del self._dead_in[cid]
            tomb = self._tombs.get(cid)
            if tomb is not None and not vols - {tomb.volume_id}:
                del self._tombs[cid]
                self._volumes[tomb.volume_id].live_bytes -= TOMBSTONE_SIZE
        return tuple(sorted(corrupt))
