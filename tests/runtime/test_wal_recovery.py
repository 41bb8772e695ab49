"""DiskStorage recovery: torn tails are repaired, everything else is refused loudly."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from quorumfs.raft.messages import Entry, HardState
from quorumfs.runtime.wal import CorruptLogError, DiskStorage
from quorumfs.runtime.wal.fileio import Durability
from quorumfs.runtime.wal.records import HEADER_SIZE, Record, read_record
from quorumfs.runtime.wal.statefiles import write_hard_state

SMALL = 256


def ents(lo: int, hi: int, term: int = 1, size: int = 20) -> list[Entry]:
    return [
        Entry(i, term, data=f"{i}@{term}".encode().ljust(size, b".")) for i in range(lo, hi + 1)
    ]


def open_(d: Path, segment_bytes: int = 1 << 20) -> DiskStorage:
    return DiskStorage.open(d, segment_bytes=segment_bytes, fsync=False)


def all_entries(s: DiskStorage) -> list[Entry]:
    return s.entries(s.first_index(), s.last_index() + 1)


def segments(d: Path) -> list[Path]:
    return sorted((d / "wal").iterdir())


def record_offsets(path: Path) -> list[int]:
    """Offsets of the records in a segment (the header's first)."""
    buf = path.read_bytes()
    offsets, pos = [], 0
    while pos < len(buf):
        record = read_record(buf, pos)
        assert isinstance(record, Record)
        offsets.append(pos)
        pos = record.end
    return offsets


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def make_log(d: Path, last: int = 10, commit: int = 0, segment_bytes: int = 1 << 20) -> None:
    with open_(d, segment_bytes) as s:
        s.save(HardState(term=1, commit=commit), ents(1, last))


# -- torn tails: repaired ------------------------------------------------------


@pytest.mark.parametrize("cut", [1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 5, -1])
def test_last_record_cut_short_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cut: int
) -> None:
    make_log(tmp_path)
    (seg,) = segments(tmp_path)
    last_record = record_offsets(seg)[-1]
    os.truncate(seg, last_record + cut if cut > 0 else seg.stat().st_size + cut)
    with caplog.at_level(logging.WARNING, logger="quorumfs.wal"), open_(tmp_path) as s:
        assert all_entries(s) == ents(1, 9), "only the torn record is dropped"
        s.save(None, ents(10, 12, 2))  # and the log goes on from there
    assert "torn tail" in caplog.text and seg.name in caplog.text
    with open_(tmp_path) as s:
        assert all_entries(s) == ents(1, 9) + ents(10, 12, 2)


@pytest.mark.parametrize(
    "garbage",
    [b"\x00" * 4096, b"\xff" * 13, os.urandom(1000), b"\xa9\x57\x02\x00" + b"\x10" * 40],
    ids=["zeros", "ones", "random", "fake-header"],
)
def test_garbage_after_the_last_record_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    make_log(tmp_path)
    (seg,) = segments(tmp_path)
    size = seg.stat().st_size
    with seg.open("ab") as f:
        f.write(garbage)
    with caplog.at_level(logging.WARNING, logger="quorumfs.wal"), open_(tmp_path) as s:
        assert all_entries(s) == ents(1, 10), "every intact record is kept"
    assert "torn tail" in caplog.text
    assert seg.stat().st_size == size, "the garbage is truncated away"


def test_a_newest_segment_torn_while_being_created_is_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_log(tmp_path, last=30, segment_bytes=SMALL)
    names = segments(tmp_path)
    last = names[-1]
    torn = last.with_name(f"{len(names) + 1:016d}-{31:016d}.seg")
    torn.write_bytes(b"\xa9\x57\x01")
    with caplog.at_level(logging.WARNING, logger="quorumfs.wal"), open_(tmp_path, SMALL) as s:
        assert all_entries(s) == ents(1, 30)
        s.save(None, ents(31, 40, 2))
    assert "header is torn" in caplog.text
    with open_(tmp_path, SMALL) as s:
        assert all_entries(s) == ents(1, 30) + ents(31, 40, 2)


# -- damage that could hide committed data: refused ------------------------------


def expect_corrupt(d: Path, path: Path, offset: int | None) -> CorruptLogError:
    with pytest.raises(CorruptLogError) as info:
        open_(d, SMALL)
    message = str(info.value)
    assert str(path) in message
    if offset is not None:
        assert f"byte offset {offset}:" in message
    assert "re-add it to the group" in message, "the error says what to do"
    # The journal is left as it was and still refused on the next attempt.
    with pytest.raises(CorruptLogError):
        open_(d, SMALL)
    return info.value


@pytest.mark.parametrize("where", ["payload", "crc", "length", "magic"])
def test_damage_followed_by_intact_records_is_refused(tmp_path: Path, where: str) -> None:
    make_log(tmp_path)
    (seg,) = segments(tmp_path)
    victim = record_offsets(seg)[5]
    flip_byte(seg, victim + {"payload": HEADER_SIZE + 3, "crc": 9, "length": 6, "magic": 0}[where])
    error = expect_corrupt(tmp_path, seg, victim)
    assert "intact record follows" in str(error)


def test_damage_in_an_older_segment_is_refused(tmp_path: Path) -> None:
    make_log(tmp_path, last=40, segment_bytes=SMALL)
    older = segments(tmp_path)[1]
    victim = record_offsets(older)[-1]  # even its *last* record: it is not the newest segment
    flip_byte(older, victim + HEADER_SIZE + 1)
    error = expect_corrupt(tmp_path, older, victim)
    assert "not the newest" in str(error)


def test_torn_older_segment_is_refused(tmp_path: Path) -> None:
    make_log(tmp_path, last=40, segment_bytes=SMALL)
    older = segments(tmp_path)[1]
    last_record = record_offsets(older)[-1]
    os.truncate(older, last_record + 3)
    expect_corrupt(tmp_path, older, last_record)


def test_missing_middle_segment_is_refused(tmp_path: Path) -> None:
    make_log(tmp_path, last=40, segment_bytes=SMALL)
    names = segments(tmp_path)
    names[2].unlink()
    expect_corrupt(tmp_path, names[3], None)


def test_missing_first_segment_without_snapshot_is_refused(tmp_path: Path) -> None:
    make_log(tmp_path, last=40, segment_bytes=SMALL)
    names = segments(tmp_path)
    names[0].unlink()
    error = expect_corrupt(tmp_path, names[1], None)
    assert "are missing" in str(error)


def test_intact_record_with_wrong_index_is_refused_even_at_the_tail(tmp_path: Path) -> None:
    make_log(tmp_path)
    (seg,) = segments(tmp_path)
    offsets = record_offsets(seg)
    data = seg.read_bytes()
    # Duplicate the record of entry 9 after entry 10: intact, but in the wrong place.
    seg.write_bytes(data + data[offsets[9] : offsets[10]])
    error = expect_corrupt(tmp_path, seg, len(data))
    assert "entry 9 where 11 belongs" in str(error)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage-after"])
def test_damaged_hard_state_is_refused(tmp_path: Path, damage: str) -> None:
    make_log(tmp_path, commit=3)
    path = tmp_path / "hardstate"
    if damage == "flip":
        flip_byte(path, path.stat().st_size - 1)
    elif damage == "truncate":
        os.truncate(path, path.stat().st_size - 1)
    else:
        with path.open("ab") as f:
            f.write(b"\x00")
    expect_corrupt(tmp_path, path, None)


def test_commit_past_the_recovered_log_is_refused(tmp_path: Path) -> None:
    make_log(tmp_path, commit=10)
    write_hard_state(tmp_path, HardState(term=1, commit=11), Durability(False))
    error = expect_corrupt(tmp_path, tmp_path / "hardstate", None)
    assert "committed entries are missing" in str(error)


def test_damaged_committed_last_record_is_refused(tmp_path: Path) -> None:
    """The torn-tail rule alone would drop it; the commit index says it was acknowledged."""
    make_log(tmp_path, commit=10)
    (seg,) = segments(tmp_path)
    flip_byte(seg, record_offsets(seg)[-1] + HEADER_SIZE + 2)
    expect_corrupt(tmp_path, tmp_path / "hardstate", None)


# -- crashes: exactly what was synced comes back -----------------------------------


def snapshot_files(d: Path) -> dict[Path, bytes]:
    """The bytes of every journal file: what a crash right now could not take away."""
    return {p: p.read_bytes() for p in [*segments(d), d / "hardstate"]}


def crash(d: Path, synced: dict[Path, bytes], unsynced_bytes_kept: int = 0) -> None:
    """Roll the journal back to ``synced``, keeping a prefix of the newest segment's tail.

    Files created after the sync are lost; files that existed are cut back to
    their synced length (plus ``unsynced_bytes_kept`` bytes for the newest one,
    as if write-back had reached part of the tail).
    """
    newest = max(synced.keys() - {d / "hardstate"})
    for path in segments(d):
        if path not in synced:
            path.unlink()
        else:
            keep = len(synced[path]) + (unsynced_bytes_kept if path == newest else 0)
            os.truncate(path, min(keep, path.stat().st_size))
    (d / "hardstate").write_bytes(synced[d / "hardstate"])


def test_unsynced_writes_are_lost_and_synced_ones_are_not(tmp_path: Path) -> None:
    with open_(tmp_path, SMALL) as s:
        s.save(HardState(term=1, vote=1, commit=5), ents(1, 20))
        s.sync()
        synced = snapshot_files(tmp_path)
        s.save(HardState(term=2, vote=1, commit=20), ents(21, 45, 2))  # several rollovers
        s.save(HardState(term=3, vote=2, commit=20), ents(30, 35, 3))  # and a truncation
    crash(tmp_path, synced)
    with open_(tmp_path, SMALL) as s:
        assert all_entries(s) == ents(1, 20)
        assert s.initial_state()[0] == HardState(term=1, vote=1, commit=5)


def test_any_partial_tail_recovers_a_prefix_of_what_was_written(tmp_path: Path) -> None:
    with open_(tmp_path) as s:
        s.save(HardState(term=1, commit=5), ents(1, 10))
        s.sync()
        synced = snapshot_files(tmp_path)
        s.save(None, ents(11, 20, 2, size=7))
    (seg,) = segments(tmp_path)
    everything = seg.read_bytes()
    written = ents(1, 10) + ents(11, 20, 2, size=7)
    recovered_lengths = set()
    for kept in range(len(everything) - len(synced[seg]) + 1):
        seg.write_bytes(everything)
        crash(tmp_path, synced, kept)
        with open_(tmp_path) as s:
            got = all_entries(s)
        assert got == written[: len(got)]
        assert len(got) >= 10, "synced entries survive"
        recovered_lengths.add(len(got))
    assert recovered_lengths == set(range(10, 21)), "every record boundary was exercised"
