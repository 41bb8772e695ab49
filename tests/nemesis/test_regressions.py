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
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from procs import DataCluster

from quorumfs.client import AsyncMasterClient, FileChanged
from quorumfs.master.commands import Chunk
from quorumfs.wire import CommitRequest


def test_a_released_chunk_cannot_be_committed_again(tmp_path: Path) -> None:
    cluster = DataCluster(tmp_path)
    try:
        cluster.start()

        async def scenario() -> None:
            async with AsyncMasterClient(cluster.master_list()) as client:
                await client.put("/f", b"first" * 100)
                first = await client.file_content("/f")
                await client.put("/f", b"second" * 100)  # releases the first put's chunk
                replay = CommitRequest(
                    path="/f",
                    chunks=[
                        Chunk(c.chunk_id, c.offset, c.size, c.checksum, tuple(c.volume_ids))
                        for c in first.chunks
                    ],
                    size=first.size,
                    create=True,
                )
                # What the client's retry of the first commit sends. It must be refused
                # (or settled as already applied), never make /f point at released chunks.
                with pytest.raises(FileChanged) as refused:
                    await client.commit(replay)
                assert refused.value.code == "ESTALE"
                assert await client.read("/f") == b"second" * 100

        asyncio.run(scenario())
    finally:
        cluster.stop()
