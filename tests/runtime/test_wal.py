"""DiskStorage: round trips, truncation, snapshots and compaction, the durability contract."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from quorumfs.raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from quorumfs.raft.storage import CompactedError, SnapshotOutOfDateError, UnavailableError
from quorumfs.runtime.wal import DiskStorage, JournalInUseError, WalError
from quorumfs.runtime.wal.fileio import Durability
from quorumfs.runtime.wal.statefiles import read_hard_state, write_snapshot

SMALL = 256  # segment_bytes that makes a segment hold a handful of entries


def ents(lo: int, hi: int, term: int, size: int = 20) -> list[Entry]:
    """Entries lo..hi inclusive, with data that identifies them."""
    return [
        Entry(i, term, data=f"{i}@{term}".encode().ljust(size, b".")) for i in range(lo, hi + 1)
    ]


def segment_files(d: Path) -> list[str]:
    return sorted(p.name for p in (d / "wal").iterdir())


def open_(d: Path, **kw: object) -> DiskStorage:
    kw.setdefault("fsync", False)
    return DiskStorage.open(d, **kw)  # type: ignore[arg-type]


def all_entries(s: DiskStorage) -> list[Entry]:
    return s.entries(s.first_index(), s.last_index() + 1)


def test_fresh_directory_layout(tmp_path: Path) -> None:
    with open_(tmp_path) as s:
        assert (s.first_index(), s.last_index()) == (1, 0)
        assert s.term(0) == 0
        assert s.initial_state() == (HardState(), ConfState())
        assert s.snapshot().is_empty()
        s.save(HardState(term=1, vote=1, commit=0), ents(1, 3, 1))
        assert not (tmp_path / "hardstate").exists(), "hard state is written by sync()"
        s.sync()
    assert segment_files(tmp_path) == ["0000000000000001-0000000000000001.seg"]
    assert read_hard_state(tmp_path) == HardState(term=1, vote=1, commit=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LOCK", "hardstate", "snap", "wal"]


def test_round_trip_across_rollovers(tmp_path: Path) -> None:
    written: list[Entry] = []
    with open_(tmp_path, segment_bytes=SMALL) as s:
        for term in range(1, 6):
            batch = ents(len(written) + 1, len(written) + 9, term, size=10 * term)
            s.save(HardState(term=term, vote=2, commit=len(written)), batch)
            written += batch
            s.sync()
        assert all_entries(s) == written
    assert len(segment_files(tmp_path)) >= 5, "the test should cross several rollovers"
    with open_(tmp_path, segment_bytes=SMALL) as s:
        assert (s.first_index(), s.last_index()) == (1, 45)
        assert all_entries(s) == written
        assert [s.term(i) for i in range(46)] == [0] + [e.term for e in written]
        assert s.initial_state()[0] == HardState(term=5, vote=2, commit=36)
        # Appending after a reopen continues the same chain.
        s.save(None, ents(46, 50, 6))
    with open_(tmp_path, segment_bytes=SMALL) as s:
        assert all_entries(s) == written + ents(46, 50, 6)


def test_a_batch_larger_than_a_segment_spreads_over_several(tmp_path: Path) -> None:
    with open_(tmp_path, segment_bytes=SMALL) as s:
        s.save(None, ents(1, 40, 1))
    names = segment_files(tmp_path)
    assert len(names) > 3
    assert all(os.path.getsize(tmp_path / "wal" / n) <= SMALL for n in names)
    with open_(tmp_path, segment_bytes=SMALL) as s:
        assert all_entries(s) == ents(1, 40, 1)


@pytest.mark.parametrize("segment_bytes", [SMALL, 1 << 20], ids=["many-segments", "one-segment"])
@pytest.mark.parametrize("conflict_at", [2, 7, 15, 31])
def test_conflict_truncation_survives_reopen(
    tmp_path: Path, segment_bytes: int, conflict_at: int
) -> None:
    with open_(tmp_path, segment_bytes=segment_bytes) as s:
        s.save(HardState(term=1, commit=1), ents(1, 30, 1))
        s.sync()
        s.save(HardState(term=2, commit=1), ents(conflict_at, conflict_at + 2, 2))
        expected = ents(1, conflict_at - 1, 1) + ents(conflict_at, conflict_at + 2, 2)
        assert all_entries(s) == expected
    with open_(tmp_path, segment_bytes=segment_bytes) as s:
        assert all_entries(s) == expected
        assert s.last_index() == conflict_at + 2, "the overwritten suffix is gone"


def test_truncation_deletes_later_segments(tmp_path: Path) -> None:
    with open_(tmp_path, segment_bytes=SMALL) as s:
        s.save(None, ents(1, 40, 1))
        before = segment_files(tmp_path)
        s.save(None, ents(3, 3, 2))
    after = segment_files(tmp_path)
    assert after == before[:1], "only the segment holding index 2 is left"


def test_refused_writes_change_nothing(tmp_path: Path) -> None:
    with open_(tmp_path) as s:
        s.save(HardState(term=1, commit=5), ents(1, 10, 1))
        with pytest.raises(ValueError, match="gap"):
            s.save(None, ents(12, 13, 1))
        with pytest.raises(ValueError, match="committed"):
            s.save(None, ents(5, 6, 2))
        with pytest.raises(ValueError, match="past the last entry"):
            s.save(HardState(term=1, commit=11), [])
        with pytest.raises(ValueError, match="consecutive"):
            s.save(None, [Entry(11, 1), Entry(13, 1)])
        assert all_entries(s) == ents(1, 10, 1)
    with open_(tmp_path) as s:
        assert all_entries(s) == ents(1, 10, 1)
        assert s.initial_state()[0] == HardState(term=1, commit=5)


def test_snapshot_and_compaction(tmp_path: Path) -> None:
    conf = ConfState(voters=frozenset({1, 2, 3}))
    with open_(tmp_path, segment_bytes=SMALL) as s:
        s.save(HardState(term=3, vote=1, commit=35), ents(1, 20, 2) + ents(21, 40, 3))
        before = segment_files(tmp_path)
        snap = s.create_snapshot(30, conf, b"image@30")
        assert snap.meta == SnapshotMeta(index=30, term=3, conf_state=conf)
        assert os.listdir(tmp_path / "snap") == ["0000000000000003-0000000000000030.snap"]
        s.compact(25)
        assert (s.first_index(), s.term(25)) == (26, 3)
        with pytest.raises(CompactedError):
            s.term(24)
        with pytest.raises(CompactedError):
            s.entries(25, 30)
        after = segment_files(tmp_path)
        assert after == before[len(before) - len(after) :], "oldest segments deleted"
        assert len(after) < len(before)
        first_kept = int(after[0].split("-")[1].removesuffix(".seg"))
        assert first_kept <= 26, "a segment holding an entry after the compaction point is kept"
    with open_(tmp_path, segment_bytes=SMALL) as s:
        assert s.snapshot() == Snapshot(SnapshotMeta(30, 3, conf), b"image@30")
        assert (s.first_index(), s.last_index()) == (31, 40)
        assert s.term(30) == 3
        assert s.initial_state() == (HardState(term=3, vote=1, commit=35), conf)
        assert all_entries(s) == ents(31, 40, 3)
        # A newer snapshot replaces the older file.
        s.create_snapshot(35, conf, b"image@35")
        s.compact(35)
        assert os.listdir(tmp_path / "snap") == ["0000000000000003-0000000000000035.snap"]
    with open_(tmp_path, segment_bytes=SMALL) as s:
        assert (s.snapshot().data, s.first_index(), s.term(35)) == (b"image@35", 36, 3)


def test_snapshot_and_compaction_errors(tmp_path: Path) -> None:
    with open_(tmp_path) as s:
        s.save(HardState(term=1, commit=10), ents(1, 10, 1))
        with pytest.raises(ValueError, match="create_snapshot first"):
            s.compact(3)
        with pytest.raises(UnavailableError):
            s.create_snapshot(11, ConfState(), b"")
        s.create_snapshot(5, ConfState(), b"")
        with pytest.raises(SnapshotOutOfDateError):
            s.create_snapshot(5, ConfState(), b"")
        s.compact(5)
        with pytest.raises(CompactedError):
            s.compact(5)
        with pytest.raises(SnapshotOutOfDateError):
            s.apply_snapshot(Snapshot(SnapshotMeta(4, 1)))
        with pytest.raises(ValueError, match="behind the commit index"):
            s.apply_snapshot(Snapshot(SnapshotMeta(8, 1)))


@pytest.mark.parametrize("via_save", [False, True])
def test_apply_snapshot_discards_the_log(tmp_path: Path, via_save: bool) -> None:
    conf = ConfState(voters=frozenset({1, 2}))
    leader_snap = Snapshot(SnapshotMeta(100, 7, conf), b"leader image")
    with open_(tmp_path, segment_bytes=SMALL) as s:
        s.save(HardState(term=1, commit=3), ents(1, 40, 1))
        if via_save:
            s.save(HardState(term=7, commit=100), ents(101, 102, 7), leader_snap)
        else:
            s.apply_snapshot(leader_snap)
            s.save(HardState(term=7, commit=100), ents(101, 102, 7))
        assert (s.first_index(), s.last_index(), s.term(100)) == (101, 102, 7)
        assert s.snapshot() == leader_snap
        assert len(segment_files(tmp_path)) == 1
        assert segment_files(tmp_path)[0].endswith("-0000000000000101.seg")
    with open_(tmp_path, segment_bytes=SMALL) as s:
        assert s.snapshot() == leader_snap
        assert s.initial_state() == (HardState(term=7, commit=100), conf)
        assert all_entries(s) == ents(101, 102, 7)
        assert s.term(100) == 7


def test_interrupted_apply_snapshot_is_finished_by_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash after the snapshot file is durable but before the old log is gone."""
    with open_(tmp_path, segment_bytes=SMALL) as s:
        s.save(HardState(term=1, commit=5), ents(1, 30, 1))
    write_snapshot(tmp_path / "snap", Snapshot(SnapshotMeta(50, 4), b"img"), Durability(False))
    with caplog.at_level(logging.WARNING, logger="quorumfs.wal"), open_(tmp_path) as s:
        assert (s.first_index(), s.last_index(), s.term(50)) == (51, 50, 4)
        assert s.snapshot().data == b"img"
    assert "supersedes the log" in caplog.text
    assert len(segment_files(tmp_path)) == 1


def test_snapshot_matching_the_log_keeps_the_suffix(tmp_path: Path) -> None:
    with open_(tmp_path, segment_bytes=SMALL) as s:
        s.save(HardState(term=2, commit=5), ents(1, 10, 1) + ents(11, 30, 2))
    write_snapshot(tmp_path / "snap", Snapshot(SnapshotMeta(20, 2), b"img"), Durability(False))
    with open_(tmp_path) as s:
        assert (s.first_index(), s.last_index()) == (21, 30)
        assert all_entries(s) == ents(21, 30, 2)


def test_sync_is_one_fsync_for_several_saves(tmp_path: Path) -> None:
    calls: list[int] = []
    with open_(tmp_path, fsync_hook=lambda: calls.append(1)) as s:
        s.sync()
        calls.clear()
        for k in range(3):
            s.save(None, ents(10 * k + 1, 10 * k + 10, 1))
        assert calls == [], "save() never fsyncs"
        s.sync()
        assert len(calls) == 1, "one fsync of the segment for three saves"
        calls.clear()
        s.save(HardState(term=1, commit=30), ents(31, 31, 1))
        s.sync()
        assert len(calls) == 3, "segment, then hardstate temp file, then its directory"
        calls.clear()
        s.sync()
        assert calls == [], "nothing new, nothing to flush"


def test_real_fsync_round_trip(tmp_path: Path) -> None:
    with DiskStorage.open(tmp_path, segment_bytes=SMALL) as s:
        s.save(HardState(term=1, vote=1, commit=2), ents(1, 12, 1))
        s.sync()
    with DiskStorage.open(tmp_path, segment_bytes=SMALL) as s:
        assert all_entries(s) == ents(1, 12, 1)


def test_second_open_is_refused(tmp_path: Path) -> None:
    with open_(tmp_path), pytest.raises(JournalInUseError, match="in use"):
        open_(tmp_path)
    open_(tmp_path).close()  # released on close


def test_use_after_close_is_an_error(tmp_path: Path) -> None:
    s = open_(tmp_path)
    s.close()
    s.close()  # idempotent
    with pytest.raises(WalError, match="closed"):
        s.save(None, ents(1, 1, 1))


def test_failed_write_poisons_the_storage(tmp_path: Path) -> None:
    armed = False

    def fail() -> None:
        if armed:
            raise OSError(5, "injected EIO")

    s = open_(tmp_path, fsync_hook=fail)
    s.save(None, ents(1, 3, 1))
    armed = True
    with pytest.raises(OSError, match="injected"):
        s.sync()
    with pytest.raises(WalError, match="unusable"):
        s.save(None, ents(4, 4, 1))
    s.close()  # releases the lock without syncing
    with open_(tmp_path) as again:
        assert again.last_index() == 3


def test_leftover_temp_files_are_deleted(tmp_path: Path) -> None:
    with open_(tmp_path) as s:
        s.save(HardState(term=1), [])
    (tmp_path / "hardstate.tmp").write_bytes(b"half")
    (tmp_path / "snap" / "0000000000000001-0000000000000009.snap.tmp").write_bytes(b"half")
    with open_(tmp_path) as s:
        assert s.initial_state()[0] == HardState(term=1)
        assert s.snapshot().is_empty()
    assert not (tmp_path / "hardstate.tmp").exists()
    assert os.listdir(tmp_path / "snap") == []


def test_new_segments_are_covered_by_a_directory_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A segment's name must be durable before sync() returns, and before it is relied on."""
    flushed: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with DiskStorage.open(tmp_path, segment_bytes=SMALL) as s:
        s.save(None, ents(1, 3, 1))
        s.sync()
        flushed.clear()
        s.save(None, ents(4, 30, 1))  # rolls over several times
        rolled = segment_files(tmp_path)
        assert len(rolled) > 2
        s.sync()
    wal = str(tmp_path / "wal")
    assert wal in flushed, "the creations are made durable"
    # Every segment written to was flushed: the full ones when they stopped being the tail.
    assert set(rolled) <= {Path(p).name for p in flushed}


def test_term_and_vote_are_durable_at_every_sync_the_commit_index_lazily(tmp_path: Path) -> None:
    storage = DiskStorage.open(tmp_path)
    storage.save(HardState(term=1, vote=0, commit=0), [Entry(i, 1, data=b"x") for i in range(1, 6)])
    storage.sync()
    storage.save(HardState(term=1, vote=0, commit=5), [])
    storage.sync()
    assert read_hard_state(tmp_path) == HardState(term=1, vote=0, commit=0)  # lazily
    storage.save(HardState(term=2, vote=3, commit=5), [])
    storage.sync()
    assert read_hard_state(tmp_path) == HardState(term=2, vote=3, commit=5)  # a vote: at once
    storage.save(HardState(term=2, vote=3, commit=5), [Entry(6, 2)])
    storage.save(HardState(term=2, vote=3, commit=6), [])
    storage.close()
    assert read_hard_state(tmp_path) == HardState(term=2, vote=3, commit=6)  # on close
