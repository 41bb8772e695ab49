"""ChunkStore against a dict, under random writes, overwrites, deletes, compactions and reopens.

Besides the contents, the bookkeeping must agree with itself: what the store
computed incrementally (live bytes per volume, which tombstones are still
needed) must equal what a fresh scan computes after a reopen. A deleted chunk
must never come back, whatever order volumes are compacted in.
"""

from __future__ import annotations

import itertools
import random
import shutil
from pathlib import Path

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

from quorumfs.volume.errors import ChunkNotFoundError
from quorumfs.volume.needles import FILE_HEADER_SIZE
from quorumfs.volume.store import ChunkStore

IDS = st.integers(0, 4)
SIZES = st.sampled_from([0, 1, 100, 3000, 3000, 3000, 70_000])
"""Mostly 3000 bytes: one or two chunks per 4 or 8 KiB volume, so that histories cross
volumes often (a tombstone in one volume hiding a needle in another)."""


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


class StoreAgainstDict(RuleBasedStateMachine):
    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.dir = directory
        self.model: dict[int, bytes] = {}
        self.store: ChunkStore | None = None
        self.volume_size = 0

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def s(self) -> ChunkStore:
        assert self.store is not None
        return self.store

    @initialize(volume_size=st.sampled_from([4096, 8192, 1 << 20]))
    def open_store(self, volume_size: int) -> None:
        self.volume_size = volume_size
        self.store = ChunkStore.open(self.dir, volume_size=volume_size, fsync=False)

    @rule(cid=IDS, size=SIZES, seed=st.integers(0, 3), sync=st.booleans())
    def write(self, cid: int, size: int, seed: int, sync: bool) -> None:
        data = blob(seed * 1000 + size, size)
        pieces = (data[i : i + 4999] for i in range(0, size, 4999))
        info = self.s.write_chunk(cid, pieces, size, sync=sync)
        assert info.size == size
        self.model[cid] = data

    @rule(batch=st.lists(st.tuples(IDS, SIZES), max_size=5))
    def write_batch(self, batch: list[tuple[int, int]]) -> None:
        items = [(cid, blob(cid + size, size)) for cid, size in batch]
        self.s.write_chunks(items)
        self.model.update(items)

    @rule(cid=IDS, sync=st.booleans())
    def delete(self, cid: int, sync: bool) -> None:
        assert self.s.delete_chunk(cid, sync=sync) == (cid in self.model)
        self.model.pop(cid, None)

    @rule(data=st.data(), then_reopen=st.booleans())
    def compact_one(self, data: st.DataObject, then_reopen: bool) -> None:
        volumes = [v.volume_id for v in self.s.usage().volumes]
        if volumes:
            self.s.compact(data.draw(st.sampled_from(volumes)))
        if then_reopen:  # what compaction dropped is only really gone after a rescan
            self.reopen()

    @rule(then_reopen=st.booleans())
    def compact_candidates(self, then_reopen: bool) -> None:
        for volume_id in self.s.compaction_candidates(0.0):
            self.s.compact(volume_id)
        if then_reopen:
            self.reopen()

    @rule()
    def reopen(self) -> None:
        before = self.s.usage()
        self.s.close()
        self.store = ChunkStore.open(self.dir, volume_size=self.volume_size, fsync=False)
        after = self.s.usage()
        assert [
            (v.volume_id, v.size_bytes, v.live_bytes, v.chunk_count) for v in after.volumes
        ] == [(v.volume_id, v.size_bytes, v.live_bytes, v.chunk_count) for v in before.volumes]
        assert self.s.damage() == []

    @precondition(lambda self: self.store is not None)
    @invariant()
    def contents_agree(self) -> None:
        for cid in range(5):
            if cid in self.model:
                assert self.s.read_chunk(cid) == self.model[cid]
            else:
                try:
                    self.s.read_chunk(cid)
                except ChunkNotFoundError:
                    pass
                else:
                    raise AssertionError(f"chunk {cid} was deleted or never written")
        assert sorted(c.chunk_id for c in self.s.chunks()) == sorted(self.model)

    @precondition(lambda self: self.store is not None)
    @invariant()
    def usage_adds_up(self) -> None:
        usage = self.s.usage()
        assert usage.chunk_count == len(self.model)
        assert usage.total_bytes == sum(p.stat().st_size for p in self.dir.glob("vol-*.dat"))
        assert usage.total_bytes == usage.live_bytes + usage.garbage_bytes + FILE_HEADER_SIZE * len(
            usage.volumes
        )
        assert usage.live_bytes >= sum(len(d) for d in self.model.values())


def test_store_behaves_like_a_dict(tmp_path: Path) -> None:
    runs = itertools.count()

    class InTmpPath(StoreAgainstDict):
        def __init__(self) -> None:
            super().__init__(tmp_path / f"run{next(runs)}")

    run_state_machine_as_test(
        InTmpPath,
        settings=settings(
            max_examples=100,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
