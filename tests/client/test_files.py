"""The client's data path against fake servers (``data_fakes``): a leader over the real
namespace and volume servers in memory that can fail, corrupt a chunk or die.

Covers round trips (empty, one byte, many small chunks, from bytes, a local file, a
seekable and a non-seekable file object, an async iterable), ranged reads across chunk
boundaries and holes, failover between replicas with bad-chunk reports, re-allocation
when a target fails during an upload, spare grants for small puts (and writing again
when the file wants more copies), append / write_at / truncate against a model,
conflicting commits, settling a commit whose answer was lost, that nothing is visible
before the commit, and the sync facade. Nothing waits by sleeping.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from data_fakes import DataCluster, serving, serving_in_thread

from quorumfs.client import (
    AsyncMasterClient,
    Conflict,
    DataUnavailable,
    FileChanged,
    InvalidArgument,
    IsADirectory,
    MasterClient,
    NotFound,
    RetryPolicy,
    TransferPolicy,
    WriteFailed,
)
from quorumfs.master.commands import CommitContent, Rename
from quorumfs.wire import CommitRequest

KIB = 1024
MIB = 1024 * KIB
CHUNK = 64 * KIB
FAST = RetryPolicy(
    deadline=3.0,
    connect_timeout=0.5,
    request_timeout=2.0,
    probe_timeout=0.5,
    backoff_initial=0.01,
    backoff_max=0.05,
)
TRANSFER = TransferPolicy(connect_timeout=1.0, read_timeout=5.0, report_timeout=2.0)


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes that differ at every offset (so a misplaced piece shows)."""
    return bytes((i * 7 + i // 251 + seed) % 256 for i in range(size))


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=20))


def with_cluster(
    test: Callable[[DataCluster, AsyncMasterClient], Awaitable[None]],
    *,
    volumes: int = 2,
    transfer: TransferPolicy = TRANSFER,
) -> None:
    async def main() -> None:
        async with (
            serving(DataCluster(volumes)) as cluster,
            AsyncMasterClient(cluster.master, policy=FAST, transfer=transfer) as client,
        ):
            await test(cluster, client)

    run(main)


# -------------------------------------------------------------------- round trips


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, 16 * CHUNK + 5])
def test_put_and_read_round_trip(size: int) -> None:
    data = pattern(size)

    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        stat = await client.put("/f", data, chunk_size=CHUNK)
        assert stat.size == size and stat.version == 1
        assert await client.read("/f") == data
        content = cluster.leader.content("/f")
        assert [c.offset for c in content.chunks] == list(range(0, size, CHUNK))
        for chunk in content.chunks:
            assert chunk.volume_ids == [1, 2]
            assert cluster.stored(chunk.chunk_id) == [1, 2]
        assert len(cluster.leader.commits) == 1  # one commit, whatever the chunk count
        # Bytes in memory are checksummed before sending: every PUT carried the CRC.
        assert all(put.checksum_sent for put in cluster[1].puts)

    with_cluster(test)


def test_an_empty_put_commits_no_chunk_and_allocates_nothing() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/empty", b"")
        assert cluster.leader.commits[0].chunks == []
        assert cluster.leader.allocations == []
        assert await client.read("/empty") == b""
        assert (await client.stat("/empty")).size == 0

    with_cluster(test)


def test_allocations_come_in_batches_bounded_by_what_is_left() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/f", pattern(20 * CHUNK), chunk_size=CHUNK)
        counts = [a.count for a in cluster.leader.allocations]
        assert counts == [16, 4]  # the batch size, then exactly what was still needed

    with_cluster(test, transfer=TransferPolicy(allocate_batch=16))


def test_small_puts_use_spare_grants_instead_of_allocating_each_time() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        for i in range(5):
            await client.put(f"/f{i}", pattern(100, seed=i))
        # The first put asked for its grant and 16 spares; the next four took spares.
        assert [(a.path, a.count) for a in cluster.leader.allocations] == [("/f0", 17)]
        for i in range(5):
            assert await client.read(f"/f{i}") == pattern(100, seed=i)
            assert cluster.leader.content(f"/f{i}").chunks[0].volume_ids == [1, 2]
        await client.put("/big", pattern(2 * CHUNK), chunk_size=CHUNK)  # not small: allocates
        assert [a.count for a in cluster.leader.allocations] == [17, 2]

    with_cluster(test)


def test_without_a_grant_pool_every_put_allocates() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/a", b"a")
        await client.put("/b", b"b")
        assert [a.count for a in cluster.leader.allocations] == [1, 1]

    with_cluster(test, transfer=TransferPolicy(grant_pool=0))


def test_a_spare_grant_with_too_few_copies_for_an_existing_file_is_written_again() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/two", b"two copies")  # keeps spares of 2 copies
        await client.create("/three", replication=3)
        stat = await client.put("/three", b"three copies")
        assert stat.replication == 3
        (chunk,) = cluster.leader.content("/three").chunks
        assert chunk.volume_ids == [1, 2, 3]  # acknowledged with every copy it wants
        assert cluster.stored(chunk.chunk_id) == [1, 2, 3]
        # The spare went to a commit that was replaced at once, through a fresh grant.
        assert [a.path for a in cluster.leader.allocations] == ["/two", "/three"]
        assert [c.path for c in cluster.leader.commits] == ["/two", "/three", "/three"]
        assert await client.read("/three") == b"three copies"
        # An existing file that wants as many copies as the spares have takes one.
        await client.put("/two", b"again")
        assert len(cluster.leader.allocations) == 2

    with_cluster(test, volumes=3)


def test_an_allocation_for_a_file_with_other_copies_keeps_no_spares() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.create("/three", replication=3)
        await client.put("/three", b"x")  # answered 3 copies where 2 were wanted
        await client.put("/two", b"y")
        assert [(a.path, a.count) for a in cluster.leader.allocations] == [
            ("/three", 17),
            ("/two", 17),
        ]
        assert cluster.leader.content("/two").chunks[0].volume_ids == [1, 2]

    with_cluster(test, volumes=3)


def test_spare_grants_naming_a_failed_volume_are_dropped() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/a", b"a")
        cluster[2].put_failures = [500]
        await client.put("/b", b"b")  # its spare fails on volume 2: every spare names it
        assert len(cluster.leader.allocations) == 2
        assert cluster.leader.content("/b").chunks[0].volume_ids == [1, 2]
        assert await client.read("/b") == b"b"

    with_cluster(test)


def test_sources_local_file_seekable_and_unseekable_objects_and_async_iterables(
    tmp_path: Path,
) -> None:
    data = pattern(5 * CHUNK + 123)
    local = tmp_path / "local.bin"
    local.write_bytes(data)

    class Pipe(io.BytesIO):
        """A file object that cannot seek (as a pipe or a socket)."""

        def seekable(self) -> bool:
            return False

    async def pieces() -> AsyncIterator[bytes]:
        for at in range(0, len(data), 10_000):  # pieces that straddle chunk boundaries
            yield data[at : at + 10_000]

    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/from-path", local, chunk_size=CHUNK)
        assert not any(put.checksum_sent for put in cluster[1].puts)  # streamed, CRC after
        positioned = io.BytesIO(b"skip me" + data)
        positioned.seek(7)  # a file object is read from where it stands
        await client.put("/from-seekable", positioned, chunk_size=CHUNK)
        await client.put("/from-pipe", Pipe(data), chunk_size=CHUNK)
        await client.put("/from-async", pieces(), chunk_size=CHUNK)
        for name in ("/from-path", "/from-seekable", "/from-pipe", "/from-async"):
            assert await client.read(name) == data, name
            assert [c.size for c in cluster.leader.content(name).chunks] == [CHUNK] * 5 + [123]

    with_cluster(test)


def test_a_stream_is_buffered_one_chunk_at_a_time() -> None:
    produced = 0
    lead: list[int] = []

    async def pieces() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(8 * CHUNK // (4 * KIB)):
            produced += 4 * KIB
            yield bytes(4 * KIB)

    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        puts = cluster[1].puts
        # How far the source was read when each chunk's upload reached the server.
        cluster[1].on_put = lambda chunk_id: lead.append(produced - len(puts) * CHUNK)
        await client.put("/stream", pieces(), chunk_size=CHUNK)
        assert len(puts) == 8
        assert max(lead) <= CHUNK  # this chunk, and at most the next one buffered

    with_cluster(test)


def test_progress_is_reported_up_to_the_total() -> None:
    data = pattern(3 * CHUNK + 1)
    seen: list[tuple[int, int | None]] = []

    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/f", data, chunk_size=CHUNK, progress=lambda d, t: seen.append((d, t)))
        assert seen[-1] == (len(data), len(data))
        assert max(done for done, _ in seen) == len(data)
        seen.clear()
        sink = io.BytesIO()
        assert await client.get("/f", sink, progress=lambda d, t: seen.append((d, t))) == len(data)
        assert sink.getvalue() == data
        assert seen[-1] == (len(data), len(data))

    with_cluster(test)


def test_progress_of_streamed_chunks_counts_each_byte_once(tmp_path: Path) -> None:
    """Chunks larger than one piece go to each copy through a reader of its own; the
    progress counts the bytes of the file, not of every copy."""
    data = pattern(3 * MIB + 5)
    source = tmp_path / "source"
    source.write_bytes(data)
    seen: list[tuple[int, int | None]] = []

    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        progress = lambda d, t: seen.append((d, t))  # noqa: E731
        await client.put("/f", source, chunk_size=2 * MIB, progress=progress)
        assert seen[-1] == (len(data), len(data))
        assert max(done for done, _ in seen) == len(data)
        assert await client.read("/f") == data
        for chunk in (await client.file_content("/f")).chunks:
            assert len(cluster.stored(chunk.chunk_id)) == 2

    with_cluster(test)


# -------------------------------------------------------------------- ranged reads


def test_ranges_across_chunk_boundaries_holes_and_the_end() -> None:
    data = pattern(4 * CHUNK)

    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/f", data, chunk_size=CHUNK)
        cluster[1].gets.clear()
        assert await client.read("/f", CHUNK - 10, 20) == data[CHUNK - 10 : CHUNK + 10]
        # Two partial pieces: two ranged GETs to the first replica, nothing whole.
        assert cluster[1].gets == [
            (cluster.leader.content("/f").chunks[0].chunk_id, f"bytes={CHUNK - 10}-{CHUNK - 1}"),
            (cluster.leader.content("/f").chunks[1].chunk_id, "bytes=0-9"),
        ]
        assert await client.read("/f", 3 * CHUNK, 10 * CHUNK) == data[3 * CHUNK :]
        assert await client.read("/f", 4 * CHUNK + 5) == b""
        assert await client.read("/f", 5, 0) == b""
        pieces = [p async for p in client.iter_read("/f", 100, 2 * CHUNK)]
        assert b"".join(pieces) == data[100 : 100 + 2 * CHUNK]
        assert len(pieces) == 3  # one piece per chunk touched

        # Holes: a write past the end, then an extension by truncate.
        await client.write_at("/f", 6 * CHUNK, b"tail", chunk_size=CHUNK)
        await client.truncate("/f", 8 * CHUNK)
        expected = data + bytes(2 * CHUNK) + b"tail" + bytes(2 * CHUNK - 4)
        assert await client.read("/f") == expected
        assert (
            await client.read("/f", 4 * CHUNK - 3, 2 * CHUNK + 10)
            == (expected[4 * CHUNK - 3 : 6 * CHUNK + 7])
        )

    with_cluster(test)


def test_invalid_arguments_are_invalid_argument_errors() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        with pytest.raises(InvalidArgument):
            await client.read("/f", -1)
        with pytest.raises(InvalidArgument):
            await client.put("/f", b"x", chunk_size=0)
        with pytest.raises(InvalidArgument):
            await client.truncate("/f", -5)
        with pytest.raises(TypeError, match=r"pathlib\.Path"):
            await client.put("/f", "local-name.txt")  # type: ignore[arg-type]

    with_cluster(test)


def test_reading_what_is_not_a_file() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.mkdir("/d")
        with pytest.raises(NotFound) as missing:
            await client.read("/nope")
        assert missing.value.path == "/nope"
        with pytest.raises(IsADirectory):
            await client.read("/d")
        with pytest.raises(NotFound):  # the parent is missing: refused at the commit
            await client.put("/no/such/dir/f", b"data")

    with_cluster(test)


# ------------------------------------------------------------------------ failover


def test_a_dead_first_replica_fails_over_to_the_second() -> None:
    data = pattern(3 * CHUNK)

    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/f", data, chunk_size=CHUNK)
        cluster[1].dead = True
        assert await client.read("/f") == data
        assert len(cluster[2].gets) == 3
        assert cluster.leader.reports == []  # unreachable is not corrupt

    with_cluster(test)


@pytest.mark.parametrize("how", ["silent", "ECORRUPT"])
def test_a_corrupt_replica_is_skipped_and_reported(how: str) -> None:
    data = pattern(2 * CHUNK)

    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/f", data, chunk_size=CHUNK)
        bad = cluster.leader.content("/f").chunks[1].chunk_id
        if how == "silent":
            cluster[1].corrupt(bad)
        else:
            cluster[1].ecorrupt.add(bad)
        assert await client.read("/f") == data
        assert [(r.chunk_id, r.volume_id) for r in cluster.leader.reports] == [(bad, 1)]
        assert ("checksum" if how == "silent" else "ECORRUPT") in cluster.leader.reports[0].reason

    with_cluster(test)


def test_a_partial_read_of_a_corrupt_replica_cannot_be_verified_but_lengths_are() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/f", pattern(CHUNK), chunk_size=CHUNK)
        chunk_id = cluster.leader.content("/f").chunks[0].chunk_id
        cluster[1].chunks[chunk_id] = cluster[1].chunks[chunk_id][:100]  # truncated copy
        assert await client.read("/f", 50, 200) == pattern(CHUNK)[50:250]
        assert cluster[1].gets[-1] == (chunk_id, "bytes=50-249")  # 416 there: next replica
        assert await client.read("/f") == pattern(CHUNK)
        assert [r.volume_id for r in cluster.leader.reports] == [1]  # the short whole chunk

    with_cluster(test)


def test_no_good_replica_is_data_unavailable_naming_each_failure() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/f", pattern(2 * CHUNK), chunk_size=CHUNK)
        chunk_id = cluster.leader.content("/f").chunks[0].chunk_id
        cluster[1].dead = True
        cluster[2].corrupt(chunk_id)
        with pytest.raises(DataUnavailable) as raised:
            await client.read("/f")
        error = raised.value
        assert isinstance(error, OSError) and error.path == "/f"
        assert error.chunk_id == chunk_id
        assert len(error.failures) == 2
        assert "closed" in error.failures[0] and "checksum" in error.failures[1]
        assert f"chunk {chunk_id}" in error.message
        assert [(r.chunk_id, r.volume_id) for r in cluster.leader.reports] == [(chunk_id, 2)]

    with_cluster(test)


def test_a_file_replaced_while_being_read_is_file_changed_not_a_mix() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/f", pattern(4 * CHUNK), chunk_size=CHUNK)
        pieces = client.iter_read("/f")
        first = await anext(pieces)
        assert first == pattern(4 * CHUNK)[:CHUNK]
        await client.put("/f", pattern(4 * CHUNK, seed=1), chunk_size=CHUNK)
        cluster.leader.reclaim()  # the old version's chunks are deleted
        with pytest.raises(FileChanged) as raised:
            async for _ in pieces:
                pass
        assert "changed while it was being read" in raised.value.message
        assert await client.read("/f") == pattern(4 * CHUNK, seed=1)

    with_cluster(test)


# ------------------------------------------------------------------- upload faults


@pytest.mark.parametrize("fault", ["500", "507", "dropped mid-body", "expired token"])
def test_a_failed_target_gets_the_chunk_rewritten_under_a_fresh_grant(fault: str) -> None:
    data = pattern(3 * CHUNK)

    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        if fault == "dropped mid-body":
            # aiohttp resends a body in memory once by itself when a kept-alive connection
            # drops (PUT is idempotent; same chunk, same bytes): with three chunks in
            # flight, four cuts leave at least one (and at most two per chunk) to the client.
            cluster[2].cut_puts = 4
        elif fault == "expired token":
            cluster.leader.token_ttls = [-1000]  # the first batch is stale on arrival
        else:
            cluster[2].put_failures = [int(fault)]
        await client.put("/f", data, chunk_size=CHUNK)
        assert await client.read("/f") == data
        content = cluster.leader.content("/f")
        assert len(content.chunks) == 3
        assert all(chunk.volume_ids == [1, 2] for chunk in content.chunks)
        assert len(cluster.leader.allocations) >= 2  # a fresh grant was asked for
        granted = len(cluster[1].puts)
        assert granted > 3  # more chunk ids were written than the file holds

    with_cluster(test, transfer=TransferPolicy(allocate_batch=3))


def test_a_target_that_keeps_failing_leaves_the_chunk_with_fewer_copies() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        cluster[2].put_failures = [500] * 3  # every attempt of the one chunk
        await client.put("/f", b"hello")
        (chunk,) = cluster.leader.content("/f").chunks
        assert chunk.volume_ids == [1]
        assert await client.read("/f") == b"hello"
        assert len(cluster.leader.allocations) == 3

    with_cluster(test)


def test_no_target_at_all_is_write_failed_and_nothing_is_committed() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/f", b"old")
        cluster[1].dead = cluster[2].dead = True
        with pytest.raises(WriteFailed) as raised:
            await client.put("/f", pattern(2 * CHUNK), chunk_size=CHUNK)
        assert raised.value.path == "/f" and len(raised.value.failures) >= 6
        assert "3 attempts" in raised.value.message
        assert len(cluster.leader.commits) == 1  # the first put only
        cluster[1].dead = cluster[2].dead = False
        assert await client.read("/f") == b"old"

    with_cluster(test)


def test_a_source_that_shrinks_while_it_is_read_is_write_failed() -> None:
    class Shrinking(io.BytesIO):
        """Says it holds 3 chunks, then runs dry after 2 (a file truncated meanwhile)."""

        def read(self, size: int | None = -1, /) -> bytes:
            if self.tell() >= 2 * CHUNK:
                return b""
            return super().read(size)

    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        with pytest.raises(WriteFailed) as raised:
            await client.put("/f", Shrinking(pattern(3 * CHUNK)), chunk_size=CHUNK)
        assert f"ended after {2 * CHUNK} of its {3 * CHUNK} bytes" in raised.value.message
        assert cluster.leader.commits == []

    with_cluster(test)


def test_a_refusal_that_a_retry_cannot_fix_fails_at_once() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        cluster[1].put_failures = [413]
        with pytest.raises(WriteFailed) as raised:
            await client.put("/f", b"too big, says the server")
        assert raised.value.code == "E2BIG"
        assert "smaller chunk size" in raised.value.message
        assert len(cluster.leader.allocations) == 1
        assert cluster.leader.commits == []
        assert not cluster.leader.namespace.stat("/f").ok

    with_cluster(test)


def test_nothing_is_visible_before_the_commit() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/f", b"old content")
        seen: list[int] = []
        # While the new chunks arrive, the file is still the old version.
        cluster[1].on_put = lambda _: seen.append(cluster.leader.content("/f").version)
        await client.put("/f", pattern(4 * CHUNK), chunk_size=CHUNK)
        assert seen == [1, 1, 1, 1]
        assert cluster.leader.content("/f").version == 2

    with_cluster(test)


# ----------------------------------------------------------------- partial changes


def test_append_write_at_and_truncate_against_a_model() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        model = bytearray(pattern(3 * CHUNK))
        await client.put("/f", bytes(model), chunk_size=CHUNK)

        async def check() -> None:
            assert await client.read("/f") == bytes(model)
            assert (await client.stat("/f")).size == len(model)

        before = [c.chunk_id for c in cluster.leader.content("/f").chunks]
        # Inside one chunk: only that chunk is rewritten, its neighbours are kept as they are.
        await client.write_at("/f", CHUNK + 100, b"inside", chunk_size=CHUNK)
        model[CHUNK + 100 : CHUNK + 106] = b"inside"
        await check()
        after = [c.chunk_id for c in cluster.leader.content("/f").chunks]
        assert after[0] == before[0] and after[2] == before[2] and after[1] not in before

        # Across a chunk boundary.
        await client.write_at("/f", 2 * CHUNK - 3, b"across", chunk_size=CHUNK)
        model[2 * CHUNK - 3 : 2 * CHUNK + 3] = b"across"
        await check()

        # Past the end: the gap reads as zeros.
        await client.write_at("/f", len(model) + 10, b"past", chunk_size=CHUNK)
        model += bytes(10) + b"past"
        await check()

        await client.append("/f", pattern(CHUNK + 7, seed=3), chunk_size=CHUNK)
        model += pattern(CHUNK + 7, seed=3)
        await check()

        # Shrink mid-chunk, then extend with a hole.
        await client.truncate("/f", CHUNK + 5)
        del model[CHUNK + 5 :]
        await check()
        assert [c.size for c in cluster.leader.content("/f").chunks] == [CHUNK, 5]
        await client.truncate("/f", 3 * CHUNK)
        model += bytes(3 * CHUNK - len(model))
        await check()

        # A file that does not exist yet: append and write_at create it.
        await client.append("/new", b"first")
        await client.write_at("/new2", 3, b"xyz")
        assert await client.read("/new") == b"first"
        assert await client.read("/new2") == b"\0\0\0xyz"
        with pytest.raises(NotFound):
            await client.truncate("/missing", 3)

    with_cluster(test)


def test_a_conflicting_append_is_redone_after_the_other_writer() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/log", b"one\n")

        async def other_writer_first(request: CommitRequest) -> None:
            cluster.leader.before_commit = None
            async with AsyncMasterClient(cluster.master, policy=FAST) as other:
                await other.append("/log", b"two\n")

        cluster.leader.before_commit = other_writer_first
        await client.append("/log", b"three\n")
        assert await client.read("/log") == b"one\ntwo\nthree\n"
        mine = cluster.leader.commits[1]
        assert mine.expected_version == 1  # lost to the other writer's version 2, then redone
        assert cluster.leader.commits[-1].expected_version == 2
        # The appended bytes were uploaded once and only moved.
        assert {c.chunk_id for c in cluster.leader.commits[-1].chunks} >= {
            c.chunk_id for c in mine.chunks
        }

    with_cluster(test)


def test_a_write_that_keeps_losing_gives_up_with_conflict() -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/f", b"contended")

        async def someone_else_commits(request: CommitRequest) -> None:
            current = cluster.leader.namespace.lookup_chunks("/f").unwrap()
            cluster.leader.commit_now("/f", list(current.chunks), current.size)  # a new version

        cluster.leader.before_commit = someone_else_commits
        with pytest.raises(Conflict) as raised:
            await client.write_at("/f", 0, b"C")
        assert "5 commits" in raised.value.message
        assert len(cluster.leader.commits) == 1 + 5
        cluster.leader.before_commit = None
        assert await client.read("/f") == b"contended"

    with_cluster(test)


@pytest.mark.parametrize("drop", ["before", "after"])
def test_a_lost_commit_answer_is_settled_by_reading_the_file(drop: str) -> None:
    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/f", b"abc")
        cluster.leader.drop_commits = [drop]  # type: ignore[list-item]
        stat = await client.append("/f", b"def")
        assert await client.read("/f") == b"abcdef"  # once, whatever happened
        assert stat.size == 6
        # Applied: settled by the read, never sent again. Not applied: redone once.
        assert len(cluster.leader.commits) == (2 if drop == "after" else 3)

    with_cluster(test)


def test_a_put_whose_commit_was_applied_then_replaced_is_not_applied_again() -> None:
    """The commit of a put is retried after a lost answer. If the first attempt was
    applied and another write replaced the file meanwhile, the retry names released
    chunks: the master refuses it (ESTALE) and the put counts as done, instead of the
    file pointing at chunks the volume servers deleted (found by the nemesis)."""

    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        commits = 0

        async def another_writer_in_between(body: CommitRequest) -> None:
            nonlocal commits
            commits += 1
            if commits == 2:  # the retry of the first commit, whose answer was lost
                replaced = CommitContent(path="/f", chunks=(), size=0, mtime=1, create=True)
                cluster.leader.namespace.apply(replaced).unwrap()

        cluster.leader.drop_commits = ["after"]
        cluster.leader.before_commit = another_writer_in_between
        stat = await client.put("/f", b"first")
        assert commits == 2
        assert stat.size == 0  # the file as it is now: the other writer's
        assert await client.read("/f") == b""

    with_cluster(test)


def test_a_put_whose_commit_was_applied_then_renamed_away_says_the_file_changed() -> None:
    """As above, but a rename moves the file between the attempts: the retry names chunks
    another file holds (ESTALE) and there is no file at the path to describe, so the put
    raises ``FileChanged`` (applied, then moved) rather than a refusal that says nothing
    was written (found by the nemesis)."""

    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        commits = 0

        async def renamed_in_between(body: CommitRequest) -> None:
            nonlocal commits
            commits += 1
            if commits == 2:
                cluster.leader.namespace.apply(Rename(src="/f", dst="/g")).unwrap()

        cluster.leader.drop_commits = ["after"]
        cluster.leader.before_commit = renamed_in_between
        with pytest.raises(FileChanged) as raised:
            await client.put("/f", b"first")
        assert raised.value.code == "ESTALE" and raised.value.retried_after_unknown
        assert await client.read("/g") == b"first"

    with_cluster(test)


# --------------------------------------------------------------------- local files


def test_get_into_a_local_file_replaces_it_only_when_complete(tmp_path: Path) -> None:
    data = pattern(3 * CHUNK + 1)
    target = tmp_path / "out.bin"

    async def test(cluster: DataCluster, client: AsyncMasterClient) -> None:
        await client.put("/f", data, chunk_size=CHUNK)
        assert await client.get("/f", target) == len(data)
        assert target.read_bytes() == data
        target.write_bytes(b"precious")
        cluster[1].dead = cluster[2].dead = True
        with pytest.raises(DataUnavailable):
            await client.get("/f", target)
        assert target.read_bytes() == b"precious"
        assert os.listdir(tmp_path) == ["out.bin"]  # no temporary file left behind

    with_cluster(test)


# ---------------------------------------------------------------------- sync facade


def test_the_sync_client_moves_bytes_too(tmp_path: Path) -> None:
    data = pattern(2 * CHUNK + 9)
    local = tmp_path / "in.bin"
    local.write_bytes(data)
    with (
        serving_in_thread(DataCluster()) as cluster,
        MasterClient(cluster.master, policy=FAST, transfer=TRANSFER) as client,
    ):
        assert client.put("/f", local, chunk_size=CHUNK).size == len(data)
        assert client.read("/f", 1, 3) == data[1:4]
        assert b"".join(client.iter_read("/f")) == data
        pieces = client.iter_read("/f", 0, 2 * CHUNK)
        assert next(pieces) == data[:CHUNK]
        pieces.close()  # stops the read ahead
        out = io.BytesIO()
        assert client.get("/f", out) == len(data)
        assert out.getvalue() == data
        client.append("/f", b"!")
        client.write_at("/f", 0, b"W")
        client.truncate("/f", 4)
        assert client.read("/f") == b"W" + data[1:4]
        with pytest.raises(FileNotFoundError):
            client.read("/nope")
