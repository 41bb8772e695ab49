"""ChunkStore after crashes and damage: torn tails are cut, everything else is reported per chunk.

Each test builds a store, damages its files the way a crash or a bad disk
would, reopens it, and checks three things: the damaged chunk is reported
(missing or ``ChunkCorruptError``, never wrong bytes), every other chunk is
still served, and the store still takes writes.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from quorumfs.volume.errors import ChunkCorruptError, ChunkNotFoundError, StoreError
from quorumfs.volume.needles import (
    BLOCK_SIZE,
    FILE_HEADER_SIZE,
    HEADER_SIZE,
    NEEDLE_MAGIC,
    NeedleHeader,
    VolumeHeader,
    parse_volume_header,
)
from quorumfs.volume.store import ChunkStore, DamageReport
from quorumfs.volume.volume_file import scan_records

MiB = 1 << 20


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def records(path: Path) -> dict[int, NeedleHeader]:
    """Chunk id -> its (last) intact record in a volume file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        header = parse_volume_header(os.pread(fd, FILE_HEADER_SIZE, 0))
        assert isinstance(header, VolumeHeader)
        size = os.fstat(fd).st_size
        found = scan_records(fd, size, header.salt, verify_last=False)
        return {r.chunk_id: r for r in found if isinstance(r, NeedleHeader)}
    finally:
        os.close(fd)


def flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x20]))


def vol(d: Path, volume_id: int = 1) -> Path:
    return d / f"vol-{volume_id:06d}.dat"


SIZES = {1: 4096, 2: 1, 3: 200_000, 4: 3 * MiB + 5, 5: 70_000, 6: 0}


def build(d: Path, sizes: dict[int, int] = SIZES, volume_size: int = 1 << 30) -> None:
    with ChunkStore.open(d, volume_size=volume_size) as store:
        for cid, size in sizes.items():
            store.write_chunk(cid, blob(cid, size), size)


def assert_served(store: ChunkStore, ids: list[int], sizes: dict[int, int] = SIZES) -> None:
    for cid in ids:
        assert store.read_chunk(cid) == blob(cid, sizes[cid]), cid


def assert_writable(store: ChunkStore) -> None:
    store.write_chunk(777, b"still writable", 14)
    assert store.read_chunk(777) == b"still writable"


# -- torn tails ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(lambda r: r.offset + 10, id="in-the-header"),
        pytest.param(lambda r: r.offset + HEADER_SIZE + 2, id="in-the-block-table"),
        pytest.param(lambda r: r.data_offset + 50_000, id="in-the-data"),
        pytest.param(lambda r: r.end - 1, id="last-byte-missing"),
    ],
)
def test_a_torn_tail_is_truncated_with_a_warning(
    tmp_path: Path, cut: Callable[[NeedleHeader], int], caplog: pytest.LogCaptureFixture
) -> None:
    sizes = {1: 4096, 2: 10, 3: 200_000}
    build(tmp_path, sizes)
    last = records(vol(tmp_path))[3]
    at = cut(last)
    os.truncate(vol(tmp_path), at)
    with caplog.at_level(logging.WARNING, "quorumfs.volume"):
        store = ChunkStore.open(tmp_path)
    with store:
        assert "torn tail" in caplog.text
        assert vol(tmp_path).stat().st_size == last.offset
        with pytest.raises(ChunkNotFoundError):
            store.read_chunk(3)
        assert_served(store, [1, 2], sizes)
        (report,) = store.damage()
        assert (report.volume_id, report.start, report.end, report.action) == (
            1,
            last.offset,
            at,
            "truncated",
        )
        assert_writable(store)
    with ChunkStore.open(tmp_path) as store:
        assert store.damage() == []
        assert sorted(c.chunk_id for c in store.chunks()) == [1, 2, 777]


def test_a_last_record_whose_header_was_never_written_is_cut(tmp_path: Path) -> None:
    """The writer streams the data first and writes the header last."""
    build(tmp_path, {1: 100, 2: 300_000})
    last = records(vol(tmp_path))[2]
    with vol(tmp_path).open("r+b") as f:
        f.seek(last.offset)
        f.write(bytes(HEADER_SIZE))
    with ChunkStore.open(tmp_path) as store:
        assert 2 not in store
        assert store.damage()[0].action == "truncated"
        assert vol(tmp_path).stat().st_size == last.offset


def test_a_last_record_whose_data_never_reached_the_disk_is_cut(tmp_path: Path) -> None:
    """The header made it, a block of data did not (write-back order is not file order)."""
    build(tmp_path, {1: 100, 2: 300_000})
    last = records(vol(tmp_path))[2]
    with vol(tmp_path).open("r+b") as f:
        f.seek(last.data_offset + 2 * BLOCK_SIZE)
        f.write(bytes(BLOCK_SIZE))
    with ChunkStore.open(tmp_path) as store:
        assert 2 not in store
        (report,) = store.damage()
        assert (report.start, report.action, report.claimed_chunk_id) == (
            last.offset,
            "truncated",
            2,
        )
        assert "block 2" in report.reason
        assert store.read_chunk(1) == blob(1, 100)


def test_an_interrupted_volume_creation_is_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    build(tmp_path, {1: 100})
    vol(tmp_path, 2).write_bytes(b"\x89QFSVOL")  # crashed while writing the file header
    with caplog.at_level(logging.WARNING, "quorumfs.volume"):
        store = ChunkStore.open(tmp_path)
    with store:
        assert "creation was interrupted" in caplog.text
        assert not vol(tmp_path, 2).exists()
        assert store.read_chunk(1) == blob(1, 100)
        assert_writable(store)  # in a new volume 2: volume 1 was sealed before 2 was begun
        assert store.stat(777).volume_id == 2


# -- damage in the middle -------------------------------------------------------------------


def test_a_flipped_data_byte_makes_only_that_chunk_corrupt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    build(tmp_path)
    recs = records(vol(tmp_path))
    flip(vol(tmp_path), recs[1].data_offset + 100)  # small chunk: one block
    bad_block = 20
    flip(vol(tmp_path), recs[4].data_offset + bad_block * BLOCK_SIZE + 7)  # 3 MiB chunk
    with ChunkStore.open(tmp_path) as store:
        assert store.damage() == []  # data is not read at open (except the last record's)
        with pytest.raises(ChunkCorruptError, match="chunk 1 is corrupt") as err:
            store.read_chunk(1, 0, 10)  # a small chunk is verified whole, whatever the range
        assert (err.value.chunk_id, err.value.volume_id) == (1, 1)
        # A range read of the big chunk verifies only the blocks it touches.
        data4 = blob(4, SIZES[4])
        assert store.read_chunk(4, 0, 2 * BLOCK_SIZE) == data4[: 2 * BLOCK_SIZE]
        lo = bad_block * BLOCK_SIZE - 10
        assert store.read_chunk(4, lo, 10) == data4[lo : lo + 10]
        with (
            caplog.at_level(logging.ERROR, "quorumfs.volume"),
            pytest.raises(ChunkCorruptError, match="data block 20 fails its CRC32C"),
        ):
            store.read_chunk(4, lo, 20)  # crosses into the damaged block
        assert "chunk 4 is corrupt" in caplog.text
        # A full read fails at that block, having yielded only verified bytes before it.
        got = b""
        with pytest.raises(ChunkCorruptError), store.open_chunk(4) as reader:
            for piece in reader:
                got += piece
        assert got == data4[: len(got)]
        assert len(got) <= bad_block * BLOCK_SIZE
        assert set(store.corrupt_chunks()) == {1, 4}
        assert_served(store, [2, 3, 5, 6])
        assert_writable(store)
        # A good copy from another replica repairs it.
        store.write_chunk(4, data4, len(data4))
        assert store.read_chunk(4) == data4
        assert set(store.corrupt_chunks()) == {1}


@pytest.mark.parametrize(
    ("field", "at", "claimed"),
    [
        ("magic", 1, True),  # the length still lands on the next record
        ("length", 17, True),  # a wrong length hides the next records: the scan resyncs
        ("data crc", 25, True),
        ("header crc", 29, True),
        ("block table", HEADER_SIZE + 1, True),
    ],
)
def test_a_flipped_header_byte_in_the_middle(
    tmp_path: Path, field: str, at: int, claimed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    build(tmp_path)
    bad = records(vol(tmp_path))[3]  # chunk 3 (200 KB), followed by chunks 4..6
    flip(vol(tmp_path), bad.offset + at)
    with caplog.at_level(logging.ERROR, "quorumfs.volume"):
        store = ChunkStore.open(tmp_path)
    with store:
        assert "damaged bytes" in caplog.text
        (report,) = store.damage()
        assert report == DamageReport(
            1, bad.offset, bad.end, report.reason, 3 if claimed else None, "skipped"
        )
        with pytest.raises(ChunkCorruptError, match="chunk 3 is corrupt"):
            store.read_chunk(3)
        assert 3 in store.corrupt_chunks()
        assert_served(store, [1, 2, 4, 5, 6])
        assert_writable(store)
        assert store.usage().garbage_bytes == bad.size  # compaction will drop the region
        store.compact(1)
        assert store.damage() == []
        assert store.usage().garbage_bytes == 0
        assert_served(store, [1, 2, 4, 5, 6])
    with ChunkStore.open(tmp_path) as store:
        assert store.damage() == []
        with pytest.raises(ChunkNotFoundError):  # the damage is gone, and the chunk with it
            store.read_chunk(3)
        assert_served(store, [1, 2, 4, 5, 6])


def test_a_damaged_tail_of_an_older_volume_is_reported_not_cut(tmp_path: Path) -> None:
    """Only the newest volume can have a torn tail: anything else there is real damage."""
    sizes = {1: 5000, 2: 5000, 3: 5000}
    build(tmp_path, sizes, volume_size=12 * 1024)  # 1, 2 in volume 1; 3 in volume 2
    first = vol(tmp_path, 1)
    last = records(first)[2]
    os.truncate(first, last.end - 100)
    with ChunkStore.open(tmp_path, volume_size=12 * 1024) as store:
        (report,) = store.damage()
        assert (report.volume_id, report.action, report.claimed_chunk_id) == (1, "skipped", 2)
        assert first.stat().st_size == last.end - 100
        with pytest.raises(ChunkCorruptError):
            store.read_chunk(2)
        assert_served(store, [1, 3], sizes)


def test_needles_inside_chunk_data_are_never_mistaken_for_records(tmp_path: Path) -> None:
    """A resynchronising scan must not index records found inside a chunk's data.

    Chunk 1's data is a whole volume file of another store, placed so that its
    records sit at offsets the scan tries (multiples of 8); chunk 1's header is
    then damaged, so the scan searches the data for the next record. Only the
    salt and offset in each header's checksum tell the embedded records apart.
    """
    other = tmp_path / "other"
    build(other, {900 + i: 3000 for i in range(10)})
    data = bytes(4) + vol(other).read_bytes()  # 4 bytes: the block table is 4 bytes long
    main = tmp_path / "main"
    with ChunkStore.open(main) as store:
        store.write_chunk(1, data, len(data))
        store.write_chunk(2, b"after", 5)
    chunk1 = records(vol(main))[1]
    inner_start = chunk1.data_offset + 4 + FILE_HEADER_SIZE
    assert inner_start % 8 == 0
    assert vol(main).read_bytes()[inner_start : inner_start + 4] == NEEDLE_MAGIC
    flip(vol(main), chunk1.offset + 29)
    with ChunkStore.open(main) as store:
        assert [c.chunk_id for c in store.chunks()] == [2]
        assert store.read_chunk(2) == b"after"


# -- whole files -----------------------------------------------------------------------


def test_a_volume_with_a_damaged_file_header_is_skipped_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sizes = {1: 5000, 2: 5000, 3: 5000, 4: 5000}
    build(tmp_path, sizes, volume_size=12 * 1024)  # volumes: {1, 2}, {3, 4}
    flip(vol(tmp_path, 1), 20)  # the salt
    with caplog.at_level(logging.ERROR, "quorumfs.volume"):
        store = ChunkStore.open(tmp_path, volume_size=12 * 1024)
    with store:
        assert "is unreadable" in caplog.text
        (report,) = store.damage()
        assert (report.volume_id, report.action) == (1, "volume unreadable")
        assert [c.chunk_id for c in store.chunks()] == [3, 4]
        with pytest.raises(ChunkNotFoundError):
            store.read_chunk(1)
        assert_served(store, [3, 4], sizes)
        assert store.usage().volumes[0].damaged == "file header checksum mismatch"
        with pytest.raises(StoreError, match="cannot be compacted"):
            store.compact(1)
        assert_writable(store)


def test_a_newest_volume_with_a_damaged_file_header_is_not_written_to(tmp_path: Path) -> None:
    build(tmp_path, {1: 5000, 2: 5000}, volume_size=8 * 1024)  # one chunk per volume
    flip(vol(tmp_path, 2), 3)
    with ChunkStore.open(tmp_path, volume_size=8 * 1024) as store:
        assert store.read_chunk(1) == blob(1, 5000)
        assert_writable(store)
        assert store.stat(777).volume_id == 3
    assert vol(tmp_path, 2).read_bytes()[3] != b"\x89QFSVOL\n"[3]  # left as it was


def test_compaction_drops_a_corrupt_chunk_and_keeps_the_rest(tmp_path: Path) -> None:
    build(tmp_path)
    flip(vol(tmp_path), records(vol(tmp_path))[5].data_offset + 1)
    with ChunkStore.open(tmp_path) as store:
        store.delete_chunk(2)
        result = store.compact(1)
        assert result.corrupt_dropped == (5,)
        with pytest.raises(ChunkCorruptError, match="dropped by the compaction"):
            store.read_chunk(5)
        assert_served(store, [1, 3, 4, 6])
    with ChunkStore.open(tmp_path) as store:
        assert sorted(c.chunk_id for c in store.chunks()) == [1, 3, 4, 6]
