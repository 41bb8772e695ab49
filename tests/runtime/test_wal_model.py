"""DiskStorage against MemoryStorage, the core's reference storage, under random histories.

Saves (with overwrites), snapshots, compactions, installed snapshots and
reopens are applied to both; every answer of the Storage protocol must agree.
A reopen restarts the log after the snapshot (entries the snapshot covers are
not reloaded), so the model compacts to the snapshot index at that point.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from quorumfs.raft.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
from quorumfs.raft.storage import CompactedError, MemoryStorage, UnavailableError
from quorumfs.runtime.wal import DiskStorage


class DiskAgainstMemory(RuleBasedStateMachine):
    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.dir = directory
        self.model = MemoryStorage()
        self.disk: DiskStorage | None = None
        self.segment_bytes = 0

    def teardown(self) -> None:
        if self.disk is not None:
            self.disk.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def d(self) -> DiskStorage:
        assert self.disk is not None
        return self.disk

    def floor(self) -> int:
        """Entries up to here are committed (or in the snapshot): never overwritten."""
        return max(self.model.hard_state.commit, self.model.snapshot().meta.index)

    @initialize(segment_bytes=st.sampled_from([1, 90, 300, 1 << 20]))
    def open_journal(self, segment_bytes: int) -> None:
        self.segment_bytes = segment_bytes
        self.disk = DiskStorage.open(self.dir, segment_bytes=segment_bytes, fsync=False)

    @rule(data=st.data())
    def save(self, data: st.DataObject) -> None:
        m = self.model
        start = data.draw(
            st.integers(max(m.first_index(), self.floor() + 1), m.last_index() + 1), "start"
        )
        term = data.draw(st.integers(1, 6), "term")
        sizes = data.draw(st.lists(st.integers(0, 50), max_size=6), "sizes")
        entries = [
            Entry(start + k, term, data=bytes([k % 256]) * size) for k, size in enumerate(sizes)
        ]
        last = entries[-1].index if entries else m.last_index()
        hard_state = data.draw(
            st.none()
            | st.builds(
                HardState,
                term=st.integers(m.hard_state.term, m.hard_state.term + 2),
                vote=st.integers(0, 3),
                commit=st.integers(m.hard_state.commit, max(m.hard_state.commit, last)),
            ),
            "hard_state",
        )
        self.d.save(hard_state, entries)
        m.append(entries)
        if hard_state is not None:
            m.set_hard_state(hard_state)

    @rule()
    def sync(self) -> None:
        self.d.sync()

    @precondition(lambda self: self.model.hard_state.commit > self.model.snapshot().meta.index)
    @rule(data=st.data())
    def create_snapshot(self, data: st.DataObject) -> None:
        m = self.model
        index = data.draw(st.integers(m.snapshot().meta.index + 1, m.hard_state.commit), "index")
        conf = ConfState(voters=frozenset(data.draw(st.sets(st.integers(1, 5)), "voters")))
        image = data.draw(st.binary(max_size=40), "image")
        assert self.d.create_snapshot(index, conf, image) == m.create_snapshot(index, conf, image)

    @precondition(lambda self: self.model.snapshot().meta.index >= self.model.first_index())
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        m = self.model
        index = data.draw(st.integers(m.first_index(), m.snapshot().meta.index), "index")
        self.d.compact(index)
        m.compact(index)

    @rule(data=st.data(), via_save=st.booleans())
    def install_leader_snapshot(self, data: st.DataObject, via_save: bool) -> None:
        m = self.model
        lo = max(m.snapshot().meta.index, m.hard_state.commit, 1)
        index = data.draw(st.integers(lo, m.last_index() + 5), "index")
        term = data.draw(st.integers(1, 8), "term")
        snapshot = Snapshot(
            SnapshotMeta(index, term, ConfState(voters=frozenset({1, 2, 3}))), b"leader"
        )
        if via_save:
            self.d.save(None, [], snapshot)
        else:
            self.d.apply_snapshot(snapshot)
        m.apply_snapshot(snapshot)

    @rule()
    def reopen(self) -> None:
        self.d.close()
        self.disk = DiskStorage.open(self.dir, segment_bytes=self.segment_bytes, fsync=False)
        snap_index = self.model.snapshot().meta.index
        if snap_index >= self.model.first_index():
            self.model.compact(snap_index)

    @invariant()
    def same_answers(self) -> None:
        if self.disk is None:
            return
        d, m = self.d, self.model
        first, last = m.first_index(), m.last_index()
        assert (d.first_index(), d.last_index()) == (first, last)
        assert [d.term(i) for i in range(first - 1, last + 1)] == [
            m.term(i) for i in range(first - 1, last + 1)
        ]
        assert d.entries(first, last + 1) == m.entries(first, last + 1)
        assert d.entries(first, last + 1, max_bytes=30) == m.entries(first, last + 1, 30)
        assert d.snapshot() == m.snapshot()
        assert d.initial_state() == m.initial_state()
        with pytest.raises(UnavailableError):
            d.term(last + 1)
        with pytest.raises(UnavailableError):
            d.entries(first, last + 2)
        if first >= 2:
            with pytest.raises(CompactedError):
                d.term(first - 2)
        with pytest.raises(CompactedError):
            d.entries(first - 1, last + 1)


def test_disk_storage_answers_like_memory_storage(tmp_path: Path) -> None:
    runs = itertools.count()

    class InTmpPath(DiskAgainstMemory):
        def __init__(self) -> None:
            super().__init__(tmp_path / f"run{next(runs)}")

    run_state_machine_as_test(
        InTmpPath,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
