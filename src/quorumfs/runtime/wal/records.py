"""Record framing shared by every file the journal writes.

A record is a fixed 12-byte header followed by a msgpack payload. Segments are
a sequence of records; the hard state file and each snapshot file hold exactly
one. The module owns the byte layout and nothing else: which records may follow
which, and what damage means, is decided by the modules that read whole files.

Header (little-endian)::

    offset  size  field
    0       2     magic, b"\\xa9\\x57": where a scan past damage can resynchronise
    2       1     type (RecordType)
    3       1     reserved, always 0
    4       4     payload length in bytes (u32, 1 .. MAX_PAYLOAD)
    8       4     CRC32C (Castagnoli) of header bytes 0..7 followed by the payload

The checksum covers the type and length too, so a flipped length or an
all-zero region never passes for a record (crc32c of nothing is 0).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

import msgspec
from crc32c import crc32c

from quorumfs.raft.messages import Entry

__all__ = [
    "ENCODER",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_PAYLOAD",
    "Damage",
    "Record",
    "RecordType",
    "frame",
    "frame_entry",
    "next_intact_record",
    "read_record",
]

MAGIC: Final = b"\xa9\x57"
_PREFIX: Final = struct.Struct("<2sBBI")  # magic, type, reserved, length: what the CRC covers
_CRC: Final = struct.Struct("<I")
_HEADER: Final = struct.Struct("<2sBBII")
HEADER_SIZE: Final = _HEADER.size
MAX_PAYLOAD: Final = 2**32 - 1

ENCODER: Final = msgspec.msgpack.Encoder()
"""The one msgpack encoder for payloads (``Entry`` is an array-like struct: compact)."""


class RecordType(enum.IntEnum):
    SEGMENT_HEADER = 1
    """First record of a segment: a ``SegmentHeader``."""
    ENTRY = 2
    """One ``Entry``. One entry per record makes conflict truncation a plain ftruncate."""
    HARD_STATE = 3
    """The only record of the ``hardstate`` file: a ``HardState``."""
    SNAPSHOT = 4
    """The only record of a snapshot file: a ``Snapshot`` (meta and data)."""


_KNOWN_TYPES: Final = frozenset(int(t) for t in RecordType)


@dataclass(frozen=True, slots=True)
class Record:
    """An intact record: magic, type, length and checksum all verified."""

    type: RecordType
    offset: int
    payload: bytes

    @property
    def end(self) -> int:
        """Offset of the byte after this record."""
        return self.offset + HEADER_SIZE + len(self.payload)


@dataclass(frozen=True, slots=True)
class Damage:
    """Why no intact record starts at ``offset``."""

    offset: int
    reason: str


def frame(rtype: RecordType, payload: bytes) -> bytes:
    """The bytes of one record carrying ``payload``."""
    if not 0 < len(payload) <= MAX_PAYLOAD:
        raise ValueError(f"record payload must be 1..{MAX_PAYLOAD} bytes, not {len(payload)}")
    prefix = _PREFIX.pack(MAGIC, rtype, 0, len(payload))
    return prefix + _CRC.pack(crc32c(payload, crc32c(prefix))) + payload


def frame_entry(entry: Entry) -> bytes:
    return frame(RecordType.ENTRY, ENCODER.encode(entry))


def read_record(buf: bytes, offset: int) -> Record | Damage:
    """The record starting at ``offset`` of ``buf``, or why there is none."""
    remaining = len(buf) - offset
    if remaining < HEADER_SIZE:
        return Damage(offset, f"incomplete record header ({remaining} of {HEADER_SIZE} bytes)")
    magic, rtype, reserved, length, crc = _HEADER.unpack_from(buf, offset)
    if magic != MAGIC:
        return Damage(offset, "no record starts here (bad magic)")
    if rtype not in _KNOWN_TYPES or reserved != 0:
        return Damage(offset, f"unknown record type {rtype}/{reserved}")
    if length == 0:
        return Damage(offset, "record with an empty payload")
    start = offset + HEADER_SIZE
    if length > len(buf) - start:
        return Damage(
            offset,
            f"incomplete record: {length} payload bytes announced, {len(buf) - start} present",
        )
    payload = buf[start : start + length]
    if crc32c(payload, crc32c(buf[offset : offset + _PREFIX.size])) != crc:
        return Damage(offset, "checksum mismatch")
    return Record(RecordType(rtype), offset, payload)


def next_intact_record(buf: bytes, start: int) -> int | None:
    """Offset of the first intact record at or after ``start``, whatever came before.

    Used after damage to tell a torn tail (nothing intact follows) from damage
    in the middle (intact records follow). It tries every occurrence of the
    magic, so it also finds records that the damaged one's length field hid.
    """
    pos = buf.find(MAGIC, start)
    while pos != -1:
        if isinstance(read_record(buf, pos), Record):
            return pos
        pos = buf.find(MAGIC, pos + 1)
    return None
