"""ChunkStore: round trips, streaming, range reads, reopen, rollover, capacity, compaction, threads.

Recovery from crashes and damage is in test_store_recovery.py, the model test
against a dict in test_store_model.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from crc32c import crc32c

from quorumfs.volume.errors import (
    ChecksumMismatchError,
    ChunkNotFoundError,
    ChunkRangeError,
    SourceSizeError,
    StoreClosedError,
    StoreFailedError,
    StoreFullError,
    StoreInUseError,
)
from quorumfs.volume.needles import (
    BLOCK_SIZE,
    FILE_HEADER_SIZE,
    MAX_CHUNK_SIZE,
    TOMBSTONE_SIZE,
    record_size,
)
from quorumfs.volume.store import ChunkStore

MiB = 1 << 20


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def stream(seed: int, size: int, piece: int = MiB) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes, generated a piece at a time."""
    rng = random.Random(seed)
    while size > 0:
        n = min(piece, size)
        yield rng.randbytes(n)
        size -= n


def vol_files(d: Path) -> list[Path]:
    return sorted(d.glob("vol-*.dat"))


# -- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4096, BLOCK_SIZE, BLOCK_SIZE + 1, MiB, 3 * MiB + 7])
def test_round_trip(tmp_path: Path, size: int) -> None:
    data = blob(size, size)
    with ChunkStore.open(tmp_path) as store:
        info = store.write_chunk(7, data, size)
        assert (info.chunk_id, info.size, info.crc) == (7, size, crc32c(data))
        assert store.read_chunk(7) == data
        assert store.stat(7) == info
    with ChunkStore.open(tmp_path) as store:
        assert store.read_chunk(7) == data
        assert store.chunks() == [info]


def test_sources_bytes_iterable_and_file_object_store_the_same(tmp_path: Path) -> None:
    data = blob(1, 300_000)
    pieces = [data[i : i + 7777] for i in range(0, len(data), 7777)]  # not block aligned
    with ChunkStore.open(tmp_path) as store:
        a = store.write_chunk(1, data, len(data))
        b = store.write_chunk(2, iter(pieces), len(data))
        c = store.write_chunk(3, io.BytesIO(data), len(data))
        d = store.write_chunk(4, bytearray(data), len(data))
        assert a.crc == b.crc == c.crc == d.crc == crc32c(data)
        for cid in (1, 2, 3, 4):
            assert store.read_chunk(cid) == data


def test_file_object_is_never_read_past_size(tmp_path: Path) -> None:
    source = io.BytesIO(b"0123456789")
    with ChunkStore.open(tmp_path) as store:
        store.write_chunk(1, source, 4)
        assert store.read_chunk(1) == b"0123"
    assert source.read() == b"456789"


def test_max_size_chunk_and_one_byte_more(tmp_path: Path) -> None:
    with ChunkStore.open(tmp_path) as store:
        info = store.write_chunk(1, stream(5, MAX_CHUNK_SIZE), MAX_CHUNK_SIZE)
        digest = hashlib.sha256()
        for piece in store.open_chunk(1):
            digest.update(piece)
        expected = hashlib.sha256()
        for piece in stream(5, MAX_CHUNK_SIZE):
            expected.update(piece)
        assert digest.hexdigest() == expected.hexdigest()
        assert info.size == MAX_CHUNK_SIZE
        with pytest.raises(ValueError, match="a chunk is 0"):
            store.write_chunk(2, b"", MAX_CHUNK_SIZE + 1)


def test_200_mib_streamed_in_64_mib_chunks_with_bounded_memory(tmp_path: Path) -> None:
    """A 200 MiB file, as the volume server gets it: one stream cut into 64 MiB chunks."""
    total = 200 * MiB
    sizes = [MAX_CHUNK_SIZE] * 3 + [total - 3 * MAX_CHUNK_SIZE]
    source = stream(2024, total)
    leftover = bytearray()

    def take(n: int) -> Iterator[bytes]:
        nonlocal leftover
        while n > 0:
            piece = bytes(leftover) if leftover else next(source)
            leftover = bytearray()
            head, rest = piece[:n], piece[n:]
            leftover += rest
            n -= len(head)
            yield head

    written = hashlib.sha256()
    read = hashlib.sha256()
    with ChunkStore.open(tmp_path) as store:
        tracemalloc.start()
        try:
            for cid, size in enumerate(sizes):
                store.write_chunk(cid, _hashing(take(size), written.update), size)
            _, write_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            for cid in range(len(sizes)):
                with store.open_chunk(cid) as reader:
                    for piece in reader:
                        read.update(piece)
            _, read_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert read.hexdigest() == written.hexdigest()
    # The generator's own 1 MiB pieces, a 1 MiB write buffer, 1 MiB read pieces: never a chunk.
    assert write_peak < 6 * MiB, write_peak
    assert read_peak < 4 * MiB, read_peak


def _hashing(pieces: Iterator[bytes], update: Callable[[bytes], None]) -> Iterator[bytes]:
    for piece in pieces:
        update(piece)
        yield piece


# -- bad writes change nothing -------------------------------------------------------------


def test_short_long_and_failing_sources_store_nothing(tmp_path: Path) -> None:
    def failing() -> Iterator[bytes]:
        yield b"x" * 100_000
        raise ConnectionResetError("client went away")

    with ChunkStore.open(tmp_path) as store:
        store.write_chunk(1, b"keep", 4)
        before = store.usage()
        with pytest.raises(SourceSizeError, match="ended after 3 of the announced 10"):
            store.write_chunk(2, iter([b"abc"]), 10)
        with pytest.raises(SourceSizeError, match="more than the announced 2"):
            store.write_chunk(2, iter([b"abc"]), 2)
        with pytest.raises(SourceSizeError, match="not the announced 5"):
            store.write_chunk(2, b"abc", 5)
        with pytest.raises(SourceSizeError):
            store.write_chunk(2, io.BytesIO(b"abc"), 5)
        with pytest.raises(ConnectionResetError):
            store.write_chunk(2, failing(), 200_000)
        with pytest.raises(ChecksumMismatchError, match="not the declared"):
            store.write_chunk(2, b"abc", 3, expected_crc=crc32c(b"abd"))
        assert 2 not in store
        assert store.usage() == before
        assert vol_files(tmp_path)[0].stat().st_size == before.total_bytes
        assert store.write_chunk(2, b"abc", 3, expected_crc=crc32c(b"abc")).crc == crc32c(b"abc")
    with ChunkStore.open(tmp_path) as store:
        assert store.damage() == []
        assert store.read_chunk(1) == b"keep"
        assert store.read_chunk(2) == b"abc"


def test_bad_arguments(tmp_path: Path) -> None:
    with ChunkStore.open(tmp_path) as store:
        with pytest.raises(ValueError, match="chunk id"):
            store.write_chunk(-1, b"", 0)
        with pytest.raises(ValueError, match="chunk id"):
            store.write_chunk(2**64, b"", 0)
        assert store.write_chunk(2**64 - 1, b"top", 3).chunk_id == 2**64 - 1
        with pytest.raises(ChunkNotFoundError, match="chunk 5 is not stored here"):
            store.read_chunk(5)
        with pytest.raises(ChunkNotFoundError):
            store.stat(5)
        assert store.delete_chunk(5) is False
    with pytest.raises(ValueError, match="volume_size"):
        ChunkStore.open(tmp_path, volume_size=10)


# -- range reads ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [200_000, 3 * MiB + 123])  # whole-record path, block path
@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (0, 1),
        (0, 4096),
        (BLOCK_SIZE - 1, 2),  # crosses the first block boundary
        (BLOCK_SIZE, BLOCK_SIZE),  # exactly one block
        (BLOCK_SIZE - 100, 2 * BLOCK_SIZE),  # crosses two boundaries
        (100_000, None),  # to the end
        ("end-1", 1),  # the last byte
        ("end-5000", 5000),
        ("end-70000", None),
        (0, 0),
        ("end-0", 0),  # an empty range at the end
    ],
)
def test_range_reads(tmp_path: Path, size: int, offset: int | str, length: int | None) -> None:
    data = blob(size, size)
    if isinstance(offset, str):
        offset = size - int(offset.removeprefix("end-"))
    with ChunkStore.open(tmp_path) as store:
        store.write_chunk(1, data, size)
        stop = size if length is None else offset + length
        assert store.read_chunk(1, offset, length) == data[offset:stop]
        with store.open_chunk(1, offset, length) as reader:
            pieces = list(reader)
        assert all(len(p) <= MiB for p in pieces)
        assert b"".join(pieces) == data[offset:stop]


def test_range_reads_spanning_many_pieces(tmp_path: Path) -> None:
    size = 5 * MiB + 999
    data = blob(9, size)
    with ChunkStore.open(tmp_path) as store:
        store.write_chunk(1, data, size)
        for offset, length in [(MiB - 1, 2), (MiB - 10, 2 * MiB + 20), (123, size - 246)]:
            assert store.read_chunk(1, offset, length) == data[offset : offset + length]


def test_ranges_beyond_the_end_are_refused(tmp_path: Path) -> None:
    with ChunkStore.open(tmp_path) as store:
        store.write_chunk(1, b"0123456789", 10)
        store.write_chunk(2, b"", 0)
        assert store.read_chunk(1, 10) == b""
        assert store.read_chunk(2, 0) == b""
        with pytest.raises(
            ChunkRangeError, match="offset 11 is beyond the end of chunk 1, which has 10 bytes"
        ):
            store.read_chunk(1, 11)
        with pytest.raises(
            ChunkRangeError, match=r"bytes 5\.\.15 of chunk 1 asked for, but it has only 10 bytes"
        ):
            store.read_chunk(1, 5, 10)
        with pytest.raises(ChunkRangeError, match="negative"):
            store.read_chunk(1, -1)
        with pytest.raises(ChunkRangeError, match="negative"):
            store.read_chunk(1, 0, -1)
        with pytest.raises(ChunkRangeError):
            store.read_chunk(2, 0, 1)


# -- reopen, overwrite, rollover --------------------------------------------------------------


def test_reopen_rebuilds_the_index_and_the_newest_record_wins(tmp_path: Path) -> None:
    with ChunkStore.open(tmp_path, volume_size=64 * 1024) as store:
        for cid in range(40):
            store.write_chunk(cid, blob(cid, 5000), 5000, sync=False)
        store.write_chunk(3, b"second version", 14, sync=False)  # in a later volume
        assert store.delete_chunk(4)
        store.write_chunk(5, b"", 0)
        assert store.delete_chunk(6)
        store.write_chunk(6, b"back", 4)
        before = store.chunks()
        usage = store.usage()
    with ChunkStore.open(tmp_path, volume_size=64 * 1024) as store:
        assert store.chunks() == before
        assert [(v.volume_id, v.size_bytes, v.live_bytes) for v in store.usage().volumes] == [
            (v.volume_id, v.size_bytes, v.live_bytes) for v in usage.volumes
        ]
        assert store.read_chunk(3) == b"second version"
        assert 4 not in store
        assert store.read_chunk(5) == b""
        assert store.read_chunk(6) == b"back"
        assert store.read_chunk(39) == blob(39, 5000)


def test_volumes_roll_over_at_the_size_limit(tmp_path: Path) -> None:
    limit = 64 * 1024
    per = record_size(10_000)
    with ChunkStore.open(tmp_path, volume_size=limit) as store:
        for cid in range(20):
            store.write_chunk(cid, blob(cid, 10_000), 10_000)
        store.write_chunk(100, blob(100, 200_000), 200_000)  # bigger than a volume: its own
        store.write_chunk(101, b"after", 5)
        usage = store.usage()
    files = vol_files(tmp_path)
    per_volume = (limit - FILE_HEADER_SIZE) // per
    assert [f.name for f in files[:2]] == ["vol-000001.dat", "vol-000002.dat"]
    assert files[0].stat().st_size == FILE_HEADER_SIZE + per_volume * per <= limit
    assert all(f.stat().st_size <= limit for f in files if f != files[-2])
    assert files[-2].stat().st_size == FILE_HEADER_SIZE + record_size(200_000)
    assert usage.volume_count == len(files) == -(-20 // per_volume) + 2
    assert usage.chunk_count == 22
    with ChunkStore.open(tmp_path, volume_size=limit) as store:
        assert store.read_chunk(100) == blob(100, 200_000)
        assert store.stat(101).volume_id == len(files)


def test_a_second_open_is_refused_and_a_closed_store_says_so(tmp_path: Path) -> None:
    store = ChunkStore.open(tmp_path)
    with pytest.raises(StoreInUseError, match="in use by another process"):
        ChunkStore.open(tmp_path)
    store.close()
    store.close()
    with pytest.raises(StoreClosedError):
        store.write_chunk(1, b"", 0)
    with pytest.raises(StoreClosedError):
        store.read_chunk(1)
    ChunkStore.open(tmp_path).close()


# -- durability: fsyncs -------------------------------------------------------------------


class FsyncCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> None:
        self.calls = 0
        real = os.fsync

        def fsync(fd: int) -> None:
            self.calls += 1
            if delay:
                time.sleep(delay)
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)


def test_each_write_and_delete_is_fsynced_before_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ChunkStore.open(tmp_path) as store:
        store.write_chunk(1, b"a", 1)  # creates the volume (file and directory fsyncs)
        counter = FsyncCounter(monkeypatch)
        store.write_chunk(2, b"b", 1)
        assert counter.calls == 1
        store.delete_chunk(2)
        assert counter.calls == 2
        store.write_chunk(3, b"c", 1, sync=False)
        store.delete_chunk(3, sync=False)
        assert counter.calls == 2
        store.sync()
        assert counter.calls == 3
        store.sync()  # nothing new: no fsync
        assert counter.calls == 3


def test_a_batch_shares_one_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ChunkStore.open(tmp_path) as store:
        store.write_chunk(0, b"", 0)
        counter = FsyncCounter(monkeypatch)
        infos = store.write_chunks((cid, blob(cid, 4096)) for cid in range(1, 65))
        assert counter.calls == 1
        assert [i.chunk_id for i in infos] == list(range(1, 65))
        assert store.read_chunk(64) == blob(64, 4096)


def test_concurrent_writers_share_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ChunkStore.open(tmp_path) as store:
        store.write_chunk(0, b"", 0)
        counter = FsyncCounter(monkeypatch, delay=0.01)
        start = threading.Barrier(8)

        def writer(base: int) -> None:
            start.wait()
            for i in range(25):
                store.write_chunk(base + i, blob(base + i, 4096), 4096)

        threads = [threading.Thread(target=writer, args=(1000 * (t + 1),)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(store) == 8 * 25 + 1
        # Without sharing: 200. Typically about 60 (two fsyncs per round of eight writers: the
        # records appended during one fsync need the next); over 100 on a loaded machine.
        assert counter.calls <= 8 * 25 * 3 // 4, counter.calls


def test_a_failed_fsync_stops_writes_but_not_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ChunkStore.open(tmp_path)
    store.write_chunk(1, b"durable", 7)

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(StoreFailedError, match="I/O error"):
        store.write_chunk(2, b"lost?", 5)
    with pytest.raises(StoreFailedError, match="restart the volume server"):
        store.write_chunk(3, b"x", 1, sync=False)
    with pytest.raises(StoreFailedError):
        store.delete_chunk(1)
    assert store.read_chunk(1) == b"durable"
    monkeypatch.undo()
    store.close()
    with ChunkStore.open(tmp_path) as store:
        assert store.read_chunk(1) == b"durable"


# -- capacity ---------------------------------------------------------------------------


def test_capacity_limit(tmp_path: Path) -> None:
    limit = FILE_HEADER_SIZE + 3 * record_size(10_000) + 100
    with ChunkStore.open(tmp_path, max_bytes=limit) as store:
        for cid in range(3):
            store.write_chunk(cid, blob(cid, 10_000), 10_000)
        before = store.usage()
        with pytest.raises(StoreFullError, match="the chunk store is full") as err:
            store.write_chunk(3, blob(3, 10_000), 10_000)
        assert err.value.max_bytes == limit
        assert store.usage() == before
        assert store.usage().free_bytes == limit - before.total_bytes
        store.write_chunk(4, b"small", 5)  # still fits
        assert store.delete_chunk(0)  # deleting works when full
        with pytest.raises(StoreFullError):
            store.write_chunk(3, blob(3, 10_000), 10_000)  # deleted, not yet reclaimed
        store.compact(1)
        store.write_chunk(3, blob(3, 10_000), 10_000)
        assert sorted(c.chunk_id for c in store.chunks()) == [1, 2, 3, 4]
        assert store.usage().total_bytes <= limit


# -- deletion and compaction -------------------------------------------------------------------


def test_delete_and_compact_reclaim_space(tmp_path: Path) -> None:
    with ChunkStore.open(tmp_path) as store:
        for cid in range(100):
            store.write_chunk(cid, blob(cid, 3000), 3000, sync=False)
        store.sync()
        for cid in range(0, 100, 2):
            assert store.delete_chunk(cid, sync=False)
        store.write_chunk(1, blob(1, 3000), 3000)  # an overwrite: the first copy is garbage
        usage = store.usage()
        assert usage.chunk_count == 50
        # The tombstones are garbage too: the needles they hide are in their own volume.
        assert usage.garbage_bytes == 51 * record_size(3000) + 50 * TOMBSTONE_SIZE
        assert store.compaction_candidates() == [1]
        size_before = vol_files(tmp_path)[0].stat().st_size
        result = store.compact(1)
        assert result.bytes_before == size_before
        assert result.bytes_after == FILE_HEADER_SIZE + 50 * record_size(3000)
        assert vol_files(tmp_path)[0].stat().st_size == result.bytes_after
        assert store.usage().garbage_bytes == 0
        assert store.compaction_candidates() == []
        for cid in range(100):
            if cid % 2:
                assert store.read_chunk(cid) == blob(cid, 3000)
            else:
                assert cid not in store
        store.write_chunk(500, b"after compaction", 16)  # a new active volume
        assert store.stat(500).volume_id == 2
    with ChunkStore.open(tmp_path) as store:
        assert sorted(c.chunk_id for c in store.chunks()) == [*range(1, 100, 2), 500]
        assert store.read_chunk(99) == blob(99, 3000)
        assert store.usage().garbage_bytes == 0


def test_tombstones_outlive_the_needles_they_hide(tmp_path: Path) -> None:
    """A tombstone in a newer volume must survive until the old needle is compacted away."""
    small = 8 * 1024
    with ChunkStore.open(tmp_path, volume_size=small) as store:
        store.write_chunk(1, blob(1, 6000), 6000)  # volume 1
        store.write_chunk(2, blob(2, 6000), 6000)  # volume 2
        assert store.delete_chunk(1)  # tombstone in volume 2, needle in volume 1
        assert store.stat(2).volume_id == 2
        store.compact(2)  # keeps the tombstone: volume 1 still has the needle
    with ChunkStore.open(tmp_path, volume_size=small) as store:
        assert 1 not in store
        assert store.usage().volumes[1].live_bytes == record_size(6000) + TOMBSTONE_SIZE
        store.compact(1)  # the needle goes (and volume 1 with it); the tombstone is garbage
        (only,) = store.usage().volumes
        assert (only.volume_id, only.live_bytes) == (2, record_size(6000))
        assert not (tmp_path / "vol-000001.dat").exists()
        store.compact(2)
        assert store.usage().garbage_bytes == 0
    with ChunkStore.open(tmp_path, volume_size=small) as store:
        assert 1 not in store
        assert store.read_chunk(2) == blob(2, 6000)


def test_compaction_leftovers_are_removed_on_open(tmp_path: Path) -> None:
    with ChunkStore.open(tmp_path) as store:
        store.write_chunk(1, b"one", 3)
    leftover = tmp_path / "vol-000001.dat.tmp"
    leftover.write_bytes(vol_files(tmp_path)[0].read_bytes()[:50])  # a half-written copy
    with ChunkStore.open(tmp_path) as store:
        assert not leftover.exists()
        assert store.read_chunk(1) == b"one"
        assert store.damage() == []


def test_a_failed_compaction_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ChunkStore.open(tmp_path) as store:
        for cid in range(10):
            store.write_chunk(cid, blob(cid, 2000), 2000)
        store.delete_chunk(0)
        before = store.usage()

        def crash(src: object, dst: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="No space left"):
            store.compact(1)
        monkeypatch.undo()
        assert list(tmp_path.glob("*.tmp")) == []
        assert store.usage().volumes[0].size_bytes == before.volumes[0].size_bytes
        assert store.read_chunk(9) == blob(9, 2000)
        store.write_chunk(10, b"still writable", 14)
    with ChunkStore.open(tmp_path) as store:
        assert len(store) == 10


def test_reads_continue_across_a_compaction_of_their_volume(tmp_path: Path) -> None:
    data = blob(3, 4 * MiB)
    with ChunkStore.open(tmp_path) as store:
        store.write_chunk(1, b"garbage" * 1000, 7000)
        store.write_chunk(2, data, len(data))
        store.delete_chunk(1)
        open_fds = len(os.listdir("/proc/self/fd"))
        reader = store.open_chunk(2)
        first = next(reader)
        store.compact(1)  # moves chunk 2 to a new file; the reader keeps the old one
        assert len(os.listdir("/proc/self/fd")) == open_fds + 1  # old (pinned) and new file
        rest = b"".join(reader)
        assert first + rest == data
        assert len(os.listdir("/proc/self/fd")) == open_fds  # the old file is closed
        assert store.read_chunk(2) == data  # from the new file
        assert store.stat(2).volume_id == 1


def test_compaction_candidates_by_garbage_ratio(tmp_path: Path) -> None:
    with ChunkStore.open(tmp_path, volume_size=32 * 1024) as store:
        for cid in range(12):
            store.write_chunk(cid, blob(cid, 4000), 4000, sync=False)
        store.sync()
        store.delete_chunk(0)  # volume 1: 1 of 8 dead
        for cid in (9, 10, 11):  # volume 2: 3 of 4 dead
            store.delete_chunk(cid)
        ratios = {v.volume_id: v.garbage_ratio for v in store.usage().volumes}
        assert 0.1 < ratios[1] < 0.3 < ratios[2]
        assert store.compaction_candidates() == [2]
        assert store.compaction_candidates(0.1) == [1, 2]


# -- threads ------------------------------------------------------------------------------


def test_writers_readers_deleters_and_compaction_together(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()
    sizes = {cid: (cid * 7919) % 150_000 for cid in range(400)}
    with ChunkStore.open(tmp_path, volume_size=512 * 1024) as store:
        for cid in range(0, 400, 2):  # stable chunks: always readable
            store.write_chunk(cid, blob(cid, sizes[cid]), sizes[cid], sync=False)
        store.sync()

        def guarded(fn: Callable[[], None]) -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)
                stop.set()

        def churn() -> None:  # odd ids: written, overwritten, deleted
            rng = random.Random(1)
            while not stop.is_set():
                cid = rng.randrange(1, 400, 2)
                if rng.random() < 0.3:
                    store.delete_chunk(cid, sync=False)
                else:
                    store.write_chunk(cid, blob(cid, sizes[cid]), sizes[cid], sync=False)

        def read() -> None:
            rng = random.Random(threading.get_ident())
            while not stop.is_set():
                cid = rng.randrange(0, 400, 2)
                assert store.read_chunk(cid) == blob(cid, sizes[cid])
                odd = cid + 1
                with contextlib.suppress(ChunkNotFoundError):  # deleted meanwhile
                    assert store.read_chunk(odd) == blob(odd, sizes[odd])

        def compact() -> None:
            while not stop.is_set():
                for vid in store.compaction_candidates(0.2):
                    store.compact(vid)
                time.sleep(0.01)

        threads = [
            threading.Thread(target=guarded, args=(f,)) for f in (churn, read, read, compact)
        ]
        for t in threads:
            t.start()
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
        assert errors == []
        expected = {c.chunk_id: c for c in store.chunks()}
        usage = store.usage()
    with ChunkStore.open(tmp_path, volume_size=512 * 1024) as store:
        assert {c.chunk_id: (c.size, c.crc) for c in store.chunks()} == {
            c.chunk_id: (c.size, c.crc) for c in expected.values()
        }
        assert store.usage().live_bytes == usage.live_bytes
        for cid in expected:
            assert store.read_chunk(cid) == blob(cid, sizes[cid])
