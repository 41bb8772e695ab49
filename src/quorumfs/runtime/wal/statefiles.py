"""The two single-record files beside the log: ``hardstate`` and ``snap/<term>-<index>.snap``.

Both are written whole with ``atomic_write`` (temp file, fsync, rename, fsync
of the directory), so a crash leaves the previous version or the new one.

- ``hardstate``: one HARD_STATE record. Missing means a fresh node (empty hard
  state). Any damage is a ``CorruptLogError``: the vote and term it holds were
  promised to peers, and guessing them could elect two leaders.
- ``snap/``: one SNAPSHOT record per file, named by the term and index of the
  snapshot's last entry. Only the newest is kept once a newer one is durable.
  On load, the newest *valid* one wins; damaged ones are skipped with a
  warning (the log check that follows fails loudly if a skipped snapshot was
  needed to cover compacted entries).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Final

import msgspec

from quorumfs.raft.messages import EMPTY_HARD_STATE, EMPTY_SNAPSHOT, HardState, Snapshot

from .errors import CorruptLogError
from .fileio import Durability, atomic_write
from .records import ENCODER, Damage, RecordType, frame, read_record

__all__ = [
    "HARD_STATE_FILE",
    "SNAP_DIR",
    "load_newest_snapshot",
    "read_hard_state",
    "snapshot_name",
    "write_hard_state",
    "write_snapshot",
]

logger = logging.getLogger("quorumfs.wal")

HARD_STATE_FILE: Final = "hardstate"
SNAP_DIR: Final = "snap"
_SNAP_NAME: Final = re.compile(r"^(\d{16})-(\d{16})\.snap$")

_hard_state_decoder: Final = msgspec.msgpack.Decoder(HardState)
_snapshot_decoder: Final = msgspec.msgpack.Decoder(Snapshot)


def snapshot_name(term: int, index: int) -> str:
    return f"{term:016d}-{index:016d}.snap"


def _read_single_record(path: Path, rtype: RecordType) -> bytes:
    """The payload of the file's only record; raises ``CorruptLogError`` otherwise."""
    buf = path.read_bytes()
    record = read_record(buf, 0)
    if isinstance(record, Damage):
        raise CorruptLogError(path, record.offset, record.reason)
    if record.type != rtype:
        raise CorruptLogError(path, 0, f"holds a {record.type.name} record, not {rtype.name}")
    if record.end != len(buf):
        raise CorruptLogError(path, record.end, f"{len(buf) - record.end} unexpected bytes")
    return record.payload


def read_hard_state(directory: Path) -> HardState:
    path = directory / HARD_STATE_FILE
    if not path.exists():
        return EMPTY_HARD_STATE
    payload = _read_single_record(path, RecordType.HARD_STATE)
    try:
        return _hard_state_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise CorruptLogError(path, 0, f"undecodable hard state ({exc})") from exc


def write_hard_state(directory: Path, hard_state: HardState, durability: Durability) -> None:
    data = frame(RecordType.HARD_STATE, ENCODER.encode(hard_state))
    atomic_write(directory / HARD_STATE_FILE, data, durability)


def write_snapshot(snap_dir: Path, snapshot: Snapshot, durability: Durability) -> None:
    """Write ``snapshot`` durably, then delete every other snapshot file."""
    meta = snapshot.meta
    name = snapshot_name(meta.term, meta.index)
    atomic_write(snap_dir / name, frame(RecordType.SNAPSHOT, ENCODER.encode(snapshot)), durability)
    for path in snap_dir.iterdir():
        if path.name != name and _SNAP_NAME.match(path.name):
            path.unlink()  # no fsync needed: a resurrected older snapshot loses to this one


def load_newest_snapshot(snap_dir: Path) -> Snapshot:
    """The newest valid snapshot in ``snap_dir``, or the empty snapshot."""
    candidates: list[tuple[int, int, Path]] = []
    for path in snap_dir.iterdir():
        match = _SNAP_NAME.match(path.name)
        if match:
            candidates.append((int(match[2]), int(match[1]), path))
    for index, term, path in sorted(candidates, reverse=True):
        try:
            payload = _read_single_record(path, RecordType.SNAPSHOT)
            try:
                snapshot = _snapshot_decoder.decode(payload)
            except msgspec.DecodeError as exc:
                raise CorruptLogError(path, 0, f"undecodable snapshot ({exc})") from exc
            if (snapshot.meta.index, snapshot.meta.term) != (index, term) or index == 0:
                raise CorruptLogError(
                    path,
                    0,
                    f"holds the snapshot at term {snapshot.meta.term} index "
                    f"{snapshot.meta.index}, which its name contradicts",
                )
        except CorruptLogError as exc:
            logger.warning(
                "ignoring damaged snapshot %s (byte offset %s: %s); trying an older one",
                exc.path,
                exc.offset,
                exc.reason,
            )
            continue
        return snapshot
    return EMPTY_SNAPSHOT
