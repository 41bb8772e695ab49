"""Files end to end over real processes: 3 masters, 3 volume servers, the Python client.

Round trips (empty, 1 byte, 1 MiB, 200 MiB streamed from disk) with checksums,
range reads, overwrite, append and truncate; bad input refused with a clear 4xx
and nothing changed; a volume server killed (reads go on) and its copies
re-made elsewhere; the leader killed in the middle of an upload.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from procs import DataCluster, HttpError, http, wait_for

from quorumfs.client import (
    InvalidArgument,
    MasterClient,
    NameTooLong,
    NotFound,
    QuorumfsError,
    TransferPolicy,
)

MiB = 1 << 20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataCluster]:
    c = DataCluster(tmp_path_factory.mktemp("data"))
    c.start()
    yield c
    c.stop()


@pytest.fixture
def client(cluster: DataCluster) -> Iterator[MasterClient]:
    with MasterClient(cluster.master_list()) as c:
        yield c


def random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path`` in 1 MiB pieces; their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            piece = os.urandom(min(left, MiB))
            digest.update(piece)
            f.write(piece)
            left -= len(piece)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while piece := f.read(MiB):
            digest.update(piece)
    return digest.hexdigest()


def replicas(cluster: DataCluster, path: str) -> list[list[int]]:
    content: dict[str, Any] = http("GET", cluster.masters[0].address, f"/v1/fs/chunks?path={path}")
    return [chunk["volume_ids"] for chunk in content["chunks"]]


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("size", [0, 1, MiB])
def test_small_round_trips(client: MasterClient, cluster: DataCluster, size: int) -> None:
    data = os.urandom(size)
    path = f"/small-{size}"
    client.put(path, data)
    assert client.read(path) == data
    stat = client.stat(path)
    assert (stat.size, stat.version) == (size, 1)
    for ids in replicas(cluster, path):
        assert len(set(ids)) == 2  # the default goal: 2 copies on distinct servers


def test_a_200_mib_file_streams_both_ways(
    client: MasterClient, cluster: DataCluster, tmp_path: Path
) -> None:
    source = tmp_path / "big"
    expected = random_file(source, 200 * MiB)
    client.put("/big", source)
    assert client.stat("/big").size == 200 * MiB
    assert len(replicas(cluster, "/big")) == 4  # 64 MiB chunks
    target = tmp_path / "big.copy"
    with target.open("wb") as sink:
        client.get("/big", sink)
    assert sha256_of(target) == expected
    # A range across the first chunk boundary.
    with source.open("rb") as f:
        f.seek(64 * MiB - 100)
        assert client.read("/big", offset=64 * MiB - 100, length=300) == f.read(300)


def test_ranges_overwrite_append_and_truncate(client: MasterClient) -> None:
    data = bytearray(os.urandom(3 * MiB))
    client.put("/edit", bytes(data))
    assert client.read("/edit", offset=MiB - 5, length=10) == data[MiB - 5 : MiB + 5]
    assert client.read("/edit", offset=3 * MiB - 1) == data[-1:]

    client.write_at("/edit", MiB, b"x" * 1000)
    data[MiB : MiB + 1000] = b"x" * 1000
    client.append("/edit", b"tail")
    data += b"tail"
    assert client.read("/edit") == data

    client.truncate("/edit", 2 * MiB + 7)
    del data[2 * MiB + 7 :]
    assert client.read("/edit") == data
    client.truncate("/edit", 2 * MiB + 100)  # extends with zeros
    assert client.read("/edit") == bytes(data) + bytes(93)
    assert client.stat("/edit").size == 2 * MiB + 100


def test_many_chunks_in_flight_do_not_stall_each_other(
    cluster: DataCluster, tmp_path: Path
) -> None:
    """A volume server admits one streaming write at a time; uploads of several chunks at
    once over three servers once waited for each other in a cycle until a timeout."""
    source = tmp_path / "many"
    expected = random_file(source, 96 * MiB)
    transfer = TransferPolicy(in_flight=8, read_timeout=10.0)
    with MasterClient(cluster.master_list(), transfer=transfer) as client:
        client.put("/many", source, chunk_size=8 * MiB)
        target = tmp_path / "many.copy"
        client.get("/many", target)
    assert sha256_of(target) == expected


# -------------------------------------------------------------------- bad input


def test_bad_input_is_refused_and_changes_nothing(
    client: MasterClient, cluster: DataCluster
) -> None:
    with pytest.raises(NotFound):
        client.put("/no/such/dir/f", b"data")
    with pytest.raises(InvalidArgument):
        client.put("/a/../b", b"data")
    with pytest.raises(NameTooLong):
        client.put("/" + "n" * 256, b"data")
    assert {e.name for e in client.ls("/")}.isdisjoint({"no", "a", "b", "n" * 256})

    volume = cluster.volumes[0]
    chunk_url = f"http://{volume.address}/chunks/999999"

    def put(headers: dict[str, str], body: bytes = b"hello") -> int:
        request = urllib.request.Request(chunk_url, data=body, method="PUT", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    assert put({}) == 401  # unsigned
    assert put({"X-Quorumfs-Token": "v1.AAAA.BBBB"}) == 401  # forged
    # A genuine token for this chunk and server, with a wrong checksum.
    grant = http("POST", cluster.masters[0].address, "/v1/fs/allocate", {"path": "/x"})["chunks"][0]
    target = grant["targets"][0]
    url = f"http://{target['address']}/chunks/{grant['chunk_id']}"
    request = urllib.request.Request(
        url,
        data=b"hello",
        method="PUT",
        headers={"X-Quorumfs-Token": target["token"], "X-Quorumfs-Crc32c": "12345"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 400
    with pytest.raises(HttpError) as missing:
        http("GET", target["address"], f"/chunks/{grant['chunk_id']}")
    assert missing.value.status == 404  # nothing was stored


# --------------------------------------------------------------------- failures


def test_reads_survive_a_dead_volume_server_and_copies_are_remade(tmp_path: Path) -> None:
    cluster = DataCluster(tmp_path, volumes=4, master_args=("--replication-delay", "2"))
    cluster.start()
    try:
        with MasterClient(cluster.master_list()) as client:
            files = {f"/f{i}": os.urandom(100_000 + i) for i in range(6)}
            for path, data in files.items():
                client.put(path, data)
            holders = {v for path in files for ids in replicas(cluster, path) for v in ids}
            victim_id = min(holders)
            states = cluster.volume_states() or []
            victim_address = next(s["address"] for s in states if s["volume_id"] == victim_id)
            victim = next(v for v in cluster.volumes if v.address == victim_address)
            victim.kill(signal.SIGKILL)
            for path, data in files.items():  # at once: the other copy serves
                assert client.read(path) == data

            def remade() -> bool:
                return all(
                    victim_id not in ids and len(ids) == 2
                    for path in files
                    for ids in replicas(cluster, path)
                )

            wait_for(remade, "every chunk back to 2 copies without the dead server", 30)
            # Kill another holder: the re-made copies must serve.
            second = next(v for v in cluster.volumes if v.alive)
            second.kill(signal.SIGKILL)
            for path, data in files.items():
                assert client.read(path) == data
    finally:
        cluster.stop()


def test_the_leader_killed_during_an_upload(tmp_path: Path) -> None:
    cluster = DataCluster(tmp_path)
    cluster.start()
    try:
        source = tmp_path / "upload"
        expected = random_file(source, 150 * MiB)
        with MasterClient(cluster.master_list()) as client:
            client.put("/target", b"old content")
            outcome: list[BaseException | None] = []
            started = threading.Event()

            def progress(done: int, total: int | None) -> None:
                if done >= 64 * MiB:
                    started.set()

            def upload() -> None:
                try:
                    client.put("/target", source, progress=progress)
                    outcome.append(None)
                except QuorumfsError as error:
                    outcome.append(error)

            thread = threading.Thread(target=upload)
            thread.start()
            assert started.wait(60)
            cluster.leader().kill(signal.SIGKILL)
            killed = time.monotonic()
            # Every volume server moves to the new leader (and reports fully to it): they
            # do not keep calling the dead one.
            cluster.wait_writable(3, timeout=15)
            print(f"3 volume servers writable at the new leader {time.monotonic() - killed:.2f} s")
            thread.join(120)
            assert not thread.is_alive()
            assert outcome, "the upload thread ended without an outcome"
            target = tmp_path / "read-back"
            with target.open("wb") as sink:
                client.get("/target", sink)
            if outcome[0] is None:
                assert sha256_of(target) == expected
            else:
                # A clear error, and the old content still whole: no half file.
                assert str(outcome[0])
                assert target.read_bytes() == b"old content"
    finally:
        cluster.stop()


def test_writes_go_on_when_the_leaders_wall_clock_jumps(tmp_path: Path) -> None:
    """Write tokens expire on the leader's clock and volume servers judge them by it (the
    heartbeat answers tell them its time): an hour's jump either way fails no write, and
    moves no leadership."""
    cluster = DataCluster(tmp_path, master_args=("--fault-injection",))
    cluster.start()
    try:
        leader = cluster.leader()
        term = leader.status()["term"]
        headers = {"Authorization": f"Bearer {leader.admin_token()}"}
        for offset_ms in (-3_600_000, 3_600_000):
            body = {"wall_clock_offset_ms": offset_ms}
            http("PUT", leader.address, "/debug/faults", body, headers=headers)

            def told(offset_ms: int = offset_ms) -> bool:
                states = [v.status() for v in cluster.volumes]
                return all(
                    s is not None and abs(s["leader_clock_offset_ms"] - offset_ms) < 5_000
                    for s in states
                )

            wait_for(told, f"every volume server to see the leader's clock {offset_ms} ms off")
            # A new client each time: no spare grant from before the jump, only new tokens.
            with MasterClient(cluster.master_list()) as client:
                path, data = f"/jumped{offset_ms}", os.urandom(10_000)
                client.put(path, data)
                assert client.read(path) == data
                mtime = client.stat(path).mtime / 1e9
                assert abs(mtime - (time.time() + offset_ms / 1000)) < 60
        assert cluster.leader() is leader
        assert leader.status()["term"] == term
    finally:
        cluster.stop()
