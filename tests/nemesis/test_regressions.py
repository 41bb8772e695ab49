"""Anomalies the nemesis found, as scripted schedules.

1. A put's commit re-applied after another writer replaced the file (found by
   ``test_nemesis_short``, seed 397268: SIGSTOP of the leader under load, then
   ``/nemesis/r0/e3-k2`` unreadable for good: "chunk 8489 ... is not stored here" on
   both replicas). The client treats a put's commit (no ``expected_version``) as safe to
   repeat and retries it after an attempt whose answer was lost (a 503 ETIMEDOUT from a
   leader paused mid-commit). If the first attempt was applied and another put then
   replaced the file, the retry commits the first put's chunks again: chunks that were
   released, and deleted from the volume servers, by the other put. Fixed: the
   namespace remembers recently released chunk ids and refuses such a commit (ESTALE);
   the client settles a refused retry as "applied, then replaced". The script below
   does that retry by hand.
2. A leader that never dialed a restarted follower again (found by
   ``test_nemesis_short``: one run in three ended with no agreed leader within 30 s
   after a follower's SIGKILL and restart; the restarted follower stayed a
   pre-candidate, the others refusing it while they heard from the leader). Under
   uvloop a socket reset by the dying follower is closed a callback before its reader
   hears of it; a send in between woke the peer's task, whose write raised
   ``RuntimeError`` and ended the task for good. Fixed in the transport: a write to a
   closed connection is a lost connection, and any other error in a peer's task costs a
   reconnection. Its scripted schedule is a unit test, since the moment it needs is one
   event-loop callback wide: ``tests/runtime/test_transport.py::
   test_connection_closed_before_its_loss_is_noticed_is_redialed_on_uvloop``.
3. A put reported as refused (EINVAL) although it had taken effect (found by
   ``test_nemesis_short`` once renames joined the mix, seed 406604: "NOT LINEARIZABLE"
   on ``/nemesis/r2/e8-k1``, a value read under another name after its put "failed").
   The put's first commit was applied but its answer lost; a rename moved the file;
   the retried commit named chunks that now belonged to the moved file and was refused
   as invalid. Fixed: the namespace answers ESTALE (the commit was applied once and its
   file has moved), which the client settles as applied, as in 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from procs import DataCluster

from quorumfs.client import AsyncMasterClient, FileChanged, NotFound
from quorumfs.master.commands import Chunk
from quorumfs.wire import CommitRequest, FileContent


def _with_client(tmp_path: Path, scenario: Callable[[AsyncMasterClient], Awaitable[None]]) -> None:
    """Run ``scenario`` with a client of a fresh ``DataCluster``."""
    cluster = DataCluster(tmp_path)
    try:
        cluster.start()

        async def run() -> None:
            async with AsyncMasterClient(cluster.master_list()) as client:
                await scenario(client)

        asyncio.run(run())
    finally:
        cluster.stop()


async def _commit_again_is_stale(client: AsyncMasterClient, first: FileContent) -> None:
    """Send what a client's retry of the commit that made ``first`` sends: it must be
    refused as stale (ESTALE: applied before), never applied a second time."""
    replay = CommitRequest(
        path="/f",
        chunks=[
            Chunk(c.chunk_id, c.offset, c.size, c.checksum, tuple(c.volume_ids))
            for c in first.chunks
        ],
        size=first.size,
        create=True,
    )
    with pytest.raises(FileChanged) as refused:
        await client.commit(replay)
    assert refused.value.code == "ESTALE"


def test_a_released_chunk_cannot_be_committed_again(tmp_path: Path) -> None:
    async def scenario(client: AsyncMasterClient) -> None:
        await client.put("/f", b"first" * 100)
        first = await client.file_content("/f")
        await client.put("/f", b"second" * 100)  # releases the first put's chunk
        # Refused: /f must never point at released chunks.
        await _commit_again_is_stale(client, first)
        assert await client.read("/f") == b"second" * 100

    _with_client(tmp_path, scenario)


def test_a_commit_whose_file_was_renamed_since_is_stale(tmp_path: Path) -> None:
    async def scenario(client: AsyncMasterClient) -> None:
        await client.put("/f", b"first" * 100)
        first = await client.file_content("/f")
        await client.mv("/f", "/g")  # the applied put's file moves away
        # Refused: two files must never share the chunks.
        await _commit_again_is_stale(client, first)
        assert await client.read("/g") == b"first" * 100
        with pytest.raises(NotFound):
            await client.stat("/f")

    _with_client(tmp_path, scenario)
