"""A volume server's ``GET /metrics``: bytes and chunks written and read (small, streamed,
ranges), PUT and GET latency, usage, corrupt chunks, heartbeats (acknowledged, failed,
age of the last acknowledged one), and the leader's tasks (deletes, copies done and
failed). Real store, real HTTP, a fake master link; nothing waits by sleeping."""

from __future__ import annotations

from pathlib import Path

from crc32c import crc32c
from prometheus_client.parser import text_string_to_metric_families
from test_volume_http_api import MiB, Volume, blob, flip_byte, run, volume_app

from quorumfs.wire import ReplicateTask

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(v: Volume) -> Samples:
    async with v.session.get(f"http://{v.address}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_puts_and_gets_count_their_bytes_and_are_timed(tmp_path: Path) -> None:
    small, large = blob(1, 1000), blob(2, 2 * MiB + 5)

    async def test() -> None:
        async with volume_app(tmp_path) as v:
            start = await scrape(v)
            assert value(start, "quorumfs_volume_bytes_written_total") == 0
            assert value(start, "quorumfs_volume_chunks") == 0
            assert value(start, "quorumfs_volume_id") == 7

            assert (await v.put(1, small)).status == 201
            samples = await scrape(v)
            assert value(samples, "quorumfs_volume_bytes_written_total") == len(small)
            assert value(samples, "quorumfs_volume_chunks_written_total") == 1
            assert value(samples, "quorumfs_volume_put_seconds_count") == 1
            assert value(samples, "quorumfs_volume_chunks") == 1
            assert value(samples, "quorumfs_volume_used_bytes") > len(small)

            assert (await v.put(2, large)).status == 201  # streamed into the store
            refused = await v.put(3, small, write_token="forged")
            assert refused.status == 401
            samples = await scrape(v)
            assert value(samples, "quorumfs_volume_bytes_written_total") == len(small) + len(large)
            assert value(samples, "quorumfs_volume_chunks_written_total") == 2
            assert value(samples, "quorumfs_volume_put_seconds_count") == 2  # not the refused one
            assert value(samples, "quorumfs_volume_bytes_read_total") == 0

            status, body, _ = await v.get(1)
            assert (status, body) == (200, small)
            samples = await scrape(v)
            assert value(samples, "quorumfs_volume_bytes_read_total") == len(small)
            status, body, _ = await v.get(2)  # streamed out
            assert (status, body) == (200, large)
            status, body, _ = await v.get(2, "bytes=10-19")
            assert (status, body) == (206, large[10:20])
            status, _, _ = await v.get(99)
            assert status == 404
            samples = await scrape(v)
            read = len(small) + len(large) + 10
            assert value(samples, "quorumfs_volume_bytes_read_total") == read
            assert value(samples, "quorumfs_volume_chunks_read_total") == 3
            assert value(samples, "quorumfs_volume_get_seconds_count") == 3
            assert value(samples, "quorumfs_volume_get_seconds_bucket", le="+Inf") == 3

    run(test)


def test_heartbeats_their_age_and_failures(tmp_path: Path) -> None:
    async def test() -> None:
        async with volume_app(tmp_path, register=False) as v:
            samples = await scrape(v)
            assert "quorumfs_volume_heartbeat_age_seconds" not in {n for n, _ in samples}
            assert value(samples, "quorumfs_volume_heartbeats_total", result="acknowledged") == 0

            assert await v.heart.beat()
            samples = await scrape(v)
            age = value(samples, "quorumfs_volume_heartbeat_age_seconds")
            assert 0 <= age < 5
            assert value(samples, "quorumfs_volume_heartbeats_total", result="acknowledged") == 1

            v.link.answers.append(OSError("the leader is gone"))
            assert not await v.heart.beat()
            samples = await scrape(v)
            assert value(samples, "quorumfs_volume_heartbeats_total", result="failed") == 1
            assert (
                value(samples, "quorumfs_volume_heartbeat_age_seconds") >= age
            )  # still the last ack

    run(test)


def test_corrupt_chunks_deletes_and_copies(tmp_path: Path) -> None:
    data, other = blob(3, 5000), blob(4, 3000)

    async def test() -> None:
        async with volume_app(tmp_path / "source") as source, volume_app(tmp_path / "v") as v:
            assert (await source.put(5, other)).status == 201
            assert (await v.put(1, data)).status == 201
            assert (await v.put(2, blob(5, 100))).status == 201
            flip_byte(tmp_path / "v" / "chunks", data[:16], 100)
            status, _, _ = await v.get(1)
            assert status == 500  # found corrupt, remembered
            tasks = [
                ReplicateTask(
                    chunk_id=5, size=len(other), checksum=crc32c(other), sources=[source.address]
                ),
                ReplicateTask(chunk_id=6, size=10, checksum=0, sources=[source.address]),
            ]
            v.link.answers.append(v.link.ack(delete=[2], replicate=tasks))
            assert await v.heart.beat()
            await v.heart.tasks.wait_idle()
            samples = await scrape(v)
            assert value(samples, "quorumfs_volume_corrupt_chunks") == 1
            assert value(samples, "quorumfs_volume_chunks_deleted_total") == 1
            assert value(samples, "quorumfs_volume_replication_copies_total", result="done") == 1
            assert value(samples, "quorumfs_volume_replication_copies_total", result="failed") == 1
            assert value(samples, "quorumfs_volume_writable") == 1
            assert value(samples, "quorumfs_volume_free_bytes") > 0

    run(test)
