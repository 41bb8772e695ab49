"""One volume file: naming, creating, scanning, appending to, reading and copying it.

The store (``store.py``) decides which records are live; this module only
moves bytes between a file descriptor and memory, verifying every checksum on
the way in and out, and says where a file is damaged. Everything goes through
``os.pread``/``os.pwrite`` at explicit offsets, never the fd's file position,
so any number of threads may read one fd while one thread appends to it.

Names: ``vol-<id>.dat`` (at least six decimal digits); ``<name>.tmp`` is a
compacted copy being written, deleted when found on open.

The scan, and what damage means (the store applies the torn-tail rule):

    Records are read one after the other from the end of the file header. A
    record is *intact* when its header verifies (magic, fields, header CRC
    seeded with the file's salt and the record's offset) and it ends within
    the file. At damage, the scan resynchronises at the next offset (a
    multiple of 8) where an intact record starts, trying every one, so a
    damaged length field cannot hide the records behind it. Damage followed
    by an intact record is a ``DamagedRegion``; damage with nothing intact
    after it is a torn tail (``DamagedRegion.torn_tail``). Data is *not*
    verified by the scan (that would read every byte of every volume at
    start), except, when asked, the last intact record's: the one a crash
    during a write most likely tore.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from crc32c import crc32c

from .errors import SourceSizeError
from .needles import (
    ALIGN,
    BLOCK_SIZE,
    FILE_HEADER_SIZE,
    HEADER_SIZE,
    MAX_CHUNK_SIZE,
    NEEDLE_MAGIC,
    TOMBSTONE_SIZE,
    Checksummer,
    Damage,
    Kind,
    NeedleHeader,
    VolumeHeader,
    block_count,
    pack_needle_header,
    pack_volume_header,
    parse_needle_header,
    parse_volume_header,
    record_size,
)

__all__ = [
    "READ_PIECE",
    "TMP_SUFFIX",
    "Copied",
    "DamagedRegion",
    "DataDamageError",
    "Durability",
    "Handle",
    "Skipped",
    "append_needle",
    "append_tombstone",
    "copy_records",
    "create_volume",
    "iter_verified",
    "open_volume",
    "parse_volume_name",
    "pread_exact",
    "read_header_at",
    "scan_records",
    "volume_name",
]

TMP_SUFFIX: Final = ".tmp"
READ_PIECE: Final = 1 << 20
"""Bytes per pread/pwrite when streaming: bounds the memory of one streaming read or write."""
_NAME: Final = re.compile(r"^vol-(\d{6,10})\.dat$")
_ZEROS: Final = bytes(ALIGN)


def volume_name(volume_id: int) -> str:
    return f"vol-{volume_id:06d}.dat"


def parse_volume_name(name: str) -> int | None:
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


class Durability:
    """Performs (or, for tests and benchmarks, skips) every fsync of the store."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def fsync(self, fd: int) -> None:
        if self.enabled:
            os.fsync(fd)

    def fsync_dir(self, path: Path) -> None:
        """Make creations, renames and deletions of entries in ``path`` durable."""
        if not self.enabled:
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Handle:
    """A file descriptor shared by the store and its readers; closed when the last lets go.

    Compaction replaces a volume's file while readers may still be streaming
    from the old one: they keep reading the old (renamed-over) inode through
    their reference, and the fd is closed only after the last of them is done,
    so a pread can never hit a closed, or worse a reused, descriptor.
    """

    __slots__ = ("_lock", "_refs", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._refs = 1
        """The opener's reference. Invariant: the fd is open iff ``_refs > 0``."""
        self._lock = threading.Lock()

    def acquire(self) -> Handle:
        with self._lock:
            if self._refs <= 0:
                raise RuntimeError("handle already closed")
            self._refs += 1
        return self

    def release(self) -> None:
        with self._lock:
            self._refs -= 1
            if self._refs == 0:
                os.close(self.fd)


class DataDamageError(Exception):
    """Internal: a block of a record's data fails its CRC (or cannot be read)."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DamagedRegion:
    """Bytes ``[start, end)`` of a volume file that hold no intact record."""

    start: int
    end: int
    reason: str
    claimed_chunk_id: int | None
    """The chunk id the damaged header seems to carry: its chunk id field, if its magic is
    right or its length field makes the record end exactly where the region ends."""
    torn_tail: bool
    """Nothing intact follows (``end`` is the file's length)."""


# -- small I/O helpers ------------------------------------------------------------


def pread_exact(fd: int, n: int, offset: int) -> bytes:
    """``n`` bytes at ``offset``; ``DataDamageError`` if the file is shorter or unreadable."""
    try:
        data = os.pread(fd, n, offset)
        while len(data) < n:
            more = os.pread(fd, n - len(data), offset + len(data))
            if not more:
                raise DataDamageError(offset, f"file ends {n - len(data)} bytes short")
            data += more
    except OSError as exc:
        raise DataDamageError(offset, f"read error: {exc}") from exc
    return data


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def create_volume(directory: Path, volume_id: int, durability: Durability) -> tuple[int, bytes]:
    """Create an empty volume file, durably (file and directory entry); return fd and salt."""
    path = directory / volume_name(volume_id)
    salt = os.urandom(8)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        _pwrite_all(fd, pack_volume_header(volume_id, salt), 0)
        durability.fsync(fd)
        durability.fsync_dir(directory)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()  # else the next attempt would find the name taken
        raise
    return fd, salt


def read_header_at(fd: int, offset: int, salt: bytes, expect_length: int) -> NeedleHeader:
    """The verified header of the record at ``offset``, whose data is ``expect_length`` bytes."""
    data = pread_exact(fd, HEADER_SIZE + 4 * block_count(expect_length), offset)
    header = parse_needle_header(data, 0, salt=salt, offset=offset)
    if not isinstance(header, NeedleHeader):
        reason = header.reason if isinstance(header, Damage) else "record header changed on disk"
        raise DataDamageError(offset, reason)
    if header.length != expect_length:
        raise DataDamageError(offset, "record header changed on disk")
    return header


# -- writing ----------------------------------------------------------------------


def append_needle(
    fd: int,
    offset: int,
    salt: bytes,
    *,
    chunk_id: int,
    pieces: Iterable[bytes | bytearray | memoryview],
    size: int,
) -> NeedleHeader:
    """Write a needle at ``offset`` (the end of the file) from ``pieces`` totalling ``size``.

    The data goes first, streamed in pieces of about ``READ_PIECE`` bytes while
    its CRCs are computed, the header last: until the header is written the
    record is invalid. Not fsynced. On any error the caller truncates the file
    back to ``offset``. Raises ``SourceSizeError`` if ``pieces`` do not add up
    to ``size``.
    """
    header_len = HEADER_SIZE + 4 * block_count(size)
    summer = Checksummer()
    write_at = offset + header_len
    pending = bytearray()
    for piece in pieces:
        if summer.length + len(piece) > size:
            raise SourceSizeError(
                f"chunk {chunk_id}: the data source gave more than the announced {size} bytes; "
                "nothing was stored"
            )
        summer.feed(piece)
        if not pending and len(piece) >= READ_PIECE:
            _pwrite_all(fd, piece, write_at)  # large pieces go straight through, no copy
            write_at += len(piece)
            continue
        pending += piece
        if len(pending) >= READ_PIECE:
            _pwrite_all(fd, pending, write_at)
            write_at += len(pending)
            pending.clear()
    if summer.length != size:
        raise SourceSizeError(
            f"chunk {chunk_id}: the data source ended after {summer.length} of the announced "
            f"{size} bytes; nothing was stored"
        )
    end = offset + record_size(size)
    pending += _ZEROS[: end - (offset + header_len + size)]  # alignment padding
    _pwrite_all(fd, pending, write_at)
    header = pack_needle_header(
        Kind.NEEDLE, chunk_id, size, summer.crc, summer.finish(), salt=salt, offset=offset
    )
    _pwrite_all(fd, header, offset)
    return NeedleHeader(Kind.NEEDLE, chunk_id, size, summer.crc, offset, tuple(summer.block_crcs))


def append_tombstone(fd: int, offset: int, salt: bytes, chunk_id: int) -> NeedleHeader:
    header = pack_needle_header(Kind.TOMBSTONE, chunk_id, 0, 0, (), salt=salt, offset=offset)
    _pwrite_all(fd, header, offset)
    return NeedleHeader(Kind.TOMBSTONE, chunk_id, 0, 0, offset, ())


# -- reading ----------------------------------------------------------------------


def iter_verified(
    fd: int, header: NeedleHeader, first_block: int, end_block: int, *, check_whole: bool
) -> Iterator[bytes]:
    """The data of blocks ``[first_block, end_block)``, each verified before it is yielded.

    Pieces are ``READ_PIECE`` bytes (the last may be shorter). ``check_whole``
    (only meaningful for all blocks) also checks the whole-data CRC at the end.
    Raises ``DataDamageError`` at the first bad block.
    """
    per_piece = READ_PIECE // BLOCK_SIZE
    whole = 0
    block = first_block
    while block < end_block:
        last = min(block + per_piece, end_block)
        start = block * BLOCK_SIZE
        stop = min(last * BLOCK_SIZE, header.length)
        piece = pread_exact(fd, stop - start, header.data_offset + start)
        view = memoryview(piece)
        for b in range(block, last):
            lo = (b - block) * BLOCK_SIZE
            if crc32c(view[lo : lo + BLOCK_SIZE]) != header.block_crcs[b]:
                raise DataDamageError(
                    header.data_offset + b * BLOCK_SIZE, f"data block {b} fails its CRC32C"
                )
        if check_whole:
            whole = crc32c(piece, whole)
        yield piece
        block = last
    if check_whole and whole != header.crc:
        raise DataDamageError(header.data_offset, "whole-data CRC32C mismatch")


# -- scanning ---------------------------------------------------------------------


class _Window:
    """Sequential reads through a 1 MiB window: one pread per many small records."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size
        self._start = 0
        self._buf = b""

    def get(self, offset: int, n: int) -> memoryview:
        """Up to ``n`` bytes at ``offset`` (fewer only at the end of the file)."""
        n = min(n, self._size - offset)
        if not (self._start <= offset and offset + n <= self._start + len(self._buf)):
            self._buf = pread_exact(self._fd, min(max(n, READ_PIECE), self._size - offset), offset)
            self._start = offset
        lo = offset - self._start
        return memoryview(self._buf)[lo : lo + n]


_LONGEST_HEADER: Final = HEADER_SIZE + 4 * block_count(MAX_CHUNK_SIZE)


def _header_at(window: _Window, offset: int, salt: bytes) -> NeedleHeader | Damage:
    # Ask for the longest possible block table at once: one parse per record.
    result = parse_needle_header(window.get(offset, _LONGEST_HEADER), 0, salt=salt, offset=offset)
    if isinstance(result, int):  # the file ends inside the block table
        return Damage(offset, "block table cut off by the end of the file")
    return result


def _intact_at(window: _Window, offset: int, size: int, salt: bytes) -> NeedleHeader | Damage:
    header = _header_at(window, offset, salt)
    if isinstance(header, NeedleHeader) and header.end > size:
        return Damage(
            offset,
            f"record of {header.size} bytes runs {header.end - size} bytes past the end of file",
            header.chunk_id,
            header.length,
            True,
        )
    return header


def _resync(fd: int, window: _Window, start: int, size: int, salt: bytes) -> int | None:
    """Offset of the first intact record at or after ``start`` (a multiple of ALIGN)."""
    pos = start
    while pos < size:
        # Windows start at multiples of ALIGN, so an aligned magic never straddles two.
        buf = pread_exact(fd, min(READ_PIECE, size - pos), pos)
        i = buf.find(NEEDLE_MAGIC)
        while i != -1:
            if i % ALIGN == 0 and isinstance(_intact_at(window, pos + i, size, salt), NeedleHeader):
                return pos + i
            i = buf.find(NEEDLE_MAGIC, i + 1)
        pos += len(buf)
    return None


def _claim(damage: Damage, region_end: int) -> int | None:
    """The chunk id ``damage`` most likely destroyed, if the header bytes say so plausibly."""
    if damage.chunk_id is None or damage.length is None:
        return None
    fits = (
        damage.length <= MAX_CHUNK_SIZE and damage.offset + record_size(damage.length) == region_end
    )
    return damage.chunk_id if damage.magic_ok or fits else None


def _data_intact(fd: int, header: NeedleHeader) -> str | None:
    try:
        for _ in iter_verified(fd, header, 0, len(header.block_crcs), check_whole=True):
            pass
    except DataDamageError as exc:
        return exc.reason
    return None


def scan_records(
    fd: int, size: int, salt: bytes, *, verify_last: bool
) -> Iterator[NeedleHeader | DamagedRegion]:
    """The intact records and damaged regions of a volume file, in file order.

    A torn tail, if any, is the last item. With ``verify_last``, the last
    intact record's data is read and checked; if it fails, that record is
    reported as (the start of) the torn tail instead.
    """
    window = _Window(fd, size)
    held: NeedleHeader | None = None
    """With ``verify_last``: the latest intact record, not yet yielded."""
    pos = FILE_HEADER_SIZE
    while pos < size:
        found = _intact_at(window, pos, size, salt)
        if isinstance(found, NeedleHeader):
            if held is not None:
                yield held
            if verify_last:
                held = found
            else:
                yield found
            pos = found.end
            continue
        resync = _resync(fd, window, pos + ALIGN, size, salt)
        if resync is None:
            if held is not None and (why := _data_intact(fd, held)) is not None:
                yield DamagedRegion(held.offset, size, f"last record: {why}", held.chunk_id, True)
                return
            if held is not None:
                yield held
            yield DamagedRegion(pos, size, found.reason, _claim(found, size), True)
            return
        if held is not None:
            yield held
            held = None
        yield DamagedRegion(pos, resync, found.reason, _claim(found, resync), False)
        pos = resync
    if held is not None:
        why = _data_intact(fd, held)
        if why is None:
            yield held
        else:
            yield DamagedRegion(held.offset, size, f"last record: {why}", held.chunk_id, True)


# -- compaction -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Copied:
    """A record of the old file and its copy in the new one."""

    old_offset: int
    new: NeedleHeader


@dataclass(frozen=True, slots=True)
class Skipped:
    """A needle that compaction could not copy because it is damaged."""

    old_offset: int
    chunk_id: int
    reason: str


def copy_records(
    src_fd: int,
    src_salt: bytes,
    records: Iterable[tuple[int, Kind, int, int]],
    *,
    dst_path: Path,
    volume_id: int,
    durability: Durability,
) -> tuple[list[Copied], list[Skipped], int, bytes]:
    """Write a new volume file at ``dst_path`` holding copies of ``records``, fsynced.

    ``records`` are ``(offset, kind, chunk id, data length)`` of records in the
    source, in file order. A needle is read and verified (header and every
    block) before it is copied, re-framed for its new offset and the new file's
    salt; a damaged one is skipped. A tombstone carries nothing to verify, so a
    fresh one is written. Returns the copies, the skipped needles, the new
    file's size and its salt. The caller renames the file into place.
    """
    salt = os.urandom(8)
    fd = os.open(dst_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    copied: list[Copied] = []
    skipped: list[Skipped] = []
    try:
        _pwrite_all(fd, pack_volume_header(volume_id, salt), 0)
        pos = FILE_HEADER_SIZE
        for offset, kind, chunk_id, length in records:
            if kind == Kind.TOMBSTONE:
                copied.append(Copied(offset, append_tombstone(fd, pos, salt, chunk_id)))
                pos += TOMBSTONE_SIZE
                continue
            try:
                old = read_header_at(src_fd, offset, src_salt, length)
                if old.kind != kind or old.chunk_id != chunk_id:
                    raise DataDamageError(offset, "record header changed on disk")
                new_header = pack_needle_header(
                    kind, chunk_id, length, old.crc, old.block_crcs, salt=salt, offset=pos
                )
                data_at = pos + len(new_header)
                for piece in iter_verified(src_fd, old, 0, len(old.block_crcs), check_whole=True):
                    _pwrite_all(fd, piece, data_at)
                    data_at += len(piece)
            except DataDamageError as exc:
                skipped.append(Skipped(offset, chunk_id, exc.reason))
                continue  # whatever was written past ``pos`` is overwritten or truncated
            end = pos + old.size
            _pwrite_all(fd, _ZEROS[: end - data_at], data_at)
            _pwrite_all(fd, new_header, pos)
            copied.append(
                Copied(offset, NeedleHeader(kind, chunk_id, length, old.crc, pos, old.block_crcs))
            )
            pos = end
        os.ftruncate(fd, pos)
        durability.fsync(fd)
    finally:
        os.close(fd)
    return copied, skipped, pos, salt


def open_volume(path: Path, *, writable: bool) -> tuple[int, int, VolumeHeader | str]:
    """Open a volume file: fd, length, and its header or why it has none."""
    fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        header = parse_volume_header(os.pread(fd, FILE_HEADER_SIZE, 0))
    except BaseException:
        os.close(fd)
        raise
    return fd, size, header
