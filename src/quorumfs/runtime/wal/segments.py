"""Segment files: naming, creation, and reading them back after a crash.

A segment is ``wal/<seq>-<first index>.seg`` (both 16-digit, zero-padded
decimal): one SEGMENT_HEADER record, then one ENTRY record per entry, indexes
consecutive from ``first_index``. Segments are consecutive too: sequence
numbers increase by one and each segment starts where the previous one ends.

What a crash can leave, given how ``DiskStorage`` writes (it fsyncs a segment
completely before creating the next one, and makes truncations durable before
writing after them): only the bytes appended to the *newest* segment since its
last fsync can be missing or garbled. Hence the **torn-tail rule**:

    Damage (an incomplete header or payload, bad magic, unknown type, or a
    checksum mismatch) is a torn tail, repaired by truncating the segment at
    the damaged record with a warning, if and only if
      1. it is in the newest segment, and
      2. no intact record (valid magic, type, length and checksum) starts
         anywhere after the damaged record's first byte, found by trying every
         occurrence of the magic, so a corrupted length field cannot hide
         intact records behind it.
    A newest segment whose own header record is torn is deleted (it was being
    created). Everything else is a ``CorruptLogError`` naming file and offset:
    damage in an older segment, damage followed by an intact record, an
    intact record with unexpected content (wrong type, undecodable, wrong
    index), and segments that do not follow one another.

A torn record was never fsynced, so it was never acknowledged. Rule 2 errs on
the side of refusing: write-back that reached a later block of the unsynced
tail before an earlier one also looks like damage in the middle. The check of
the hard state's commit index against the recovered log (in ``DiskStorage``)
catches the remaining case, a damaged last record that had been committed.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec

from quorumfs.raft.messages import Entry

from .errors import CorruptLogError
from .fileio import Durability, write_all
from .records import ENCODER, Damage, Record, RecordType, frame, next_intact_record, read_record

__all__ = [
    "SEGMENT_VERSION",
    "RecoveredLog",
    "Segment",
    "SegmentHeader",
    "create_segment",
    "recover_segments",
    "segment_name",
]

logger = logging.getLogger("quorumfs.wal")

SEGMENT_VERSION: Final = 1
_SEGMENT_NAME: Final = re.compile(r"^(\d{16})-(\d{16})\.seg$")


class SegmentHeader(msgspec.Struct, frozen=True, array_like=True):
    """The first record of every segment: what it is and what precedes it."""

    version: int
    seq: int
    first_index: int
    prev_term: int
    """Term of entry ``first_index - 1`` (0 for index 0): the log-matching anchor."""


_header_decoder: Final = msgspec.msgpack.Decoder(SegmentHeader)
_entry_decoder: Final = msgspec.msgpack.Decoder(Entry)


def segment_name(seq: int, first_index: int) -> str:
    return f"{seq:016d}-{first_index:016d}.seg"


@dataclass(eq=False)
class Segment:
    """What ``DiskStorage`` remembers about one segment file."""

    path: Path
    seq: int
    first_index: int
    prev_term: int
    offsets: list[int] = field(default_factory=list)
    """Invariant: ``offsets[k]`` is the byte offset of the record of entry ``first_index + k``."""
    size: int = 0
    """Invariant: the file's length; every byte belongs to an intact record."""

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.offsets) - 1


def create_segment(
    wal_dir: Path, seq: int, first_index: int, prev_term: int
) -> tuple[Segment, int]:
    """Create a segment holding only its header; return it and a write fd.

    Neither the file nor the directory entry is fsynced here: the caller owes
    both before relying on the segment.
    """
    path = wal_dir / segment_name(seq, first_index)
    header = SegmentHeader(SEGMENT_VERSION, seq, first_index, prev_term)
    data = frame(RecordType.SEGMENT_HEADER, ENCODER.encode(header))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
    except BaseException:
        os.close(fd)
        raise
    return Segment(path, seq, first_index, prev_term, size=len(data)), fd


@dataclass
class RecoveredLog:
    segments: list[Segment]
    """Consecutive, oldest first; empty when there is no segment at all."""
    entries: list[Entry]
    """Invariant: ``entries[k].index == segments[0].first_index + k``."""


@dataclass
class _Scan:
    segment: Segment | None
    """None when the header record itself is damaged."""
    entries: list[Entry]
    damage: Damage | None
    buf: bytes


def _scan(path: Path, seq: int, first_index: int) -> _Scan:
    """Read one segment up to its first damaged record; raise on intact-but-wrong records."""
    buf = path.read_bytes()
    head = read_record(buf, 0)
    if isinstance(head, Damage):
        return _Scan(None, [], head, buf)
    header = _decode_header(path, head)
    if (header.version, header.seq, header.first_index) != (SEGMENT_VERSION, seq, first_index):
        raise CorruptLogError(
            path,
            0,
            f"header says version {header.version}, seq {header.seq}, first index "
            f"{header.first_index}; the file name says version {SEGMENT_VERSION}, seq {seq}, "
            f"first index {first_index}",
        )
    segment = Segment(path, seq, first_index, header.prev_term, size=head.end)
    entries: list[Entry] = []
    pos = head.end
    while pos < len(buf):
        record = read_record(buf, pos)
        if isinstance(record, Damage):
            return _Scan(segment, entries, record, buf)
        if record.type != RecordType.ENTRY:
            raise CorruptLogError(path, pos, f"unexpected {record.type.name} record in a segment")
        try:
            entry = _entry_decoder.decode(record.payload)
        except msgspec.DecodeError as exc:
            raise CorruptLogError(path, pos, f"undecodable entry ({exc})") from exc
        expected = first_index + len(entries)
        if entry.index != expected:
            raise CorruptLogError(path, pos, f"entry {entry.index} where {expected} belongs")
        entries.append(entry)
        segment.offsets.append(pos)
        pos = record.end
    segment.size = pos
    return _Scan(segment, entries, None, buf)


def _decode_header(path: Path, record: Record) -> SegmentHeader:
    if record.type != RecordType.SEGMENT_HEADER:
        raise CorruptLogError(path, 0, f"starts with a {record.type.name} record, not a header")
    try:
        return _header_decoder.decode(record.payload)
    except msgspec.DecodeError as exc:
        raise CorruptLogError(path, 0, f"undecodable segment header ({exc})") from exc


def _list_segments(wal_dir: Path) -> list[tuple[int, int, Path]]:
    found: list[tuple[int, int, Path]] = []
    for path in wal_dir.iterdir():
        match = _SEGMENT_NAME.match(path.name)
        if match:
            found.append((int(match[1]), int(match[2]), path))
        elif path.suffix == ".seg":
            raise CorruptLogError(path, None, "a segment file with an unexpected name")
    return sorted(found)


def recover_segments(wal_dir: Path, durability: Durability) -> RecoveredLog:
    """Read every segment, repair a torn tail (see the module docstring), check the chain."""
    listing = _list_segments(wal_dir)
    segments: list[Segment] = []
    entries: list[Entry] = []
    for n, (seq, first_index, path) in enumerate(listing):
        scan = _scan(path, seq, first_index)
        if scan.damage is not None:
            _repair_torn_tail(scan, path, newest=n == len(listing) - 1, durability=durability)
        if scan.segment is None:
            break  # the newest segment was torn while being created, and is gone
        segment = scan.segment
        if segments:
            prev = segments[-1]
            _check_follows(prev, entries[-1].term if prev.offsets else prev.prev_term, segment)
        segments.append(segment)
        entries.extend(scan.entries)
    return RecoveredLog(segments, entries)


def _repair_torn_tail(scan: _Scan, path: Path, *, newest: bool, durability: Durability) -> None:
    damage = scan.damage
    assert damage is not None
    if not newest:
        raise CorruptLogError(
            path, damage.offset, f"{damage.reason} in a segment that is not the newest one"
        )
    intact = next_intact_record(scan.buf, damage.offset + 1)
    if intact is not None:
        raise CorruptLogError(
            path,
            damage.offset,
            f"{damage.reason}, yet an intact record follows at byte offset {intact}",
        )
    lost = len(scan.buf) - damage.offset
    if scan.segment is None:
        logger.warning(
            "removing segment %s: its header is torn (%s); it was being created when the "
            "process stopped and holds no entry",
            path,
            damage.reason,
        )
        path.unlink()
        durability.fsync_dir(path.parent)
        return
    logger.warning(
        "truncating torn tail of %s at byte offset %d (%s; %d bytes dropped): the last write "
        "before the process stopped never reached the disk whole, and was never acknowledged",
        path,
        damage.offset,
        damage.reason,
        lost,
    )
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, damage.offset)
        durability.fsync(fd)
    finally:
        os.close(fd)
    scan.segment.size = damage.offset


def _check_follows(prev: Segment, prev_last_term: int, segment: Segment) -> None:
    """``segment`` must continue ``prev``: next seq, next index, matching anchor term."""
    if segment.seq != prev.seq + 1:
        raise CorruptLogError(
            segment.path, None, f"segment {prev.seq + 1} is missing (found {segment.seq})"
        )
    if segment.first_index != prev.last_index + 1:
        raise CorruptLogError(
            segment.path,
            0,
            f"starts at index {segment.first_index} but {prev.path.name} ends at {prev.last_index}",
        )
    if segment.prev_term != prev_last_term:
        raise CorruptLogError(
            segment.path,
            0,
            f"header anchors index {segment.first_index - 1} at term {segment.prev_term}, but "
            f"{prev.path.name} has it at term {prev_last_term}",
        )
