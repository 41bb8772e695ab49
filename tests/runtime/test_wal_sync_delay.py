"""``DiskStorage.sync_delay``: an injected slow disk. Every fsync the journal does sleeps
the delay first (flushes on or off), ``sync_observer`` sees it, and a sync with nothing
to flush does not pay it. Timing is measured around the calls; nothing waits on a sleep."""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import pytest

from quorumfs.raft.messages import ConfState, Entry, HardState
from quorumfs.runtime.wal import DiskStorage

DELAY = 0.02


def entry(index: int, term: int = 1) -> Entry:
    return Entry(index, term, data=f"e{index}".encode())


@pytest.mark.parametrize("fsync", [False, True])
def test_every_fsync_sleeps_the_delay_and_the_observer_sees_it(tmp_path: Path, fsync: bool) -> None:
    fsyncs: list[float] = []
    observed: list[float] = []
    with DiskStorage.open(
        tmp_path, fsync=fsync, fsync_hook=lambda: fsyncs.append(time.perf_counter())
    ) as storage:
        storage.sync_observer = observed.append
        assert storage.sync_delay == 0.0
        storage.sync_delay = DELAY
        assert storage.sync_delay == DELAY

        def timed_sync() -> float:
            fsyncs.clear()
            started = time.perf_counter()
            storage.sync()
            return time.perf_counter() - started

        # A new term and vote: the segment, then the hard state's file and directory.
        storage.save(HardState(term=1, vote=1, commit=0), [entry(1)])
        took = timed_sync()
        assert len(fsyncs) == 3
        assert took >= 3 * DELAY
        assert len(observed) == 1
        assert 3 * DELAY <= observed[0] <= took
        # Consecutive fsyncs are at least a delay apart: each one slept it.
        assert all(b - a >= DELAY for a, b in itertools.pairwise(fsyncs))

        # Entries only (a group commit): one segment fsync, one delay.
        storage.save(None, [entry(2), entry(3)])
        took = timed_sync()
        assert len(fsyncs) == 1
        assert took >= DELAY
        assert len(observed) == 2
        assert DELAY <= observed[1] <= took

        # Nothing to flush: no fsync, no delay, nothing observed.
        took = timed_sync()
        assert fsyncs == []
        assert took < DELAY
        assert len(observed) == 2

        # A snapshot's fsyncs (file, directory) and a compaction's pay it too.
        fsyncs.clear()
        started = time.perf_counter()
        storage.create_snapshot(2, ConfState(voters=frozenset({1})), b"image")
        storage.compact(2)
        took = time.perf_counter() - started
        assert len(fsyncs) >= 2
        assert took >= len(fsyncs) * DELAY

        # Back to fast at once, without reopening.
        storage.sync_delay = 0.0
        storage.save(None, [entry(4)])
        took = timed_sync()
        assert len(fsyncs) == 1
        assert took < DELAY
        assert observed[-1] < DELAY


@pytest.mark.parametrize("bad", [-0.001, -1.0, math.nan, math.inf])
def test_a_sync_delay_that_is_negative_or_not_finite_is_refused(tmp_path: Path, bad: float) -> None:
    with DiskStorage.open(tmp_path, fsync=False) as storage:
        storage.sync_delay = 0.25
        with pytest.raises(ValueError, match="sync_delay must be a finite number"):
            storage.sync_delay = bad
        assert storage.sync_delay == 0.25
        storage.sync_delay = 0.0
