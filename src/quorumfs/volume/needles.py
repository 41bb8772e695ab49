"""Needles: the byte layout of a volume file and of every record in it.

This module owns the bytes and nothing else. Which records are live, what
damage means and when to fsync are decided by ``volume_file`` (one file) and
``store`` (the index across files).

A volume file is a 32-byte file header followed by records ("needles", as
SeaweedFS calls them), each starting at a multiple of 8. All integers are
little-endian.

File header::

    offset  size  field
    0       8     magic b"\\x89QFSVOL\\n" (PNG style: a high byte, a name, a newline)
    8       2     format version, 1
    10      2     block shift: log2 of the checksum block size, 16 (64 KiB)
    12      4     volume id (u32), the same number as in the file name
    16      8     salt: random bytes, new for every file (compaction writes a new file)
    24      4     reserved, 0
    28      4     CRC32C of bytes 0..27

Record::

    offset  size  field
    0       4     magic b"\\xa9NDL"
    4       1     kind: 1 needle (a chunk's data), 2 tombstone (the chunk is deleted)
    5       3     reserved, 0
    8       8     chunk id (u64)
    16      8     data length in bytes (0 .. MAX_CHUNK_SIZE; 0 for a tombstone)
    24      4     CRC32C of the whole data (the master's ``Chunk.checksum``; 0 for a tombstone)
    28      4     header CRC32C: seeded with CRC32C(salt || u64 offset of this record),
                  then over bytes 0..27 and the block table
    32      4*n   block table: CRC32C of each 64 KiB block of the data, n = ceil(length / 64 KiB)
    32+4n   length  the data
    ...     0..7  zero padding to the next multiple of 8

Why each piece is there:

- The block table lets a range read of a 64 MiB chunk verify only the 64 KiB
  blocks it touches, instead of reading the whole chunk to check one CRC; the
  table costs 4 bytes per 64 KiB (0.006 %). The whole-data CRC is what the
  master records and what a writer may declare up front; a full read checks it
  too.
- The header CRC covers the table, so a verified header makes every block CRC
  trustworthy. Its seed binds the header to *this* file (the salt) and *this*
  offset, so a resynchronising scan after damage can never mistake bytes
  inside some chunk's data for a record, not even if that data is itself a
  quorumfs volume file.
- A writer streams the data first and writes the header last (it only knows
  the CRCs at the end). A crash in between leaves a hole where the header
  belongs: the record is not valid and the scan treats it as damage.
- Alignment to 8 bytes halves the places a resynchronising scan tries, and
  means a truncation after a torn tail always lands on a record boundary.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from crc32c import crc32c

__all__ = [
    "ALIGN",
    "BLOCK_SHIFT",
    "BLOCK_SIZE",
    "FILE_HEADER_SIZE",
    "FILE_MAGIC",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAX_CHUNK_ID",
    "MAX_CHUNK_SIZE",
    "NEEDLE_MAGIC",
    "TOMBSTONE_SIZE",
    "Checksummer",
    "Damage",
    "Kind",
    "NeedleHeader",
    "VolumeHeader",
    "block_count",
    "pack_needle_header",
    "pack_volume_header",
    "parse_needle_header",
    "parse_volume_header",
    "record_size",
    "table_size",
]

FILE_MAGIC: Final = b"\x89QFSVOL\n"
FORMAT_VERSION: Final = 1
FILE_HEADER_SIZE: Final = 32
_FILE_HEADER: Final = struct.Struct("<8sHHI8sI")  # up to the CRC
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")

NEEDLE_MAGIC: Final = b"\xa9NDL"
HEADER_SIZE: Final = 32
_NEEDLE_PREFIX: Final = struct.Struct("<4sB3sQQI")  # up to the header CRC
_NEEDLE_HEADER: Final = struct.Struct("<4sB3sQQII")
_RESERVED3: Final = b"\0\0\0"

BLOCK_SHIFT: Final = 16
BLOCK_SIZE: Final = 1 << BLOCK_SHIFT
"""Checksum block: each 64 KiB of a chunk's data has its own CRC32C."""
ALIGN: Final = 8
MAX_CHUNK_SIZE: Final = 64 * 1024 * 1024
"""The largest chunk (MooseFS's chunk size); also bounds what a scan accepts as a length."""
MAX_CHUNK_ID: Final = 2**64 - 1
TOMBSTONE_SIZE: Final = HEADER_SIZE
"""A tombstone is a bare header (no table, no data; already aligned)."""


class Kind(enum.IntEnum):
    NEEDLE = 1
    """A chunk's data: the newest record for a chunk id wins."""
    TOMBSTONE = 2
    """The chunk id is deleted as of this record."""


def block_count(length: int) -> int:
    return (length + BLOCK_SIZE - 1) >> BLOCK_SHIFT


def table_size(length: int) -> int:
    return 4 * block_count(length)


def record_size(length: int) -> int:
    """Bytes a needle with ``length`` bytes of data takes in a volume file, padding included."""
    unpadded = HEADER_SIZE + table_size(length) + length
    return (unpadded + ALIGN - 1) & ~(ALIGN - 1)


# -- the file header -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VolumeHeader:
    volume_id: int
    salt: bytes
    """Invariant: 8 bytes."""


def pack_volume_header(volume_id: int, salt: bytes) -> bytes:
    if len(salt) != 8:
        raise ValueError("the salt is 8 bytes")
    prefix = _FILE_HEADER.pack(FILE_MAGIC, FORMAT_VERSION, BLOCK_SHIFT, volume_id, salt, 0)
    return prefix + _U32.pack(crc32c(prefix))


def parse_volume_header(buf: bytes) -> VolumeHeader | str:
    """The file header at the start of ``buf``, or why it is not one."""
    if len(buf) < FILE_HEADER_SIZE:
        return f"incomplete file header ({len(buf)} of {FILE_HEADER_SIZE} bytes)"
    magic, version, shift, volume_id, salt, reserved = _FILE_HEADER.unpack_from(buf)
    if magic != FILE_MAGIC:
        return "not a quorumfs volume file (bad magic)"
    (crc,) = _U32.unpack_from(buf, _FILE_HEADER.size)
    if crc32c(buf[: _FILE_HEADER.size]) != crc:
        return "file header checksum mismatch"
    if version != FORMAT_VERSION or shift != BLOCK_SHIFT or reserved != 0:
        return f"unsupported volume format (version {version}, block shift {shift})"
    return VolumeHeader(volume_id, bytes(salt))


# -- needle headers ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NeedleHeader:
    """A verified record header: magic, fields and header CRC (table included) all checked."""

    kind: Kind
    chunk_id: int
    length: int
    """Data bytes; 0 for a tombstone. Invariant: ``0 <= length <= MAX_CHUNK_SIZE``."""
    crc: int
    """CRC32C of the whole data."""
    offset: int
    """Byte offset of the record in its file. Invariant: a multiple of ``ALIGN``."""
    block_crcs: tuple[int, ...]
    """Invariant: ``len(block_crcs) == block_count(length)``."""

    @property
    def data_offset(self) -> int:
        return self.offset + HEADER_SIZE + 4 * len(self.block_crcs)

    @property
    def size(self) -> int:
        """Bytes the record takes in the file, padding included."""
        return record_size(self.length)

    @property
    def end(self) -> int:
        return self.offset + record_size(self.length)


@dataclass(frozen=True, slots=True)
class Damage:
    """Why no valid record starts at ``offset``, and what the bytes there say, unverified.

    ``chunk_id`` and ``length`` are the header's fields as read (None if the
    header is incomplete), ``magic_ok`` whether its magic is right. They are
    only a hint of which chunk was lost: the checksum that failed covers them.
    """

    offset: int
    reason: str
    chunk_id: int | None = None
    length: int | None = None
    magic_ok: bool = False


def _seed(salt: bytes, offset: int) -> int:
    return crc32c(_U64.pack(offset), crc32c(salt))


def pack_needle_header(
    kind: Kind,
    chunk_id: int,
    length: int,
    crc: int,
    block_crcs: Sequence[int],
    *,
    salt: bytes,
    offset: int,
) -> bytes:
    """Header and block table of the record that will sit at ``offset`` of a file with ``salt``."""
    if len(block_crcs) != block_count(length):
        raise ValueError(f"{len(block_crcs)} block CRCs for {length} bytes")
    prefix = _NEEDLE_PREFIX.pack(NEEDLE_MAGIC, kind, _RESERVED3, chunk_id, length, crc)
    table = struct.pack(f"<{len(block_crcs)}I", *block_crcs)
    header_crc = crc32c(table, crc32c(prefix, _seed(salt, offset)))
    return prefix + _U32.pack(header_crc) + table


def parse_needle_header(
    buf: bytes | memoryview, pos: int, *, salt: bytes, offset: int
) -> NeedleHeader | Damage | int:
    """The record header at ``buf[pos:]``, which sits at ``offset`` of the file.

    Returns an ``int`` when ``buf`` holds a plausible header but too little of
    the block table to verify it: the number of bytes needed from ``pos``.
    """
    if len(buf) - pos < HEADER_SIZE:
        return Damage(offset, f"incomplete record header ({len(buf) - pos} of {HEADER_SIZE} bytes)")
    magic, kind, reserved, chunk_id, length, crc, header_crc = _NEEDLE_HEADER.unpack_from(buf, pos)
    if magic != NEEDLE_MAGIC:
        return Damage(offset, "no record starts here (bad magic)", chunk_id, length)
    if kind not in (Kind.NEEDLE, Kind.TOMBSTONE) or reserved != _RESERVED3:
        return Damage(offset, f"unknown record kind {kind}", chunk_id, length, True)
    if length > MAX_CHUNK_SIZE:
        return Damage(offset, f"impossible data length {length}", chunk_id, length, True)
    if kind == Kind.TOMBSTONE and (length or crc):
        return Damage(offset, "tombstone with data", chunk_id, length, True)
    n = block_count(length)
    needed = HEADER_SIZE + 4 * n
    if len(buf) - pos < needed:
        return needed
    table_start = pos + HEADER_SIZE
    seed = crc32c(buf[pos : pos + _NEEDLE_PREFIX.size], _seed(salt, offset))
    if crc32c(buf[table_start : table_start + 4 * n], seed) != header_crc:
        return Damage(offset, "record header checksum mismatch", chunk_id, length, True)
    return NeedleHeader(
        Kind(kind), chunk_id, length, crc, offset, struct.unpack_from(f"<{n}I", buf, table_start)
    )


# -- checksumming data as it streams past ----------------------------------------


class Checksummer:
    """Block CRCs and the whole-data CRC of data fed to it in pieces of any size."""

    __slots__ = ("_block", "_block_len", "block_crcs", "crc", "length")

    def __init__(self) -> None:
        self.block_crcs: list[int] = []
        """CRCs of the completed blocks so far."""
        self.crc = 0
        """CRC32C of everything fed so far."""
        self.length = 0
        self._block = 0
        self._block_len = 0
        """Invariant: ``0 <= _block_len < BLOCK_SIZE``: the bytes of the current, open block."""

    def feed(self, piece: bytes | bytearray | memoryview) -> None:
        view = memoryview(piece)
        self.crc = crc32c(view, self.crc)
        self.length += len(view)
        pos = 0
        while pos < len(view):
            take = min(BLOCK_SIZE - self._block_len, len(view) - pos)
            self._block = crc32c(view[pos : pos + take], self._block)
            self._block_len += take
            pos += take
            if self._block_len == BLOCK_SIZE:
                self.block_crcs.append(self._block)
                self._block, self._block_len = 0, 0

    def finish(self) -> list[int]:
        """All block CRCs, the last (partial) block's included. Call once, after the last feed."""
        if self._block_len:
            self.block_crcs.append(self._block)
            self._block, self._block_len = 0, 0
        return self.block_crcs
