"""Benchmark: the data path end to end on one machine (3 masters, 3 volume servers, fsync on).

Starts ``quorumfs local`` in a temporary directory (or --dir), then:

(a) small files: ``--clients`` concurrent clients (default 16, each its own
    ``AsyncMasterClient``) put 4 KiB files for ``--seconds``, then read random
    ones of them back for ``--seconds``: writes/s and reads/s, p50 and p99;
(b) one large file (``--large-mib``, default 1024) with 2 replicas: put from a
    file on disk, then get to /dev/null-like sink: MB/s each way.

    .venv/bin/python bench/data_path.py [--clients 16] [--seconds 10] [--large-mib 1024]

Targets on this 2-core machine (issue #4): >= 2,000 small writes/s, >= 5,000
small reads/s, >= 250 MB/s write and >= 300 MB/s read of the large file.
Everything shares the two cores: the client (on uvloop, as the servers are), 3 masters
and 3 volume servers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from quorumfs.client import AsyncMasterClient

BASE_PORT = 29433
VOLUME_PORT = 28480
MiB = 1 << 20


def start_cluster(root: Path) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-m", "quorumfs", "local", "--dir", str(root),
        "--base-port", str(BASE_PORT), "--volume-port", str(VOLUME_PORT),
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        if "Ctrl-C stops" in line:
            return process
        if "error" in line:
            break
    process.kill()
    raise SystemExit(f"the cluster did not start; see {root}/*.log")


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


async def small_files(masters: str, clients: int, seconds: float) -> None:
    payload = os.urandom(4096)
    written: list[str] = []
    latencies: list[float] = []

    async def writer(n: int, client: AsyncMasterClient, deadline: float) -> None:
        i = 0
        while time.monotonic() < deadline:
            path = f"/bench/small/{n}-{i}"
            started = time.monotonic()
            await client.put(path, payload)
            latencies.append(time.monotonic() - started)
            written.append(path)
            i += 1

    async def reader(client: AsyncMasterClient, deadline: float, rng: random.Random) -> None:
        while time.monotonic() < deadline:
            path = rng.choice(written)
            started = time.monotonic()
            data = await client.read(path)
            latencies.append(time.monotonic() - started)
            assert data == payload, path

    pool = [AsyncMasterClient(masters) for _ in range(clients)]
    try:
        await pool[0].mkdir("/bench/small", parents=True)
        await asyncio.gather(*(c.put("/bench/warmup", payload) for c in pool))  # connections
        for phase in ("write", "read"):
            latencies.clear()
            started = time.monotonic()
            deadline = started + seconds
            if phase == "write":
                await asyncio.gather(*(writer(n, c, deadline) for n, c in enumerate(pool)))
            else:
                await asyncio.gather(
                    *(reader(c, deadline, random.Random(n)) for n, c in enumerate(pool))
                )
            elapsed = time.monotonic() - started
            print(
                f"(a) 4 KiB {phase}s, {clients} clients: {len(latencies) / elapsed:,.0f}/s "
                f"(p50 {percentile(latencies, 50) * 1000:.1f} ms, "
                f"p99 {percentile(latencies, 99) * 1000:.1f} ms, {len(latencies):,} files)"
            )
    finally:
        for client in pool:
            await client.close()


class _Discard:
    """A sink that counts bytes: reading must not be bounded by a local disk."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.count += len(data)
        return len(data)


async def large_file(masters: str, root: Path, mib: int) -> None:
    source = root / "large.bin"
    with source.open("wb") as f:
        block = os.urandom(MiB)
        for i in range(mib):
            f.write(block[i % 256 :] + block[: i % 256])  # distinct blocks, cheap to make
    async with AsyncMasterClient(masters) as client:
        started = time.monotonic()
        await client.put("/bench/large", source, replication=2)
        write_s = time.monotonic() - started
        sink = _Discard()
        started = time.monotonic()
        await client.get("/bench/large", sink)  # type: ignore[arg-type]
        read_s = time.monotonic() - started
    assert sink.count == mib * MiB
    size_mb = mib * MiB / 1e6
    print(f"(b) {mib} MiB file, 2 replicas: write {size_mb / write_s:,.0f} MB/s ({write_s:.1f} s)")
    print(f"(b) {mib} MiB file, 2 replicas: read  {size_mb / read_s:,.0f} MB/s ({read_s:.1f} s)")
    source.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--large-mib", type=int, default=1024)
    parser.add_argument("--dir", type=Path, default=None, help="where the cluster keeps its data")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-data-") as tmp:
        root = Path(tmp)
        cluster = start_cluster(root)
        masters = ",".join(f"127.0.0.1:{BASE_PORT + i}" for i in range(3))
        try:
            uvloop.run(small_files(masters, args.clients, args.seconds))
            if args.large_mib:
                uvloop.run(large_file(masters, root, args.large_mib))
        finally:
            cluster.send_signal(signal.SIGINT)
            cluster.wait(timeout=60)


if __name__ == "__main__":
    main()
